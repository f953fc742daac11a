"""Causal language modelling: predict every next token (maximum likelihood).

A row is a window of seq_len + 1 tokens (inputs and their shifted targets).
Windows cut across documents (EOS-separated); with data.document_mask each row
also carries the document id and in-document position of every input token, so
attention never crosses a document boundary and positions restart at each
document (packing as in Raffel et al. 2020 and Krell et al. 2021).
Eval reports loss (nats/token), perplexity and bits per UTF-8 byte of the
evaluated text, so runs with different tokenizers compare.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from lm import data as data_lib
from lm import probes
from lm.objectives import base
from lm.objectives.base import Data, Objective


class DocWindows:
  """Windows as rows {tokens, segments, positions} (document masking)."""

  def __init__(self, windows: data_lib.Windows, eos: int):
    self.windows, self.eos = windows, eos

  def __len__(self) -> int:
    return len(self.windows)

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    return self.row(self.windows[i])

  def row(self, tokens_L1: np.ndarray) -> dict[str, np.ndarray]:
    """A row, or a batch of rows ([B, L + 1] tokens)."""
    seg, pos = data_lib.documents(tokens_L1[..., :-1], self.eos)
    return {'tokens': tokens_L1, 'segments': seg, 'positions': pos}

  def gather(self, idx: np.ndarray) -> dict[str, np.ndarray]:
    return self.row(self.windows.gather(idx))


def data(c, tokenizer, loaded, pidx: int, pcount: int) -> Data:
  del loaded
  L, B = c.data.seq_len, c.train.batch_size
  train, val = data_lib.token_splits(c.data, tokenizer)
  if c.data.canary_repeats:  # Memorization probe: into train only (lm/probes.py).
    train = probes.insert_canaries(train, probes.make_canaries(c.data), tokenizer,
                                   c.data.canary_seed)
  data_lib.check_windows(train, L, 'train', B, extra=1)
  data_lib.check_windows(val, L, 'validation', 1, extra=1)
  evals = data_lib.eval_batches(val, L, B, c.train.eval_batches, pidx, pcount)
  windows = data_lib.Windows(train, L + 1)
  if not c.data.document_mask:
    return Data(data_lib.Keyed(windows, 'tokens'),
                [({'tokens': rows}, w) for rows, w in evals])
  docs = DocWindows(windows, tokenizer.eos_id)
  return Data(docs, [(base.stack_rows([docs.row(r) for r in rows]), w) for rows, w in evals])


def loss(apply, batch: dict, weights_B, z_loss: float):
  tokens_BL1 = batch['tokens']
  inputs_BL, targets_BL = tokens_BL1[:, :-1], tokens_BL1[:, 1:]
  weights_BL = jnp.broadcast_to(weights_B[:, None], targets_BL.shape).astype(jnp.float32)
  s = apply(inputs_BL, pos_BL=batch.get('positions'), segment_ids_BL=batch.get('segments'),
            targets_BL=targets_BL, target_weights_BL=weights_BL, z_loss=z_loss)
  n = s['tokens']
  return (s['nll_sum'] + s['z_sum']) / jnp.maximum(n, 1.0), {
      'nll_sum': s['nll_sum'], 'tokens': n, 'targets': targets_BL}


def row_shapes(c) -> dict:
  L = c.data.seq_len
  out = {'tokens': ((L + 1,), np.int32)}
  if c.data.document_mask:
    out.update(segments=((L,), np.int32), positions=((L,), np.int32))
  return out


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
    row_shapes=row_shapes)
