"""Span corruption (Raffel et al. 2020, T5) for the encoder-decoder family.

round(density * n) noise tokens in round(noise / mean_span) spans, span
lengths drawn by random segmentation; the encoder sees the text with each
span replaced by a sentinel (+ EOS), the decoder predicts sentinel_i + span_i
for every span (+ EOS). Both lengths are fixed for a given n, so batches need
no padding. Sentinel i is id model.vocab_size - 1 - i, in the vocabulary's
padding above the tokenizer's ids and MASK.
"""

from __future__ import annotations

import functools

import numpy as np

from lm.config import ConfigError
from lm.objectives import base, seq2seq


def span_counts(n: int, density: float, mean_span: float) -> tuple[int, int]:
  """(noise tokens, spans) for a window of n tokens."""
  noise = min(max(round(n * density), 1), n - 1)
  return noise, max(1, min(round(noise / mean_span), noise, n - noise))


def span_lengths(n: int, density: float, mean_span: float) -> tuple[int, int]:
  """(encoder length, decoder length) of a corrupted window of n tokens."""
  noise, spans = span_counts(n, density, mean_span)
  return n - noise + spans + 1, noise + spans + 1


def _segment(total: int, parts: int, rng: np.random.Generator) -> np.ndarray:
  """`parts` positive integers summing to `total`, uniformly at random."""
  cuts = np.sort(rng.choice(np.arange(1, total), size=parts - 1, replace=False))
  return np.diff(np.concatenate([[0], cuts, [total]]))


def span_corrupt(tokens_N: np.ndarray, rng: np.random.Generator, density: float,
                 mean_span: float, sentinel0: int, eos_id: int, start_id: int
                 ) -> dict[str, np.ndarray]:
  """{'enc_inputs', 'dec_inputs' (targets shifted right after start_id), 'targets'}."""
  n = len(tokens_N)
  noise, spans = span_counts(n, density, mean_span)
  noise_lens = _segment(noise, spans, rng)
  keep_lens = _segment(n - noise, spans, rng)
  enc, tgt, at = [], [], 0
  for i, (keep, drop) in enumerate(zip(keep_lens, noise_lens)):
    enc += list(tokens_N[at:at + keep]) + [sentinel0 - i]
    at += keep
    tgt += [sentinel0 - i] + list(tokens_N[at:at + drop])
    at += drop
  enc.append(eos_id)
  tgt.append(eos_id)
  tgt = np.asarray(tgt, np.int32)
  return {'enc_inputs': np.asarray(enc, np.int32), 'targets': tgt,
          'dec_inputs': np.concatenate([[start_id], tgt[:-1]]).astype(np.int32)}


def span_example(window_N: np.ndarray, rng: np.random.Generator, d, m, tokenizer
                 ) -> dict[str, np.ndarray]:
  """One span-corrupted window in the encoder-decoder batch layout."""
  ex = span_corrupt(window_N, rng, d.noise_density, d.mean_span, m.vocab_size - 1,
                    tokenizer.eos_id, tokenizer.bos_id)
  ex['enc_valid'] = np.ones(len(ex['enc_inputs']), bool)
  ex['weights'] = np.ones(len(ex['targets']), np.float32)
  return ex


def check(c, tokenizer_vocab: int) -> None:
  _, spans = span_counts(c.data.seq_len, c.data.noise_density, c.data.mean_span)
  room = c.model.vocab_size - tokenizer_vocab - 1
  if spans > room:
    raise ConfigError(f'span corruption of data.seq_len={c.data.seq_len} needs {spans} '
                      f'sentinel ids but model.vocab_size={c.model.vocab_size} has {room} '
                      'free above the tokenizer; raise model.vocab_size or lower data.seq_len')
  enc, dec = span_lengths(c.data.seq_len, c.data.noise_density, c.data.mean_span)
  if c.model.position in ('learned', 'sinusoidal') and max(enc, dec) > c.model.max_len:
    # A learned table has no row past max_len: the lookup would read NaN.
    side = 'encoder' if enc >= dec else 'decoder'
    raise ConfigError(
        f'span corruption of data.seq_len={c.data.seq_len} (data.noise_density='
        f'{c.data.noise_density}, data.mean_span={c.data.mean_span}) gives {side} sequences '
        f'of {max(enc, dec)} tokens (spans and EOS added), longer than the '
        f'{c.model.position} position table model.max_len={c.model.max_len}; lower '
        'data.seq_len, raise model.max_len, or (if the mean span is short or the density '
        'high) raise data.mean_span or lower data.noise_density')


def data(c, tokenizer, loaded, pidx: int, pcount: int) -> base.Data:
  del loaded
  transform = functools.partial(span_example, d=c.data, m=c.model, tokenizer=tokenizer)
  return base.corrupted_windows(c, tokenizer, transform, pidx, pcount)


def lengths(c) -> tuple[int, int]:
  return span_lengths(c.data.seq_len, c.data.noise_density, c.data.mean_span)


OBJECTIVE = base.Objective(
    name='span', families=('encoder_decoder',), headline='accuracy', higher_is_better=True,
    data=data, loss=seq2seq.loss, eval_sums=base.token_eval_sums,
    summarize=base.token_summary, describe=seq2seq.describe, check=check,
    fields=('data.noise_density', 'data.mean_span'),
    extra_ids=lambda c: 1 + span_counts(c.data.seq_len, c.data.noise_density,
                                        c.data.mean_span)[1],
    lengths=lengths, row_shapes=lambda c: seq2seq.shapes(*lengths(c)))
