"""Sequence to sequence on (input, target) text pairs, for the encoder-decoder.

Pairs come from a JSONL/CSV file or a TFDS dataset (data.text_key,
data.target_key); inputs are right-padded to data.seq_len, targets to
data.target_len (0: seq_len), each truncated to leave room for EOS. The
decoder reads BOS, then the target shifted right; the loss counts real target
tokens only.
"""

from __future__ import annotations

import numpy as np

from lm import classify as labelled
from lm import data as data_lib
from lm.config import ConfigError
from lm.objectives import base


def encode_pairs(pairs: list[tuple[str, str]], tokenizer, enc_len: int, dec_len: int
                 ) -> dict[str, np.ndarray]:
  """(input, target) texts -> right-padded encoder inputs and decoder targets."""
  n = len(pairs)
  out = {'enc_inputs': np.zeros((n, enc_len), np.int32),
         'enc_valid': np.zeros((n, enc_len), bool),
         'dec_inputs': np.zeros((n, dec_len), np.int32),
         'targets': np.zeros((n, dec_len), np.int32),
         'weights': np.zeros((n, dec_len), np.float32)}
  for i, (src, tgt) in enumerate(pairs):
    e = list(tokenizer.encode(src))[:enc_len - 1] + [tokenizer.eos_id]
    t = list(tokenizer.encode(tgt))[:dec_len - 1] + [tokenizer.eos_id]
    out['enc_inputs'][i, :len(e)] = e
    out['enc_valid'][i, :len(e)] = True
    out['targets'][i, :len(t)] = t
    out['dec_inputs'][i, :len(t)] = [tokenizer.bos_id] + t[:-1]
    out['weights'][i, :len(t)] = 1.0
  return out


def load(c):
  train, evals, _ = labelled.load(c.data, data_lib.cache_root(c.data))
  return c, (train, evals)


def lengths(c) -> tuple[int, int]:
  return c.data.seq_len, c.data.target_len or c.data.seq_len


def data(c, tokenizer, loaded, pidx: int, pcount: int) -> base.Data:
  enc_len, dec_len = lengths(c)
  train = labelled.Rows(encode_pairs(loaded[0], tokenizer, enc_len, dec_len))
  if len(train) < c.train.batch_size:
    raise ConfigError(f'the train split has {len(train)} examples, fewer than '
                      f'train.batch_size={c.train.batch_size}')
  return base.Data(train, data_lib.eval_rows(
      encode_pairs(loaded[1], tokenizer, enc_len, dec_len), c.train.batch_size, pidx, pcount))


def loss(apply, batch: dict, weights_B, z_loss: float):
  """Teacher-forced decoder NLL; shared with span corruption (same batch layout)."""
  return base.token_loss(apply, batch, weights_B, z_loss, batch['dec_inputs'],
                         enc_tokens_BS=batch['enc_inputs'], enc_valid_BS=batch['enc_valid'])


def describe(m: dict) -> str:
  return (f'target-token loss {m["loss"]:.4f} nats, accuracy {m["accuracy"]:.4f} over '
          f'{int(m["tokens"])} tokens')


def shapes(enc_len: int, dec_len: int) -> dict:
  return {'enc_inputs': ((enc_len,), np.int32), 'enc_valid': ((enc_len,), np.bool_),
          'dec_inputs': ((dec_len,), np.int32), 'targets': ((dec_len,), np.int32),
          'weights': ((dec_len,), np.float32)}


OBJECTIVE = base.Objective(
    name='seq2seq', families=('encoder_decoder',), headline='accuracy',
    higher_is_better=True, data=data, loss=loss, eval_sums=base.token_eval_sums,
    summarize=base.token_summary, describe=describe, load=load, lengths=lengths,
    extra_ids=lambda c: 1, row_shapes=lambda c: shapes(*lengths(c)))
