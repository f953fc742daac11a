"""Masked language modelling (Devlin et al. 2019) for the encoder family.

Select round(rate * n) of a window's n non-special positions (special tokens,
e.g. the EOS between documents, are never selected); of those, mask_frac become
MASK, random_frac a random non-special token, the rest stay; the loss counts
only the selected positions.
MASK is the first id above the tokenizer's (the model vocabulary keeps room).
"""

from __future__ import annotations

import functools

import numpy as np

from lm.config import ConfigError
from lm.objectives import base


@functools.lru_cache(maxsize=8)
def _ordinary_ids(vocab: int, special: tuple[int, ...]) -> np.ndarray:
  return np.setdiff1d(np.arange(vocab, dtype=np.int32), np.asarray(special, np.int32))


def mlm(tokens_L: np.ndarray, rng: np.random.Generator, rate: float, mask_frac: float,
        random_frac: float, mask_id: int, vocab: int, special: tuple[int, ...] = ()
        ) -> dict[str, np.ndarray]:
  """{'inputs', 'targets' (the original), 'weights' (1 at selected positions)}.

  `special` ids (the EOS between documents, BOS, PAD) are never selected nor
  drawn as random replacements, as BERT's [CLS] and [SEP] are not."""
  L = len(tokens_L)
  eligible = np.flatnonzero(~np.isin(tokens_L, special)) if special else np.arange(L)
  k = min(len(eligible), max(1, round(len(eligible) * rate)))
  picked = rng.choice(eligible, size=k, replace=False)
  u = rng.random(k)
  inputs = np.array(tokens_L, np.int32)
  to_mask = picked[u < mask_frac]
  to_random = picked[(u >= mask_frac) & (u < mask_frac + random_frac)]
  inputs[to_mask] = mask_id
  ordinary = _ordinary_ids(vocab, tuple(sorted(special)))
  inputs[to_random] = ordinary[rng.integers(0, len(ordinary), size=len(to_random))]
  weights = np.zeros(L, np.float32)
  weights[picked] = 1.0
  return {'inputs': inputs, 'targets': np.asarray(tokens_L, np.int32), 'weights': weights}


def mlm_example(window_L: np.ndarray, rng: np.random.Generator, d, tokenizer
                ) -> dict[str, np.ndarray]:
  return mlm(window_L, rng, d.mlm_rate, d.mlm_mask_frac, d.mlm_random_frac,
             mask_id=tokenizer.vocab_size, vocab=tokenizer.vocab_size,
             special=tuple({tokenizer.eos_id, tokenizer.bos_id, tokenizer.pad_id}))


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
    fields=('data.mlm_rate', 'data.mlm_mask_frac', 'data.mlm_random_frac'),
    row_shapes=lambda c: {'inputs': ((c.data.seq_len,), np.int32),
                          'targets': ((c.data.seq_len,), np.int32),
                          'weights': ((c.data.seq_len,), np.float32)})
