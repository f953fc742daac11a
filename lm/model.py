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


def attend(q_BKGLDh: Array, k_BKSDh: Array, v_BKSDh: Array, bias_LS: Array,
           drop: nn.Dropout, train: bool) -> Array:
  """Softmax(q k^T + bias) v with float32 logits; q is pre-scaled. -> BxKxGxLxDh.

  Heads-major layout, so both matmuls batch over (B, K) with no transposes and
  the G query heads of a kv head stack into one taller matmul. The softmax
  divides after the second matmul (on L x Dh values, not L x S weights):
  dropout(e) / sum(e) equals dropout(softmax), so dropout stays exact.
  bias_LS: L x S, or B x 1 x 1 x L x S (padding masks).
  """
  s_BKGLS = jnp.einsum('BKGLd,BKSd->BKGLS', q_BKGLDh, k_BKSDh,
                       preferred_element_type=jnp.float32) + bias_LS
  e_BKGLS = jnp.exp(s_BKGLS - jax.lax.stop_gradient(s_BKGLS.max(-1, keepdims=True)))
  z_BKGL1 = e_BKGLS.sum(-1, keepdims=True)
  e_BKGLS = drop(e_BKGLS, deterministic=not train)
  o_BKGLDh = jnp.einsum('BKGLS,BKSd->BKGLd', e_BKGLS.astype(v_BKSDh.dtype), v_BKSDh,
                        preferred_element_type=jnp.float32)
  return (o_BKGLDh / z_BKGL1).astype(v_BKSDh.dtype)


def mask_bias(mask_BLS: Array) -> Array:
  """Boolean B x L x S (True = may attend) -> additive B x 1 x 1 x L x S float32."""
  return jnp.where(mask_BLS, 0.0, jnp.finfo(jnp.float32).min)[:, None, None]


class Attention(nn.Module):
  """Multi-head attention with grouped-query K/V heads.

  Self-attention is causal by default; `mask_BLS` replaces the causal mask
  (padding masks, bidirectional encoders, decoding). With `cache` (a dict of
  fixed-size B x K x S x Dh `k` and `v`) the new keys and values are written at
  slot `index` and the queries attend to the whole cache under `mask_BLS`.
  Cross-attention (`cross=True`) takes keys and values from `kv_BSD`, or from a
  cache that already holds them.
  """
  cfg: ModelConfig
  cross: bool = False

  @nn.compact
  def __call__(self, x_BLD: Array, pos_BL: Array, train: bool,
               mask_BLS: Array | None = None, cache: dict | None = None,
               index: Array | None = None, kv_BSD: Array | None = None
               ) -> tuple[Array, dict | None]:
    c = self.cfg
    H, K, Dh = c.num_heads, c.kv_heads, c.dh
    G = H // K
    dt, pdt = _DTYPES[c.dtype], _DTYPES[c.param_dtype]

    q_axes, kv_axes = ('embed', 'heads', 'head_dim'), ('embed', 'kv', 'head_dim')

    def proj(names: tuple[str, ...], x: Array, heads: int) -> list[Array]:
      """x_BxLxD -> [BxLxheadsxDh (+ bias)] per name, as one matmul over the
      weights stacked on a new axis (which keeps their sharding): on CPU ~5%
      faster per train step than a matmul per name."""
      axes = [q_axes if n == 'query' else kv_axes for n in names]
      w_DTHd = jnp.stack([self.param(n, _init(c.init_std, a), (c.d_model, heads, Dh), pdt)
                          for n, a in zip(names, axes)], axis=1).astype(dt)
      y_BLTHd = jnp.einsum('BLD,DTHd->BLTHd', x.astype(dt), w_DTHd)
      if c.use_bias:
        y_BLTHd = y_BLTHd + jnp.stack([self.param(
            n + '_bias', nn.with_logical_partitioning(nn.initializers.zeros, a[1:]),
            (heads, Dh), pdt) for n, a in zip(names, axes)]).astype(dt)
      return [y_BLTHd[:, :, i] for i in range(len(names))]

    # Self-attention without GQA projects q, k and v in one matmul.
    fused = not self.cross and K == H
    q_BLHDh, *kv = proj(('query', 'key', 'value') if fused else ('query',), x_BLD, H)
    if c.qk_norm:
      q_BLHDh = Norm(c, 'head_dim', name='query_norm')(q_BLHDh)
    B, L = x_BLD.shape[:2]
    if c.position == 'rope' and not self.cross:
      q_BLHDh = apply_rope(q_BLHDh, pos_BL, c.rope_theta)
    q_BKGLDh = (q_BLHDh.reshape(B, L, K, G, Dh).transpose(0, 2, 3, 1, 4)
                * jnp.asarray(1.0 / math.sqrt(Dh), dt))
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
    drop = nn.Dropout(c.attn_dropout)
    if mask_BLS is not None:
      o_BKGLDh = attend(q_BKGLDh, k_BKSDh, v_BKSDh, mask_bias(mask_BLS), drop, train)
    else:
      # Causal query blocks: block i attends only keys [0, end_i), which skips
      # the fully masked upper triangle (~1.9x faster fwd+bwd on CPU at L=512
      # with 4 blocks). Results equal one block up to summation order.
      outs = [attend(q_BKGLDh[:, :, :, q0:q1], k_BKSDh[:, :, :q1], v_BKSDh[:, :, :q1],
                     causal_bias(q0, q1), drop, train)
              for q0, q1 in attn_blocks(L, c.attn_block)]
      o_BKGLDh = jnp.concatenate(outs, axis=3) if len(outs) > 1 else outs[0]
    o_BLHDh = o_BKGLDh.transpose(0, 3, 1, 2, 4).reshape(B, L, H, Dh)
    out_std = c.init_std / math.sqrt(2 * c.num_layers)
    wo = self.param('out', _init(out_std, ('heads', 'head_dim', 'embed')),
                    (H, Dh, c.d_model), pdt).astype(dt)
    y_BLD = jnp.einsum('BLHd,HdD->BLD', o_BLHDh, wo)
    if c.use_bias:
      y_BLD = y_BLD + self.param('out_bias', nn.with_logical_partitioning(
          nn.initializers.zeros, ('embed',)), (c.d_model,), pdt).astype(dt)
    return y_BLD, cache


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
  """Pre-norm residual block: x + attn(norm(x)), [x + cross_attn(norm(x), enc)],
  then x + mlp(norm(x)). The cross-attention sublayer exists with `cross`."""
  cfg: ModelConfig
  train: bool = False
  cross: bool = False

  @nn.compact
  def __call__(self, x_BLD: Array, pos_BL: Array, mask_BLS: Array | None = None,
               cache: dict | None = None, index: Array | None = None,
               enc_BSD: Array | None = None, enc_mask_BLS: Array | None = None
               ) -> tuple[Array, dict | None]:
    c = self.cfg
    drop = nn.Dropout(c.resid_dropout)

    def residual(x_BLD, h_BLD):
      return _constrain(x_BLD + drop(h_BLD, deterministic=not self.train),
                        ('batch', 'length', 'embed'))

    sc = None if cache is None else {'k': cache['k'], 'v': cache['v']}
    h, sc = Attention(c, name='attn')(Norm(c, name='attn_norm')(x_BLD), pos_BL,
                                      self.train, mask_BLS, sc, index)
    x_BLD = residual(x_BLD, h)
    new = sc
    if self.cross:
      cc = None if cache is None else {'k': cache['ck'], 'v': cache['cv']}
      h, cc = Attention(c, cross=True, name='cross_attn')(
          Norm(c, name='cross_norm')(x_BLD), pos_BL, self.train, enc_mask_BLS, cc,
          kv_BSD=enc_BSD)
      x_BLD = residual(x_BLD, h)
      if cache is not None:
        new = {**sc, 'ck': cc['k'], 'cv': cc['v']}
    h = Mlp(c, name='mlp')(Norm(c, name='mlp_norm')(x_BLD))
    return residual(x_BLD, h), new


_REMAT_POLICIES = {
    'full': None,  # Recompute everything in the backward pass.
    'save_dots': jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


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
  """
  cfg: ModelConfig

  @nn.compact
  def __call__(self, tokens_BL: Array, train: bool = False, pos_BL: Array | None = None,
               *, valid_BL: Array | None = None, mask_BLS: Array | None = None,
               cache: dict | None = None, index: Array | None = None,
               enc_tokens_BS: Array | None = None, enc_valid_BS: Array | None = None,
               enc_out_BSD: Array | None = None, encode_only: bool = False):
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
              enc_BSD=None, enc_mask_BLS=None):
      block = Block
      if c.remat != 'none':
        block = nn.remat(block, policy=_REMAT_POLICIES[c.remat],
                         prevent_cse=not c.scan_layers)
      if c.scan_layers:
        return nn.scan(
            block, variable_axes={'params': 0}, split_rngs={'params': True, 'dropout': True},
            in_axes=(nn.broadcast, nn.broadcast, 0, nn.broadcast, nn.broadcast, nn.broadcast),
            length=n, metadata_params={nn.PARTITION_NAME: 'layers'},
        )(c, train, cross, name=name)(x_BLD, pos_BL, mask_BLS, cache, index, enc_BSD,
                                      enc_mask_BLS)
      layers = []
      for i in range(n):
        layer = None if cache is None else jax.tree_util.tree_map(lambda a: a[i], cache)
        x_BLD, layer = block(c, train, cross, name=f'{name[:-1]}_{i}')(
            x_BLD, pos_BL, mask_BLS, layer, index, enc_BSD, enc_mask_BLS)
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
                         mask_BLS, cache, enc_out_BSD, enc_mask_B1S)

    x_BLD = Norm(c, name='final_norm')(x_BLD)
    if c.num_classes:
      if valid_BL is None:
        valid_BL = jnp.ones((B, L), bool)
      h_BD = pool(x_BLD, valid_BL, c.pool).astype(jnp.float32)
      return nn.Dense(c.num_classes, dtype=jnp.float32, param_dtype=pdt, name='cls_head',
                      kernel_init=_init(c.init_std, ('embed', None)),
                      bias_init=nn.with_logical_partitioning(
                          nn.initializers.zeros, (None,)))(h_BD)
    if c.mlm_transform:  # BERT's masked-LM head transform (Devlin et al. 2019).
      x_BLD = nn.Dense(c.d_model, use_bias=c.use_bias, dtype=dt, param_dtype=pdt,
                       name='mlm_dense', kernel_init=_init(c.init_std, ('embed', 'mlp')),
                       bias_init=nn.with_logical_partitioning(
                           nn.initializers.zeros, ('mlp',)))(x_BLD)
      x_BLD = Norm(c, name='mlm_norm')(nn.gelu(x_BLD, approximate=True))
    if c.tie_embeddings:
      logits_BLV = jnp.einsum('BLD,VD->BLV', x_BLD.astype(jnp.float32),
                              embed.embedding.astype(jnp.float32))
    else:
      logits_BLV = nn.Dense(c.vocab_size, use_bias=False, dtype=jnp.float32,
                            param_dtype=pdt, name='head',
                            kernel_init=_init(c.init_std, ('embed', 'vocab')))(x_BLD)
    logits_BLV = _constrain(logits_BLV.astype(jnp.float32), ('batch', 'length', 'vocab'))
    return logits_BLV if cache is None else (logits_BLV, cache)


def cross_entropy(logits_BLV: Array, targets_BL: Array, weights_BL: Array,
                  z_loss: float = 0.0) -> tuple[Array, Array, Array]:
  """Returns (sum of weighted NLL in nats, sum of z-loss terms, sum of weights)."""
  logits_BLV = logits_BLV.astype(jnp.float32)
  lse_BL = jax.nn.logsumexp(logits_BLV, axis=-1)
  tgt_BL = jnp.take_along_axis(logits_BLV, targets_BL[..., None], axis=-1)[..., 0]
  nll_BL = lse_BL - tgt_BL
  w = weights_BL.astype(jnp.float32)
  return (nll_BL * w).sum(), z_loss * (jnp.square(lse_BL) * w).sum(), w.sum()
