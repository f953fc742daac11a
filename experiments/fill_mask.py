"""Top-k fillers for each [MASK] of a text, from a masked-LM (encoder) run.

  python -m experiments.fill_mask --workdir=runs/mlm_tiny \
      --text="def f(x):\n    return x [MASK] 1" --top_k=5

Each [MASK] stands for exactly one token: one byte with the byte tokenizer
(so `[MASK][MASK]` asks for two bytes), one piece with SentencePiece (a
piece may be a whole word, part of one, or a word with its leading space;
the text around a mask is tokenized on its own, so pieces never straddle a
mask). Candidates are the tokenizer's ids (not MASK or padding ids); their
probabilities are the model's softmax over that set. The text is encoded as
is, like the plain-text windows the encoder was trained on.
"""

from __future__ import annotations

import sys

import numpy as np
from absl import app, flags, logging

MASK_TEXT = '[MASK]'
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory or checkpoints/<step>.')
_TEXT = flags.DEFINE_string('text', None, f'Text with one or more {MASK_TEXT} markers '
                            '(\\n and \\t escapes are read as newline and tab).')
_TOP_K = flags.DEFINE_integer('top_k', 5, 'Candidates per mask.')
flags.mark_flags_as_required(['workdir', 'text'])


class FillMaskError(ValueError):
  pass


def mask_ids(text: str, tok) -> tuple[list[int], list[int]]:
  """(token ids with MASK = tokenizer.vocab_size at each marker, mask positions)."""
  pieces = text.split(MASK_TEXT)
  if len(pieces) == 1:
    raise FillMaskError(f'the text has no {MASK_TEXT} marker: put one where a token is missing')
  ids, where = [], []
  for i, piece in enumerate(pieces):
    ids += list(tok.encode(piece)) if piece else []
    if i < len(pieces) - 1:
      where.append(len(ids))
      ids.append(tok.vocab_size)
  return ids, where


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  import jax.numpy as jnp

  from lm import checkpoint, cli
  from lm.model import Transformer
  try:
    cli.check_text(_TEXT.value or '', 'text')
    c = checkpoint.load_config(_WORKDIR.value)
    if c.model.family != 'encoder' or c.model.num_classes:
      raise FillMaskError(
          f'{_WORKDIR.value} holds {"an" if c.model.family[0] == "e" else "a"} '
          f'{c.model.family} '
          + (f'sequence classifier ({c.model.num_classes} classes)' if c.model.num_classes
             else 'model')
          + '; fill-mask needs a masked-LM encoder run (model.family=encoder)')
    if _TOP_K.value < 1:
      raise FillMaskError(f'top_k={_TOP_K.value} is invalid: must be >= 1')
    tok = checkpoint.load_tokenizer(_WORKDIR.value, c)
    text = _TEXT.value.replace('\\n', '\n').replace('\\t', '\t')
    ids, where = mask_ids(text, tok)
    if len(ids) > c.model.max_len:
      raise FillMaskError(f'the text is {len(ids)} tokens, longer than model.max_len='
                          f'{c.model.max_len}')
    _, params = checkpoint.load_params(_WORKDIR.value)
  except (FillMaskError, checkpoint.CheckpointError, OSError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  logits = Transformer(c.model).apply({'params': params}, jnp.asarray([ids]))[0]
  for n, pos in enumerate(where):
    print(f'[MASK] {n} (token {pos}):')
    for t, p in top_candidates(np.asarray(logits[pos]), tok, _TOP_K.value):
      print(f'  {tok.decode([t])!r:>12}  {p:.4f}')


def top_candidates(logits_V: np.ndarray, tok, k: int) -> list[tuple[int, float]]:
  """The k most likely text tokens and their probabilities, renormalised over
  text tokens: BOS, EOS, PAD, MASK and the padded vocabulary are never offered."""
  lg = np.asarray(logits_V[:tok.vocab_size], np.float64).copy()
  specials = [i for i in (tok.bos_id, tok.eos_id, tok.pad_id) if i is not None and i >= 0]
  lg[specials] = -np.inf  # SentencePiece gives -1 for a special it lacks: not an index.
  p = np.exp(lg - lg.max())
  p /= p.sum()
  order = [int(t) for t in np.argsort(-p, kind='stable') if t not in specials]
  return [(t, float(p[t])) for t in order[:k]]


if __name__ == '__main__':
  from lm import cli
  app.run(main, flags_parser=cli.parse_flags)
