"""Causal language modelling: predict every next token (maximum likelihood).

A row is a window of seq_len + 1 tokens (inputs and their shifted targets).
Eval reports loss (nats/token), perplexity and bits per UTF-8 byte of the
evaluated text, so runs with different tokenizers compare.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from lm import data as data_lib
from lm.model import cross_entropy
from lm.objectives.base import Data, Objective


def data(c, tokenizer, loaded, pidx: int, pcount: int) -> Data:
  del loaded
  L, B = c.data.seq_len, c.train.batch_size
  train, val = data_lib.token_splits(c.data, tokenizer)
  data_lib.check_windows(train, L, 'train', B, extra=1)
  data_lib.check_windows(val, L, 'validation', 1, extra=1)
  evals = data_lib.eval_batches(val, L, B, c.train.eval_batches, pidx, pcount)
  return Data(data_lib.Keyed(data_lib.Windows(train, L + 1), 'tokens'),
              [({'tokens': rows}, w) for rows, w in evals])


def loss(apply, batch: dict, weights_B, z_loss: float):
  tokens_BL1 = batch['tokens']
  inputs_BL, targets_BL = tokens_BL1[:, :-1], tokens_BL1[:, 1:]
  logits_BLV = apply(inputs_BL)
  weights_BL = jnp.broadcast_to(weights_B[:, None], targets_BL.shape)
  nll, z, n = cross_entropy(logits_BLV, targets_BL, weights_BL, z_loss)
  return (nll + z) / jnp.maximum(n, 1.0), {'nll_sum': nll, 'tokens': n,
                                           'targets': targets_BL}


def eval_sums(aux: dict, batch: dict, weights_B, bytes_V) -> dict:
  del batch
  nbytes = (bytes_V[aux['targets']] * weights_B[:, None]).sum()
  return {'nll_sum': aux['nll_sum'], 'tokens': aux['tokens'], 'bytes': nbytes}


def summarize(sums: dict[str, float]) -> dict[str, float]:
  loss = sums['nll_sum'] / max(sums['tokens'], 1.0)
  return {'loss': loss, 'perplexity': math.exp(min(loss, 700.0)),
          'bits_per_byte': sums['nll_sum'] / math.log(2) / max(sums['bytes'], 1.0),
          'tokens': sums['tokens'], 'bytes': sums['bytes']}


def describe(m: dict) -> str:
  return (f'loss {m["loss"]:.4f} nats/token, perplexity {m["perplexity"]:.3f}, '
          f'bits per byte {m["bits_per_byte"]:.4f}')


OBJECTIVE = Objective(
    name='lm', families=('decoder',), headline='bits_per_byte', higher_is_better=False,
    data=data, loss=loss, eval_sums=eval_sums, summarize=summarize, describe=describe,
    row_shapes=lambda c: {'tokens': ((c.data.seq_len + 1,), np.int32)})
