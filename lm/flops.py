"""Parameter and FLOP counts as pure functions of the model config.

Conventions for training FLOPs per token (C = flops_per_token * tokens):
  6N           6 x non-embedding params (Kaplan et al. 2020, Sec. 2.1).
  6N_with_head 6 x (non-embedding params + the output head V*D).
  kaplan       6N + 6 * layers * ctx * d_attn (Kaplan 2020, Table 1); an
               encoder-decoder sums its encoder, decoder and cross-attention.
  chinchilla   3 x forward, forward as in Hoffmann et al. 2022, App. F
               (embeddings, causal-free attention incl. softmax, dense, logits).
  exact        3 x the matmuls the step really runs: projections, scores and
               context over the key blocks attention computes (query blocks of
               model.attn_block skip keys after the block; within a block the
               mask is applied, not skipped), MLP (GLU aware), the MLM head
               transform (model.mlm_transform) and logits.
               MFU uses this one. Like PaLM's MFU (Chowdhery et al. 2022,
               App. B) it leaves out rematerialisation: with remat the
               hardware does up to one more forward pass than this counts.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import time

from lm import workdir as workdir_lib
from lm.config import CONVENTIONS, ModelConfig


def param_counts(m: ModelConfig, vocab_size: int | None = None) -> dict[str, int]:
  """Parameters by component; 'total' equals the size of the params pytree."""
  V = vocab_size or m.vocab_size
  D, H, K, Dh, F = m.d_model, m.num_heads, m.kv_heads, m.dh, m.ff_dim
  b = int(m.use_bias)
  norm = D * (2 if (m.norm == 'layernorm' and m.use_bias) else 1)
  qk_norm = 2 * Dh * (2 if (m.norm == 'layernorm' and m.use_bias) else 1) if m.qk_norm else 0
  attn = D * (H + 2 * K) * Dh + H * Dh * D + b * ((H + 2 * K) * Dh + D) + qk_norm
  n_up = 2 if m.activation == 'swiglu' else 1
  mlp = n_up * D * F + F * D + b * (n_up * F + D)
  enc_dec = m.family == 'encoder_decoder'
  Le, Ld = (m.num_layers, m.decoder_layers) if enc_dec else (m.num_layers, 0)
  c = {
      'embedding': V * D,
      'position': m.max_len * D if m.position == 'learned' else 0,
      'attention': (Le + Ld) * attn,
      'cross_attention': Ld * (attn + norm),  # With its pre-norm.
      'mlp': (Le + Ld) * mlp,
      'norms': (Le + Ld) * 2 * norm + norm * (2 if enc_dec else 1),
      'head': 0 if (m.tie_embeddings or m.num_classes) else D * V,
      'classifier': (D + 1) * m.num_classes,
      'mlm_transform': (D * D + b * D + norm) if m.mlm_transform and not m.num_classes else 0,
  }
  c['non_embedding'] = (c['attention'] + c['cross_attention'] + c['mlp'] + c['norms']
                        + c['mlm_transform'])
  c['total'] = sum(c[k] for k in ('embedding', 'position', 'attention', 'cross_attention',
                                  'mlp', 'norms', 'head', 'classifier', 'mlm_transform'))
  return c


def _blocked_keys(L: int, block: int) -> float:
  """Keys each query is scored against with causal query blocks, averaged."""
  block = block or L
  return sum((min(q0 + block, L) - q0) * min(q0 + block, L) for q0 in range(0, L, block)) / L


def _stack(m: ModelConfig, layers: int, L: int, causal: bool) -> dict[str, float]:
  """Per-token matmul FLOPs of a stack of self-attention blocks over L tokens."""
  D, H, K, Dh, F = m.d_model, m.num_heads, m.kv_heads, m.dh, m.ff_dim
  n_mlp = 3 if m.activation == 'swiglu' else 2
  # Causal stacks skip whole key blocks (model.attn_block); bidirectional ones
  # score every key. Query t of a causal stack needs t+1 keys, (L+1)/2 on average.
  # The chunked path's block for attn_block 0 is lm/model.CHUNKED_BLOCK (512; kept
  # here as a number: flops does not import the model). 'auto' is left as the
  # one-block count: which path it takes depends on the device.
  block = m.attn_block or (512 if m.attention == 'chunked' else 0)
  keys = _blocked_keys(L, block) if causal else L
  needed = (L + 1) / 2 if causal else L
  return {
      'qkv': layers * 2 * D * (H + 2 * K) * Dh,
      'attn_out': layers * 2 * H * Dh * D,
      'attn_scores_full': layers * 2 * L * H * Dh,
      'attn_context_full': layers * 2 * L * H * Dh,
      'attn_scores_computed': layers * 2 * keys * H * Dh,
      'attn_context_computed': layers * 2 * keys * H * Dh,
      'attn_scores_causal': layers * 2 * needed * H * Dh,
      'attn_context_causal': layers * 2 * needed * H * Dh,
      'mlp': layers * n_mlp * 2 * D * F,
  }


def forward_flops_per_token(m: ModelConfig, seq_len: int, vocab_size: int | None = None,
                            enc_len: int = 0, dec_len: int = 0) -> dict[str, float]:
  """Matmul FLOPs (2 per multiply-add) of one forward pass, per token of seq_len.

  An encoder-decoder runs its encoder over enc_len tokens and its decoder over
  dec_len per example (an objective's `lengths`, lm/objectives); its totals are divided by
  seq_len, the text tokens one example consumes, so C = flops x tokens."""
  V = vocab_size or m.vocab_size
  D, H, K, Dh = m.d_model, m.num_heads, m.kv_heads, m.dh
  if m.family != 'encoder_decoder':
    f = _stack(m, m.num_layers, seq_len, causal=m.family == 'decoder')
    f['cross'] = 0.0
    f['logits'] = 0 if m.num_classes else 2 * D * V
    f['mlm_transform'] = 2 * D * D if m.mlm_transform and not m.num_classes else 0
    f['embedding'] = 2 * D * V  # As a one-hot matmul (Chinchilla); a gather in practice.
    return f
  enc_len = enc_len or seq_len
  dec_len = dec_len or seq_len
  e = _stack(m, m.num_layers, enc_len, causal=False)
  d = _stack(m, m.decoder_layers, dec_len, causal=True)
  f = {k: (e[k] * enc_len + d[k] * dec_len) / seq_len for k in e}
  Ld = m.decoder_layers
  cross = (dec_len * Ld * (2 * D * H * Dh + 2 * H * Dh * D + 2 * 2 * enc_len * H * Dh)
           + enc_len * Ld * 2 * D * 2 * K * Dh)  # q, out and attention; k, v of the encoder.
  f['cross'] = cross / seq_len
  f['mlm_transform'] = 0.0
  f['logits'] = 2 * D * V * dec_len / seq_len
  f['embedding'] = 2 * D * V * (enc_len + dec_len) / seq_len
  return f


def train_flops_per_token(m: ModelConfig, seq_len: int, convention: str = 'exact',
                          vocab_size: int | None = None, enc_len: int = 0,
                          dec_len: int = 0) -> float:
  V = vocab_size or m.vocab_size
  p = param_counts(m, V)
  f = forward_flops_per_token(m, seq_len, V, enc_len, dec_len)
  if convention == '6N':
    return 6.0 * p['non_embedding']
  if convention == '6N_with_head':
    return 6.0 * (p['non_embedding'] + m.d_model * V)
  # Query-key pairs per layer, summed over layers, per token of seq_len: every
  # key counted (both papers ignore the causal mask); an encoder-decoder's
  # encoder, decoder and cross-attention each over their own lengths.
  if m.family == 'encoder_decoder':
    el, dl = enc_len or seq_len, dec_len or seq_len
    pairs = (m.num_layers * el * el + m.decoder_layers * dl * (dl + el)) / seq_len
  else:
    pairs = m.num_layers * seq_len
  if convention == 'kaplan':  # 2 n_layer n_ctx d_attn per token, forward (Table 1).
    return 6.0 * p['non_embedding'] + 6.0 * pairs * m.num_heads * m.dh
  if convention == 'chinchilla':
    softmax = 3 * m.num_heads * pairs
    fwd = (f['embedding'] + f['qkv'] + f['attn_out'] + f['attn_scores_full']
           + f['attn_context_full'] + f['cross'] + softmax + f['mlp'] + f['mlm_transform']
           + f['logits'])
    return 3.0 * fwd
  if convention == 'exact':
    fwd = (f['qkv'] + f['attn_out'] + f['attn_scores_computed'] + f['attn_context_computed']
           + f['cross'] + f['mlp'] + f['mlm_transform'] + f['logits'])
    return 3.0 * fwd
  raise ValueError(f'unknown FLOP convention {convention!r}; one of {CONVENTIONS}')


def all_conventions(m: ModelConfig, seq_len: int, vocab_size: int | None = None,
                    enc_len: int = 0, dec_len: int = 0) -> dict[str, float]:
  return {c: train_flops_per_token(m, seq_len, c, vocab_size, enc_len, dec_len)
          for c in CONVENTIONS}


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


def measure_matmul_peak(dtype: str = 'float32', n: int = 1024, seconds: float = 1.0,
                        cache_dir: str = '') -> float:
  """Best observed FLOP/s of an n x n matmul chain on the default device.

  With cache_dir, measured once per machine (host, CPU model, usable CPUs, devices,
  XLA flags, jax version, dtype) and kept in cache_dir/matmul_peak.json, so
  every run on a machine reports MFU against the same denominator (a fresh
  1-second measurement moves by 10-30% with the machine's load) and no process
  spends its first ~1.2 s measuring it again."""
  import jax
  import jax.numpy as jnp
  key = '|'.join([socket.gethostname(), _cpu_model(), f'{_cpus()} cpus',
                  f'{len(jax.devices())}x{jax.devices()[0].device_kind}',
                  os.environ.get('XLA_FLAGS', ''), f'jax {jax.__version__}', dtype, str(n)])
  if key in _MEASURED:
    return _MEASURED[key]
  path = os.path.join(cache_dir, 'matmul_peak.json') if cache_dir else ''
  stored = _stored(_read_table(path), key)
  if stored is not None:
    _MEASURED[key] = stored
    return stored
  a = jnp.ones((n, n), dtype) * 0.001
  f = jax.jit(lambda x: x @ a @ a @ a @ a)
  x = f(a).block_until_ready()
  best, t_end = 0.0, time.perf_counter() + seconds
  while time.perf_counter() < t_end:
    t0 = time.perf_counter()
    x = f(x).block_until_ready()
    best = max(best, 4 * 2 * n ** 3 / (time.perf_counter() - t0))
  if path:
    best = _keep(path, key, best)
  _MEASURED[key] = best
  return best


def _keep(path: str, key: str, best: float) -> float:
  """Writes the measurement into the table (best effort: a read-only or full
  cache only costs the next process a measurement). Processes that measured at
  once, competing for the cores, keep the highest of their values."""
  table = _read_table(path)  # Read again just before writing: others may have added keys.
  best = max(best, _stored(table, key) or 0.0)
  table[key] = {'flops_per_s': best, 'measured': time.strftime('%Y-%m-%dT%H:%M:%S')}
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    workdir_lib.write_atomic(path, json.dumps(table, indent=1))
  except OSError:
    pass
  return best


def _read_table(path: str) -> dict:
  try:
    with open(path) as f:
      table = json.load(f)
    return table if isinstance(table, dict) else {}
  except (OSError, ValueError):  # Absent or damaged: measure again and rewrite it.
    return {}


def _stored(table: dict, key: str) -> float | None:
  entry = table.get(key)
  if isinstance(entry, dict) and isinstance(entry.get('flops_per_s'), (int, float)):
    return float(entry['flops_per_s'])
  return None


def _cpus() -> int:
  """The CPUs this process may run on (taskset, cpusets), not the machine's count."""
  return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()


def _cpu_model() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      return next((ln.split(':', 1)[1].strip() for ln in f if ln.startswith('model name')), '')
  except OSError:
    return platform.processor()


def peak_flops(device_kind: str, dtype: str, backend: str, cache_dir: str = '') -> float:
  """Per-device peak: the table, or on CPU a measurement (kept in cache_dir, if
  given, for later processes on the same machine); 0 if unknown."""
  for (kind, dt), v in PEAK_FLOPS.items():
    if device_kind.startswith(kind) and dt == dtype:
      return v
  if backend == 'cpu':
    return measure_matmul_peak(dtype, cache_dir=cache_dir)
  return 0.0
