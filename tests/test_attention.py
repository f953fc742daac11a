"""Every attention path (model.attention) agrees with the xla reference, for
outputs and gradients, under each kind of mask; document masking isolates the
documents of a packed window."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm import model as model_lib
from lm.config import ModelConfig

ON_GPU = jax.devices()[0].platform == 'gpu'
# pallas runs its Triton kernel on GPUs and in interpret mode elsewhere (slow,
# so its cases use the smallest shapes); dot_product is cuDNN on GPUs only.
PATHS = ['chunked', 'dot_product', 'pallas']
TOL = {jnp.float32: 1e-5, jnp.bfloat16: 2e-2}
# float32 means float32: on Ampere and later GPUs XLA's default precision runs
# float32 matmuls in TF32 (10-bit mantissa), which differs from float32 by
# ~1e-4 relative (seen on an H100: 3e-5 to 5e-4 on every path, the reference
# included). The float32 comparisons ask every matmul for full precision.
FP32 = jax.default_matmul_precision('float32')


def _inputs(B, L, S, H, K, Dh, dtype, seed=0):
  ks = jax.random.split(jax.random.key(seed), 3)
  q = jax.random.normal(ks[0], (B, L, H, Dh), jnp.float32).astype(dtype)
  k = jax.random.normal(ks[1], (B, K, S, Dh), jnp.float32).astype(dtype)
  v = jax.random.normal(ks[2], (B, K, S, Dh), jnp.float32).astype(dtype)
  return q, k, v


def _segments(B, L, seed=1):
  """Random document boundaries: ids 0, 0, 1, 1, 1, 2, ... per row."""
  starts = np.random.default_rng(seed).random((B, L)) < 0.1
  starts[:, 0] = False
  return jnp.asarray(np.cumsum(starts, axis=1), jnp.int32)


CASES = {
    # name: (B, L, S, H, K, Dh, causal, mask kind, segments)
    'causal': (2, 32, 32, 4, 4, 16, True, None, False),
    'causal_gqa_segments': (2, 32, 32, 4, 2, 16, True, None, True),
    'padding': (2, 32, 32, 4, 4, 16, False, 'padding', False),
    'bidirectional_segments': (2, 32, 32, 4, 1, 16, False, None, True),
    'cross': (2, 16, 24, 4, 2, 16, False, 'padding', False),
    'decode': (2, 1, 40, 4, 2, 16, False, 'decode', False),
}


# Without GQA: the cases that take cuDNN's packed-document kernel (dot_product, max_docs > 0).
PACKED_CASES = {
    'causal_mha_segments': (2, 32, 32, 4, 4, 16, True, None, True),
    'bidirectional_mha_segments': (2, 32, 32, 4, 4, 16, False, None, True),
}


def _mask(kind, B, L, S):
  if kind == 'padding':  # Row b has S - 3b valid keys.
    return (jnp.arange(S)[None, :] < (S - 3 * jnp.arange(B))[:, None])[:, None, :]
  if kind == 'decode':  # Cache slots filled up to a per-row index.
    return (jnp.arange(S)[None, :] <= jnp.asarray([17, 33])[:B, None])[:, None, :]
  return None


def _run(path, case, dtype, max_docs=0):
  B, L, S, H, K, Dh, causal, mkind, seg = {**CASES, **PACKED_CASES}[case]
  q, k, v = _inputs(B, L, S, H, K, Dh, dtype)
  mask = _mask(mkind, B, L, S)
  seg_BL = _segments(B, L) if seg else None

  def f(q, k, v):
    o = model_lib.attention(path, q, k, v, causal=causal, mask_BLS=mask, seg_BL=seg_BL,
                            block=16, max_docs=max_docs)
    w = jnp.cos(jnp.arange(o.size, dtype=jnp.float32)).reshape(o.shape)
    return (o.astype(jnp.float32) * w).sum(), o

  # Compiled whole: op by op, each primitive compiled on its own (~2x the time).
  (_, o), grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))(q, k, v)
  return o.astype(jnp.float32), [g.astype(jnp.float32) for g in grads]


@functools.lru_cache(maxsize=None)
def _reference(case, dtype):
  """The xla path's result, computed once per case for every path compared to it."""
  with FP32:
    return _run('xla', case, dtype)


def _rel(a, b):
  return float(jnp.linalg.norm(a - b) / jnp.maximum(jnp.linalg.norm(b), 1e-30))


# pallas hands masks it cannot take (padding, cross-attention, decode) to
# chunked, which is tested on those cases already.
_PAIRS = [(p, c) for p in PATHS for c in CASES
          if p != 'pallas' or c in ('causal', 'causal_gqa_segments', 'bidirectional_segments')]


@pytest.mark.parametrize('path,case', _PAIRS)
def test_paths_agree_with_xla_float32(path, case):
  o_ref, g_ref = _reference(case, jnp.float32)
  with FP32:
    o, g = _run(path, case, jnp.float32)
  assert _rel(o, o_ref) < TOL[jnp.float32], (path, case)
  for a, b, name in zip(g, g_ref, 'qkv'):
    assert _rel(a, b) < TOL[jnp.float32], (path, case, 'grad ' + name)


@pytest.mark.parametrize('path', PATHS)
def test_paths_agree_with_xla_bfloat16(path):
  for case in ('causal_gqa_segments', 'cross'):
    o_ref, g_ref = _reference(case, jnp.float32)
    o, g = _run(path, case, jnp.bfloat16)
    assert _rel(o, o_ref) < TOL[jnp.bfloat16], (path, case)
    for a, b in zip(g, g_ref):
      assert _rel(a, b) < TOL[jnp.bfloat16], (path, case)


def test_doc_runs_describe_each_rows_documents():
  """The packed-document description handed to cuDNN: start offsets and
  lengths of each row's runs of equal ids, -1 in unused slots."""
  seg = jnp.asarray([[5, 5, 7, 7, 7, 9], [0, 0, 0, 0, 0, 0]], jnp.int32)
  off, lens = model_lib.doc_runs(seg, 4)
  assert off.tolist() == [[0, 2, 5, -1, -1], [0, -1, -1, -1, -1]]
  assert lens.tolist() == [[2, 3, 1, -1], [6, -1, -1, -1]]
  seg = _segments(2, 32)
  off, lens = model_lib.doc_runs(seg, 32)
  for b in range(2):
    n = int(seg[b, -1]) + 1  # ids 0..n-1 in order
    assert lens[b, :n].tolist() == np.bincount(np.asarray(seg[b]), minlength=n).tolist()
    assert off[b, :n].tolist() == [int(np.argmax(np.asarray(seg[b]) == i)) for i in range(n)]
    assert (lens[b, n:] == -1).all() and (off[b, n:] == -1).all()


def test_packed_documents_need_hopper_read_from_the_device():
  from types import SimpleNamespace as NS
  assert model_lib._hopper(NS(compute_capability='9.0'))
  assert model_lib._hopper(NS(compute_capability='10.3'))
  assert not model_lib._hopper(NS(compute_capability='8.6'))
  assert not model_lib._hopper(NS(compute_capability='gfx90a'))  # ROCm names its targets.
  assert not model_lib._hopper(jax.devices('cpu')[0])


@pytest.mark.skipif(not ON_GPU, reason='cuDNN\'s packed-document kernel runs on NVIDIA GPUs '
                    '(Hopper and later) only')
@pytest.mark.parametrize('case', [*PACKED_CASES, 'causal_gqa_segments'])
def test_dot_product_packed_documents_agree_with_xla(case):
  """bfloat16 dot_product with document masks through cuDNN's packed kernel
  (max_docs 32 covers every row; GQA keeps to the dense mask) and through its
  fallback, the dense mask (max_docs 1: every row has more documents)."""
  o_ref, g_ref = _reference(case, jnp.float32)
  assert int((_segments(2, 32)[:, -1]).min()) >= 1  # Each row has >= 2 documents.
  for max_docs in (32, 1):
    o, g = _run('dot_product', case, jnp.bfloat16, max_docs=max_docs)
    assert _rel(o, o_ref) < TOL[jnp.bfloat16], (case, max_docs)
    for a, b, name in zip(g, g_ref, 'qkv'):
      assert _rel(a, b) < TOL[jnp.bfloat16], (case, max_docs, 'grad ' + name)


def test_auto_picks_by_backend_and_length():
  gpu = ON_GPU
  assert model_lib.resolve_attention('auto', 512, 0.0) == ('dot_product' if gpu else 'xla')
  assert model_lib.resolve_attention('auto', 8192, 0.0) == ('dot_product' if gpu else 'chunked')
  assert model_lib.resolve_attention('chunked', 512, 0.1) == 'xla'  # Dropout: xla only.


def _doc_model(attention):
  return ModelConfig(vocab_size=64, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2,
                     max_len=32, position='rope', attention=attention, attn_block=8)


@pytest.mark.parametrize('attention', ['xla', 'chunked'])
def test_document_mask_isolates_documents(attention):
  """Changing every token of one document changes no logit of another."""
  c = _doc_model(attention)
  m = model_lib.Transformer(c)
  tokens = jax.random.randint(jax.random.key(0), (1, 32), 1, 64)
  seg = jnp.asarray([[0] * 10 + [1] * 12 + [2] * 10], jnp.int32)
  pos = jnp.asarray([list(range(10)) + list(range(12)) + list(range(10))], jnp.int32)
  params = jax.jit(m.init)(jax.random.key(1), tokens)
  other = tokens.at[:, 10:22].set((tokens[:, 10:22] + 7) % 64)  # Rewrite document 1.

  @jax.jit
  def logits(t, seg_BL):
    return m.apply(params, t, pos_BL=pos, segment_ids_BL=seg_BL)

  a, b = logits(tokens, seg), logits(other, seg)
  np.testing.assert_array_equal(a[:, :10], b[:, :10])
  np.testing.assert_array_equal(a[:, 22:], b[:, 22:])  # Document 2 comes after 1.
  assert not np.allclose(a[:, 10:22], b[:, 10:22])
  # Without the mask, document 2 sees document 1.
  a, b = logits(tokens, None), logits(other, None)
  assert not np.allclose(a[:, 22:], b[:, 22:])


def test_model_paths_agree_end_to_end():
  """The whole model (GQA, rope, segments) gives the same logits on every path."""
  tokens = jax.random.randint(jax.random.key(0), (2, 32), 0, 64)
  seg = _segments(2, 32)
  params = jax.jit(model_lib.Transformer(_doc_model('xla')).init)(jax.random.key(1), tokens)
  with FP32:
    ref = jax.jit(model_lib.Transformer(_doc_model('xla')).apply)(params, tokens,
                                                                   segment_ids_BL=seg)
    for attention in ['chunked', 'dot_product']:
      out = jax.jit(model_lib.Transformer(_doc_model(attention)).apply)(params, tokens,
                                                                        segment_ids_BL=seg)
      np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)
