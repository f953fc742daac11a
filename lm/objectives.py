"""Pre-training objectives of the encoder families, as numpy transforms of one window.

Masked LM (Devlin et al. 2019): select round(rate * L) positions; of those,
mask_frac become MASK, random_frac a random token, the rest stay; the loss
counts only the selected positions.

Span corruption (Raffel et al. 2020, T5): round(density * n) noise tokens in
round(noise / mean_span) spans, span lengths drawn by random segmentation;
the encoder sees the text with each span replaced by a sentinel (+ EOS), the
decoder predicts sentinel_i + span_i for every span (+ EOS). Both lengths are
fixed for a given n, so batches need no padding.

Special ids live in the model's vocabulary padding above the tokenizer's ids
(lm.train.resolve_vocab keeps room): MASK = tokenizer.vocab_size, sentinel i =
model.vocab_size - 1 - i.

Each transform takes a numpy Generator, so grain's random_map draws a fresh
corruption every epoch, deterministically from the seed and the position.
"""

from __future__ import annotations

import numpy as np

from lm.config import ConfigError, DataConfig, ModelConfig


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


def span_restore(enc_inputs: np.ndarray, targets: np.ndarray, text_vocab: int,
                 eos_id: int) -> np.ndarray:
  """The original window from a corrupted pair (inverse of span_corrupt).

  Ids >= text_vocab (the tokenizer's size) are sentinels; text never has them."""
  spans: dict[int, list[int]] = {}
  cur = None
  for t in targets.tolist()[:-1]:  # The last target is EOS.
    if t >= text_vocab:
      cur = t
      spans[cur] = []
    else:
      spans[cur].append(t)
  out = []
  for t in enc_inputs.tolist()[:-1]:  # The last input is EOS.
    out += spans[t] if t >= text_vocab else [t]
  return np.asarray(out, np.int32)


def check(m: ModelConfig, d: DataConfig, tokenizer_vocab: int) -> None:
  """The special ids fit in the model vocabulary; raises before data preparation."""
  if m.family == 'encoder' and not d.label_key:
    if m.vocab_size <= tokenizer_vocab:
      raise ConfigError(f'config.model.vocab_size={m.vocab_size} leaves no id for MASK '
                        f'above the tokenizer\'s {tokenizer_vocab}; use 0 or more')
  if m.family == 'encoder_decoder' and not d.target_key and not d.label_key:
    _, spans = span_counts(d.seq_len, d.noise_density, d.mean_span)
    room = m.vocab_size - tokenizer_vocab - 1
    if spans > room:
      raise ConfigError(f'span corruption of data.seq_len={d.seq_len} needs {spans} sentinel '
                        f'ids but model.vocab_size={m.vocab_size} has {room} free above the '
                        'tokenizer; raise model.vocab_size or lower data.seq_len')


def encode_pairs(pairs: list[tuple[str, str]], tokenizer, enc_len: int, dec_len: int
                 ) -> dict[str, np.ndarray]:
  """(input, target) texts -> right-padded encoder inputs and decoder targets.

  Each side is truncated to leave room for EOS; the decoder reads BOS, then
  the target shifted right."""
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


def span_example(window_N: np.ndarray, rng: np.random.Generator, d: DataConfig,
                 m: ModelConfig, tokenizer) -> dict[str, np.ndarray]:
  """One span-corrupted window in the encoder-decoder batch layout."""
  ex = span_corrupt(window_N, rng, d.noise_density, d.mean_span, m.vocab_size - 1,
                    tokenizer.eos_id, tokenizer.bos_id)
  ex['enc_valid'] = np.ones(len(ex['enc_inputs']), bool)
  ex['weights'] = np.ones(len(ex['targets']), np.float32)
  return ex


def mlm_example(window_L: np.ndarray, rng: np.random.Generator, d: DataConfig,
                tokenizer) -> dict[str, np.ndarray]:
  return mlm(window_L, rng, d.mlm_rate, d.mlm_mask_frac, d.mlm_random_frac,
             mask_id=tokenizer.vocab_size, vocab=tokenizer.vocab_size)


def lengths(m: ModelConfig, d: DataConfig) -> tuple[int, int]:
  """(encoder length, decoder length) of one encoder-decoder example; (0, 0) for
  the other families, whose FLOPs need only data.seq_len."""
  if m.family != 'encoder_decoder':
    return 0, 0
  if d.target_key:
    return d.seq_len, d.target_len or d.seq_len
  return span_lengths(d.seq_len, d.noise_density, d.mean_span)
