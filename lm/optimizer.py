"""AdamW with a decay mask, global-norm clipping and the learning-rate schedules."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from lm.config import OptimizerConfig


def schedule(o: OptimizerConfig, total_steps: int) -> Callable[[Any], Any]:
  """Linear warmup from 0 to `lr`, then the named decay down to lr*min_lr_ratio.

  wsd (warmup-stable-decay, Hägele et al. 2024): constant until the last
  cooldown_fraction of training, then a linear or 1-sqrt cooldown.
  """
  peak, floor = o.lr, o.lr * o.min_lr_ratio  # lr and total_steps may be traced (lm/pack.py).
  warm = max(o.warmup_steps, 0)
  decay_steps = jnp.maximum(total_steps - warm, 1)

  def lr(step):
    step = jnp.asarray(step, jnp.float32)
    warm_lr = peak * (step + 1) / max(warm, 1)  # Step 0 trains: lr > 0.
    t = jnp.clip((step - warm) / decay_steps, 0.0, 1.0)
    if o.schedule == 'cosine':
      after = floor + (peak - floor) * 0.5 * (1 + jnp.cos(jnp.pi * t))
    elif o.schedule == 'linear':
      after = peak + (floor - peak) * t
    elif o.schedule == 'constant':
      after = jnp.full_like(t, peak)
    elif o.schedule == 'inverse_sqrt':
      after = peak * jnp.sqrt(max(warm, 1) / jnp.maximum(step, max(warm, 1)))
    elif o.schedule == 'wsd':
      cool = jnp.maximum(jnp.round(o.cooldown_fraction * total_steps), 1)
      start = total_steps - cool
      u = jnp.clip((step - start) / cool, 0.0, 1.0)
      frac = u if o.cooldown_shape == 'linear' else jnp.sqrt(u)
      after = peak + (floor - peak) * frac
    else:
      raise ValueError(f'unknown schedule {o.schedule!r}')
    return jnp.where(step < warm, warm_lr, after)

  return lr


def decay_mask(params: Any, exclude: tuple[str, ...]) -> Any:
  """True where weight decay applies: not norms/biases/embeddings if excluded."""

  def keep(path, _):
    names = [str(getattr(k, 'key', k)) for k in path]
    leaf = names[-1]
    if 'norm' in exclude and leaf == 'scale':
      return False
    if 'bias' in exclude and leaf.endswith('bias'):  # Also query_bias, out_bias, ...
      return False
    if 'embedding' in exclude and leaf == 'embedding':
      return False
    return True

  return jax.tree_util.tree_map_with_path(keep, params)


def make(o: OptimizerConfig, total_steps: int) -> optax.GradientTransformation:
  lr = schedule(o, total_steps)
  parts = []
  if o.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(o.grad_clip))
  parts.append(optax.adamw(lr, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
                           mask=lambda p: decay_mask(p, o.wd_exclude)))
  tx = optax.chain(*parts)
  if o.freeze_backbone:  # Only the classifier head trains; no Adam state for the rest.
    tx = optax.multi_transform({'train': tx, 'frozen': optax.set_to_zero()}, head_labels)
  return tx


def head_labels(params: Any) -> Any:
  return {k: jax.tree_util.tree_map(lambda _: 'train' if k == 'cls_head' else 'frozen', v)
          for k, v in params.items()}
