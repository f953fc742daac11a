"""TFDS builder, catalog path, token cache, packing and the grain iterator."""

import contextlib
import hashlib
import os
import time

import grain
import numpy as np
import pytest
import tensorflow_datasets as tfds

from lm import data
from lm.config import ConfigError, DataConfig
from lm.tokenizers import ByteTokenizer


# Prefetch threads, with a buffer small enough that an abandoned iterator
# stops soon (grain's default, 16 threads and 500 batches, kept reading
# after the test: ~65 s of the suite's CPU time).
THREADED = grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)


@pytest.fixture(scope='module')
def built(corpus_dir):
  d = DataConfig(source='dir', path=str(corpus_dir), val_fraction=0.2)
  return data.corpus(d)[0]


def _train_dataset(tokens, seq_len, local_batch, seed, process_index=0, process_count=1):
  """A causal LM's training windows (L + 1 tokens), as the trainer batches them
  on accelerators (prefetch threads; a small buffer, see THREADED)."""
  return data.batched(data.Windows(tokens, seq_len + 1), local_batch, seed, process_index,
                      process_count, read_options=THREADED)


def test_builder_writes_array_record_with_provenance(built, corpus_dir):
  files = sorted(os.listdir(built.data_dir))
  assert any('array_record' in f for f in files), files
  meta = built.info.metadata
  # 40 .py files + sub/notes.txt are UTF-8; binary.bin is counted as skipped.
  assert meta['file_count'] == 41 and meta['skipped_non_utf8'] == 1
  utf8 = [p for p in sorted(corpus_dir.rglob('*')) if p.is_file() and p.suffix != '.bin']
  assert meta['total_bytes'] == sum(p.stat().st_size for p in utf8)
  assert len(meta['content_sha256']) == 64
  n_train, n_val = (built.info.splits[s].num_examples for s in ('train', 'validation'))
  assert (n_train + n_val, n_train > n_val > 0) == (41, True)
  # Every example is a whole file, verbatim.
  ds = built.as_data_source(split='train')
  ex = ds[0]
  path = data._as_str(ex['path'])
  assert data._as_str(ex['text']) == (corpus_dir / path).read_text()


def test_split_is_by_file_and_deterministic(corpus_dir):
  root, files = data.dir_files(str(corpus_dir))
  a = data.assign_splits(root, files, 0.2)
  b = data.assign_splits(root, list(reversed(files)), 0.2)
  assert sorted(a['validation']) == sorted(b['validation'])
  assert not set(a['train']) & set(a['validation'])
  # Adding a file never moves an existing one between splits.
  c = data.assign_splits(root, files + [str(corpus_dir / 'zzz_new.py')], 0.2)
  assert set(a['validation']) <= set(c['validation'])


def test_prepared_dataset_is_cached(built, corpus_dir):
  d = DataConfig(source='dir', path=str(corpus_dir), val_fraction=0.2)
  again = data.corpus(d)[0]
  assert again.data_dir == built.data_dir
  assert again.info.metadata['content_sha256'] == built.info.metadata['content_sha256']


def test_preparing_local_files_says_so_instead_of_a_download(tmp_path, capsys):
  """TFDS announced "Downloading and preparing dataset Unknown size" for a
  directory of local files; the one line now says what was prepared, once."""
  for i in range(3):
    (tmp_path / f'f{i}.txt').write_text(f'text number {i}\n' * 20)
  d = DataConfig(source='dir', path=str(tmp_path), val_fraction=0.3,
                 cache_dir=str(tmp_path / '.cache'))
  data.corpus(d)
  out = capsys.readouterr().out
  assert 'ownload' not in out and out.startswith('[data] prepared 3 text files ('), out
  assert str(tmp_path / '.cache') in out and len(out.splitlines()) == 1
  data._PROVENANCE.clear()  # As a new process would start.
  data.corpus(d)
  assert capsys.readouterr().out == ''  # Read from the cache: nothing to say.


def test_cache_is_keyed_by_content_not_size_and_mtime(tmp_path):
  """An edit that keeps a file's size and mtime (rsync -t, a restored backup)
  gets a fresh preparation; a touch that changes only the mtime does not."""
  for i in range(3):
    (tmp_path / f'f{i}.txt').write_text(f'text number {i}\n' * 20)
  d = DataConfig(source='dir', path=str(tmp_path), val_fraction=0.3,
                 cache_dir=str(tmp_path / '.cache'))
  first = data.corpus(d)[0]
  st = os.stat(tmp_path / 'f1.txt')
  os.utime(tmp_path / 'f1.txt', ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
  assert data.corpus(d)[0].data_dir == first.data_dir
  (tmp_path / 'f1.txt').write_text('TEXT NUMBER 1\n' * 20)
  os.utime(tmp_path / 'f1.txt', ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
  data._PROVENANCE.clear()  # As a new process would start (the memo lives per process).
  second = data.corpus(d)[0]
  assert second.data_dir != first.data_dir
  texts = [data._as_str(ex['text']) for s in ('train', 'validation')
           for ex in second.as_data_source(split=s)]
  assert 'TEXT NUMBER 1\n' * 20 in texts


def test_a_file_name_that_is_not_utf8_is_skipped_like_non_utf8_text(tmp_path):
  """Linux file names are bytes: one that is not UTF-8 (the prepared data
  records each path as text) is skipped and counted, as non-UTF-8 contents
  are, instead of crashing the preparation."""
  for i in range(6):
    (tmp_path / f'f{i}.txt').write_text(f'text number {i}\n' * 20)
  with open(os.path.join(os.fsencode(tmp_path), b'\xff.txt'), 'wb') as f:
    f.write(b'a name in Latin-1\n')
  d = DataConfig(source='dir', path=str(tmp_path), val_fraction=0.3,
                 cache_dir=str(tmp_path / '.cache'))
  meta = data.corpus(d)[0].info.metadata
  assert (meta['file_count'], meta['skipped_non_utf8']) == (6, 1)


def test_one_rule_for_directories_and_globs(tmp_path):
  """Hidden names are skipped and a file reached through symbolic links counts
  once, in directory and glob mode alike; a directory link loop ends."""
  root = tmp_path / 'c'
  (root / 'a').mkdir(parents=True)
  for name in ('a/x.txt', 'a/y.txt', 'z.txt'):
    (root / name).write_text(name * 10)
  (root / '.git').mkdir()
  (root / '.git' / 'HEAD.txt').write_text('ref: main')
  (root / '.hidden.txt').write_text('no')
  (root / 'again.txt').symlink_to(root / 'a' / 'x.txt')  # The same text twice.
  (root / 'a' / 'loop').symlink_to(root)  # A directory link back up the tree.
  (root / 'b').symlink_to(root / 'a')
  want = ['a/x.txt', 'a/y.txt', 'z.txt']  # again.txt and b/* are a/x.txt, a/*.
  for path in (str(root), str(root / '**' / '*.txt')):
    r, files = data.dir_files(path)
    assert sorted(os.path.relpath(f, r) for f in files) == want, path


def test_tokens_are_documents_joined_by_eos(built):
  tok = ByteTokenizer()
  cache = os.environ['LM_CACHE']
  tokens = data.tokenize_split(built, 'validation', 'text', tok, cache)
  docs = [data._as_str(ex['text']) for ex in built.as_data_source(split='validation')]
  want = np.concatenate([np.append(tok.encode(t), tok.eos_id) for t in docs])
  np.testing.assert_array_equal(tokens, want)
  assert os.path.exists(data.token_cache_path(built, 'validation', 'text', tok, cache))


def test_packing_puts_every_token_exactly_once():
  tokens = np.arange(1000, dtype=np.uint16)
  L = 15
  ds = _train_dataset(tokens, L, local_batch=4, seed=3)
  n_windows = 1000 // (L + 1)
  it = iter(ds)
  seen = np.concatenate([next(it) for _ in range(n_windows // 4)]).reshape(-1)
  # One epoch's windows cover every packed token once (the ragged tail of
  # 1000 % 16 tokens is dropped, and the last partial batch of windows).
  assert len(seen) == len(set(seen.tolist()))
  covered = n_windows // 4 * 4 * (L + 1)
  assert len(seen) == covered
  assert set(seen.tolist()) <= set(range(n_windows * (L + 1)))
  windows = [data.Windows(tokens, L + 1)[i] for i in range(n_windows)]
  np.testing.assert_array_equal(np.concatenate(windows), tokens[:n_windows * (L + 1)])


def test_shuffle_changes_each_epoch_and_depends_on_seed():
  tokens = np.arange(8 * 10, dtype=np.uint16)
  it = iter(_train_dataset(tokens, 9, local_batch=8, seed=0))
  e1, e2 = next(it)[:, 0], next(it)[:, 0]
  assert sorted(e1) == sorted(e2) and list(e1) != list(e2)
  other = next(iter(_train_dataset(tokens, 9, local_batch=8, seed=1)))[:, 0]
  assert list(other) != list(e1)


def test_seed_replicates_do_not_share_epochs():
  """grain shuffles epoch e with seed + e, so with raw seeds a sweep's
  replicates (seeds 0, 1, 2) trained on each other's batches one epoch apart."""
  w = data.Windows(np.arange(10 * 8, dtype=np.int32), 8)
  n = len(w)  # One batch of every window is one epoch.
  orders = {}
  for seed in range(4):
    it = iter(data.batched(w, n, seed, read_options=THREADED))
    orders[seed] = [tuple(next(it)[:, 0]) for _ in range(3)]
  for a in orders:
    for b in orders:
      for epoch in (1, 2):  # a's epoch 0 against b's epoch 1, 2 (and a's own).
        assert orders[a][0] != orders[b][epoch], (a, b, epoch)


def test_global_batch_is_the_same_rows_in_the_same_order_on_any_process_count():
  """Process p reads block p of each global batch, so the blocks concatenated
  are the one-process batch, row for row, past an epoch, whether read a batch
  at a time (gather), a row at a time, or through a transform whose noise
  follows the row's global position (what makes a resume on another process
  count, dropout included, continue the same run: lm/checkpoint)."""
  from tools.bench_data import RowsOnly  # The same source without gather().
  w = data.Windows(np.arange(16 * 8, dtype=np.int32), 16)  # 8 windows: an epoch is 1 batch.

  def noisy(row, rng):
    return row + rng.integers(0, 1000)

  for src, transform in ((w, None), (RowsOnly(w), None), (w, noisy)):
    one = iter(data.batched(src, 8, 0, 0, 1, transform, THREADED))
    want = [next(one) for _ in range(3)]
    assert sorted(want[0][:, 0]) != list(want[0][:, 0])  # Shuffled.
    for count in (2, 4):
      its = [iter(data.batched(src, 8 // count, 0, p, count, transform, THREADED))
             for p in range(count)]
      for step, batch in enumerate(want):
        got = np.concatenate([next(it) for it in its])
        np.testing.assert_array_equal(got, batch, err_msg=f'{src} {transform} {count} {step}')


def test_iterator_state_round_trips():
  tokens = np.arange(5000, dtype=np.uint16)
  it = iter(_train_dataset(tokens, 31, local_batch=4, seed=7))
  for _ in range(13):
    next(it)
  state = it.get_state()
  want = [next(it) for _ in range(5)]
  it2 = iter(_train_dataset(tokens, 31, local_batch=4, seed=7))
  it2.set_state(state)
  for w in want:
    np.testing.assert_array_equal(next(it2), w)


def test_eval_batches_count_each_window_once():
  tokens = np.arange(10 * 8, dtype=np.uint16)
  out = data.eval_batches(tokens, 7, batch=4, num_batches=5)
  weights = np.concatenate([w for _, w in out])
  assert weights.sum() == 10 and len(out) == 3
  rows = np.concatenate([t for t, _ in out])[weights > 0]
  np.testing.assert_array_equal(rows.reshape(-1), tokens)


def test_catalog_dataset_with_mock_data(tmp_path):
  d = DataConfig(source='tfds', tfds_name='tiny_shakespeare', cache_dir=str(tmp_path))
  with tfds.testing.mock_data(num_examples=5):
    builder, key = data.corpus(d)
    tokens = data.tokenize_split(builder, 'train', key, ByteTokenizer(), str(tmp_path))
  assert len(tokens) > 5 and (tokens == 257).sum() == 5  # One EOS per document.


class LmTestRaceText(tfds.core.GeneratorBasedBuilder):
  """A catalog dataset made here (no download), for the preparation race below."""
  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, features=tfds.features.FeaturesDict({'text': tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    return {'train': self._generate_examples(0), 'validation': self._generate_examples(1)}

  def _generate_examples(self, split):
    for i in range(4):
      yield f'{split}-{i}', {'text': f'document {i} of split {split}'}


def test_a_catalog_dataset_prepared_by_another_process_meanwhile_is_read(tmp_path, monkeypatch):
  """A builder made while another process prepared the data (a sweep's
  workers on a fresh cache) had no splits once it got the lock, since TFDS
  then reuses the data without reading its info again: a KeyError traceback."""
  real_lock, cache = data._prepare_lock, str(tmp_path)

  @contextlib.contextmanager
  def lock_after_another_process(path):
    tfds.builder('lm_test_race_text', data_dir=os.path.join(cache, 'tfds'),
                 file_format='array_record').download_and_prepare()  # It held the lock.
    with real_lock(path):
      yield

  monkeypatch.setattr(data, '_prepare_lock', lock_after_another_process)
  builder = data.catalog_dataset('lm_test_race_text', cache)
  assert set(builder.info.splits) == {'train', 'validation'}
  tokens = data.tokenize_split(builder, 'train', 'text', ByteTokenizer(), cache)
  assert (tokens == 257).sum() == 4


def test_catalog_bad_text_key_and_name(tmp_path):
  d = DataConfig(source='tfds', tfds_name='tiny_shakespeare', cache_dir=str(tmp_path),
                 text_key='content')
  with tfds.testing.mock_data(num_examples=3):
    builder, key = data.corpus(d)
    with pytest.raises(ConfigError, match="text_key='content'.*features: text"):
      data.tokenize_split(builder, 'train', key, ByteTokenizer(), str(tmp_path))
  with pytest.raises(ConfigError, match='not a TFDS catalog dataset'):
    data.catalog_dataset('no_such_dataset_xyz', str(tmp_path))


def test_the_token_cache_is_keyed_by_the_text_feature(tmp_path):
  """Another text_key of one dataset is other text: the cache of the first
  had been returned for the second (and for a misspelt one, unchecked)."""
  tok, cache = ByteTokenizer(), str(tmp_path)
  with tfds.testing.mock_data(num_examples=4):
    out = {}
    for key in ('description', 'title'):
      builder, k = data.corpus(DataConfig(source='tfds', tfds_name='ag_news_subset',
                                          cache_dir=cache, text_key=key))
      out[key] = np.asarray(data.tokenize_split(builder, 'train', k, tok, cache))
      docs = [data._as_str(ex[key]) for ex in builder.as_data_source(split='train')]
      np.testing.assert_array_equal(out[key], np.concatenate(
          [np.append(tok.encode(t), tok.eos_id) for t in docs]))
    assert not np.array_equal(out['description'], out['title'])
    with pytest.raises(ConfigError, match="text_key='titel'"):
      data.tokenize_split(builder, 'train', 'titel', tok, cache)


def test_stdlib_corpus_files():
  root, files = data.stdlib_files()
  assert len(files) > 100 and all(f.endswith('.py') for f in files)
  assert any(f.endswith(os.path.join('json', 'decoder.py')) for f in files)
  assert not any('site-packages' in f for f in files)


def test_missing_and_empty_data_dirs(tmp_path):
  with pytest.raises(ConfigError, match='does not exist'):
    data.dir_files(str(tmp_path / 'nope'))
  (tmp_path / 'empty').mkdir()
  with pytest.raises(ConfigError, match='holds no files'):
    data.dir_files(str(tmp_path / 'empty'))
  with pytest.raises(ConfigError, match='holds no files'):
    data.dir_files(str(tmp_path / '*.txt'))


def test_split_hash_is_stable():
  # Golden: the split of a path must never change between versions.
  h = int(hashlib.sha256(b'json/decoder.py').hexdigest()[:8], 16) / 0xFFFFFFFF
  assert data.split_of('json/decoder.py', 0.05) == ('validation' if h < 0.05 else 'train')


def test_batch_reads_equal_row_reads_and_share_their_iterator_state():
  """A source with gather() is read a batch at a time (data.batched): the same
  rows in the same order as one read per row, across epochs and processes,
  and a checkpointed iterator position restores in either; read in the
  calling thread (a CPU run's lm/train.data_reading) or by grain's prefetch
  threads, the same again."""
  import jax

  from lm import train
  from lm.objectives.lm import DocWindows
  from tools.bench_data import RowsOnly  # The same source without gather().
  in_thread, clock = train.data_reading(jax.make_mesh((1,), ('data',)))
  assert in_thread.num_threads == 0 and clock is time.thread_time

  tokens = np.random.default_rng(0).integers(0, 10, 5000).astype(np.int32)
  w = data.Windows(tokens, 17)
  as_dict = lambda x: x if isinstance(x, dict) else {'rows': x}  # noqa: E731
  for src in (w, data.Keyed(w, 'tokens'), DocWindows(w, eos=0)):
    for pidx, pcount in ((0, 1), (1, 2)):
      rows, batches = (iter(data.batched(s, 4, 3, pidx, pcount, None, THREADED))
                       for s in (RowsOnly(src), src))
      inline = iter(data.batched(src, 4, 3, pidx, pcount, None, in_thread))
      for _ in range(80):  # Past the first epoch (294 windows) with 2 processes.
        x, y, z = as_dict(next(rows)), as_dict(next(batches)), as_dict(next(inline))
        assert x.keys() == y.keys() == z.keys()
        for k in x:
          assert x[k].dtype == y[k].dtype and np.array_equal(x[k], y[k]), (src, pidx, k)
          assert np.array_equal(y[k], z[k]), (src, pidx, k)
      resumed = iter(data.batched(src, 4, 3, pidx, pcount, None, in_thread))
      resumed.set_state(rows.get_state())
      x, y = as_dict(next(rows)), as_dict(next(resumed))
      assert all(np.array_equal(x[k], y[k]) for k in x)


def test_bench_data_times_both_paths(corpus_dir):
  """tools/bench_data, small: row reads and batch reads of a tiny config's data."""
  from tests.helpers import tiny_cd
  from tools import bench_data
  out = bench_data.measure(tiny_cd(corpus_dir), batches=3)
  assert set(out) == {'rows', 'batch'} and all(v > 0 for v in out.values())
