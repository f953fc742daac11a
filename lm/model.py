"""Transformers (decoder, encoder, encoder-decoder) as flax.linen modules used as
pure functions.

Shape letters (also in einsum strings):
  B batch, L length (queries), S length (keys), D d_model, H query heads,
  K kv heads, G query heads per kv head (H = K * G), Dh head dim,
  F MLP hidden, V vocab.

Parameters carry logical axis names (embed, heads, kv, head_dim, mlp, vocab,
layers); activations carry (batch, length, embed). The rules table in the
config maps those to mesh axes; this file never names a mesh axis.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from lm.config import ModelConfig

Array = jax.Array
_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def _init(std: float, axes: tuple[str | None, ...]):
  return nn.with_logical_partitioning(nn.initializers.normal(std), axes)


def _constrain(x: Array, axes: tuple[str | None, ...]) -> Array:
  return nn.with_logical_constraint(x, axes)


# --- Parametrization (model.parametrization, model.depth_base) ----------------
# muP for Adam: Yang et al. 2022 (Tensor Programs V), Table 3, in the
# equivalent output-multiplier form of its Table 8 (which allows tied
# embeddings). With m = d_model / base_width:
#   hidden weights (both dims grow with width: q, k, v, attention out, MLP up,
#     gate and down, BERT's mlm_dense): init std init_std / sqrt(m), Adam LR
#     lr / m (lm/optimizer.py);
#   embeddings, biases, norm scales and the output matrix: init_std and lr as
#     in SP; the logits are multiplied by 1 / m (so at init they shrink like
#     m^-1/2 and their Adam updates stay O(1));
#   attention logits q.k scaled by 1/Dh instead of 1/sqrt(Dh).
# At m = 1 (d_model = base_width) every multiplier is 1: muP equals SP there,
# so hyperparameters tuned at base_width carry over.
# Depth (model.depth_base > 0; CompleteP, Dey et al. 2025, Table 1, and
# depth-muP, Yang et al. 2023 / Bordelon et al. 2023): each residual branch is
# multiplied by (depth_base / layers)^alpha, the branch output projections are
# initialised as at depth_base, and the hidden weights' and in-block vectors'
# Adam LR by (layers / depth_base)^(alpha - 1) (1 for alpha = 1).


def hidden_std(c: ModelConfig) -> float:
  """Init std of hidden (width x width) weights: variance ~ 1 / fan_in in muP."""
  return c.init_std / math.sqrt(c.width_mult)


def out_proj_std(c: ModelConfig, layers: int) -> float:
  """Init std of a residual branch's last projection in a stack of `layers`
  blocks (GPT-2's 1 / sqrt(2 layers); each stack by its own depth, as its branch
  multiplier; with depth scaling, as at depth_base: the multiplier does the rest)."""
  return hidden_std(c) / math.sqrt(2 * (c.depth_base or layers))


def output_multiplier(c: ModelConfig) -> float:
  """Multiplies the final hidden states before the output matrix: 1 / m."""
  return 1.0 / c.width_mult


def attn_multiplier(c: ModelConfig) -> float:
  """Multiplies the queries on top of 1/sqrt(Dh). muP: sqrt(Dh_base) / Dh in
  all, where Dh_base is the head dim at base_width. An explicit head_dim is
  the same at every width (widen by adding heads); head_dim 0 means d_model /
  heads, which grows with width at a fixed head count (widen by d_model only:
  with head_dim 0 and more heads than the base model the multiplier is wrong)."""
  if c.parametrization != 'mup':
    return 1.0
  base_dh = c.head_dim or (c.base_width or c.d_model) / c.num_heads
  return math.sqrt(base_dh / c.dh)


def branch_multiplier(c: ModelConfig, layers: int) -> float:
  """Multiplies each residual branch of a stack of `layers` blocks."""
  if not c.depth_base:
    return 1.0
  return (c.depth_base / layers) ** c.depth_alpha


def sinusoidal_table(length: int, d: int) -> Array:
  """PE(p, 2i) = sin(p / 10000^(2i/d)), PE(p, 2i+1) = cos(...) (Vaswani 2017)."""
  pos_L1 = jnp.arange(length, dtype=jnp.float32)[:, None]
  inv_freq = 1.0 / (10_000.0 ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d))
  ang_LX = pos_L1 * inv_freq[None, :]
  pe_LD = jnp.zeros((length, d), jnp.float32)
  pe_LD = pe_LD.at[:, 0::2].set(jnp.sin(ang_LX))
  return pe_LD.at[:, 1::2].set(jnp.cos(ang_LX[:, : d // 2]))


def apply_rope(x_BLNDh: Array, pos_BL: Array, theta: float) -> Array:
  """Rotary embedding in the rotate-half layout (as Llama/GPT-NeoX use)."""
  dh = x_BLNDh.shape[-1]
  inv_freq = 1.0 / (theta ** (jnp.arange(0, dh, 2, dtype=jnp.float32) / dh))
  ang_BLX = pos_BL[..., None].astype(jnp.float32) * inv_freq
  cos, sin = jnp.cos(ang_BLX)[:, :, None, :], jnp.sin(ang_BLX)[:, :, None, :]
  x1, x2 = jnp.split(x_BLNDh.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BLNDh.dtype)


def attn_blocks(L: int, block: int) -> list[tuple[int, int]]:
  """[q0, q1) query ranges of at most `block` (0: one block of L)."""
  block = block or L
  return [(q0, min(q0 + block, L)) for q0 in range(0, L, block)]


def causal_bias(q0: int, q1: int) -> Array:
  """(q1-q0) x q1 float32: 0 where key <= query, a large negative number elsewhere."""
  q_pos = jnp.arange(q0, q1)[:, None]
  k_pos = jnp.arange(q1)[None, :]
  return jnp.where(k_pos <= q_pos, 0.0, jnp.finfo(jnp.float32).min)


class Norm(nn.Module):
  """LayerNorm or RMSNorm over the last axis, computed in float32."""
  cfg: ModelConfig
  axis_name: str = 'embed'

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = self.cfg
    d = x.shape[-1]
    pdt = _DTYPES[c.param_dtype]
    x32 = x.astype(jnp.float32)
    if c.norm == 'layernorm':
      x32 = x32 - x32.mean(-1, keepdims=True)
    x32 = x32 * jax.lax.rsqrt((x32 * x32).mean(-1, keepdims=True) + c.norm_eps)
    scale = self.param('scale', nn.with_logical_partitioning(
        nn.initializers.ones, (self.axis_name,)), (d,), pdt)
    y = x32 * scale.astype(jnp.float32)
    if c.use_bias and c.norm == 'layernorm':
      bias = self.param('bias', nn.with_logical_partitioning(
          nn.initializers.zeros, (self.axis_name,)), (d,), pdt)
      y = y + bias.astype(jnp.float32)
    return y.astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _einsum_f32(spec: str, a: Array, b: Array) -> Array:
  return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)


def _einsum_f32_fwd(spec: str, a: Array, b: Array):
  return _einsum_f32(spec, a, b), (a, b)


def _einsum_f32_bwd(spec: str, res: tuple[Array, Array], g: Array):
  a, b = res  # The output in the operands' dtype has the same transposes, run in that dtype.
  _, vjp = jax.vjp(lambda a, b: jnp.einsum(spec, a, b), a, b)
  return vjp(g.astype(a.dtype))


_einsum_f32.defvjp(_einsum_f32_fwd, _einsum_f32_bwd)


def einsum_f32(spec: str, a: Array, b: Array) -> Array:
  """jnp.einsum with a float32 result (float32 accumulation) for bfloat16
  operands, whose gradient matmuls also run in bfloat16.

  Plain autodiff would hand the float32 cotangent to both transposed matmuls,
  which then run in float32: for the LM head that was ~10 ms of a 120 ms
  gpt2_medium bfloat16 step on an H100 (TF32 GEMMs in tools/bench_train's
  profile, 2026-11-27). Casting the cotangent to bfloat16 (what every
  bfloat16 layer's output already does) keeps them bfloat16 GEMMs with
  float32 accumulation. Other dtypes, mixed ones included, take the plain
  path. The result is tagged 'einsum_f32', since a remat policy cannot see
  the matmul inside the custom VJP (`dots_saveable` saves it by that name)."""
  if not a.dtype == b.dtype == jnp.bfloat16:
    return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)
  return checkpoint_name(_einsum_f32(spec, a, b), 'einsum_f32')


def attend(q_BKGLDh: Array, k_BKSDh: Array, v_BKSDh: Array, bias_LS: Array,
           drop: nn.Dropout | None = None, train: bool = False) -> Array:
  """Softmax(q k^T + bias) v with float32 logits; q is pre-scaled. -> BxKxGxLxDh.

  Heads-major layout, so both matmuls batch over (B, K) with no transposes and
  the G query heads of a kv head stack into one taller matmul. The softmax
  divides after the second matmul (on L x Dh values, not L x S weights):
  dropout(e) / sum(e) equals dropout(softmax), so dropout stays exact.
  bias_LS: L x S, or B x 1 x 1 x L x S (padding masks).
  """
  s_BKGLS = einsum_f32('BKGLd,BKSd->BKGLS', q_BKGLDh, k_BKSDh) + bias_LS
  e_BKGLS = jnp.exp(s_BKGLS - jax.lax.stop_gradient(s_BKGLS.max(-1, keepdims=True)))
  z_BKGL1 = e_BKGLS.sum(-1, keepdims=True)
  if drop is not None:
    e_BKGLS = drop(e_BKGLS, deterministic=not train)
  o_BKGLDh = einsum_f32('BKGLS,BKSd->BKGLd', e_BKGLS.astype(v_BKSDh.dtype), v_BKSDh)
  return (o_BKGLDh / z_BKGL1).astype(v_BKSDh.dtype)


_NEG = float(jnp.finfo(jnp.float32).min)


def mask_bias(mask_BLS: Array) -> Array:
  """Boolean B x L x S (True = may attend) -> additive B x 1 x 1 x L x S float32."""
  return jnp.where(mask_BLS, 0.0, _NEG)[:, None, None]


def _allowed(mask_BLS: Array | None, seg_BL: Array | None, seg_BS: Array | None
             ) -> Array | None:
  """The explicit mask and the same-document mask as one boolean B x L|1 x S."""
  same_BLS = None if seg_BL is None else seg_BL[:, :, None] == seg_BS[:, None, :]
  if mask_BLS is None or same_BLS is None:
    return same_BLS if mask_BLS is None else mask_BLS
  return mask_BLS & same_BLS


def attention_xla(q_BLHDh: Array, k_BKSDh: Array, v_BKSDh: Array, *, causal: bool,
                  mask_BLS: Array | None, seg_BL: Array | None, block: int,
                  drop: nn.Dropout | None, train: bool) -> Array:
  """Einsum + float32 softmax + einsum (`attend`), the reference every path is
  tested against. Causal attention runs in query blocks: block i attends only
  keys [0, end_i), which skips the fully masked upper triangle (~1.9x faster
  fwd+bwd on CPU at L=512 with 4 blocks)."""
  B, L, H, Dh = q_BLHDh.shape
  K = k_BKSDh.shape[1]
  q_BKGLDh = (q_BLHDh.reshape(B, L, K, H // K, Dh).transpose(0, 2, 3, 1, 4)
              * jnp.asarray(1.0 / math.sqrt(Dh), q_BLHDh.dtype))
  if not causal:
    allowed = _allowed(mask_BLS, seg_BL, seg_BL)
    bias = 0.0 if allowed is None else mask_bias(allowed)
    o_BKGLDh = attend(q_BKGLDh, k_BKSDh, v_BKSDh, bias, drop, train)
  else:
    outs = []
    for q0, q1 in attn_blocks(L, block):
      bias = causal_bias(q0, q1)
      if mask_BLS is not None:  # An explicit mask as well (no caller in lm passes both).
        rows = mask_BLS if mask_BLS.shape[1] == 1 else mask_BLS[:, q0:q1]
        bias = bias + mask_bias(rows[:, :, :q1])
      if seg_BL is not None:
        bias = bias + mask_bias(seg_BL[:, q0:q1, None] == seg_BL[:, None, :q1])
      outs.append(attend(q_BKGLDh[:, :, :, q0:q1], k_BKSDh[:, :, :q1], v_BKSDh[:, :, :q1],
                         bias, drop, train))
    o_BKGLDh = jnp.concatenate(outs, axis=3) if len(outs) > 1 else outs[0]
  return o_BKGLDh.transpose(0, 3, 1, 2, 4).reshape(B, L, H, Dh)


def _block_ok(q0: int, l: int, k0, kb: int, S: int, causal: bool, m_BLS, seg_BL, seg_BS):
  """Which of the l x kb (query, key) pairs of a block may attend -> B|1 x 1 x 1 x l x kb."""
  q_pos, k_pos = q0 + jnp.arange(l), k0 + jnp.arange(kb)
  ok = jnp.broadcast_to(k_pos < S, (1, l, kb))  # Keys past S are padding.
  if causal:
    ok = ok & (k_pos[None, :] <= q_pos[:, None])[None]
  if m_BLS is not None:
    rows = m_BLS if m_BLS.shape[1] == 1 else jax.lax.dynamic_slice_in_dim(m_BLS, q0, l, 1)
    ok = ok & jax.lax.dynamic_slice_in_dim(rows, k0, kb, 2)
  if seg_BL is not None:
    ok = ok & (seg_BL[:, q0:q0 + l, None]
               == jax.lax.dynamic_slice_in_dim(seg_BS, k0, kb, 1)[:, None])
  return ok[:, None, None]


def _n_key_blocks(q1: int, kb: int, n_all: int, causal: bool) -> int:
  return min(-(-q1 // kb), n_all) if causal else n_all


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8, 9))
def _flash(q_BKGLDh, k_BKSDh, v_BKSDh, m_BLS, seg_BL, seg_BS, causal: bool, qb: int,
           kb: int, S: int):
  return _flash_fwd(q_BKGLDh, k_BKSDh, v_BKSDh, m_BLS, seg_BL, seg_BS, causal, qb, kb, S)[0]


def _flash_fwd(q_BKGLDh, k_BKSDh, v_BKSDh, m_BLS, seg_BL, seg_BS, causal, qb, kb, S):
  B, K, G, L, Dh = q_BKGLDh.shape
  dt, n_all = v_BKSDh.dtype, k_BKSDh.shape[2] // kb
  outs, lses = [], []
  for q0 in range(0, L, qb):
    l = min(qb, L - q0)
    q_i = q_BKGLDh[:, :, :, q0:q0 + l]

    def step(carry, j, q0=q0, l=l, q_i=q_i):
      m_i, z_i, acc_i = carry
      k0 = j * kb
      k_j = jax.lax.dynamic_slice_in_dim(k_BKSDh, k0, kb, 2)
      v_j = jax.lax.dynamic_slice_in_dim(v_BKSDh, k0, kb, 2)
      ok = _block_ok(q0, l, k0, kb, S, causal, m_BLS, seg_BL, seg_BS)
      s_ = jnp.where(ok, jnp.einsum('BKGld,BKkd->BKGlk', q_i, k_j,
                                    preferred_element_type=jnp.float32), _NEG)
      m_new = jnp.maximum(m_i, s_.max(-1))
      p_ = jnp.where(ok, jnp.exp(s_ - m_new[..., None]), 0.0)
      corr = jnp.exp(m_i - m_new)
      acc_i = acc_i * corr[..., None] + jnp.einsum('BKGlk,BKkd->BKGld', p_.astype(dt), v_j,
                                                   preferred_element_type=jnp.float32)
      return (m_new, z_i * corr + p_.sum(-1), acc_i), None

    init = (jnp.full((B, K, G, l), _NEG, jnp.float32), jnp.zeros((B, K, G, l), jnp.float32),
            jnp.zeros((B, K, G, l, Dh), jnp.float32))
    (m_i, z_i, acc_i), _ = jax.lax.scan(
        step, init, jnp.arange(_n_key_blocks(q0 + l, kb, n_all, causal)))
    z_i = jnp.maximum(z_i, 1e-30)  # Rows with no allowed key: output 0.
    outs.append((acc_i / z_i[..., None]).astype(dt))
    lses.append(m_i + jnp.log(z_i))
  o = jnp.concatenate(outs, axis=3)
  lse = jnp.concatenate(lses, axis=3)
  return o, (q_BKGLDh, k_BKSDh, v_BKSDh, m_BLS, seg_BL, seg_BS, o, lse)


def _flash_bwd(causal, qb, kb, S, res, do_BKGLDh):
  """FlashAttention-2's backward (Dao 2023, Alg. 2): recompute each block's
  probabilities from the saved log-normaliser; only O(L x block) is live."""
  q_BKGLDh, k_BKSDh, v_BKSDh, m_BLS, seg_BL, seg_BS, o_BKGLDh, lse_BKGL = res
  L = q_BKGLDh.shape[3]
  dt, n_all = v_BKSDh.dtype, k_BKSDh.shape[2] // kb
  d_BKGL = (do_BKGLDh.astype(jnp.float32) * o_BKGLDh.astype(jnp.float32)).sum(-1)
  dk = jnp.zeros(k_BKSDh.shape, jnp.float32)
  dv = jnp.zeros(v_BKSDh.shape, jnp.float32)
  dqs = []
  for q0 in range(0, L, qb):
    l = min(qb, L - q0)
    sl = slice(q0, q0 + l)
    q_i, do_i = q_BKGLDh[:, :, :, sl], do_BKGLDh[:, :, :, sl].astype(dt)
    lse_i, d_i = lse_BKGL[:, :, :, sl], d_BKGL[:, :, :, sl]

    def step(carry, j, q0=q0, l=l, q_i=q_i, do_i=do_i, lse_i=lse_i, d_i=d_i):
      dq_i, dk, dv = carry
      k0 = j * kb
      k_j = jax.lax.dynamic_slice_in_dim(k_BKSDh, k0, kb, 2)
      v_j = jax.lax.dynamic_slice_in_dim(v_BKSDh, k0, kb, 2)
      ok = _block_ok(q0, l, k0, kb, S, causal, m_BLS, seg_BL, seg_BS)
      s_ = jnp.einsum('BKGld,BKkd->BKGlk', q_i, k_j, preferred_element_type=jnp.float32)
      p_ = jnp.where(ok, jnp.exp(s_ - lse_i[..., None]), 0.0)
      dv_j = jnp.einsum('BKGlk,BKGld->BKkd', p_.astype(dt), do_i,
                        preferred_element_type=jnp.float32)
      dp_ = jnp.einsum('BKGld,BKkd->BKGlk', do_i, v_j, preferred_element_type=jnp.float32)
      ds_ = (p_ * (dp_ - d_i[..., None])).astype(dt)
      dq_i = dq_i + jnp.einsum('BKGlk,BKkd->BKGld', ds_, k_j,
                               preferred_element_type=jnp.float32)
      dk_j = jnp.einsum('BKGlk,BKGld->BKkd', ds_, q_i, preferred_element_type=jnp.float32)
      dk = jax.lax.dynamic_update_slice_in_dim(
          dk, jax.lax.dynamic_slice_in_dim(dk, k0, kb, 2) + dk_j, k0, 2)
      dv = jax.lax.dynamic_update_slice_in_dim(
          dv, jax.lax.dynamic_slice_in_dim(dv, k0, kb, 2) + dv_j, k0, 2)
      return (dq_i, dk, dv), None

    init = (jnp.zeros(q_i.shape, jnp.float32), dk, dv)
    (dq_i, dk, dv), _ = jax.lax.scan(
        step, init, jnp.arange(_n_key_blocks(q0 + l, kb, n_all, causal)))
    dqs.append(dq_i)
  dq = jnp.concatenate(dqs, axis=3).astype(q_BKGLDh.dtype)
  return dq, dk.astype(k_BKSDh.dtype), dv.astype(v_BKSDh.dtype), None, None, None


_flash.defvjp(_flash_fwd, _flash_bwd)


CHUNKED_BLOCK = 512  # The chunked path's block where model.attn_block is 0 (one block
# would hold all L x S scores, which the path exists to avoid).


def attention_chunked(q_BLHDh: Array, k_BKSDh: Array, v_BKSDh: Array, *, causal: bool,
                      mask_BLS: Array | None, seg_BL: Array | None, block: int) -> Array:
  """Online softmax over key blocks (Milakov & Gimelshein 2018; FlashAttention's
  recurrence, Dao et al. 2022) in pure JAX: runs on every backend.

  Each query block scans over the key blocks it needs (causal: those up to its
  end) carrying the running max, normaliser and float32 accumulator; the
  backward pass (a custom VJP) recomputes each block's probabilities from the
  saved log-normaliser, so only O(L x block) scores are ever live instead of
  O(L x S), forward and backward. Rows with no allowed key return 0."""
  B, L, H, Dh = q_BLHDh.shape
  K, S = k_BKSDh.shape[1], k_BKSDh.shape[2]
  qb = min(block or CHUNKED_BLOCK, L)
  kb = min(block or CHUNKED_BLOCK, S)
  pad = (-S) % kb
  if pad:  # Padded keys are masked out (_block_ok).
    k_BKSDh = jnp.pad(k_BKSDh, ((0, 0), (0, 0), (0, pad), (0, 0)))
    v_BKSDh = jnp.pad(v_BKSDh, ((0, 0), (0, 0), (0, pad), (0, 0)))
  q_BKGLDh = (q_BLHDh.reshape(B, L, K, H // K, Dh).transpose(0, 2, 3, 1, 4)
              * jnp.asarray(1.0 / math.sqrt(Dh), q_BLHDh.dtype))
  seg_BS = None if seg_BL is None else jnp.pad(seg_BL, ((0, 0), (0, S + pad - L)))
  m_BLS = None if mask_BLS is None else jnp.pad(mask_BLS, ((0, 0), (0, 0), (0, pad)))
  o_BKGLDh = _flash(q_BKGLDh, k_BKSDh, v_BKSDh.astype(q_BKGLDh.dtype), m_BLS, seg_BL,
                    seg_BS, causal, qb, kb, S)
  return o_BKGLDh.transpose(0, 3, 1, 2, 4).reshape(B, L, H, Dh)


def _doc_starts(seg_BL: Array) -> Array:
  """True where a document (a run of equal segment ids) starts: B x L."""
  first_B1 = jnp.ones((seg_BL.shape[0], 1), bool)
  return jnp.concatenate([first_B1, seg_BL[:, 1:] != seg_BL[:, :-1]], axis=1)


def doc_runs(seg_BL: Array, max_docs: int) -> tuple[Array, Array]:
  """(offsets B x max_docs+1, lengths B x max_docs) of each row's runs of equal
  segment ids, unused slots -1: cuDNN's packed-sequence description of a window.
  E.g. [[5, 5, 7, 7, 7, 9]] with 4 slots -> [[0, 2, 5, -1, -1]], [[2, 3, 1, -1]]."""
  B, L = seg_BL.shape
  new_BL = _doc_starts(seg_BL)
  start_BM = jax.vmap(lambda n: jnp.nonzero(n, size=max_docs, fill_value=L)[0])(new_BL)
  start_BM = start_BM.astype(jnp.int32)
  end_BM = jnp.concatenate([start_BM[:, 1:], jnp.full((B, 1), L, jnp.int32)], axis=1)
  used_BM = start_BM < L
  off_BM1 = jnp.concatenate([jnp.where(used_BM, start_BM, -1),
                             jnp.full((B, 1), -1, jnp.int32)], axis=1)
  return off_BM1, jnp.where(used_BM, end_BM - start_BM, -1)


def _cudnn_packed(q_BLHDh: Array, k_BSKDh: Array, v_BSKDh: Array, seg_BL: Array, *,
                  causal: bool, max_docs: int) -> Array:
  """cuDNN flash attention over packed documents (its ragged "THD" layout):
  each run of equal segment ids (documents are contiguous, as the data
  pipeline makes them) is its own sequence, given by its start offset and
  length, so the kernel skips cross-document tiles and takes no B x L x S
  mask. Holds for windows of at most `max_docs` runs; attention_dot_product
  checks, and keeps to K == H (jax 0.10.2 strides the key offsets by the
  query's head count)."""
  from jax._src.cudnn import fused_attention_stablehlo as cudnn_fa  # No public API takes offsets.
  off_BM1, len_BM = doc_runs(seg_BL, max_docs)
  kind = cudnn_fa.MaskType.PADDING_CAUSAL if causal else cudnn_fa.MaskType.PADDING
  return cudnn_fa.dot_product_attention(
      q_BLHDh, k_BSKDh, v_BSKDh, q_seqlen=len_BM, kv_seqlen=len_BM, q_offsets=off_BM1,
      kv_offsets=off_BM1, scale=1.0 / math.sqrt(q_BLHDh.shape[-1]), mask_type=kind,
      qkv_layout='BTNH')


def _hopper(dev) -> bool:
  """Compute capability 9.0 or later (an NVIDIA device's '9.0'; others: False)."""
  try:
    return tuple(int(x) for x in str(dev.compute_capability).split('.')[:2]) >= (9, 0)
  except (AttributeError, ValueError):
    return False


def attention_dot_product(q_BLHDh: Array, k_BKSDh: Array, v_BKSDh: Array, *, causal: bool,
                          mask_BLS: Array | None, seg_BL: Array | None,
                          max_docs: int = 0) -> Array:
  """jax.nn.dot_product_attention: cuDNN's fused flash attention on NVIDIA GPUs
  (bfloat16/float16), JAX's XLA implementation elsewhere. cuDNN takes a mask
  as a dense B x 1 x L x S bias, which it reads and differentiates. With
  `max_docs` > 0, document masks of self-attention without GQA go to cuDNN's
  packed-document kernel (_cudnn_packed) on Hopper and later when no row of
  the batch has more documents than that, the dense mask otherwise: a
  lax.cond, whose gradient keeps both branches' residuals (the one not taken
  zero-filled), so the dense mask's memory is not saved. Measured on an H100
  (tools/bench_train.py): no faster, 1.6 GiB more; off by default."""
  B, L, H, Dh = q_BLHDh.shape
  dt = q_BLHDh.dtype
  k_BSKDh, v_BSKDh = k_BKSDh.transpose(0, 2, 1, 3), v_BKSDh.transpose(0, 2, 1, 3)
  dev = jax.devices()[0]
  gpu = dev.platform == 'gpu'
  impl = 'cudnn' if gpu and dt in (jnp.bfloat16, jnp.float16) and Dh % 8 == 0 else 'xla'

  def dense(q_BLHDh, k_BSKDh, v_BSKDh):
    allowed = _allowed(mask_BLS, seg_BL, seg_BL)
    if allowed is not None:  # cuDNN takes masks of the full B x 1 x L x S shape only.
      allowed = jnp.broadcast_to(allowed, (B, L, k_BSKDh.shape[1]))[:, None]
    return jax.nn.dot_product_attention(
        q_BLHDh, k_BSKDh, v_BSKDh, mask=allowed,
        is_causal=causal, scale=1.0 / math.sqrt(Dh), implementation=impl)

  if (impl != 'cudnn' or seg_BL is None or mask_BLS is not None or max_docs <= 0
      or k_BSKDh.shape[1] != L or k_BSKDh.shape[2] != H or not _hopper(dev)):
    return dense(q_BLHDh, k_BSKDh, v_BSKDh)
  docs = _doc_starts(seg_BL).sum(axis=1).max()
  packed = functools.partial(_cudnn_packed, seg_BL=seg_BL, causal=causal, max_docs=max_docs)
  return jax.lax.cond(docs <= max_docs, packed, dense, q_BLHDh, k_BSKDh, v_BSKDh)


def attention_pallas(q_BLHDh: Array, k_BKSDh: Array, v_BKSDh: Array, *, causal: bool,
                     mask_BLS: Array | None, seg_BL: Array | None, block: int) -> Array:
  """JAX's Pallas flash attention (jax.experimental.pallas.ops.gpu.attention,
  a Triton kernel; interpret mode off GPUs, for tests). It takes self-attention
  with causal and segment masks; anything else (cross-attention, padding or
  decode masks) runs the `chunked` path."""
  B, L, H, Dh = q_BLHDh.shape
  K, S = k_BKSDh.shape[1], k_BKSDh.shape[2]
  if mask_BLS is not None or S != L or L % 16:  # The kernel's blocks must divide L.
    return attention_chunked(q_BLHDh, k_BKSDh, v_BKSDh, causal=causal, mask_BLS=mask_BLS,
                             seg_BL=seg_BL, block=block)
  from jax.experimental.pallas.ops.gpu import attention as pallas_attention
  k_BSHDh = jnp.repeat(k_BKSDh.transpose(0, 2, 1, 3), H // K, axis=2)
  v_BSHDh = jnp.repeat(v_BKSDh.transpose(0, 2, 1, 3), H // K, axis=2)
  b = 128
  while L % b:  # The largest power of two <= 128 dividing L (>= 16).
    b //= 2
  small = min(32, b)
  sizes = pallas_attention.BlockSizes(block_q=b, block_k=b, block_q_dkv=small,
                                      block_kv_dkv=small, block_q_dq=small,
                                      block_kv_dq=small)
  return pallas_attention.mha(
      q_BLHDh, k_BSHDh, v_BSHDh, None if seg_BL is None else seg_BL.astype(jnp.int32),
      sm_scale=1.0 / math.sqrt(Dh), causal=causal, block_sizes=sizes,
      interpret=jax.devices()[0].platform != 'gpu')


ATTENTION_PATHS = {'xla': attention_xla, 'chunked': attention_chunked,
                   'dot_product': attention_dot_product, 'pallas': attention_pallas}


def resolve_attention(path: str, length: int, dropout: float) -> str:
  """`auto`: cuDNN flash attention (dot_product) on GPUs; elsewhere the einsum
  path up to 2048 tokens and the O(L x block)-memory chunked path beyond.
  Attention dropout exists only on the xla path."""
  if dropout > 0:
    return 'xla'
  if path != 'auto':
    return path
  if jax.devices()[0].platform == 'gpu':
    return 'dot_product'
  return 'xla' if length <= 2048 else 'chunked'


def attention(path: str, q_BLHDh: Array, k_BKSDh: Array, v_BKSDh: Array, *, causal: bool,
              mask_BLS: Array | None = None, seg_BL: Array | None = None, block: int = 128,
              drop: nn.Dropout | None = None, train: bool = False, max_docs: int = 0) -> Array:
  """Scaled dot-product attention by the named path (model.attention) -> BxLxHxDh.

  q_BLHDh: queries; k_BKSDh, v_BKSDh: keys and values, heads-major (the KV
  cache's layout), K dividing H (GQA). causal: query i sees keys <= i;
  mask_BLS: boolean B x L|1 x S (True = may attend; padding, decoding,
  cross-attention); seg_BL: document ids of a packed self-attention window
  (a query sees only keys of its own document)."""
  path = resolve_attention(path, max(q_BLHDh.shape[1], k_BKSDh.shape[2]),
                           drop.rate if drop is not None and train else 0.0)
  kw = dict(causal=causal, mask_BLS=mask_BLS, seg_BL=seg_BL)
  if path == 'xla':
    return attention_xla(q_BLHDh, k_BKSDh, v_BKSDh, block=block, drop=drop, train=train, **kw)
  if path == 'dot_product':
    return attention_dot_product(q_BLHDh, k_BKSDh, v_BKSDh, max_docs=max_docs, **kw)
  return ATTENTION_PATHS[path](q_BLHDh, k_BKSDh, v_BKSDh, block=block, **kw)


class Attention(nn.Module):
  """Multi-head attention with grouped-query K/V heads.

  Self-attention is causal by default; `mask_BLS` replaces the causal mask
  (padding masks, bidirectional encoders, decoding); `seg_BL` (document ids
  of packed windows) keeps self-attention within each document. With `cache` (a dict of
  fixed-size B x K x S x Dh `k` and `v`) the new keys and values are written at
  slot `index` and the queries attend to the whole cache under `mask_BLS`.
  Cross-attention (`cross=True`) takes keys and values from `kv_BSD`, or from a
  cache that already holds them.
  """
  cfg: ModelConfig
  layers: int  # Blocks in this stack (the output projection's init).
  cross: bool = False

  @nn.compact
  def __call__(self, x_BLD: Array, pos_BL: Array, train: bool,
               mask_BLS: Array | None = None, cache: dict | None = None,
               index: Array | None = None, kv_BSD: Array | None = None,
               seg_BL: Array | None = None) -> tuple[Array, dict | None]:
    c = self.cfg
    H, K, Dh = c.num_heads, c.kv_heads, c.dh
    dt, pdt = _DTYPES[c.dtype], _DTYPES[c.param_dtype]

    q_axes, kv_axes = ('embed', 'heads', 'head_dim'), ('embed', 'kv', 'head_dim')

    def proj(names: tuple[str, ...], x: Array, heads: int) -> list[Array]:
      """x_BxLxD -> [BxLxheadsxDh (+ bias)] per name, as one matmul over the
      weights stacked on a new axis (which keeps their sharding): on CPU ~5%
      faster per train step than a matmul per name."""
      axes = [q_axes if n == 'query' else kv_axes for n in names]
      w_DTHd = jnp.stack([self.param(n, _init(hidden_std(c), a), (c.d_model, heads, Dh), pdt)
                          for n, a in zip(names, axes)], axis=1).astype(dt)
      y_BLTHd = jnp.einsum('BLD,DTHd->BLTHd', x.astype(dt), w_DTHd)
      if c.use_bias:
        y_BLTHd = y_BLTHd + jnp.stack([self.param(
            n + '_bias', nn.with_logical_partitioning(nn.initializers.zeros, a[1:]),
            (heads, Dh), pdt) for n, a in zip(names, axes)]).astype(dt)
      y_BLTHd = checkpoint_name(y_BLTHd, 'qkv')
      return [y_BLTHd[:, :, i] for i in range(len(names))]

    # Self-attention without GQA projects q, k and v in one matmul.
    fused = not self.cross and K == H
    q_BLHDh, *kv = proj(('query', 'key', 'value') if fused else ('query',), x_BLD, H)
    if c.qk_norm:
      q_BLHDh = Norm(c, 'head_dim', name='query_norm')(q_BLHDh)
    B, L = x_BLD.shape[:2]
    if c.position == 'rope' and not self.cross:
      q_BLHDh = apply_rope(q_BLHDh, pos_BL, c.rope_theta)
    if self.cross and cache is not None and kv_BSD is None:
      k_BKSDh, v_BKSDh = cache['k'], cache['v']  # Precomputed from the encoder.
    else:
      k_BSKDh, v_BSKDh = kv or proj(('key', 'value'), kv_BSD if self.cross else x_BLD, K)
      if c.qk_norm:
        k_BSKDh = Norm(c, 'head_dim', name='key_norm')(k_BSKDh)
      if c.position == 'rope' and not self.cross:
        k_BSKDh = apply_rope(k_BSKDh, pos_BL, c.rope_theta)
      k_BKSDh, v_BKSDh = k_BSKDh.transpose(0, 2, 1, 3), v_BSKDh.transpose(0, 2, 1, 3)
      if cache is not None and not self.cross:
        at = (0, 0, index, 0)
        k_BKSDh = jax.lax.dynamic_update_slice(cache['k'], k_BKSDh.astype(cache['k'].dtype), at)
        v_BKSDh = jax.lax.dynamic_update_slice(cache['v'], v_BKSDh.astype(cache['v'].dtype), at)
      if cache is not None:
        cache = {'k': k_BKSDh, 'v': v_BKSDh}
    k_BKSDh, v_BKSDh = k_BKSDh.astype(dt), v_BKSDh.astype(dt)
    if attn_multiplier(c) != 1.0:  # muP's 1/Dh: the paths all scale by 1/sqrt(Dh).
      q_BLHDh = q_BLHDh * jnp.asarray(attn_multiplier(c), q_BLHDh.dtype)
    if self.is_mutable_collection('intermediates'):  # tools/coord_check: the logits q.k.
      q_BLKGDh = q_BLHDh.reshape(B, L, K, H // K, Dh) / math.sqrt(Dh)
      self.sow('intermediates', 'logits',
               jnp.einsum('BLKGd,BKSd->BKGLS', q_BLKGDh.astype(jnp.float32),
                          k_BKSDh.astype(jnp.float32)))
    o_BLHDh = attention(c.attention, q_BLHDh.astype(dt), k_BKSDh, v_BKSDh,
                        causal=mask_BLS is None, mask_BLS=mask_BLS,
                        seg_BL=None if self.cross else seg_BL, block=c.attn_block,
                        drop=nn.Dropout(c.attn_dropout), train=train,
                        max_docs=c.attn_max_docs)
    o_BLHDh = checkpoint_name(o_BLHDh, 'context')
    wo = self.param('out', _init(out_proj_std(c, self.layers), ('heads', 'head_dim', 'embed')),
                    (H, Dh, c.d_model), pdt).astype(dt)
    y_BLD = jnp.einsum('BLHd,HdD->BLD', o_BLHDh, wo)
    if c.use_bias:
      y_BLD = y_BLD + self.param('out_bias', nn.with_logical_partitioning(
          nn.initializers.zeros, ('embed',)), (c.d_model,), pdt).astype(dt)
    return y_BLD, cache


class Mlp(nn.Module):
  """GELU, SwiGLU or ReLU^2 feed-forward."""
  cfg: ModelConfig
  layers: int  # Blocks in this stack (the down projection's init).

  @nn.compact
  def __call__(self, x_BLD: Array) -> Array:
    c = self.cfg
    dt, pdt = _DTYPES[c.dtype], _DTYPES[c.param_dtype]
    dense = functools.partial(nn.Dense, use_bias=c.use_bias, dtype=dt, param_dtype=pdt)
    up = functools.partial(dense, c.ff_dim,
                           kernel_init=_init(hidden_std(c), ('embed', 'mlp')),
                           bias_init=nn.with_logical_partitioning(
                               nn.initializers.zeros, ('mlp',)))
    h_BLF = up(name='up')(x_BLD)
    if c.activation == 'swiglu':
      h_BLF = nn.silu(up(name='gate')(x_BLD)) * h_BLF
    elif c.activation == 'gelu':
      h_BLF = nn.gelu(h_BLF, approximate=True)
    else:  # relu2 (So et al. 2021, Primer).
      h_BLF = jnp.square(nn.relu(h_BLF))
    h_BLF = checkpoint_name(_constrain(h_BLF, ('batch', 'length', 'mlp')), 'mlp_hidden')
    return dense(c.d_model, name='down',
                 kernel_init=_init(out_proj_std(c, self.layers), ('mlp', 'embed')),
                 bias_init=nn.with_logical_partitioning(
                     nn.initializers.zeros, ('embed',)))(h_BLF)


class Block(nn.Module):
  """Pre-norm residual block: x + attn(norm(x)), [x + cross_attn(norm(x), enc)],
  then x + mlp(norm(x)). The cross-attention sublayer exists with `cross`."""
  cfg: ModelConfig
  train: bool = False
  cross: bool = False

  @nn.compact
  def __call__(self, x_BLD: Array, pos_BL: Array, mask_BLS: Array | None = None,
               cache: dict | None = None, index: Array | None = None,
               enc_BSD: Array | None = None, enc_mask_BLS: Array | None = None,
               seg_BL: Array | None = None) -> tuple[Array, dict | None]:
    c = self.cfg
    drop = nn.Dropout(c.resid_dropout)
    layers = c.decoder_layers if self.cross else c.num_layers  # This stack's depth.
    branch = branch_multiplier(c, layers)

    def residual(x_BLD, h_BLD):
      if branch != 1.0:
        h_BLD = h_BLD * jnp.asarray(branch, h_BLD.dtype)
      return _constrain(x_BLD + drop(h_BLD, deterministic=not self.train),
                        ('batch', 'length', 'embed'))

    sc = None if cache is None else {'k': cache['k'], 'v': cache['v']}
    h, sc = Attention(c, layers, name='attn')(Norm(c, name='attn_norm')(x_BLD), pos_BL,
                                      self.train, mask_BLS, sc, index, seg_BL=seg_BL)
    x_BLD = residual(x_BLD, h)
    new = sc
    if self.cross:
      cc = None if cache is None else {'k': cache['ck'], 'v': cache['cv']}
      h, cc = Attention(c, layers, cross=True, name='cross_attn')(
          Norm(c, name='cross_norm')(x_BLD), pos_BL, self.train, enc_mask_BLS, cc,
          kv_BSD=enc_BSD)
      x_BLD = residual(x_BLD, h)
      if cache is not None:
        new = {**sc, 'ck': cc['k'], 'cv': cc['v']}
    h = Mlp(c, layers, name='mlp')(Norm(c, name='mlp_norm')(x_BLD))
    return residual(x_BLD, h), new


# What each block keeps for the backward pass (model.remat); the rest is
# recomputed. Names are the checkpoint_name tags in Attention and Mlp.
_SAVED_NAMES = ('qkv', 'context', 'mlp_hidden')
_REMAT_POLICIES = {
    'full': None,  # Recompute everything: only the block's input is kept.
    # Weight matmuls' outputs (not attention's batched ones).
    'save_dots': jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
    'dots_saveable': jax.checkpoint_policies.save_from_both_policies(  # Every matmul's output.
        jax.checkpoint_policies.dots_saveable,
        jax.checkpoint_policies.save_only_these_names('einsum_f32')),
    # The named projections: q/k/v, attention's context and the MLP hidden layer.
    'save_proj': jax.checkpoint_policies.save_only_these_names(*_SAVED_NAMES),
    # The same, moved to host memory between the passes (GPUs and TPUs).
    'offload': jax.checkpoint_policies.save_and_offload_only_these_names(
        names_which_can_be_saved=(), names_which_can_be_offloaded=_SAVED_NAMES,
        offload_src='device', offload_dst='pinned_host'),
}


# Top-level parameter names of the block stacks: scanned ('blocks',
# 'encoder_blocks') or unrolled ('block_3', 'encoder_block_3').
STACKS = ('blocks', 'encoder_blocks', 'block_', 'encoder_block_')


def init_cache(c: ModelConfig, batch: int, length: int, enc_length: int = 0
               ) -> dict[str, Array]:
  """Zeroed decoder K/V cache, stacked over layers: layers x B x K x S x Dh.

  An encoder-decoder's cache also holds the cross-attention K/V (`ck`, `cv`)
  over enc_length encoder positions, filled once by the prefill."""
  dt = _DTYPES[c.dtype]
  shape = (c.decoder_layers, batch, c.kv_heads, length, c.dh)
  out = {'k': jnp.zeros(shape, dt), 'v': jnp.zeros(shape, dt)}
  if c.family == 'encoder_decoder':
    cshape = (c.decoder_layers, batch, c.kv_heads, enc_length, c.dh)
    out.update(ck=jnp.zeros(cshape, dt), cv=jnp.zeros(cshape, dt))
  return out


def pool(x_BLD: Array, valid_BL: Array, how: str) -> Array:
  """One vector per sequence: the last valid token, the first token or the mean."""
  if how == 'last':
    last_B = jnp.maximum(valid_BL.sum(-1) - 1, 0)
    return jnp.take_along_axis(x_BLD, last_B[:, None, None], axis=1)[:, 0]
  if how == 'first':
    return x_BLD[:, 0]
  w_BL1 = valid_BL[..., None].astype(x_BLD.dtype)
  return (x_BLD * w_BL1).sum(1) / jnp.maximum(w_BL1.sum(1), 1.0)


def init_inputs(c: ModelConfig, length: int) -> dict[str, Array]:
  """Keyword inputs that create every parameter of the family at `model.init`."""
  tokens = jnp.zeros((1, length), jnp.int32)
  if c.family == 'encoder_decoder':
    return {'tokens_BL': tokens, 'enc_tokens_BS': tokens}
  return {'tokens_BL': tokens}


def _positions(B: int, L: int) -> Array:
  return jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), (B, L))


class Transformer(nn.Module):
  """One model, three families (cfg.family), all built from `Block`:

  decoder          causal LM: tokens_BxL -> logits_BxLxV (float32).
  encoder          bidirectional over the valid tokens (valid_BL, default all):
                   tokens_BxL -> logits_BxLxV (masked LM, tied head by default).
  encoder_decoder  an encoder stack over enc_tokens_BxS (enc_valid_BxS), then a
                   causal decoder stack over tokens_BxL whose blocks also
                   cross-attend to the encoder output -> logits_BxLxV.
                   `encode_only=True` returns the encoder output; passing it
                   back as enc_out_BSD skips the encoder (generation).

  With `cfg.num_classes > 0` the final hidden states are pooled over valid_BL
  into logits_BxC instead (decoders: right padding, which causal attention
  keeps out of the valid tokens' view). With `cache` (see `init_cache`) the
  decoder also returns the updated cache; `index` is the cache slot of
  tokens_BL[:, 0] and `mask_BLS` says which slots each query may see.
  `segment_ids_BL` (packed windows; pass per-document pos_BL with it) keeps
  the (self-)attention of the main stack within each document. With
  `targets_BL` (and their weights) it returns `token_sums` instead of logits:
  the loss without materialising them (cfg.loss_chunk).
  """
  cfg: ModelConfig

  @nn.compact
  def __call__(self, tokens_BL: Array, train: bool = False, pos_BL: Array | None = None,
               *, valid_BL: Array | None = None, mask_BLS: Array | None = None,
               cache: dict | None = None, index: Array | None = None,
               enc_tokens_BS: Array | None = None, enc_valid_BS: Array | None = None,
               enc_out_BSD: Array | None = None, encode_only: bool = False,
               segment_ids_BL: Array | None = None, targets_BL: Array | None = None,
               target_weights_BL: Array | None = None, z_loss: float = 0.0):
    c = self.cfg
    dt, pdt = _DTYPES[c.dtype], _DTYPES[c.param_dtype]
    embed = nn.Embed(c.vocab_size, c.d_model, dtype=dt, param_dtype=pdt,
                     embedding_init=_init(c.init_std, ('vocab', 'embed')),
                     name='embed')
    pos_emb = None
    if c.position == 'learned':
      pos_emb = nn.Embed(c.max_len, c.d_model, dtype=dt, param_dtype=pdt,
                         embedding_init=_init(c.init_std, ('length', 'embed')),
                         name='pos_embed')

    def embed_tokens(tok_BL: Array, pos_BL: Array) -> Array:
      x_BLD = embed(tok_BL)
      if pos_emb is not None:
        x_BLD = x_BLD + pos_emb(pos_BL)
      elif c.position == 'sinusoidal':
        x_BLD = x_BLD + sinusoidal_table(c.max_len, c.d_model)[pos_BL].astype(dt)
      x_BLD = nn.Dropout(c.embed_dropout)(x_BLD, deterministic=not train)
      return _constrain(x_BLD, ('batch', 'length', 'embed'))

    def stack(name: str, n: int, cross: bool, x_BLD, pos_BL, mask_BLS, cache,
              enc_BSD=None, enc_mask_BLS=None, seg_BL=None):
      block = Block
      if c.remat != 'none':
        block = nn.remat(block, policy=_REMAT_POLICIES[c.remat],
                         prevent_cse=not c.scan_layers)
      if c.scan_layers:
        return nn.scan(
            block, variable_axes={'params': 0}, split_rngs={'params': True, 'dropout': True},
            in_axes=(nn.broadcast, nn.broadcast, 0, nn.broadcast, nn.broadcast, nn.broadcast,
                     nn.broadcast),
            length=n, metadata_params={nn.PARTITION_NAME: 'layers'},
        )(c, train, cross, name=name)(x_BLD, pos_BL, mask_BLS, cache, index, enc_BSD,
                                      enc_mask_BLS, seg_BL)
      layers = []
      for i in range(n):
        layer = None if cache is None else jax.tree_util.tree_map(lambda a: a[i], cache)
        x_BLD, layer = block(c, train, cross, name=f'{name[:-1]}_{i}')(
            x_BLD, pos_BL, mask_BLS, layer, index, enc_BSD, enc_mask_BLS, seg_BL)
        layers.append(layer)
      if cache is not None:
        cache = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *layers)
      return x_BLD, cache

    enc_mask_B1S = None
    if c.family == 'encoder_decoder':
      if enc_out_BSD is None and enc_tokens_BS is not None:
        B, S = enc_tokens_BS.shape
        if enc_valid_BS is None:
          enc_valid_BS = jnp.ones((B, S), bool)
        e_BSD = embed_tokens(enc_tokens_BS, _positions(B, S))
        e_BSD, _ = stack('encoder_blocks', c.num_layers, False, e_BSD, _positions(B, S),
                         enc_valid_BS[:, None, :], None)
        enc_out_BSD = Norm(c, name='encoder_norm')(e_BSD)
      if encode_only:
        return enc_out_BSD
      if enc_out_BSD is None and cache is None:
        raise ValueError('an encoder-decoder needs enc_tokens_BS, enc_out_BSD or a cache '
                         'holding the cross-attention keys and values')
      if enc_valid_BS is None:
        S = enc_out_BSD.shape[1] if enc_out_BSD is not None else cache['ck'].shape[3]
        enc_valid_BS = jnp.ones((tokens_BL.shape[0], S), bool)
      enc_mask_B1S = enc_valid_BS[:, None, :]

    B, L = tokens_BL.shape
    if pos_BL is None:
      pos_BL = _positions(B, L)
    if c.family == 'encoder' and mask_BLS is None:  # Bidirectional over valid tokens.
      mask_BLS = (jnp.ones((B, L), bool) if valid_BL is None else valid_BL)[:, None, :]
    x_BLD = embed_tokens(tokens_BL, pos_BL)
    n_layers = c.decoder_layers if c.family == 'encoder_decoder' else c.num_layers
    x_BLD, cache = stack('blocks', n_layers, c.family == 'encoder_decoder', x_BLD, pos_BL,
                         mask_BLS, cache, enc_out_BSD, enc_mask_B1S, segment_ids_BL)

    x_BLD = Norm(c, name='final_norm')(x_BLD)
    out_mult = output_multiplier(c)  # muP: 1 / width_mult on the logits.
    if c.num_classes:
      if valid_BL is None:
        valid_BL = jnp.ones((B, L), bool)
      h_BD = pool(x_BLD, valid_BL, c.pool).astype(jnp.float32) * out_mult
      return nn.Dense(c.num_classes, dtype=jnp.float32, param_dtype=pdt, name='cls_head',
                      kernel_init=_init(c.init_std, ('embed', None)),
                      bias_init=nn.with_logical_partitioning(
                          nn.initializers.zeros, (None,)))(h_BD)
    if c.mlm_transform:  # BERT's masked-LM head transform (Devlin et al. 2019).
      x_BLD = nn.Dense(c.d_model, use_bias=c.use_bias, dtype=dt, param_dtype=pdt,
                       name='mlm_dense', kernel_init=_init(hidden_std(c), ('embed', 'mlp')),
                       bias_init=nn.with_logical_partitioning(
                           nn.initializers.zeros, ('mlp',)))(x_BLD)
      x_BLD = Norm(c, name='mlm_norm')(nn.gelu(x_BLD, approximate=True))
    if out_mult != 1.0:
      x_BLD = x_BLD * jnp.asarray(out_mult, x_BLD.dtype)
    if c.tie_embeddings:
      w_DV = embed.embedding.T
    else:
      w_DV = LMHead(c, name='head')()
    if targets_BL is not None:
      return token_sums(x_BLD, w_DV, targets_BL, target_weights_BL, z_loss, c.loss_chunk, dt)
    logits_BLV = jnp.einsum('BLD,DV->BLV', x_BLD.astype(dt), w_DV.astype(dt),
                            preferred_element_type=jnp.float32)
    logits_BLV = _constrain(logits_BLV, ('batch', 'length', 'vocab'))
    return logits_BLV if cache is None else (logits_BLV, cache)


class LMHead(nn.Module):
  """An untied output projection D x V (the param tree of a bias-free nn.Dense),
  returned as a matrix so the loss can apply it chunk by chunk."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self) -> Array:
    c = self.cfg
    return self.param('kernel', _init(c.init_std, ('embed', 'vocab')),
                      (c.d_model, c.vocab_size), _DTYPES[c.param_dtype])


def token_sums(x_BLD: Array, w_DV: Array, targets_BL: Array, weights_BL: Array,
               z_loss: float, chunk: int, dtype) -> dict[str, Array]:
  """Weighted sums of next-token NLL, z-loss, tokens and argmax hits, from the
  final hidden states and the output matrix.

  The logits are a matmul in the compute dtype with float32 accumulation (and
  so are their gradient's: einsum_f32); the log-softmax is float32. With
  `chunk` > 0 they are made `chunk` positions at a time inside a
  rematerialised scan, so the B x L x V float32 logits (and their gradient)
  are never live at once: only B x chunk x V."""
  B, L, D = x_BLD.shape

  def sums(x_BcD, t_Bc, w_Bc):
    logits_BcV = einsum_f32('BcD,DV->BcV', x_BcD.astype(dtype), w_DV.astype(dtype))
    nll, z, _ = cross_entropy(logits_BcV, t_Bc, w_Bc, z_loss=1.0)  # z scaled below.
    hit_Bc = jax.lax.stop_gradient(jnp.argmax(logits_BcV, -1) == t_Bc)
    return jnp.stack([nll, z, (hit_Bc * w_Bc).sum()])

  w_BL = weights_BL.astype(jnp.float32)
  if not chunk or chunk >= L:
    out = sums(x_BLD, targets_BL, w_BL)
  else:
    pad = (-L) % chunk
    n = (L + pad) // chunk

    def split(a):  # B x L x ... -> n x B x chunk x ... (padded positions weigh 0).
      a = jnp.pad(a, [(0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 2))
      return jnp.moveaxis(a.reshape(B, n, chunk, *a.shape[2:]), 1, 0)

    body = jax.checkpoint(lambda acc, xs: (acc + sums(*xs), None))
    out, _ = jax.lax.scan(body, jnp.zeros(3, jnp.float32),
                          (split(x_BLD), split(targets_BL), split(w_BL)))
  return {'nll_sum': out[0], 'z_sum': z_loss * out[1], 'tokens': w_BL.sum(),
          'correct': out[2]}


def cross_entropy(logits_BLV: Array, targets_BL: Array, weights_BL: Array,
                  z_loss: float = 0.0) -> tuple[Array, Array, Array]:
  """Returns (sum of weighted NLL in nats, sum of z-loss terms, sum of weights)."""
  logits_BLV = logits_BLV.astype(jnp.float32)
  lse_BL = jax.nn.logsumexp(logits_BLV, axis=-1)
  tgt_BL = jnp.take_along_axis(logits_BLV, targets_BL[..., None], axis=-1)[..., 0]
  nll_BL = lse_BL - tgt_BL
  w = weights_BL.astype(jnp.float32)
  return (nll_BL * w).sum(), z_loss * (jnp.square(lse_BL) * w).sum(), w.sum()


def fold_multipliers(params: dict, c: ModelConfig) -> tuple[dict, ModelConfig]:
  """The same function as an SP model without branch multipliers, for Hugging
  Face export: each of muP's multipliers scales the output of a linear map or
  norm, so it moves into that map's weights (queries: the query projection,
  or the query norm's scale with qk_norm; branches: attention's and the MLP's
  output projections; logits: the scale and bias of the last norm)."""
  p = jax.tree_util.tree_map(lambda a: a, params)  # Fresh dicts; arrays are not mutated.
  q_mult, out_mult = attn_multiplier(c), output_multiplier(c)

  def scale(d: dict, names: tuple[str, ...], by: float) -> None:
    for n in names:
      if n in d:
        d[n] = d[n] * by

  for name, blk in p.items():
    if not name.startswith(STACKS):
      continue
    decoder = name.startswith('block') and c.family == 'encoder_decoder'
    branch = branch_multiplier(c, c.decoder_layers if decoder else c.num_layers)
    for attn in ('attn', 'cross_attn'):
      if attn not in blk:
        continue
      a = blk[attn]
      if 'query_norm' in a:
        scale(a['query_norm'], ('scale', 'bias'), q_mult)
      else:
        scale(a, ('query', 'query_bias'), q_mult)
      scale(a, ('out', 'out_bias'), branch)
    scale(blk['mlp']['down'], ('kernel', 'bias'), branch)
  last = 'mlm_norm' if c.mlm_transform and not c.num_classes else 'final_norm'
  scale(p[last], ('scale', 'bias'), out_mult)
  return p, dataclasses.replace(c, parametrization='sp', base_width=0, depth_base=0,
                                depth_alpha=1.0)
