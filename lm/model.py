"""Decoder-only Transformer as flax.linen modules used as pure functions.

Shape letters (also in einsum strings):
  B batch, L length (queries), S length (keys), D d_model, H query heads,
  K kv heads, G query heads per kv head (H = K * G), Dh head dim,
  F MLP hidden, V vocab.

Parameters carry logical axis names (embed, heads, kv, head_dim, mlp, vocab,
layers); activations carry (batch, length, embed). The rules table in the
config maps those to mesh axes; this file never names a mesh axis.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from lm.config import ModelConfig

Array = jax.Array
_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def _init(std: float, axes: tuple[str | None, ...]):
  return nn.with_logical_partitioning(nn.initializers.normal(std), axes)


def _constrain(x: Array, axes: tuple[str | None, ...]) -> Array:
  return nn.with_logical_constraint(x, axes)


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


class Attention(nn.Module):
  """Causal multi-head attention with grouped-query K/V heads."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BLD: Array, pos_BL: Array, train: bool) -> Array:
    c = self.cfg
    H, K, Dh = c.num_heads, c.kv_heads, c.dh
    G = H // K
    dt, pdt = _DTYPES[c.dtype], _DTYPES[c.param_dtype]

    def proj(name: str, shape: tuple[int, ...], axes: tuple[str, ...], std: float):
      """A D -> (heads, Dh) kernel and its bias (or None)."""
      w = self.param(name, _init(std, axes), shape, pdt).astype(dt)
      b = None
      if c.use_bias:
        b = self.param(name + '_bias', nn.with_logical_partitioning(
            nn.initializers.zeros, axes[1:]), shape[1:], pdt).astype(dt)
      return w, b

    wq, bq = proj('query', (c.d_model, H, Dh), ('embed', 'heads', 'head_dim'), c.init_std)
    wk, bk = proj('key', (c.d_model, K, Dh), ('embed', 'kv', 'head_dim'), c.init_std)
    wv, bv = proj('value', (c.d_model, K, Dh), ('embed', 'kv', 'head_dim'), c.init_std)
    x_BLD = x_BLD.astype(dt)
    q_BLHDh = jnp.einsum('BLD,DHd->BLHd', x_BLD, wq)
    k_BSKDh = jnp.einsum('BSD,DKd->BSKd', x_BLD, wk)
    v_BSKDh = jnp.einsum('BSD,DKd->BSKd', x_BLD, wv)
    if c.use_bias:
      q_BLHDh, k_BSKDh, v_BSKDh = q_BLHDh + bq, k_BSKDh + bk, v_BSKDh + bv
    if c.qk_norm:
      q_BLHDh = Norm(c, 'head_dim', name='query_norm')(q_BLHDh)
      k_BSKDh = Norm(c, 'head_dim', name='key_norm')(k_BSKDh)
    if c.position == 'rope':
      q_BLHDh = apply_rope(q_BLHDh, pos_BL, c.rope_theta)
      k_BSKDh = apply_rope(k_BSKDh, pos_BL, c.rope_theta)
    B, L = x_BLD.shape[:2]
    q_BLKGDh = q_BLHDh.reshape(B, L, K, G, Dh) * jnp.asarray(1.0 / math.sqrt(Dh), dt)
    drop = nn.Dropout(c.attn_dropout)
    # Queries in causal blocks: block i attends only keys [0, end_i), which
    # skips the fully masked upper triangle (~1.9x faster fwd+bwd on CPU at
    # L=512 with 4 blocks). Results equal one block up to summation order.
    outs = []
    for q0, q1 in attn_blocks(L, c.attn_block):
      s_BKGLS = jnp.einsum('BLKGd,BSKd->BKGLS', q_BLKGDh[:, q0:q1], k_BSKDh[:, :q1],
                           preferred_element_type=jnp.float32)
      # Softmax on a 4-D view with an additive mask: on CPU ~1.7x faster
      # (fwd+bwd) than jnp.where on the 5-D grouped layout.
      s_BHLS = s_BKGLS.reshape(B, H, q1 - q0, q1) + causal_bias(q0, q1)
      p_BHLS = drop(jax.nn.softmax(s_BHLS, axis=-1), deterministic=not train)
      p_BKGLS = p_BHLS.astype(dt).reshape(B, K, G, q1 - q0, q1)
      outs.append(jnp.einsum('BKGLS,BSKd->BLKGd', p_BKGLS, v_BSKDh[:, :q1]))
    o_BLKGDh = jnp.concatenate(outs, axis=1) if len(outs) > 1 else outs[0]
    o_BLHDh = o_BLKGDh.reshape(B, L, H, Dh)
    out_std = c.init_std / math.sqrt(2 * c.num_layers)
    wo = self.param('out', _init(out_std, ('heads', 'head_dim', 'embed')),
                    (H, Dh, c.d_model), pdt).astype(dt)
    y_BLD = jnp.einsum('BLHd,HdD->BLD', o_BLHDh, wo)
    if c.use_bias:
      y_BLD = y_BLD + self.param('out_bias', nn.with_logical_partitioning(
          nn.initializers.zeros, ('embed',)), (c.d_model,), pdt).astype(dt)
    return y_BLD


class Mlp(nn.Module):
  """GELU, SwiGLU or ReLU^2 feed-forward."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BLD: Array) -> Array:
    c = self.cfg
    dt, pdt = _DTYPES[c.dtype], _DTYPES[c.param_dtype]
    dense = functools.partial(nn.Dense, use_bias=c.use_bias, dtype=dt, param_dtype=pdt)
    up = functools.partial(dense, c.ff_dim,
                           kernel_init=_init(c.init_std, ('embed', 'mlp')),
                           bias_init=nn.with_logical_partitioning(
                               nn.initializers.zeros, ('mlp',)))
    h_BLF = up(name='up')(x_BLD)
    if c.activation == 'swiglu':
      h_BLF = nn.silu(up(name='gate')(x_BLD)) * h_BLF
    elif c.activation == 'gelu':
      h_BLF = nn.gelu(h_BLF, approximate=True)
    else:  # relu2 (So et al. 2021, Primer).
      h_BLF = jnp.square(nn.relu(h_BLF))
    h_BLF = _constrain(h_BLF, ('batch', 'length', 'mlp'))
    out_std = c.init_std / math.sqrt(2 * c.num_layers)
    return dense(c.d_model, name='down',
                 kernel_init=_init(out_std, ('mlp', 'embed')),
                 bias_init=nn.with_logical_partitioning(
                     nn.initializers.zeros, ('embed',)))(h_BLF)


class Block(nn.Module):
  """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""
  cfg: ModelConfig
  train: bool = False

  @nn.compact
  def __call__(self, x_BLD: Array, pos_BL: Array) -> tuple[Array, None]:
    c = self.cfg
    drop = nn.Dropout(c.resid_dropout)
    h = Attention(c, name='attn')(Norm(c, name='attn_norm')(x_BLD), pos_BL, self.train)
    x_BLD = _constrain(x_BLD + drop(h, deterministic=not self.train),
                       ('batch', 'length', 'embed'))
    h = Mlp(c, name='mlp')(Norm(c, name='mlp_norm')(x_BLD))
    x_BLD = _constrain(x_BLD + drop(h, deterministic=not self.train),
                       ('batch', 'length', 'embed'))
    return x_BLD, None


_REMAT_POLICIES = {
    'full': None,  # Recompute everything in the backward pass.
    'save_dots': jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


class Transformer(nn.Module):
  """tokens_BxL -> logits_BxLxV (float32)."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, tokens_BL: Array, train: bool = False,
               pos_BL: Array | None = None) -> Array:
    c = self.cfg
    dt, pdt = _DTYPES[c.dtype], _DTYPES[c.param_dtype]
    B, L = tokens_BL.shape
    if pos_BL is None:
      pos_BL = jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), (B, L))
    embed = nn.Embed(c.vocab_size, c.d_model, dtype=dt, param_dtype=pdt,
                     embedding_init=_init(c.init_std, ('vocab', 'embed')),
                     name='embed')
    x_BLD = embed(tokens_BL)
    if c.position == 'learned':
      pos_emb = nn.Embed(c.max_len, c.d_model, dtype=dt, param_dtype=pdt,
                         embedding_init=_init(c.init_std, ('length', 'embed')),
                         name='pos_embed')
      x_BLD = x_BLD + pos_emb(pos_BL)
    elif c.position == 'sinusoidal':
      x_BLD = x_BLD + sinusoidal_table(c.max_len, c.d_model)[pos_BL].astype(dt)
    x_BLD = nn.Dropout(c.embed_dropout)(x_BLD, deterministic=not train)
    x_BLD = _constrain(x_BLD, ('batch', 'length', 'embed'))

    block = Block
    if c.remat != 'none':
      block = nn.remat(block, policy=_REMAT_POLICIES[c.remat],
                       prevent_cse=not c.scan_layers)
    if c.scan_layers:
      x_BLD, _ = nn.scan(
          block, variable_axes={'params': 0}, split_rngs={'params': True, 'dropout': True},
          in_axes=(nn.broadcast,), length=c.num_layers,
          metadata_params={nn.PARTITION_NAME: 'layers'},
      )(c, train, name='blocks')(x_BLD, pos_BL)
    else:
      for i in range(c.num_layers):
        x_BLD, _ = block(c, train, name=f'block_{i}')(x_BLD, pos_BL)

    x_BLD = Norm(c, name='final_norm')(x_BLD)
    if c.tie_embeddings:
      logits_BLV = jnp.einsum('BLD,VD->BLV', x_BLD.astype(jnp.float32),
                              embed.embedding.astype(jnp.float32))
    else:
      logits_BLV = nn.Dense(c.vocab_size, use_bias=False, dtype=jnp.float32,
                            param_dtype=pdt, name='head',
                            kernel_init=_init(c.init_std, ('embed', 'vocab')))(x_BLD)
    return _constrain(logits_BLV.astype(jnp.float32), ('batch', 'length', 'vocab'))


def cross_entropy(logits_BLV: Array, targets_BL: Array, weights_BL: Array,
                  z_loss: float = 0.0) -> tuple[Array, Array, Array]:
  """Returns (sum of weighted NLL in nats, sum of z-loss terms, sum of weights)."""
  logits_BLV = logits_BLV.astype(jnp.float32)
  lse_BL = jax.nn.logsumexp(logits_BLV, axis=-1)
  tgt_BL = jnp.take_along_axis(logits_BLV, targets_BL[..., None], axis=-1)[..., 0]
  nll_BL = lse_BL - tgt_BL
  w = weights_BL.astype(jnp.float32)
  return (nll_BL * w).sum(), z_loss * (jnp.square(lse_BL) * w).sum(), w.sum()
