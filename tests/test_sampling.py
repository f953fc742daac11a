"""KV-cached decoding equals the full forward pass; logit processors keep their promises."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm import sampling
from lm.config import ModelConfig
from lm.model import Transformer, init_cache
from lm.sampling import SamplingConfig, SamplingError
from tests import forked_cli

Array = jax.Array

BASE = ModelConfig(vocab_size=61, d_model=32, num_layers=2, num_heads=4, max_len=24,
                   mlp_dim=48, num_kv_heads=2)
EOS = 60


def _params(m, seed=0):
  tokens = jnp.zeros((1, 8), jnp.int32)
  return jax.jit(lambda r: nn.unbox(Transformer(m).init(r, tokens)['params']))(
      jax.random.key(seed))


@pytest.mark.parametrize('position,scan', [('learned', True), ('rope', True),
                                           ('sinusoidal', True), ('none', True),
                                           ('rope', False)])
def test_cached_decoding_matches_full_forward(position, scan):
  """Prefill 5 tokens (row 1 left-padded by 2), then feed the rest one at a time."""
  m = dataclasses.replace(BASE, position=position, scan_layers=scan)
  params = _params(m)
  seq = np.asarray(jax.random.randint(jax.random.key(3), (2, 16), 0, 59))
  full = [np.asarray(Transformer(m).apply({'params': params}, seq[b:b + 1]))[0]
          for b in range(2)]
  P, start = 5, np.array([0, 2], np.int32)
  prompt = np.zeros((2, P), np.int32)
  prompt[0] = seq[0, :P]
  prompt[1, 2:] = seq[1, :P - 2]
  S = P + 12
  pos, visible, doc = sampling.prompt_documents(prompt, start, None)
  np.testing.assert_array_equal(doc, start)
  logits, cache = sampling.prefill(params, m, prompt, pos, visible, S)
  np.testing.assert_allclose(logits[0], full[0][P - 1], atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(logits[1], full[1][P - 3], atol=1e-5, rtol=1e-5)

  @jax.jit
  def step(tok, cache, slot):
    return Transformer(m).apply({'params': params}, tok, pos_BL=(slot - start)[:, None],
                                mask_BLS=sampling._visible(slot[None], start, S),
                                cache=cache, index=slot)

  for i in range(10):
    slot = P + i
    tok = np.array([seq[0, slot], seq[1, slot - 2]], np.int32)[:, None]
    out, cache = step(tok, cache, jnp.int32(slot))
    np.testing.assert_allclose(out[0, 0], full[0][slot], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(out[1, 0], full[1][slot - 2], atol=1e-5, rtol=1e-5)


def test_init_cache_shape():
  c = init_cache(BASE, 3, 10)
  assert c['k'].shape == (2, 3, 2, 10, 8) and c['v'].shape == c['k'].shape


def test_greedy_is_deterministic_batched_and_equals_uncached():
  m = dataclasses.replace(BASE, position='rope')
  params = _params(m, seed=1)
  prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9], [10]]
  s = SamplingConfig(max_new_tokens=8, greedy=True)
  a = sampling.generate(params, m, prompts, s, EOS)
  assert a == sampling.generate(params, m, prompts, s, EOS)
  assert a == generate_uncached(params, m, prompts, s, EOS)
  # Left padding changes nothing: each prompt alone gives the same tokens.
  for p, out in zip(prompts, a):
    assert sampling.generate(params, m, [p], s, EOS) == [out]
  # And each step is the argmax of the full forward pass.
  seq = prompts[1] + a[1][0]
  logits = Transformer(m).apply({'params': params}, jnp.asarray([seq]))[0]
  assert list(np.argmax(logits[len(prompts[1]) - 1:-1], -1)) == a[1][0]


def test_sampling_is_reproducible_and_returns_distinct_sequences():
  params = _params(BASE, seed=2)
  s = SamplingConfig(max_new_tokens=10, temperature=1.5, num_return_sequences=4, seed=7)
  a = sampling.generate(params, BASE, [[1, 2], [3]], s, EOS)
  assert a == sampling.generate(params, BASE, [[1, 2], [3]], s, EOS)
  assert len(a) == 2 and all(len(x) == 4 for x in a)
  assert len({tuple(x) for x in a[0]}) > 1
  other = sampling.generate(params, BASE, [[1, 2], [3]], dataclasses.replace(s, seed=8), EOS)
  assert other != a


def test_padding_ids_are_never_sampled():
  """The model's vocabulary is the tokenizer's padded up; ids above the
  tokenizer's are never emitted (a SentencePiece decode of one raises), except
  an encoder-decoder's sentinels at the top."""
  params = _params(BASE, seed=5)
  s = SamplingConfig(max_new_tokens=12, temperature=50.0, num_return_sequences=16)
  free = sum(sampling.generate(params, BASE, [[1, 2]], s, eos_id=-1)[0], [])
  assert max(free) >= 40  # At this temperature the unrestricted draws reach high ids.
  kept = sum(sampling.generate(params, BASE, [[1, 2]], s, eos_id=-1, num_ids=40)[0], [])
  assert len(kept) == len(free) and max(kept) < 40
  greedy = dataclasses.replace(s, greedy=True, num_return_sequences=1)
  assert max(sampling.generate(params, BASE, [[1, 2]], greedy, -1, num_ids=3)[0][0]) < 3
  ed = dataclasses.replace(BASE, family='encoder_decoder')  # 61 ids; 40 text, MASK, padding.
  assert np.flatnonzero(sampling.allowed_ids(ed, 40)).tolist() == list(range(40))  # Pairs.
  assert np.flatnonzero(sampling.allowed_ids(ed, 40, sentinels=3)).tolist() == (
      list(range(40)) + [58, 59, 60])  # Span corruption's sentinels count down from the top.


def test_eos_stops_one_row_while_others_continue():
  params = _params(BASE, seed=4)
  prompts = [[1, 2, 3], [20, 21]]
  s = SamplingConfig(max_new_tokens=6, greedy=True)
  free = sampling.generate(params, BASE, prompts, s, eos_id=-5)  # No EOS possible.
  eos = next(t for t in free[0][0] if t not in free[1][0])
  k = free[0][0].index(eos)
  out = sampling.generate(params, BASE, prompts, s, eos_id=eos)
  assert out[0][0] == free[0][0][:k]
  assert out[1][0] == free[1][0] and len(out[1][0]) == 6


def _draws(logits_V, s, n=2000):
  logits_BV = jnp.broadcast_to(jnp.asarray(logits_V), (n, len(logits_V)))
  seen = jnp.zeros(logits_BV.shape, bool)
  # Arguments, not closed-over constants: XLA folds a captured 2000 x 50 array
  # through the sort at compile time (8.3 s per call instead of 0.14 s).
  return np.asarray(jax.jit(lambda l, sn, r: sampling.choose(l, sn, r, s))(
      logits_BV, seen, jax.random.key(0)))


def test_top_k_never_leaves_the_k_most_likely():
  logits = np.asarray(jax.random.normal(jax.random.key(5), (50,))) * 0.3  # Flat-ish.
  toks = _draws(logits, SamplingConfig(top_k=5, temperature=2.0))
  top5 = set(np.argsort(-logits)[:5].tolist())
  assert set(toks.tolist()) == top5  # All of them drawn, nothing else.


def test_top_p_never_leaves_the_nucleus():
  probs = np.array([0.4, 0.25, 0.15, 0.1, 0.05, 0.03, 0.02])
  toks = _draws(np.log(probs), SamplingConfig(top_p=0.75))
  # 0.4 + 0.25 < 0.75 <= 0.4 + 0.25 + 0.15: the nucleus is {0, 1, 2}.
  assert set(toks.tolist()) == {0, 1, 2}
  # Within the nucleus, probabilities are renormalised: 0.4 / 0.8 = 0.5.
  assert abs((toks == 0).mean() - 0.5) < 0.05
  assert set(_draws(np.log(probs), SamplingConfig(top_p=0.3)).tolist()) == {0}


def test_repetition_penalty_changes_exactly_the_seen_logits():
  logits = jnp.array([[2.0, -1.0, 0.5, -3.0, 1.0]])
  seen = jnp.array([[True, True, False, False, True]])
  out = sampling.repetition_penalty(logits, seen, 2.0)
  np.testing.assert_allclose(out, [[1.0, -2.0, 0.5, -3.0, 0.5]])
  # Greedy with a strong penalty moves off a seen argmax.
  s = SamplingConfig(greedy=True, repetition_penalty=10.0)
  assert int(sampling.choose(logits, seen, jax.random.key(0), s)[0]) == 2


def test_score_matches_the_forward_pass_and_windows_long_text():
  params = _params(BASE)
  ctx, toks = [EOS], list(range(1, 11))
  out = sampling.score(params, BASE, toks, ctx)
  logp = jax.nn.log_softmax(Transformer(BASE).apply({'params': params},
                                                    jnp.asarray([ctx + toks[:-1]]))[0])
  want = [float(logp[i, t]) for i, t in enumerate(toks)]
  np.testing.assert_allclose(out['logprobs'], want, atol=1e-5)
  assert out['perplexity'] == pytest.approx(np.exp(-np.mean(want)), rel=1e-5)
  long = sampling.score(params, BASE, list(np.arange(60) % 59), ctx)  # > max_len=24.
  assert len(long['logprobs']) == 60 and np.isfinite(long['logprobs']).all()
  np.testing.assert_allclose(long['logprobs'][:23],
                             sampling.score(params, BASE, list(np.arange(23)), ctx)['logprobs'],
                             atol=1e-5)
  # A window of one token scores each token from the one before it (the windows'
  # half-overlap was L // 2 = 0: a neighbour's log-prob, or a ValueError).
  from lm import harness
  seq = ctx + toks
  want1 = [float(jax.nn.log_softmax(Transformer(BASE).apply(
      {'params': params}, jnp.asarray([[seq[i]]]))[0, 0])[seq[i + 1]]) for i in range(len(toks))]
  for n in (3, 4, 10):
    np.testing.assert_allclose(sampling.score(params, BASE, toks[:n], ctx, window=1)['logprobs'],
                               want1[:n], atol=1e-5)
  (ll, _), = harness.continuation_logprobs(params, BASE, [(ctx, toks)], window=1)
  assert ll == pytest.approx(sum(want1), abs=1e-4)


def test_repetition_penalty_does_not_count_the_document_start():
  """The EOS put before a prompt (--doc_start) is not text: counted as seen,
  the penalty made ending the sample less likely at every step."""
  s = SamplingConfig(max_new_tokens=2, repetition_penalty=2.0)
  _, _, seen_BV = sampling._rows([[EOS, 3, 4], [5, EOS, 6]], BASE, s, EOS)
  assert not seen_BV[0, EOS] and seen_BV[0, [3, 4]].all()
  assert seen_BV[1, [5, EOS, 6]].all()  # An EOS inside the prompt is text that repeats.


@pytest.mark.parametrize('kw,match', [
    (dict(temperature=0.0), 'temperature=0.0'),
    (dict(temperature=-1.0), 'temperature=-1.0'),
    (dict(top_p=0.0), 'top_p=0.0'),
    (dict(top_p=1.5), 'top_p=1.5'),
    (dict(top_k=-1), 'top_k=-1'),
    (dict(top_k=0), 'top_k=0 is invalid: must be >= 1'),
    (dict(max_new_tokens=0), 'max_new_tokens=0'),
])
def test_bad_sampling_settings(kw, match):
  with pytest.raises(SamplingError, match=match):
    sampling.validate(SamplingConfig(**kw))


def test_bad_prompts():
  params = _params(BASE)
  s = SamplingConfig(max_new_tokens=10)
  with pytest.raises(SamplingError, match='prompt 1 is empty'):
    sampling.generate(params, BASE, [[1], []], s, EOS)
  with pytest.raises(SamplingError, match='prompt 0 has 20 tokens.*max_len=24'):
    sampling.generate(params, BASE, [list(range(20))], s, EOS)
  assert sampling.validate(SamplingConfig(greedy=True, temperature=0.0)) is None
  with pytest.raises(SamplingError, match='prompt 0 has 30 tokens, as long as or longer'):
    sampling.generate(params, BASE, [list(range(30))], s, EOS)


@functools.partial(jax.jit, static_argnames=('m',))
def _full_logits(params, m: ModelConfig, tokens_BS: Array, start_B: Array, n: Array):
  """Logits at slot n-1 of left-padded windows, recomputing every position."""
  S = tokens_BS.shape[1]
  slot_S = jnp.arange(S)
  pos_BS = jnp.maximum(slot_S[None, :] - start_B[:, None], 0)
  logits_BSV = Transformer(m).apply({'params': params}, tokens_BS, pos_BL=pos_BS,
                                    mask_BLS=sampling._visible(slot_S, start_B, S))
  return jax.lax.dynamic_index_in_dim(logits_BSV, n - 1, axis=1, keepdims=False)


def generate_uncached(params, m: ModelConfig, prompts: list[list[int]],
                      s: SamplingConfig, eos_id: int) -> list[list[list[int]]]:
  """The reference for the KV cache: `generate`'s contract (decoder-only), each
  new token re-running the whole window."""
  if m.family != 'decoder':
    raise sampling.SamplingError(f'generate_uncached serves decoder-only models, not {m.family}')
  tokens_BP, start_B, seen_BV = sampling._rows(prompts, m, s, eos_id)
  B, P = tokens_BP.shape
  window_BS = np.zeros((B, P + s.max_new_tokens), np.int32)
  window_BS[:, :P] = tokens_BP
  done_B = np.zeros(B, bool)
  out = [[] for _ in range(B)]
  rng = jax.random.key(s.seed)
  step = jax.jit(functools.partial(sampling.choose, s=s))
  for i in range(s.max_new_tokens):
    logits_BV = _full_logits(params, m, window_BS, start_B, P + i)
    tok_B = np.asarray(step(logits_BV, seen_BV, jax.random.fold_in(rng, i)))
    for b in range(B):
      if not done_B[b]:
        out[b].append(int(tok_B[b]))
    done_B |= tok_B == eos_id
    seen_BV[np.arange(B), tok_B] = True
    window_BS[:, P + i] = tok_B
    if done_B.all():
      break
  return sampling._per_prompt(out, eos_id, s.num_return_sequences)


def test_a_document_masked_model_generates_and_scores_as_it_trained():
  """With data.document_mask a document's tokens neither see the EOS before it
  nor count it as a position (lm.data.documents). Scoring and cached decoding
  after a prompt's EOS (doc_eos) equal the training forward pass of a window
  that holds an earlier document, then EOS, then this one; without doc_eos
  they saw the EOS (a context the model never trained with)."""
  m = dataclasses.replace(BASE, position='rope')
  params = _params(m)
  doc = [int(x) for x in jax.random.randint(jax.random.key(5), (9,), 0, 59)]
  window = np.asarray([[7, 8, 9, EOS] + doc], np.int32)
  seg, pos = sampling.documents(window, EOS)
  full = np.asarray(Transformer(m).apply({'params': params}, window, segment_ids_BL=seg,
                                         pos_BL=pos))[0, 4:]  # Logits after doc[0], ...
  logp = np.asarray(jax.nn.log_softmax(full, -1))
  want = [logp[j, doc[j + 1]] for j in range(len(doc) - 1)]
  got = sampling.score(params, m, doc, [EOS], doc_eos=EOS)['logprobs'][1:]
  np.testing.assert_allclose(got, want, atol=1e-5)
  old = sampling.score(params, m, doc, [EOS])['logprobs'][1:]
  assert np.max(np.abs(np.asarray(old) - want)) > 1e-3  # It did differ.
  # Greedy decoding from [EOS] + doc[:4] (one row left-padded by a shorter
  # prompt in the batch) continues as full forwards of the growing document.
  s = SamplingConfig(max_new_tokens=5, greedy=True)
  out = sampling.generate(params, m, [[EOS] + doc[:4], [EOS] + doc[:2]], s, eos_id=-1,
                          doc_eos=EOS)
  # Jitted: op by op, each growing length compiled ~50 primitives (490 compiles).
  forward = jax.jit(lambda x, sg, ps: Transformer(m).apply(
      {'params': params}, x, segment_ids_BL=sg, pos_BL=ps)[0, -1])
  for prompt, (new,) in zip(([EOS] + doc[:4], [EOS] + doc[:2]), out):
    seq = list(prompt)
    for t in new:
      x = np.asarray([seq], np.int32)
      sg, ps = sampling.documents(x, EOS)
      assert int(jnp.argmax(forward(x, sg, ps))) == t
      seq.append(t)


def test_bench_decode_times_both_ways():
  """tools/bench_decode, small, as a command (it had rotted: a moved helper and a
  changed bench_train table crashed it); a subprocess, since its --batches
  would clash with tools.bench_data's in a shared pytest worker."""
  import os
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  r = forked_cli.run([sys.executable, '-m', 'tools.bench_decode', '--models=tiny',
                      '--batches=1', '--new_tokens=4', '--prompt_len=8', '--uncached_steps=1'],
                     cwd=root, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  row = r.stdout.strip().splitlines()[-1].split()
  assert row[:2] == ['tiny', '1'] and float(row[2]) > 0 and float(row[3]) > 0, r.stdout


def test_temperatures_that_overflow_and_untrained_sentinels_are_refused():
  """temperature=inf (or 1e-38) turned the blocked ids' -inf into NaN, which
  categorical then picked; <extra_id_N> past the sentinels a run trained fed
  an id it never saw as one."""
  from lm.tokenizers import ByteTokenizer
  for t in (float('inf'), 1e-38, 1e300):  # 1e300 is inf in float32.
    with pytest.raises(SamplingError, match='must be >= 1e-6 and finite in float32'):
      sampling.validate(SamplingConfig(temperature=t))
  sampling.validate(SamplingConfig(temperature=1e-4))
  sampling.validate(SamplingConfig(temperature=1e30, num_return_sequences=1024))
  with pytest.raises(SamplingError, match=r'num_return_sequences=1025 .* \[1, 1024\]'):
    sampling.validate(SamplingConfig(num_return_sequences=1025))
  tok = ByteTokenizer()
  assert sampling.encode_with_sentinels('a<extra_id_5>b', tok, 384, 6) == [
      *tok.encode('a'), 384 - 1 - 5, *tok.encode('b')]
  with pytest.raises(SamplingError, match=r'trained with 6 sentinels, <extra_id_0> to '
                                          r'<extra_id_5>'):
    sampling.encode_with_sentinels('a<extra_id_50>', tok, 384, 6)
