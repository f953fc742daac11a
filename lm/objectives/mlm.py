"""Masked language modelling (Devlin et al. 2019) for the encoder family.

Select round(rate * L) positions; of those, mask_frac become MASK, random_frac
a random token, the rest stay; the loss counts only the selected positions.
MASK is the first id above the tokenizer's (the model vocabulary keeps room).
"""

from __future__ import annotations

import functools

import numpy as np

from lm.config import ConfigError
from lm.objectives import base


def mlm(tokens_L: np.ndarray, rng: np.random.Generator, rate: float, mask_frac: float,
        random_frac: float, mask_id: int, vocab: int) -> dict[str, np.ndarray]:
  """{'inputs', 'targets' (the original), 'weights' (1 at selected positions)}."""
  L = len(tokens_L)
  k = min(L, max(1, round(L * rate)))
  picked = rng.choice(L, size=k, replace=False)
  u = rng.random(k)
  inputs = np.array(tokens_L, np.int32)
  to_mask = picked[u < mask_frac]
  to_random = picked[(u >= mask_frac) & (u < mask_frac + random_frac)]
  inputs[to_mask] = mask_id
  inputs[to_random] = rng.integers(0, vocab, size=len(to_random))
  weights = np.zeros(L, np.float32)
  weights[picked] = 1.0
  return {'inputs': inputs, 'targets': np.asarray(tokens_L, np.int32), 'weights': weights}


def mlm_example(window_L: np.ndarray, rng: np.random.Generator, d, tokenizer
                ) -> dict[str, np.ndarray]:
  return mlm(window_L, rng, d.mlm_rate, d.mlm_mask_frac, d.mlm_random_frac,
             mask_id=tokenizer.vocab_size, vocab=tokenizer.vocab_size)


def check(c, tokenizer_vocab: int) -> None:
  if c.model.vocab_size <= tokenizer_vocab:
    raise ConfigError(f'config.model.vocab_size={c.model.vocab_size} leaves no id for MASK '
                      f'above the tokenizer\'s {tokenizer_vocab}; use 0 or more')


def data(c, tokenizer, loaded, pidx: int, pcount: int) -> base.Data:
  del loaded
  transform = functools.partial(mlm_example, d=c.data, tokenizer=tokenizer)
  return base.corrupted_windows(c, tokenizer, transform, pidx, pcount)


def loss(apply, batch: dict, weights_B, z_loss: float):
  return base.token_loss(apply, batch, weights_B, z_loss, batch['inputs'])


def describe(m: dict) -> str:
  return (f'masked-token loss {m["loss"]:.4f} nats, accuracy {m["accuracy"]:.4f} over '
          f'{int(m["tokens"])} tokens')


OBJECTIVE = base.Objective(
    name='mlm', families=('encoder',), headline='accuracy', higher_is_better=True,
    data=data, loss=loss, eval_sums=base.token_eval_sums, summarize=base.token_summary,
    describe=describe, check=check, extra_ids=lambda c: 1,
    row_shapes=lambda c: {'inputs': ((c.data.seq_len,), np.int32),
                          'targets': ((c.data.seq_len,), np.int32),
                          'weights': ((c.data.seq_len,), np.float32)})
