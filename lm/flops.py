"""Parameter and FLOP counts as pure functions of the model config.

Conventions for training FLOPs per token (C = flops_per_token * tokens):
  6N           6 x non-embedding params (Kaplan et al. 2020, Sec. 2.1).
  6N_with_head 6 x (non-embedding params + the output head V*D).
  kaplan       6N + 6 * layers * ctx * d_attn (Kaplan 2020, Table 1).
  chinchilla   3 x forward, forward as in Hoffmann et al. 2022, App. F
               (embeddings, causal-free attention incl. softmax, dense, logits).
  exact        3 x the matmuls the step really runs: projections, scores and
               context over the key blocks attention computes (query blocks of
               model.attn_block skip keys after the block; within a block the
               mask is applied, not skipped), MLP (GLU aware) and logits.
               MFU uses this one. Like PaLM's MFU (Chowdhery et al. 2022,
               App. B) it leaves out rematerialisation: with remat the
               hardware does up to one more forward pass than this counts.
"""

from __future__ import annotations

import time

from lm.config import ModelConfig

CONVENTIONS = ('6N', '6N_with_head', 'kaplan', 'chinchilla', 'exact')


def param_counts(m: ModelConfig, vocab_size: int | None = None) -> dict[str, int]:
  """Parameters by component; 'total' equals the size of the params pytree."""
  V = vocab_size or m.vocab_size
  D, H, K, Dh, F, Lyr = m.d_model, m.num_heads, m.kv_heads, m.dh, m.ff_dim, m.num_layers
  b = int(m.use_bias)
  norm = D * (2 if (m.norm == 'layernorm' and m.use_bias) else 1)
  qk_norm = 2 * Dh * (2 if (m.norm == 'layernorm' and m.use_bias) else 1) if m.qk_norm else 0
  attn = D * (H + 2 * K) * Dh + H * Dh * D + b * ((H + 2 * K) * Dh + D) + qk_norm
  n_up = 2 if m.activation == 'swiglu' else 1
  mlp = n_up * D * F + F * D + b * (n_up * F + D)
  c = {
      'embedding': V * D,
      'position': m.max_len * D if m.position == 'learned' else 0,
      'attention': Lyr * attn,
      'mlp': Lyr * mlp,
      'norms': Lyr * 2 * norm + norm,
      'head': 0 if (m.tie_embeddings or m.num_classes) else D * V,
      'classifier': (D + 1) * m.num_classes,
  }
  c['non_embedding'] = c['attention'] + c['mlp'] + c['norms']
  c['total'] = sum(c[k] for k in ('embedding', 'position', 'attention', 'mlp', 'norms', 'head',
                                    'classifier'))
  return c


def forward_flops_per_token(m: ModelConfig, seq_len: int,
                            vocab_size: int | None = None) -> dict[str, float]:
  """Matmul FLOPs (2 per multiply-add) of one forward pass, per token."""
  V = vocab_size or m.vocab_size
  D, H, K, Dh, F, Lyr, L = (m.d_model, m.num_heads, m.kv_heads, m.dh, m.ff_dim,
                            m.num_layers, seq_len)
  n_mlp = 3 if m.activation == 'swiglu' else 2
  block = m.attn_block or L
  # Keys each query is scored against, averaged over queries, as computed.
  keys = sum((min(q0 + block, L) - q0) * min(q0 + block, L) for q0 in range(0, L, block)) / L
  return {
      'qkv': Lyr * 2 * D * (H + 2 * K) * Dh,
      'attn_out': Lyr * 2 * H * Dh * D,
      'attn_scores_full': Lyr * 2 * L * H * Dh,
      'attn_context_full': Lyr * 2 * L * H * Dh,
      'attn_scores_computed': Lyr * 2 * keys * H * Dh,
      'attn_context_computed': Lyr * 2 * keys * H * Dh,
      # Causal: query t sees t+1 keys, (L+1)/2 on average.
      'attn_scores_causal': Lyr * 2 * (L + 1) / 2 * H * Dh,
      'attn_context_causal': Lyr * 2 * (L + 1) / 2 * H * Dh,
      'mlp': Lyr * n_mlp * 2 * D * F,
      'logits': 0 if m.num_classes else 2 * D * V,
      'embedding': 2 * D * V,  # As a one-hot matmul (Chinchilla); a gather in practice.
  }


def train_flops_per_token(m: ModelConfig, seq_len: int, convention: str = 'exact',
                          vocab_size: int | None = None) -> float:
  V = vocab_size or m.vocab_size
  p = param_counts(m, V)
  f = forward_flops_per_token(m, seq_len, V)
  if convention == '6N':
    return 6.0 * p['non_embedding']
  if convention == '6N_with_head':
    return 6.0 * (p['non_embedding'] + m.d_model * V)
  if convention == 'kaplan':
    return 6.0 * p['non_embedding'] + 6.0 * m.num_layers * seq_len * m.num_heads * m.dh
  if convention == 'chinchilla':
    softmax = m.num_layers * 3 * m.num_heads * seq_len
    fwd = (f['embedding'] + f['qkv'] + f['attn_out'] + f['attn_scores_full']
           + f['attn_context_full'] + softmax + f['mlp'] + f['logits'])
    return 3.0 * fwd
  if convention == 'exact':
    fwd = (f['qkv'] + f['attn_out'] + f['attn_scores_computed']
           + f['attn_context_computed'] + f['mlp'] + f['logits'])
    return 3.0 * fwd
  raise ValueError(f'unknown FLOP convention {convention!r}; one of {CONVENTIONS}')


def all_conventions(m: ModelConfig, seq_len: int, vocab_size: int | None = None
                    ) -> dict[str, float]:
  return {c: train_flops_per_token(m, seq_len, c, vocab_size) for c in CONVENTIONS}


# Dense peak FLOP/s per device by device_kind prefix (vendor data sheets).
PEAK_FLOPS = {
    ('TPU v4', 'bfloat16'): 275e12,
    ('TPU v5 lite', 'bfloat16'): 197e12,
    ('TPU v5e', 'bfloat16'): 197e12,
    ('TPU v5p', 'bfloat16'): 459e12,
    ('TPU v6 lite', 'bfloat16'): 918e12,
    ('TPU v6e', 'bfloat16'): 918e12,
    ('NVIDIA H100', 'bfloat16'): 989e12,
    ('NVIDIA H100', 'float32'): 67e12,
    ('NVIDIA H200', 'bfloat16'): 989e12,
    ('NVIDIA H200', 'float32'): 67e12,
    ('NVIDIA A100', 'bfloat16'): 312e12,
    ('NVIDIA A100', 'float32'): 19.5e12,
}

_MEASURED: dict[str, float] = {}


def measure_matmul_peak(dtype: str = 'float32', n: int = 1024, seconds: float = 1.0) -> float:
  """Best observed FLOP/s of an n x n matmul chain on the default device."""
  import jax
  import jax.numpy as jnp
  if dtype in _MEASURED:
    return _MEASURED[dtype]
  a = jnp.ones((n, n), dtype) * 0.001
  f = jax.jit(lambda x: x @ a @ a @ a @ a)
  x = f(a).block_until_ready()
  best, t_end = 0.0, time.perf_counter() + seconds
  while time.perf_counter() < t_end:
    t0 = time.perf_counter()
    x = f(x).block_until_ready()
    best = max(best, 4 * 2 * n ** 3 / (time.perf_counter() - t0))
  _MEASURED[dtype] = best
  return best


def peak_flops(device_kind: str, dtype: str, platform: str) -> float:
  """Per-device peak: the table, or a quick measurement on CPU (0 if unknown)."""
  for (kind, dt), v in PEAK_FLOPS.items():
    if device_kind.startswith(kind) and dt == dtype:
      return v
  if platform == 'cpu':
    return measure_matmul_peak(dtype)
  return 0.0
