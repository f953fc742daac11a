"""Text corpora -> TFDS (ArrayRecord) -> token cache -> grain windows of L+1.

Corpora are TFDS datasets read with `as_data_source` (random access, no
TensorFlow). A directory of text files is turned into one by `TextFiles`;
the default corpus is the running interpreter's standard library. Each split
is tokenized once (documents joined with EOS) into a flat .npy cache; grain
then cuts it into non-overlapping windows of seq_len + 1 tokens, shuffles
them with a seed per epoch and batches them. The iterator state is one
integer, so it checkpoints exactly.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import io
import json
import os
import re
import sysconfig
from typing import Any

import functools
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
  import grain  # Imported where used: ~1 s that generation and the tools need not pay.
  import tensorflow_datasets as tfds

from lm import workdir
from lm.config import ConfigError, DataConfig


def cache_root(d: DataConfig) -> str:
  return d.cache_dir or os.environ.get('LM_CACHE') or os.path.expanduser('~/.cache/lm')


# --- Corpus files -------------------------------------------------------------

def _installed(path: str) -> bool:
  return 'site-packages' in path or 'dist-packages' in path


def stdlib_files() -> tuple[str, list[str]]:
  """The .py files of this interpreter's standard library: no site-packages
  (pruned from the walk, not filtered after it: a glob over an interpreter
  with 200 packages installed took 0.7 s per run, the walk 0.02 s) and, as
  glob's '**/*.py' would, no hidden names."""
  root = sysconfig.get_paths()['stdlib']
  files = _walk(root, lambda name: not name.startswith('.') and not _installed(name))
  return root, sorted(f for f in files if f.endswith('.py') and not _installed(f))


def _walk(root: str, keep=lambda name: True) -> list[str]:
  """Files under root, following directory links but entering each real
  directory once (a link back up the tree would repeat it without end);
  only the directories and files whose names `keep` accepts."""
  files, seen = [], set()
  for dp, dirs, fs in os.walk(root, followlinks=True):
    real = os.path.realpath(dp)
    if real in seen:
      dirs[:] = []
      continue
    seen.add(real)
    dirs[:] = sorted(x for x in dirs if keep(x))
    files += [os.path.join(dp, f) for f in fs if keep(f)]
  return files


def _glob_regex(pattern: str) -> re.Pattern:
  """A glob relative to its root as a regex over relative paths: ** is any
  number of directories, * and ? stay within one name, [...] a class."""
  out = []
  parts = pattern.split(os.sep)
  for i, part in enumerate(parts):
    if part == '**':
      out.append('.*' if i == len(parts) - 1 else f'(?:[^{os.sep}]+{os.sep})*')
      continue
    j, seg = 0, ''
    while j < len(part):
      ch = part[j]
      if ch == '*':
        seg += f'[^{os.sep}]*'
      elif ch == '?':
        seg += f'[^{os.sep}]'
      elif ch == '[' and ']' in part[j + 2:] + part[j + 1:j + 2]:
        k = part.index(']', j + 2 if part[j + 1:j + 2] in ('!', ']') else j + 1)
        body = part[j + 1:k]
        seg += '[' + ('^' + body[1:] if body.startswith('!') else body) + ']'
        j = k
      else:
        seg += re.escape(ch)
      j += 1
    out.append(seg + ('' if i == len(parts) - 1 else re.escape(os.sep)))
  return re.compile(''.join(out) + r'\Z')


def dir_files(path: str) -> tuple[str, list[str]]:
  """The regular files under a directory, or the files a glob matches, by one
  rule: nothing under a hidden name (.git/, .cache), directory links followed
  (each real directory once), and each file once even when links reach it by
  several paths (its first path, sorted), so no text lands in both splits."""
  if os.path.isdir(path):
    root, files = path, _walk(path)
  else:
    if not glob.has_magic(path):
      what = 'is a file, not a directory' if os.path.isfile(path) else 'does not exist'
      raise ConfigError(f'config.data.path={path!r} {what}; give a directory '
                        'of text files or a glob such as "/data/*.txt"')
    root = os.path.dirname(path.split('*')[0].split('?')[0].split('[')[0]) or '.'
    if '**' in path:  # glob's own ** walks link loops exponentially.
      rx = _glob_regex(os.path.relpath(path, root))
      files = [f for f in _walk(root) if rx.match(os.path.relpath(f, root))]
    else:
      files = glob.glob(path)
  kept, seen = [], set()
  for f in sorted(files):
    rel = os.path.relpath(f, root)
    real = os.path.realpath(f)
    if (os.path.isfile(f) and real not in seen
        and not any(p.startswith('.') and p != '..' for p in rel.split(os.sep))):
      kept.append(f)
      seen.add(real)
  if not kept:
    raise ConfigError(f'config.data.path={path!r} holds no files; give a directory or '
                      'glob with at least two text files')
  return root, kept


def corpus_files(d: DataConfig) -> tuple[str, list[str]]:
  """(root, files) of a text-file corpus: data.source stdlib or dir."""
  return stdlib_files() if d.source == 'stdlib' else dir_files(d.path)


def split_of(relpath: str, val_fraction: float) -> str:
  """Deterministic split by file: a hash of the relative path, not the order."""
  h = int(hashlib.sha256(os.fsencode(relpath)).hexdigest()[:8], 16) / 0xFFFFFFFF
  return 'validation' if h < val_fraction else 'train'


def assign_splits(root: str, files: list[str], val_fraction: float) -> dict[str, list[str]]:
  if len(files) < 2:
    raise ConfigError(f'the corpus under {root!r} has {len(files)} file(s); a split by '
                      'file needs at least 2')
  rel = [os.path.relpath(f, root) for f in files]
  out = {'train': [], 'validation': []}
  for f, r in zip(files, rel):
    out[split_of(r, val_fraction)].append(f)
  if not out['validation']:  # Tiny corpora: hold out the file hashed lowest.
    f = min(files, key=lambda f: hashlib.sha256(os.fsencode(os.path.relpath(f, root))).hexdigest())
    out['train'].remove(f)
    out['validation'].append(f)
  if not out['train']:
    f = out['validation'].pop()
    out['train'].append(f)
  return out


def _tfds():
  """tensorflow_datasets, imported when a corpus is prepared or opened: it costs
  seconds at start-up and nothing else (training, benchmarks, GPU hosts) needs it."""
  import tensorflow_datasets as tfds
  return tfds


@functools.cache
def _text_files_class() -> type:
  """TextFiles: a local directory of text files as a TFDS dataset (one example
  per file). Defined on first use so that importing lm.data needs no TFDS."""
  tfds = _tfds()

  class TextFiles(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version('1.0.0')
    name = 'text_files'

    def __init__(self, *, root: str, splits: dict[str, list[str]],
                 provenance: dict[str, Any], **kwargs):
      self._root, self._splits, self._provenance = root, splits, provenance
      super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
      return tfds.core.DatasetInfo(
          builder=self,
          description=f'Text files under {self._root}, split by a hash of the path.',
          features=tfds.features.FeaturesDict(
              {'text': tfds.features.Text(), 'path': tfds.features.Text()}),
          metadata=tfds.core.MetadataDict(self._provenance))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {s: self._generate_examples(fs) for s, fs in self._splits.items()}

    def _generate_examples(self, files):
      for f in files:
        text = _read_text(f)
        if text is not None:
          rel = os.path.relpath(f, self._root)
          yield rel, {'text': text, 'path': rel}

  return TextFiles


def _read_text(path: str) -> str | None:
  """A file's text, or None for one skipped as not UTF-8: its bytes, or its
  name (the prepared data records each file's path as UTF-8 text)."""
  try:
    path.encode('utf-8')
  except UnicodeEncodeError:
    return None
  with open(path, 'rb') as fh:
    raw = fh.read()
  try:
    return raw.decode('utf-8')
  except UnicodeDecodeError:
    return None  # Not UTF-8 text: skipped and counted in the provenance.


def provenance(root: str, splits: dict[str, list[str]]) -> dict[str, Any]:
  """File counts, bytes and a content hash over (path, bytes) of kept files."""
  h = hashlib.sha256()
  out: dict[str, Any] = {'root': root, 'skipped_non_utf8': 0}
  for s in sorted(splits):
    n = b = 0
    for f in splits[s]:
      text = _read_text(f)
      if text is None:
        out['skipped_non_utf8'] += 1
        continue
      raw = text.encode('utf-8')
      h.update(os.fsencode(os.path.relpath(f, root)) + b'\0' + raw + b'\0')
      n, b = n + 1, b + len(raw)
    out[f'{s}_files'], out[f'{s}_bytes'] = n, b
  out['file_count'] = out['train_files'] + out['validation_files']
  out['total_bytes'] = out['train_bytes'] + out['validation_bytes']
  out['content_sha256'] = h.hexdigest()
  return out


_PROVENANCE: dict[tuple, dict[str, Any]] = {}


def text_corpus(d: DataConfig) -> tuple[str, dict[str, list[str]], dict[str, Any]]:
  """(root, splits, provenance) of a stdlib or dir corpus. The provenance's
  content hash reads every file (0.25 s for the 31 MB standard library); it is
  computed once per process for the same paths, sizes and mtimes."""
  root, files = corpus_files(d)
  splits = assign_splits(root, files, d.val_fraction)
  key = (root, d.val_fraction,
         tuple((f, st.st_size, st.st_mtime_ns) for f in files for st in [os.stat(f)]))
  if key not in _PROVENANCE:
    _PROVENANCE[key] = provenance(root, splits)
  return root, splits, _PROVENANCE[key]


# What TFDS prints around preparing a dataset (dataset_builder._log_download_bytes
# and _log_download_done), which for local files would report a download.
_TFDS_ANNOUNCEMENTS = ('Downloading and preparing dataset', 'downloaded and prepared to')


def build_text_dataset(root: str, splits: dict[str, list[str]], prov: dict[str, Any],
                       cache: str) -> tfds.core.DatasetBuilder:
  """Prepares (once) a TextFiles set, cached under a key over the content and
  the split, so an edit that keeps a file's size and mtime is still seen."""
  for split in splits:
    if not prov[f'{split}_files']:
      raise ConfigError(
          f'the corpus under {root!r} has no UTF-8 text file in its {split} split '
          f'({len(splits[split])} files there, {prov["skipped_non_utf8"]} skipped in all as '
          'non-UTF-8); add text files or change data.val_fraction')
  key = hashlib.sha256(json.dumps(
      [prov['content_sha256'], prov['train_files'], prov['validation_files']]).encode()
  ).hexdigest()[:16]
  data_dir = os.path.join(cache, 'textfiles', key)
  done = os.path.join(data_dir, 'text_files', '1.0.0', 'dataset_info.json')

  def builder():
    return _text_files_class()(root=root, splits=splits, provenance=prov,
                               data_dir=data_dir, file_format='array_record')
  if not os.path.exists(done):
    with _prepare_lock(data_dir):  # Another process (a sweep's worker) may be preparing it.
      if not os.path.exists(done):
        _tfds().disable_progress_bar()
        said = io.StringIO()
        try:  # TFDS announces a "download" of unknown size; these are local files.
          with contextlib.redirect_stdout(said):
            builder().download_and_prepare(
                download_config=_tfds().download.DownloadConfig(verify_ssl=False))
        finally:
          for line in said.getvalue().splitlines():
            if not any(x in line for x in _TFDS_ANNOUNCEMENTS):
              print(line)
        print(f'[data] prepared {prov["file_count"]} text files ({prov["train_files"]} train, '
              f'{prov["validation_files"]} validation; {prov["total_bytes"]:,} bytes) as '
              f'array_record in {data_dir}; runs on the same text read them from there')
  return builder()


CORPUS_FILE = 'corpus.json'  # A run's record of the text it trained on (lm/checkpoint.py).
ORDER = 2  # The data order new runs use (see _order_seed).
ORDER_FILE = 'data_order.json'  # A run's record of it.


def run_order(run_dir: str, resume: bool) -> int:
  """The data order of a run: the one it recorded; a run resumed without a
  record started before there was one (order 1), and keeps it, so it resumes
  on the batches it would have trained on; else the current one."""
  path = os.path.join(run_dir, ORDER_FILE)
  try:
    with open(path) as f:
      order = json.load(f)['order']
  except FileNotFoundError:
    return 1 if resume else ORDER
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise ConfigError(f'{path}, the record of the run\'s data order, is unreadable ({e}); '
                      f'write {{"order": 1}} into it for a run started before 2026-11-29, '
                      f'else {{"order": {ORDER}}}') from None
  if order not in (1, ORDER):
    raise ConfigError(f'{path}: data order {order!r} is not one this version reads (1 or '
                      f'{ORDER})')
  return order


def write_order(run_dir: str, order: int) -> None:
  workdir.write_atomic(os.path.join(run_dir, ORDER_FILE), json.dumps({'order': order}) + '\n')


def corpus_record(d: DataConfig) -> dict[str, Any] | None:
  """What a run records of its corpus, to compare on resume: the provenance of
  a stdlib or dir corpus, the bytes of a labelled file source's files (None
  for tfds, which TFDS versions)."""
  if d.source == 'file':
    paths = [p for p in (d.path, d.eval_path) if p]
    h = hashlib.sha256()
    for p in paths:
      try:
        with open(p, 'rb') as f:
          for block in iter(lambda: f.read(1 << 20), b''):
            h.update(block)
      except OSError:  # Missing or unreadable: lm/classify.py says which, in one line.
        return None
      h.update(b'\0')  # Where one file ends.
    return {'source': 'file', 'train_files': 1, 'validation_files': int(bool(d.eval_path)),
            'total_bytes': sum(os.path.getsize(p) for p in paths),
            'content_sha256': h.hexdigest()}
  if d.source not in ('stdlib', 'dir'):
    return None
  return {k: v for k, v in text_corpus(d)[2].items() if k != 'root'}


@contextlib.contextmanager
def _prepare_lock(data_dir: str):
  """An exclusive flock on <data_dir>.lock while a data set is prepared, so
  concurrent processes prepare it once (the kernel drops it if one dies)."""
  os.makedirs(os.path.dirname(data_dir), exist_ok=True)
  with open(data_dir + '.lock', 'w') as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def catalog_dataset(name: str, cache: str) -> tfds.core.DatasetBuilder:
  """A TFDS catalog dataset prepared as ArrayRecord (downloads on first use)."""
  tfds = _tfds()
  try:
    builder = tfds.builder(name, data_dir=os.path.join(cache, 'tfds'),
                           file_format='array_record')
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ConfigError(f'config.data.tfds_name={name!r} is not a TFDS catalog dataset: '
                      f'{str(e).splitlines()[0]}') from None
  except (ValueError, AssertionError) as e:  # A bad name, version or config string.
    why = ' '.join(str(e).split()).split('": ')[-1][:300]
    raise ConfigError(f'config.data.tfds_name={name!r} is not a valid TFDS name '
                      f'(name[/config][:version], e.g. tiny_shakespeare:1.0.0): {why}') from None
  # Locked by its data directory (name and resolved version), so 'mnist' and
  # 'mnist:3.0.1' prepare it once too.
  with _prepare_lock(builder.data_dir.rstrip('/')):
    try:
      builder.download_and_prepare()
    except Exception as e:  # No network, a moved URL, a full disk: TFDS raises many kinds.
      raise ConfigError(f'config.data.tfds_name={name!r} could not be downloaded and prepared '
                        f'({type(e).__name__}: {" ".join(str(e).split())[:200]}); a catalog '
                        'dataset needs a network on first use') from None
    # A builder reads the dataset's info when it is made: one made while another
    # process was preparing the data has no splits (TFDS then reuses the data
    # without reading it again), so it is made again from what is on disk.
    return tfds.builder(name, data_dir=os.path.join(cache, 'tfds'), file_format='array_record')


def check_split(builder: tfds.core.DatasetBuilder, split: str) -> None:
  if builder.info.splits and split not in builder.info.splits:  # Mocks list none.
    raise ConfigError(f'split {split!r} not in {builder.name}; available: '
                      f'{", ".join(builder.info.splits)}')


def check_feature(builder: tfds.core.DatasetBuilder, key: str, field: str, kind: str) -> None:
  """Refuses a feature that is not one string per example (kind 'text') or one
  integer (kind 'class'): a list of strings or a float score read as text or
  cut to int would train on its Python spelling or on truncated values."""
  feats = builder.info.features
  if key not in feats:
    raise ConfigError(f'config.data.{field}={key!r} is not a feature of {builder.name}; '
                      f'features: {", ".join(feats)}')
  f = feats[key]
  shape, dt = tuple(getattr(f, 'shape', ())), np.dtype(getattr(f, 'np_dtype', object))
  if shape != () or dt.kind not in ('OSU' if kind == 'text' else 'iu'):
    raise ConfigError(
        f'config.data.{field}={key!r}: feature {key!r} of {builder.name} is a '
        f'{type(f).__name__} of {dt} with shape {shape}; '
        + ('it needs one text per example (a Text feature)' if kind == 'text' else
           'it needs one class per example (a ClassLabel or integer feature)'))


def corpus(d: DataConfig) -> tuple[tfds.core.DatasetBuilder, str]:
  """The TFDS builder for the configured corpus, and its text feature key."""
  if d.source == 'tfds':
    return catalog_dataset(d.tfds_name, cache_root(d)), d.text_key
  return build_text_dataset(*text_corpus(d), cache_root(d)), 'text'


# --- Tokens -------------------------------------------------------------------

def _as_str(x) -> str:
  return x.decode('utf-8') if isinstance(x, bytes) else str(x)


def token_cache_path(builder: tfds.core.DatasetBuilder, split: str, text_key: str, tokenizer,
                     cache: str) -> str:
  """Keyed by everything the tokens depend on: dataset dir, the feature read
  (another text_key of one dataset is other text), tokenizer and split."""
  key = hashlib.sha256(str(builder.data_dir).encode()).hexdigest()[:12]
  return os.path.join(cache, 'tokens',
                      f'{builder.name}-{key}-{text_key}-{tokenizer.name}-{split}.npy')


def tokenize_split(builder: tfds.core.DatasetBuilder, split: str, text_key: str,
                   tokenizer, cache: str) -> np.ndarray:
  """All documents of a split, each followed by EOS, as one flat token array.

  Cached as .npy (keyed by dataset dir, text feature, tokenizer and split) and written
  atomically, so an interrupted run never leaves a half-written cache.
  """
  check_split(builder, split)
  check_feature(builder, text_key, 'text_key', 'text')
  path = token_cache_path(builder, split, text_key, tokenizer, cache)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  if os.path.exists(path):
    return np.load(path, mmap_mode='r')
  src = builder.as_data_source(split=split)
  import grain
  eos = np.asarray([tokenizer.eos_id], np.int32)
  docs = (grain.MapDataset.source(src)
          .map(lambda ex: np.concatenate([tokenizer.encode(_as_str(ex[text_key])), eos])))
  dtype = np.uint16 if tokenizer.vocab_size <= 65536 else np.int32
  tokens = np.concatenate([np.zeros(0, dtype)] + [t.astype(dtype) for t in docs])
  tmp = workdir.tmp_name(path) + '.npy'
  np.save(tmp, tokens)
  os.replace(tmp, path)
  return tokens


class Windows:
  """Non-overlapping windows of `size` tokens over a flat token array."""

  def __init__(self, tokens: np.ndarray, size: int):
    self.tokens, self.size = tokens, size

  def __len__(self) -> int:
    return len(self.tokens) // self.size

  def __getitem__(self, i: int) -> np.ndarray:
    return np.asarray(self.tokens[i * self.size:(i + 1) * self.size], np.int32)

  def gather(self, idx: np.ndarray) -> np.ndarray:
    """Windows idx at once (rows of a batch): one indexed read."""
    rows = np.asarray(self.tokens[:len(self) * self.size]).reshape(len(self), self.size)
    return rows[np.asarray(idx)].astype(np.int32, copy=False)


def check_windows(tokens: np.ndarray, seq_len: int, split: str, need: int,
                  extra: int = 1, needs: str = 'one batch needs') -> None:
  """Windows are seq_len + extra tokens (1: a causal LM's shifted target)."""
  n = len(tokens) // (seq_len + extra)
  if n < need:
    raise ConfigError(
        f'the {split} split has {len(tokens)} tokens = {n} windows of '
        f'{seq_len + extra} tokens, fewer than the {need} {needs}; '
        'use a larger corpus, a shorter data.seq_len or a smaller batch')


class Keyed:
  """A source whose examples are arrays, as dicts {key: array} (batches are dicts)."""

  def __init__(self, source, key: str):
    self.source, self.key = source, key

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    return {self.key: self.source[i]}

  def gather(self, idx: np.ndarray) -> dict[str, np.ndarray]:
    return {self.key: self.source.gather(idx)}


def token_splits(d: DataConfig, tokenizer) -> tuple[np.ndarray, np.ndarray]:
  """(train, validation) token arrays of the configured text corpus (cached)."""
  builder, key = corpus(d)
  cache = cache_root(d)
  return (tokenize_split(builder, d.train_split, key, tokenizer, cache),
          tokenize_split(builder, d.val_split, key, tokenizer, cache))


def batched(source, local_batch: int, seed: int, process_index: int = 0,
            process_count: int = 1, transform=None,
            read_options: grain.ReadOptions | None = None, order: int = ORDER
            ) -> grain.IterDataset:
  """Any random-access source, shuffled per epoch, repeated, this process's rows.

  Global batch s is rows [s*B, (s+1)*B) of one shuffled order (B = local_batch
  x process_count), and process p reads its contiguous block [p*local_batch,
  (p+1)*local_batch) of it, the block its devices hold in the global array
  (Trainer.to_global in lm/train.py). So the global batch is the same rows in the same
  order on any process count, and after s steps every process's position is s
  batches: a checkpoint resumes on another count with the same batches
  (lm/checkpoint._position_of_other_count).

  `transform(example, rng)` (an objective's corruption) draws its noise from
  the row's global position, so that too is the same whatever the process
  count, and new every epoch. A source with `gather(indices) -> batch` and no
  transform is read a batch at a time: the same rows in the same order,
  without a Python call per row (2.6 -> 1.6 ms per 64 x 65-token batch with
  document ids, on one core; a small model's step is a few ms, and a pack
  reads one batch per member each step)."""
  import grain
  first, global_batch = process_index * local_batch, local_batch * process_count
  shuffle = _order_seed(seed, order)
  if transform is None and hasattr(source, 'gather'):
    ids = grain.MapDataset.range(len(source)).shuffle(seed=shuffle).repeat()
    return ids.batch(global_batch, drop_remainder=True).map(
        functools.partial(_gather_block, source, first, local_batch)).to_iter_dataset(
            read_options)
  ds = grain.MapDataset.source(source).shuffle(seed=shuffle).repeat()
  if transform is not None:
    ds = ds.random_map(transform, seed=seed)
  if process_count > 1:
    ds = grain.MapDataset.range(len(ds)).map(
        functools.partial(_row_of_block, ds, first, local_batch, global_batch))
  return ds.batch(local_batch, drop_remainder=True).to_iter_dataset(read_options)


def _order_seed(seed: int, order: int) -> int:
  """The seed handed to grain's shuffle: in data order 2 a hash of `seed`.

  grain shuffles epoch e with seed + e, so raw seeds 0 and 1 (a sweep's
  replicates; order 1, before 2026-11-29) trained on the same batches one epoch
  apart. Hashed seeds lie ~2^32 / replicates apart, far beyond any run's epoch
  count."""
  return int(np.random.SeedSequence(seed).generate_state(1, np.uint32)[0]) if order >= 2 else seed


def _gather_block(source, first: int, local_batch: int, ids_B: np.ndarray):
  """This process's block of one global batch of row ids, read in one gather."""
  return source.gather(ids_B[first:first + local_batch])


def _row_of_block(ds, first: int, local_batch: int, global_batch: int, i: int):
  """This process's i-th row: row i % local_batch of its block of global batch
  i // local_batch."""
  return ds[i // local_batch * global_batch + first + i % local_batch]


def eval_batches(tokens: np.ndarray, seq_len: int, batch: int, num_batches: int,
                 process_index: int = 0, process_count: int = 1
                 ) -> list[tuple[np.ndarray, np.ndarray]]:
  """The first windows of the split, in order, as (tokens, row weights) batches.

  The last batch is padded with zero-weight rows so every window is counted once.
  """
  w = Windows(tokens, seq_len + 1)
  n = min(len(w), batch * num_batches)
  rows = np.stack([w[i] for i in range(n)])
  pad = (-n) % batch
  weights = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])
  rows = np.concatenate([rows, np.zeros((pad, seq_len + 1), np.int32)])
  local = batch // process_count
  out = []
  for i in range(0, len(rows), batch):
    sl = slice(i + process_index * local, i + (process_index + 1) * local)
    out.append((rows[sl], weights[sl]))
  return out


def eval_rows(rows: dict[str, np.ndarray], batch: int, process_index: int = 0,
              process_count: int = 1) -> list[tuple[dict, np.ndarray]]:
  """Every row of a dict of arrays, in order, as (batch, row weights) pairs;
  the last batch is padded with zero-weight copies of row 0."""
  n = len(next(iter(rows.values())))
  pad = (-n) % batch
  weights = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])
  padded = {k: np.concatenate([v, np.repeat(v[:1], pad, axis=0)]) for k, v in rows.items()}
  local = batch // process_count
  out = []
  for i in range(0, n + pad, batch):
    sl = slice(i + process_index * local, i + (process_index + 1) * local)
    out.append(({k: v[sl] for k, v in padded.items()}, weights[sl]))
  return out


def documents(inputs_L: np.ndarray, eos: int) -> tuple[np.ndarray, np.ndarray]:
  """Document ids (0, 1, ... in window order) and positions within the document
  of a window's input tokens (or of each row of a [..., L] batch); an EOS ends
  its document."""
  L = inputs_L.shape[-1]
  starts_L = np.zeros(inputs_L.shape, bool)
  starts_L[..., 1:] = inputs_L[..., :-1] == eos
  seg_L = np.cumsum(starts_L, axis=-1).astype(np.int32)
  first_L = np.maximum.accumulate(np.where(starts_L, np.arange(L), 0), axis=-1)
  return seg_L, (np.arange(L) - first_L).astype(np.int32)
