"""Sampling without a cache: each new token re-runs the forward pass.

Simple and obviously correct; a KV-cached decoder replaces it for speed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lm.config import ModelConfig
from lm.model import Transformer


def sample_text(params, m: ModelConfig, tokenizer, prompt: str, max_new_tokens: int,
                temperature: float = 1.0, seed: int = 0) -> str:
  """Samples after `prompt` (greedy if temperature == 0); returns the new text."""
  model = Transformer(m)
  L = m.max_len
  ids = list(tokenizer.encode(prompt)) or [tokenizer.eos_id]

  @jax.jit
  def next_token(params, window_1L, n, rng):
    logits = model.apply({'params': params}, window_1L)[0, n - 1]
    if temperature == 0:
      return jnp.argmax(logits)
    return jax.random.categorical(rng, logits / temperature)

  rng = jax.random.key(seed)
  out = []
  for i in range(max_new_tokens):
    ctx = (ids + out)[-L:]
    window = np.zeros((1, L), np.int32)
    window[0, :len(ctx)] = ctx
    tok = int(next_token(params, window, len(ctx), jax.random.fold_in(rng, i)))
    if tok == tokenizer.eos_id:
      break
    out.append(tok)
  return prompt + tokenizer.decode(out)
