"""Autoregressive decoding with a fixed-size key/value cache, and scoring.

Prompts of different lengths are left-padded to one length P, so every row
writes new tokens at the same cache slot; each row's positions start at its
first real token and pad slots are masked out of attention. One jitted prefill
fills the cache with the prompts; one jitted `lax.while_loop` then samples a
token, writes its keys and values at slot P + i and computes the next logits,
until `max_new_tokens` or every row has emitted EOS.

Logit processing follows the usual order (as in Hugging Face's `generate`):
repetition penalty, then greedy argmax, or temperature, top-k and top-p, then
a categorical draw.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np

from lm.config import ModelConfig
from lm.data import documents
from lm.model import Transformer, init_cache

Array = jax.Array


class SamplingError(ValueError):
  """A generation request is invalid; the message names the value and the fix."""


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  max_new_tokens: int = 64
  greedy: bool = False  # Argmax; temperature, top_k and top_p are then unused.
  temperature: float = 1.0
  top_k: int | None = None  # None: off.
  top_p: float = 1.0  # 1.0: off.
  repetition_penalty: float = 1.0  # CTRL (Keskar et al. 2019); 1.0: off.
  num_return_sequences: int = 1
  seed: int = 0


_F32_MAX = 3.4028234663852886e38  # The logits are float32: a larger T or penalty is inf.
MAX_RETURN_SEQUENCES = 1024  # Each is a row of the decode batch (10**9 ran out of memory).


def validate(s: SamplingConfig) -> None:
  if s.max_new_tokens < 1:
    raise SamplingError(f'max_new_tokens={s.max_new_tokens} is invalid: must be >= 1')
  # Below 1e-6 logits/T overflow; above float32's largest value T itself is inf.
  if not s.greedy and not 1e-6 <= s.temperature <= _F32_MAX:
    raise SamplingError(f'temperature={s.temperature} is invalid with sampling on: '
                        'must be >= 1e-6 and finite in float32 (use greedy decoding for '
                        'the argmax)')
  if s.top_k is not None and s.top_k < 1:
    raise SamplingError(f'top_k={s.top_k} is invalid: must be >= 1 (leave it unset for '
                        'no top-k filtering)')
  if not 0.0 < s.top_p <= 1.0:
    raise SamplingError(f'top_p={s.top_p} is invalid: must be in (0, 1]')
  if not 0 < s.repetition_penalty <= _F32_MAX:
    raise SamplingError(f'repetition_penalty={s.repetition_penalty} is invalid: '
                        'must be > 0 and finite in float32 (1.0 = off, > 1 discourages '
                        'repeats)')
  if not 1 <= s.num_return_sequences <= MAX_RETURN_SEQUENCES:  # Rows: prompts x this.
    raise SamplingError(f'num_return_sequences={s.num_return_sequences} is invalid: '
                        f'must be in [1, {MAX_RETURN_SEQUENCES}]')
  if not 0 <= s.seed < 2 ** 32:  # A JAX key keeps 32 bits: 2**32 + s would repeat s.
    raise SamplingError(f'seed={s.seed} is invalid: must be in [0, 2**32)')


def check_prompts(prompts: list[list[int]], m: ModelConfig, max_new_tokens: int) -> None:
  if not prompts:
    raise SamplingError('no prompts given')
  for i, p in enumerate(prompts):
    if len(p) == 0:
      raise SamplingError(f'prompt {i} is empty: give at least one token')
    if len(p) >= m.max_len:
      raise SamplingError(f'prompt {i} has {len(p)} tokens, as long as or longer than the '
                          f'context model.max_len={m.max_len}: shorten it')
    if len(p) + max_new_tokens > m.max_len and m.family == 'encoder_decoder':
      raise SamplingError(
          f'max_new_tokens={max_new_tokens} and the decoder\'s start token exceed the '
          f'decoder context model.max_len={m.max_len}: ask for at most '
          f'{m.max_len - len(p)} new tokens')
    if len(p) + max_new_tokens > m.max_len:
      raise SamplingError(
          f'prompt {i} has {len(p)} tokens; with max_new_tokens={max_new_tokens} that '
          f'exceeds the context model.max_len={m.max_len}: shorten the prompt or ask '
          f'for at most {m.max_len - len(p)} new tokens')


# --- Logit processing (pure, batched) -------------------------------------------

def repetition_penalty(logits_BV: Array, seen_BV: Array, penalty: float) -> Array:
  """Seen tokens: positive logits divided by `penalty`, negative ones multiplied."""
  pen_BV = jnp.where(logits_BV > 0, logits_BV / penalty, logits_BV * penalty)
  return jnp.where(seen_BV, pen_BV, logits_BV)


def top_k_filter(logits_BV: Array, k: int) -> Array:
  """-inf below the k-th largest logit (ties with it are kept)."""
  kth_B1 = jax.lax.top_k(logits_BV, k)[0][:, -1:]
  return jnp.where(logits_BV < kth_B1, -jnp.inf, logits_BV)


def top_p_filter(logits_BV: Array, p: float) -> Array:
  """Keeps the smallest set of most likely tokens whose probability reaches p."""
  sorted_BV = jnp.sort(logits_BV, axis=-1)[:, ::-1]
  probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
  before_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV  # Mass of more likely tokens.
  n_B1 = jnp.maximum((before_BV < p).sum(-1, keepdims=True), 1)
  cut_B1 = jnp.take_along_axis(sorted_BV, n_B1 - 1, axis=-1)
  return jnp.where(logits_BV < cut_B1, -jnp.inf, logits_BV)


def choose(logits_BV: Array, seen_BV: Array, rng: Array, s: SamplingConfig) -> Array:
  """Next token per row after the configured logit processing."""
  if s.repetition_penalty != 1.0:
    logits_BV = repetition_penalty(logits_BV, seen_BV, s.repetition_penalty)
  if s.greedy:
    return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
  logits_BV = logits_BV / s.temperature
  if s.top_k:
    logits_BV = top_k_filter(logits_BV, min(s.top_k, logits_BV.shape[-1]))
  if s.top_p < 1.0:
    logits_BV = top_p_filter(logits_BV, s.top_p)
  return jax.random.categorical(rng, logits_BV, axis=-1).astype(jnp.int32)


# --- Cached decoding -------------------------------------------------------------

def _visible(slot_L: Array, start_B: Array, S: int) -> Array:
  """B x L x S: query at cache slot t sees slots [start_b, t]."""
  s_S = jnp.arange(S)
  return (s_S[None, None, :] >= start_B[:, None, None]) & (
      s_S[None, None, :] <= slot_L[None, :, None])


def prompt_documents(tokens_BP: np.ndarray, start_B: np.ndarray, doc_eos: int | None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Left-padded prompts as training windows saw them: (positions_BxP,
  visible_BxPxP: query slot sees key slot, doc_B: the slot where the last
  document starts, which generated tokens continue). With `doc_eos` (a model
  trained with data.document_mask), an EOS ends its document, as in
  lm.data.documents: the tokens after it neither attend to it nor
  count it as a position. Without it, each row is one document from start_b."""
  B, P = tokens_BP.shape
  seg_BP = np.full((B, P), -1, np.int32)  # Left padding: no document.
  pos_BP = np.zeros((B, P), np.int32)
  for b, s0 in enumerate(start_B):  # Each row's real tokens, as a training window.
    if doc_eos is not None:
      seg_BP[b, s0:], pos_BP[b, s0:] = documents(tokens_BP[b, s0:], doc_eos)
    else:
      seg_BP[b, s0:], pos_BP[b, s0:] = 0, np.arange(P - s0)
  slot_P = np.arange(P)
  visible_BPP = ((seg_BP[:, :, None] == seg_BP[:, None, :]) & (seg_BP[:, None, :] >= 0)
                 & (slot_P[None, None, :] <= slot_P[None, :, None]))
  ends_in_eos = (tokens_BP[:, -1] == doc_eos) if doc_eos is not None else np.zeros(B, bool)
  doc_B = np.where(ends_in_eos, P, P - 1 - pos_BP[:, -1]).astype(np.int32)
  return pos_BP, visible_BPP, doc_B


@functools.partial(jax.jit, static_argnames=('m',))
def encode(params, m: ModelConfig, enc_BS: Array, enc_valid_BS: Array) -> Array:
  """An encoder-decoder's encoder output, computed once per request."""
  return Transformer(m).apply({'params': params}, enc_BS[:, :1], enc_tokens_BS=enc_BS,
                              enc_valid_BS=enc_valid_BS, encode_only=True)


@functools.partial(jax.jit, static_argnames=('m', 'S'))
def prefill(params, m: ModelConfig, tokens_BP: Array, pos_BP: Array, visible_BPP: Array,
            S: int, enc_out_BSD: Array | None = None, enc_valid_BS: Array | None = None):
  """Runs the left-padded prompts (positions and visibility: prompt_documents)
  through the model into a fresh cache of S slots.

  An encoder-decoder also fills the cache's cross-attention K/V from
  enc_out_BSD here, once. Returns (logits_BxV of the last prompt token, cache)."""
  B, P = tokens_BP.shape
  S_enc = 0 if enc_out_BSD is None else enc_out_BSD.shape[1]
  mask_BPS = jnp.pad(visible_BPP, ((0, 0), (0, 0), (0, S - P)))
  logits_BPV, cache = Transformer(m).apply(
      {'params': params}, tokens_BP, pos_BL=pos_BP, mask_BLS=mask_BPS,
      cache=init_cache(m, B, S, S_enc), index=0, enc_out_BSD=enc_out_BSD,
      enc_valid_BS=enc_valid_BS)
  return logits_BPV[:, -1], cache


@functools.partial(jax.jit, static_argnames=('m', 's', 'eos_id'))
def decode(params, m: ModelConfig, s: SamplingConfig, eos_id: int, logits_BV: Array,
           cache: dict, seen_BV: Array, doc_B: Array, rng: Array, allowed_V: Array,
           enc_valid_BS: Array | None = None):
  """Samples up to s.max_new_tokens per row, only ids where allowed_V; -1 fills
  a row after its EOS. New tokens continue the document that starts at slot
  doc_B (prompt_documents).

  Returns tokens_BxN (EOS included where emitted)."""
  B = logits_BV.shape[0]
  S = cache['k'].shape[3]
  P = S - s.max_new_tokens
  model = Transformer(m)

  def cond(carry):
    i, _, _, _, done_B, _ = carry
    return (i < s.max_new_tokens) & ~done_B.all()

  def body(carry):
    i, logits_BV, cache, seen_BV, done_B, out_BN = carry
    logits_BV = jnp.where(allowed_V, logits_BV, -jnp.inf)
    tok_B = choose(logits_BV, seen_BV, jax.random.fold_in(rng, i), s)
    out_BN = out_BN.at[:, i].set(jnp.where(done_B, -1, tok_B))
    done_B = done_B | (tok_B == eos_id)
    seen_BV = seen_BV.at[jnp.arange(B), tok_B].set(True)
    slot = P + i
    logits_B1V, cache = model.apply(
        {'params': params}, tok_B[:, None], pos_BL=(slot - doc_B)[:, None],
        mask_BLS=_visible(slot[None], doc_B, S), cache=cache, index=slot,
        enc_valid_BS=enc_valid_BS)
    return i + 1, logits_B1V[:, 0], cache, seen_BV, done_B, out_BN

  out_BN = jnp.full((B, s.max_new_tokens), -1, jnp.int32)
  carry = (jnp.int32(0), logits_BV, cache, seen_BV, jnp.zeros(B, bool), out_BN)
  return jax.lax.while_loop(cond, body, carry)[-1]


def _left_pad(prompts: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
  P = max(len(p) for p in prompts)
  tokens = np.zeros((len(prompts), P), np.int32)  # Pad id 0: masked out anyway.
  start = np.zeros(len(prompts), np.int32)
  for b, p in enumerate(prompts):
    tokens[b, P - len(p):] = p
    start[b] = P - len(p)
  return tokens, start


def _right_pad(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
  S = max(len(r) for r in rows)
  tokens = np.zeros((len(rows), S), np.int32)
  valid = np.zeros((len(rows), S), bool)
  for b, r in enumerate(rows):
    tokens[b, :len(r)] = r
    valid[b, :len(r)] = True
  return tokens, valid


def _rows(prompts: list[list[int]], m: ModelConfig, s: SamplingConfig, eos_id: int
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Checks the request; each prompt repeated num_return_sequences times,
  left-padded: (tokens_BxP, start_B, seen_BxV: the prompt tokens of each row).

  A prompt's start token (a decoder's leading EOS, the document start; an
  encoder-decoder's BOS) is not text, so the repetition penalty does not count
  it: counted, it made ending the sample (EOS) less likely at every step."""
  validate(s)
  check_prompts(prompts, m, s.max_new_tokens)
  rows = [p for p in prompts for _ in range(s.num_return_sequences)]
  tokens_BP, start_B = _left_pad(rows)
  seen_BV = np.zeros((len(rows), m.vocab_size), bool)
  for b, p in enumerate(rows):
    start = m.family == 'encoder_decoder' or p[0] == eos_id
    seen_BV[b, p[1:] if start else p] = True
  return tokens_BP, start_B, seen_BV


def _per_prompt(rows: list[list[int]], eos_id: int, n: int) -> list[list[list[int]]]:
  """Each row cut before its EOS, grouped n rows per prompt."""
  rows = [r[:r.index(eos_id)] if eos_id in r else r for r in rows]
  return [rows[i:i + n] for i in range(0, len(rows), n)]


def doc_eos_of(c, eos_id: int) -> int | None:
  """The EOS that ends a document for generation and scoring (generate,
  score): a causal LM trained with data.document_mask never attended across
  it, so neither do they; None for anything else."""
  from lm import objectives  # Not at the top: lm.objectives imports lm.probes, which imports this.
  return eos_id if c.data.document_mask and objectives.name_of(c) == 'lm' else None


def allowed_ids(m: ModelConfig, num_ids: int | None, sentinels: int = 0) -> np.ndarray:
  """bool[vocab_size]: the ids generation may emit. The model's vocabulary is
  the tokenizer's `num_ids` ids padded up (to a multiple of 128, lm/train.
  resolve_vocab); the rows above are never trained as targets, so they are
  never emitted (a SentencePiece decode of one raises), except a span-
  corruption model's `sentinels`, which count down from the top. None: all."""
  ids_V = np.arange(m.vocab_size)
  if num_ids is None:
    return np.ones(m.vocab_size, bool)
  return (ids_V < num_ids) | (ids_V >= m.vocab_size - sentinels)


def generate(params, m: ModelConfig, prompts: list[list[int]], s: SamplingConfig,
             eos_id: int, enc_inputs: list[list[int]] | None = None, *,
             num_ids: int | None = None, sentinels: int = 0,
             doc_eos: int | None = None) -> list[list[list[int]]]:
  """For each prompt, s.num_return_sequences lists of new tokens (EOS dropped).

  An encoder-decoder takes one encoder input per prompt (`enc_inputs`); its
  prompts are the decoder's start (usually [BOS]). `num_ids`: the tokenizer's
  vocabulary size, so padding ids are never sampled (`allowed_ids`); give it
  whenever a tokenizer will decode the output. `sentinels`: how many span-
  corruption sentinels the model trained with (objective.extra_ids - 1).
  `doc_eos`: the EOS id when the model trained with document masks
  (doc_eos_of), so a prompt's EOS ends a document as in training
  (prompt_documents)."""
  if m.family == 'encoder':
    raise SamplingError('an encoder (masked LM) does not generate left to right: use '
                        'experiments.fill_mask')
  if (m.family == 'encoder_decoder') != (enc_inputs is not None):
    raise SamplingError('encoder inputs are needed for, and only for, an encoder-decoder')
  n = s.num_return_sequences
  tokens_BP, start_B, seen_BV = _rows(prompts, m, s, eos_id)
  P = tokens_BP.shape[1]
  enc_out, enc_valid = None, None
  if enc_inputs is not None:
    if len(enc_inputs) != len(prompts) or not all(enc_inputs):
      raise SamplingError('give one non-empty encoder input per prompt')
    for i, e in enumerate(enc_inputs):
      if len(e) > m.max_len:
        raise SamplingError(f'prompt {i} is {len(e)} tokens as the encoder input (with its '
                            f'EOS), longer than model.max_len={m.max_len}: shorten it')
    enc_tok, enc_valid = _right_pad([e for e in enc_inputs for _ in range(n)])
    enc_out = encode(params, m, enc_tok, enc_valid)
  pos_BP, visible_BPP, doc_B = prompt_documents(tokens_BP, start_B, doc_eos)
  logits_BV, cache = prefill(params, m, tokens_BP, pos_BP, visible_BPP, P + s.max_new_tokens,
                             enc_out, enc_valid)
  out_BN = np.asarray(decode(params, m, s, eos_id, logits_BV, cache, seen_BV, doc_B,
                             jax.random.key(s.seed), allowed_ids(m, num_ids, sentinels), enc_valid))
  return _per_prompt([row[row >= 0].tolist() for row in out_BN], eos_id, n)


# --- Scoring ------------------------------------------------------------------------

def score_windows(first: int, total: int, L: int) -> list[tuple[int, int, int]]:
  """(lo, done, hi) per window: tokens [done, hi) are scored from the window
  [lo, hi) of at most L + 1 tokens, starting at token `first`. Windows overlap
  by half (at least one token, so a 1-token window scores each token from the
  one before it), so every token sees at least L / 2 tokens before it."""
  out, done = [], first
  while done < total:
    lo = 0 if done <= L else done - max(L // 2, 1)
    hi = min(lo + L + 1, total)
    out.append((lo, done, hi))
    done = hi
  return out


@functools.partial(jax.jit, static_argnames=('m',))
def _token_logprobs(params, m: ModelConfig, tokens_1L: Array, seg_1L: Array | None,
                    pos_1L: Array | None) -> Array:
  logits_1LV = Transformer(m).apply({'params': params}, tokens_1L[:, :-1],
                                    segment_ids_BL=seg_1L, pos_BL=pos_1L)
  logp_1LV = jax.nn.log_softmax(logits_1LV, axis=-1)
  return jnp.take_along_axis(logp_1LV, tokens_1L[:, 1:, None], axis=-1)[0, :, 0]


def score(params, m: ModelConfig, tokens: list[int], context: list[int],
          doc_eos: int | None = None, window: int = 0) -> dict:
  """Log-probability (nats) of each of `tokens` given `context` and what precedes it.

  `doc_eos`: the EOS id when the model trained with document masks
  (doc_eos_of): each window is then split into documents at its EOS tokens
  as training windows are (lm.data.documents), so a context of
  [EOS] predicts the first token and the rest neither see it nor count it.

  Text longer than the context window is scored in windows of model.max_len
  that overlap by half, so every token after the first window sees at least
  max_len / 2 tokens of context. `window` (<= max_len; 0: max_len) narrows
  them, as lm/harness does: a run's data.seq_len (lm/probes.scoring), so
  learned positions it never trained are not read."""
  if m.family != 'decoder':
    raise SamplingError(f'scoring needs a decoder-only language model, not {m.family}')
  if not tokens:
    raise SamplingError('nothing to score: the text is empty')
  if not context:
    raise SamplingError('scoring needs at least one context token (e.g. EOS)')
  seq = list(context) + list(tokens)
  L, first = min(window or m.max_len, m.max_len), len(context)
  logp = np.zeros(len(seq))
  for lo, done, hi in score_windows(first, len(seq), L):
    padded = np.zeros(L + 1, np.int32)  # One compiled shape for every window.
    padded[:hi - lo] = seq[lo:hi]
    seg_1L, pos_1L = documents(padded[None, :-1], doc_eos) if doc_eos is not None else (None, None)
    lp = np.asarray(_token_logprobs(params, m, padded[None], seg_1L, pos_1L))
    logp[done:hi] = lp[done - lo - 1:hi - lo - 1]  # lp[j] scores seq[lo + j + 1].
  lp_tok = logp[first:]
  return {'logprobs': lp_tok.tolist(), 'nll': float(-lp_tok.sum()), 'tokens': len(tokens),
          'perplexity': math.exp(min(-lp_tok.mean(), 700.0))}


@functools.partial(jax.jit, static_argnames=('m',))
def _target_logprobs(params, m: ModelConfig, enc_1S: Array, dec_1T: Array, tgt_1T: Array
                     ) -> Array:
  logits_1TV = Transformer(m).apply({'params': params}, dec_1T, enc_tokens_BS=enc_1S,
                                    enc_valid_BS=jnp.ones_like(enc_1S, bool))
  logp_1TV = jax.nn.log_softmax(logits_1TV, axis=-1)
  return jnp.take_along_axis(logp_1TV, tgt_1T[:, :, None], axis=-1)[0, :, 0]


def score_seq2seq(params, m: ModelConfig, enc_ids: list[int], tokens: list[int],
                  start_id: int) -> dict:
  """Log-probability (nats) of each target token given the encoder input, by
  teacher forcing: the decoder reads start_id then the target shifted right."""
  if m.family != 'encoder_decoder':
    raise SamplingError(f'seq2seq scoring needs an encoder_decoder model, not {m.family}')
  if not tokens:
    raise SamplingError('nothing to score: the text is empty')
  if len(enc_ids) > m.max_len or len(tokens) > m.max_len:
    raise SamplingError(f'the input ({len(enc_ids)} tokens) and the scored text '
                        f'({len(tokens)}) must each fit model.max_len={m.max_len}')
  dec = np.asarray([[start_id] + list(tokens[:-1])], np.int32)
  lp = np.asarray(_target_logprobs(params, m, np.asarray([enc_ids], np.int32), dec,
                                   np.asarray([tokens], np.int32)))
  return {'logprobs': lp.tolist(), 'nll': float(-lp.sum()), 'tokens': len(tokens),
          'perplexity': math.exp(min(-lp.mean(), 700.0))}


SENTINEL = re.compile(r'<extra_id_(\d+)>')


def encode_with_sentinels(text: str, tokenizer, vocab_size: int, sentinels: int) -> list[int]:
  """Token ids of a text whose `<extra_id_N>` markers become span-corruption
  sentinels (id vocab_size - 1 - N), as an encoder-decoder saw them in training;
  N must be below `sentinels`, the number it trained (objective.extra_ids - 1)."""
  ids, at = [], 0
  for match in SENTINEL.finditer(text):
    ids += list(tokenizer.encode(text[at:match.start()])) if match.start() > at else []
    n = int(match.group(1))
    if n >= sentinels:  # An id never trained as a sentinel (or MASK's, or text's).
      have = ('no sentinels' if sentinels == 0 else '1 sentinel, <extra_id_0>' if
              sentinels == 1 else f'{sentinels} sentinels, <extra_id_0> to '
              f'<extra_id_{sentinels - 1}>')
      raise SamplingError(f'{match.group(0)}: the model was trained with {have}')
    ids.append(vocab_size - 1 - n)
    at = match.end()
  return ids + (list(tokenizer.encode(text[at:])) if at < len(text) else [])
