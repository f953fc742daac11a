"""Byte-level and SentencePiece tokenizers with one small interface."""

from __future__ import annotations

import dataclasses
import os

import numpy as np


@dataclasses.dataclass(frozen=True)
class ByteTokenizer:
  """UTF-8 bytes are ids 0..255; then BOS, EOS, PAD. Needs no training."""
  bos_id: int = 256
  eos_id: int = 257
  pad_id: int = 258
  vocab_size: int = 259
  name: str = 'byte'

  def encode(self, text: str) -> np.ndarray:
    return np.frombuffer(text.encode('utf-8'), np.uint8).astype(np.int32)

  def decode(self, ids) -> str:
    b = bytes(int(i) for i in ids if 0 <= int(i) < 256)
    return b.decode('utf-8', errors='replace')

  def byte_lengths(self) -> np.ndarray:
    """UTF-8 bytes each id stands for (specials: 0), for bits per byte."""
    out = np.zeros(self.vocab_size, np.int32)
    out[:256] = 1
    return out


class SentencePieceTokenizer:
  """A trained SentencePiece model (unigram or BPE) loaded from a file."""

  def __init__(self, path: str):
    import sentencepiece as spm
    if not os.path.isfile(path):
      raise FileNotFoundError(
          f'data.tokenizer_path={path!r} does not exist; train one with '
          'python -m tools.train_tokenizer')
    self.path = path
    self.sp = spm.SentencePieceProcessor(model_file=path)
    self.vocab_size = self.sp.get_piece_size()
    self.bos_id, self.eos_id, self.pad_id = (
        self.sp.bos_id(), self.sp.eos_id(), self.sp.pad_id())
    with open(path, 'rb') as f:
      import hashlib
      self.name = 'sp-' + hashlib.sha256(f.read()).hexdigest()[:12]

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self.sp.encode(text), np.int32)

  def decode(self, ids) -> str:
    return self.sp.decode([int(i) for i in ids])

  def byte_lengths(self) -> np.ndarray:
    out = np.zeros(self.vocab_size, np.int32)
    for i in range(self.vocab_size):
      if self.sp.is_control(i) or self.sp.is_unknown(i):
        continue
      if self.sp.is_byte(i):
        out[i] = 1
      else:
        out[i] = len(self.sp.id_to_piece(i).replace('\u2581', ' ').encode('utf-8'))
    return out


def get_tokenizer(kind: str, path: str = ''):
  if kind == 'byte':
    return ByteTokenizer()
  if kind == 'sentencepiece':
    return SentencePieceTokenizer(path)
  raise ValueError(f'data.tokenizer={kind!r}: must be byte or sentencepiece')
