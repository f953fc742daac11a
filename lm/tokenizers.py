"""Byte-level, SentencePiece and Hugging Face (tokenizer.json) tokenizers with one
small interface: encode, decode, byte_lengths, bos/eos/pad ids, vocab_size, name."""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from lm.config import ConfigError


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


def _file_name(prefix: str, path: str, hint: str) -> str:
  """A name for the token cache from the file's content; `hint` says what to
  do when data.tokenizer_path does not exist."""
  if not os.path.isfile(path):
    what = 'is a directory, not a tokenizer file' if os.path.isdir(path) else 'does not exist'
    raise ConfigError(f'data.tokenizer_path={path!r} {what}; {hint}')
  import hashlib
  with open(path, 'rb') as f:
    return f'{prefix}-' + hashlib.sha256(f.read()).hexdigest()[:12]


class SentencePieceTokenizer:
  """A trained SentencePiece model (unigram or BPE) loaded from a file."""

  def __init__(self, path: str):
    import sentencepiece as spm
    self.name = _file_name('sp', path, 'train one with python -m tools.train_tokenizer')
    self.path = path
    try:
      self.sp = spm.SentencePieceProcessor(model_file=path)
    except (RuntimeError, OSError) as e:  # Not a SentencePiece model.
      raise ConfigError(f'data.tokenizer_path={path!r} is not a SentencePiece .model '
                        f'({" ".join(str(e).split())[:200]})') from None
    self.vocab_size = self.sp.get_piece_size()
    # SentencePiece marks an absent special as -1; documents need an EOS to end
    # them, and a -1 would wrap to 65535 in the uint16 token cache.
    self.eos_id = self.sp.eos_id()
    if not 0 <= self.eos_id < self.vocab_size:
      raise ConfigError(f'data.tokenizer_path={path!r} has no end-of-text token (eos_id='
                        f'{self.eos_id}); train it with one, e.g. python -m tools.train_tokenizer')
    bos, pad = self.sp.bos_id(), self.sp.pad_id()
    self.bos_id = bos if 0 <= bos < self.vocab_size else self.eos_id
    self.pad_id = pad if 0 <= pad < self.vocab_size else self.eos_id
    # Bits per byte counts each target's piece bytes: right only if the pieces
    # spell the text. SentencePiece's defaults normalise it (NFKC, whitespace
    # runs collapsed, a '▁' added before every document), so refuse those.
    from sentencepiece import sentencepiece_model_pb2
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(self.sp.serialized_model_proto())
    ns = proto.normalizer_spec
    changes = ([f'normalization_rule_name={ns.name}'] if ns.name != 'identity' else []) + [
        f'{k}=true' for k in ('add_dummy_prefix', 'remove_extra_whitespaces') if getattr(ns, k)]
    if changes:
      raise ConfigError(f'data.tokenizer_path={path!r} rewrites the text it encodes '
                        f'({", ".join(changes)}), so bits per byte would count other bytes '
                        'than the text\'s; train one with python -m tools.train_tokenizer '
                        '(identity, no dummy prefix, whitespace kept)')
    if not proto.trainer_spec.byte_fallback:
      raise ConfigError(f'data.tokenizer_path={path!r} has no byte pieces (byte_fallback=false): '
                        'text its pieces do not cover becomes <unk>, which counts no bytes '
                        'and decodes as \u2047, so bits per byte and decode would be wrong; '
                        'train one with python -m tools.train_tokenizer (byte_fallback)')

    # SentencePiece reads a literal '▁' (U+2581) in the text as its own space
    # mark, and decodes it as a space; with byte pieces (tools.train_tokenizer's
    # byte_fallback) it is spelt as its three UTF-8 bytes instead, exactly.
    ids = [self.sp.piece_to_id(f'<0x{b:02X}>') for b in '\u2581'.encode('utf-8')]
    self._mark_ids = ids if all(self.sp.is_byte(i) for i in ids) else None

  def encode(self, text: str) -> np.ndarray:
    if self._mark_ids is None or '\u2581' not in text:
      return np.asarray(self.sp.encode(text), np.int32)
    out = []
    for i, part in enumerate(text.split('\u2581')):
      out += (self._mark_ids if i else []) + (self.sp.encode(part) if part else [])
    return np.asarray(out, np.int32)

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


def _gpt2_byte_chars() -> dict[str, int]:
  """Byte-level BPE's printable stand-in for each byte (Radford et al. 2019's
  GPT-2 scheme): printable Latin-1 bytes stand for themselves, the other 68
  bytes map to chr(256 + n) in byte order. Inverted: char -> byte."""
  keep = [*range(ord('!'), ord('~') + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
  chars, n = {}, 0
  for b in range(256):
    if b in keep:
      chars[chr(b)] = b
    else:
      chars[chr(256 + n)] = b
      n += 1
  return chars


class HFTokenizer:
  """A Hugging Face `tokenizers` tokenizer.json (GPT-2's byte-level BPE, Llama's,
  or one trained with the `tokenizers` library), via that library.

  Special ids come from tokenizer_config.json beside the file when it names
  them, else from the usual token strings; without a pad token, EOS pads
  (padding is always masked)."""

  _NAMES = {'bos': ('<|endoftext|>', '<s>', '<bos>', '[CLS]'),
            'eos': ('<|endoftext|>', '</s>', '<eos>', '[SEP]'),
            'pad': ('<pad>', '[PAD]', '<|padding|>')}

  def __init__(self, path: str):
    import json

    from tokenizers import Tokenizer
    self.name = _file_name('hf', path, 'expected a Hugging Face tokenizer.json')
    self.path = path
    try:
      self.tok = Tokenizer.from_file(path)
    except Exception as e:  # The library raises a bare Exception for a file it cannot parse.
      raise ConfigError(f'data.tokenizer_path={path!r} is not a Hugging Face tokenizer.json '
                        f'({" ".join(str(e).split())[:200]})') from None
    # A tokenizer.json may carry truncation or padding (some on the Hub do):
    # applied by encode, they would cut every document or add pad "documents".
    self.tok.no_truncation()
    self.tok.no_padding()
    # Special-token text inside a document ('<|endoftext|>' in a code comment) is
    # text: matched as the special token, it would end the document there, be
    # dropped by decode and count 0 bytes. Specials enter only as ids.
    self.tok.encode_special_tokens = True
    self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)
    side = os.path.join(os.path.dirname(path), 'tokenizer_config.json')
    tc = {}
    if os.path.isfile(side):
      try:
        with open(side, encoding='utf-8') as f:
          tc = json.load(f)
      except ValueError as e:  # Not JSON, or not UTF-8.
        raise ConfigError(f'{side} (beside data.tokenizer_path) is not a JSON file '
                          f'({" ".join(str(e).split())[:120]}); fix or remove it') from None
      if not isinstance(tc, dict):
        raise ConfigError(f'{side} (beside data.tokenizer_path) holds a JSON '
                          f'{type(tc).__name__}, not an object; fix or remove it')

    def find(role: str) -> int | None:
      """The id of the role's token named in tokenizer_config.json, else of
      the first usual name in the vocabulary."""
      named = tc.get(f'{role}_token')
      named = named.get('content') if isinstance(named, dict) else named
      for t in ([named] if isinstance(named, str) else []) + list(self._NAMES[role]):
        if (i := self.tok.token_to_id(t)) is not None:
          return i
      return None

    self.eos_id = find('eos')
    if self.eos_id is None:
      raise ConfigError(f'data.tokenizer_path={path!r} has no end-of-text token; name one '
                        'as eos_token in a tokenizer_config.json beside it')
    bos, pad = find('bos'), find('pad')
    self.bos_id = self.eos_id if bos is None else bos
    self.pad_id = self.eos_id if pad is None else pad
    # The special ids come from tokenizer_config.json, not tokenizer.json: they
    # are part of the name, so a changed eos_token is another token cache (the
    # old one's documents end in the old id) and another tokenizer on resume.
    self.name += f'-e{self.eos_id}b{self.bos_id}p{self.pad_id}'

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self.tok.encode(text, add_special_tokens=False).ids, np.int32)

  def decode(self, ids) -> str:
    return self.tok.decode([int(i) for i in ids], skip_special_tokens=True)

  def byte_lengths(self) -> np.ndarray:
    """Bytes per id, exact for byte-level BPE (pieces through the GPT-2 byte
    map) and for SentencePiece-style vocabularies (U+2581 is a space, <0xNN>
    byte-fallback pieces are one byte); special tokens count 0. A tokenizer
    whose normaliser rewrites the text (Llama 2's prepends U+2581 to every
    document) counts those bytes too: one per document there."""
    import json
    import re
    out = np.zeros(self.vocab_size, np.int32)
    spec = json.loads(self.tok.to_str())
    byte_level = 'ByteLevel' in json.dumps([spec.get('pre_tokenizer'), spec.get('decoder')])
    byte_chars = _gpt2_byte_chars()
    specials = {i for i, t in self.tok.get_added_tokens_decoder().items() if t.special}
    for piece, i in self.tok.get_vocab(with_added_tokens=True).items():
      if i in specials or i >= self.vocab_size:
        continue
      if byte_level and all(ch in byte_chars for ch in piece):
        out[i] = len(piece)
      elif re.fullmatch(r'<0x[0-9A-Fa-f]{2}>', piece):
        out[i] = 1
      else:
        out[i] = len(piece.replace('\u2581', ' ').encode('utf-8'))
    return out


def continuation(tok, context_ids, new_ids) -> str:
  """The text `new_ids` add after `context_ids`, decoded together and cut after
  the context's own text: decoded alone, a continuation can lose its leading
  space (Llama 2's and Mistral's tokenizer.json strip the space of the first
  U+2581). Decoded alone still where the context's text is no prefix of the
  whole (a context ending inside a character)."""
  before = tok.decode(list(context_ids))
  whole = tok.decode(list(context_ids) + list(new_ids))
  return whole[len(before):] if whole.startswith(before) else tok.decode(list(new_ids))


def get_tokenizer(kind: str, path: str = ''):
  if kind == 'byte':
    return ByteTokenizer()
  if kind == 'sentencepiece':
    return SentencePieceTokenizer(path)
  if kind == 'hf':
    return HFTokenizer(path)
  raise ValueError(f'data.tokenizer={kind!r}: must be byte, sentencepiece or hf')
