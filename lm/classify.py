"""Labelled text for sequence classification: CSV/JSONL files or TFDS datasets.

Each example becomes `data.seq_len` tokens: the text's tokens (truncated to
seq_len - 1) and EOS, right-padded with zeros, a `valid` mask and a label id.
EOS ends every document in pre-training, so the decoder's last-token pooling
reads the state at a token it has learned to see at the end of a text.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os

import numpy as np

from lm.config import ConfigError, DataConfig


class LabelError(ValueError):
  """A labelled example is missing a field or has a label outside the label set."""


def _rows(path: str) -> list[tuple[int, dict]]:
  """(line number, record) of a .csv (header row) or .jsonl file; a UTF-8 byte
  order mark (Excel's "CSV UTF-8") is skipped."""
  if not os.path.isfile(path):
    raise ConfigError(f'labelled data file {path!r} '
                      + ('is a directory, not a file' if os.path.isdir(path) else 'does not exist')
                      + ': give a .csv or .jsonl file')
  ext = os.path.splitext(path)[1].lower()
  rows: list[tuple[int, dict]] = []
  if ext not in ('.csv', '.jsonl', '.json'):
    raise ConfigError(f'labelled data file {path!r}: expected a .csv or .jsonl file')
  with open(path, 'rb') as f:
    raw = f.read()
  try:
    text = raw.decode('utf-8-sig')
  except UnicodeDecodeError as e:
    line = raw[:e.start].count(b'\n') + 1
    raise LabelError(f'{path}:{line}: not UTF-8 text (byte {raw[e.start]:#04x} at offset '
                     f'{e.start}); save the file as UTF-8') from None
  if ext == '.csv':
    reader = csv.DictReader(io.StringIO(text, newline=''))
    for r in reader:
      if None in r:  # More fields than the header names (DictReader's overflow key).
        raise LabelError(f'{path}:{reader.line_num}: {len(reader.fieldnames) + len(r[None])} '
                         f'fields, but the header names {len(reader.fieldnames)} '
                         f'({", ".join(reader.fieldnames)}); quote a field that holds a comma')
      rows.append((reader.line_num, r))
  else:
    for i, line in enumerate(text.split('\n')):  # Not splitlines: U+2028 may sit in a string.
      if line.strip():
        try:
          rows.append((i + 1, json.loads(line)))
        except json.JSONDecodeError as e:
          raise LabelError(f'{path}:{i + 1}: not a JSON object ({e.msg})') from None
  if not rows:
    raise LabelError(f'{path} holds no examples')
  return rows


def _field(path: str, line: int, r: dict, key: str, needed: tuple[str, ...]) -> str | None:
  if isinstance(r, dict) and r.get(key) == '':
    raise LabelError(f'{path}:{line}: missing field {key!r} (it is empty); every example '
                     f'needs {" and ".join(map(repr, needed))}')
  if not isinstance(r, dict) or r.get(key) is None:
    raise LabelError(f'{path}:{line}: missing field {key!r} (fields: '
                     f'{", ".join(r) if isinstance(r, dict) else type(r).__name__}); '
                     f'every example needs {" and ".join(map(repr, needed))}')
  v = r[key]
  if isinstance(v, bool) or not isinstance(v, (str, int, float)):  # str() would read a
    # list, an object or true as its Python spelling: "['a', 'b']", 'True'.
    raise LabelError(f'{path}:{line}: field {key!r} is {json.dumps(v)[:60]} (a '
                     f'{type(v).__name__}); give a string (or a number)')
  return str(v)


def read_file(path: str, text_key: str, label_key: str) -> list[tuple[str, str]]:
  """(text, label) pairs from a .csv (header row) or .jsonl file."""
  need = (text_key, label_key)
  return [(_field(path, n, r, text_key, need), _field(path, n, r, label_key, need))
          for n, r in _rows(path)]


def read_texts(path: str, text_key: str, label_key: str) -> tuple[list[str], list[str] | None]:
  """(texts, labels) from a .csv/.jsonl file whose rows all have labels, or
  (texts, None) when none has; a file with some labelled rows is an error
  naming the first row without one (its accuracy would drop them silently)."""
  rows = _rows(path)
  texts = [_field(path, n, r, text_key, (text_key,)) for n, r in rows]
  has = [isinstance(r, dict) and r.get(label_key) not in (None, '') for _, r in rows]
  if not any(has):
    return texts, None
  if not all(has):
    line = rows[has.index(False)][0]
    raise LabelError(f'{path}:{line}: no {label_key!r}, where {sum(has)} of {len(rows)} '
                     'rows have one: label every row, or none to only classify')
  return texts, [_field(path, n, r, label_key, (label_key,)) for n, r in rows]


def _held_out(text: str, fraction: float) -> bool:
  h = int.from_bytes(hashlib.sha256(text.encode('utf-8')).digest()[:8], 'big')
  return h / 2**64 < fraction


def load(d: DataConfig, cache: str) -> tuple[list, list, tuple[str, ...]]:
  """(train pairs, eval pairs, label names) for the configured source.

  With data.target_key instead of data.label_key the pairs are (input, target)
  texts for sequence to sequence, and there are no label names."""
  second = d.label_key or d.target_key
  if d.source == 'file':
    train = read_file(d.path, d.text_key, second)
    if d.eval_path:
      evals = read_file(d.eval_path, d.text_key, second)
    else:  # Hash split: the same example always lands on the same side.
      evals = [p for p in train if _held_out(p[0], d.val_fraction)]
      train = [p for p in train if not _held_out(p[0], d.val_fraction)]
      if not train or not evals:
        raise ConfigError(f'data.val_fraction={d.val_fraction} leaves an empty train or '
                          f'eval split of {d.path}; set data.eval_path')
    if d.target_key:
      return train, evals, ()
    names = d.labels or tuple(sorted({label for _, label in train}))
    return train, evals, names
  from lm import data as data_lib  # TFDS catalog dataset with a ClassLabel feature.
  builder = data_lib.catalog_dataset(d.tfds_name, cache)
  feats = builder.info.features
  data_lib.check_feature(builder, d.text_key, 'text_key', 'text')
  if d.target_key:
    data_lib.check_feature(builder, d.target_key, 'target_key', 'text')
  else:
    data_lib.check_feature(builder, d.label_key, 'label_key', 'class')
  for split in (d.train_split, d.val_split):
    data_lib.check_split(builder, split)
  # Each example is named by the dataset's own class names; data.labels, as for
  # files, is the ordered label set the names are matched against (encode
  # refuses a name outside it), not a renaming of class ids.
  own = () if d.target_key else tuple(getattr(feats[d.label_key], 'names', ()) or ())
  names = d.labels or own
  as_str = lambda x: x.decode('utf-8') if isinstance(x, bytes) else str(x)

  def pairs(split):
    out = []
    for ex in builder.as_data_source(split=split):
      if d.target_key:
        out.append((as_str(ex[d.text_key]), as_str(ex[d.target_key])))
        continue
      lab = int(ex[d.label_key])
      out.append((as_str(ex[d.text_key]),
                  own[lab] if own and 0 <= lab < len(own) else str(lab)))
    return out

  train, evals = pairs(d.train_split), pairs(d.val_split)
  if d.target_key:
    return train, evals, ()
  return train, evals, names or tuple(sorted({lab for _, lab in train}))


def encode(pairs: list[tuple[str, str]], names: tuple[str, ...], tokenizer, seq_len: int,
           where: str, prefix: tuple[int, ...] = ()) -> dict[str, np.ndarray]:
  """{'tokens', 'valid': N x seq_len, 'labels': N} arrays; `prefix` ids (an
  encoder's BOS, read by first-token pooling) go before each text."""
  index = {n: i for i, n in enumerate(names)}
  unknown = sorted({lab for _, lab in pairs if lab not in index})
  if unknown:
    i, (text, lab) = next((i, p) for i, p in enumerate(pairs) if p[1] not in index)
    raise LabelError(f'{where}: labels {unknown[:10]} are not in the label set '
                     f'{list(names)} (the first, {lab!r}, at example {i}: {text[:40]!r}); '
                     'fix the data or set data.labels')
  n = len(pairs)
  tokens = np.zeros((n, seq_len), np.int32)
  valid = np.zeros((n, seq_len), bool)
  labels = np.zeros(n, np.int32)
  for i, (text, lab) in enumerate(pairs):
    ids = (list(prefix) + list(tokenizer.encode(text)))[:seq_len - 1] + [tokenizer.eos_id]
    tokens[i, :len(ids)] = ids
    valid[i, :len(ids)] = True
    labels[i] = index[lab]
  return {'tokens': tokens, 'valid': valid, 'labels': labels}


class Rows:
  """Random access to the i-th example of a dict of arrays (a grain source)."""

  def __init__(self, arrays: dict[str, np.ndarray]):
    self.arrays = arrays

  def __len__(self) -> int:
    return len(next(iter(self.arrays.values())))

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    return {k: v[i] for k, v in self.arrays.items()}
