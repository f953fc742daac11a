"""AdamW with a decay mask, global-norm clipping and the learning-rate schedules."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from lm.config import ModelConfig, OptimizerConfig
from lm.model import STACKS


def schedule(o: OptimizerConfig, total_steps: Any) -> Callable[[Any], Any]:
  """Linear warmup from 0 to `lr`, then the named decay down to lr*min_lr_ratio.

  Steps count from 0 and a run trains steps 0 .. total_steps - 1: warmup's last
  step (warmup_steps - 1) is at the peak, and the decay's last trained step
  (total_steps - 1) at the floor, so a cooldown of c steps ends where it says.

  wsd (warmup-stable-decay, Hägele et al. 2024): constant until the last
  cooldown_fraction of training, then a linear or 1-sqrt cooldown. o.lr,
  o.warmup_steps, o.cooldown_fraction and total_steps may be traced
  (schedule_inputs), so runs that differ only in them share one compiled step.
  """
  peak, floor = o.lr, o.lr * o.min_lr_ratio
  warm = jnp.maximum(o.warmup_steps, 0)
  decay_steps = jnp.maximum(total_steps - warm, 1)

  def lr(step):
    step = jnp.asarray(step, jnp.float32)
    warm_lr = peak * (step + 1) / jnp.maximum(warm, 1)  # Step 0 trains: lr > 0.
    t = jnp.clip((step + 1 - warm) / decay_steps, 0.0, 1.0)
    if o.schedule == 'cosine':
      after = floor + (peak - floor) * 0.5 * (1 + jnp.cos(jnp.pi * t))
    elif o.schedule == 'linear':
      after = peak + (floor - peak) * t
    elif o.schedule == 'constant':
      after = jnp.full_like(t, peak)
    elif o.schedule == 'inverse_sqrt':
      # Update number step + 1, as in the warmup: the peak once, at step warm - 1.
      after = peak * jnp.sqrt(jnp.maximum(warm, 1) / jnp.maximum(step + 1, jnp.maximum(warm, 1)))
    elif o.schedule == 'wsd':
      cool = jnp.maximum(jnp.round(o.cooldown_fraction * total_steps), 1)
      start = total_steps - cool
      u = jnp.clip((step + 1 - start) / cool, 0.0, 1.0)
      frac = u if o.cooldown_shape == 'linear' else jnp.sqrt(u)
      after = peak + (floor - peak) * frac
    else:
      raise ValueError(f'unknown schedule {o.schedule!r}')
    return jnp.where(step < warm, warm_lr, after)

  return lr


# The schedule's per-run numbers, passed to the train step as arrays
# (lm/train.py): a sweep's runs of one shape then share one executable (and its
# persistent-cache entry) whatever their learning rate and length.
SCHEDULE_INPUTS = ('lr', 'warmup_steps', 'cooldown_fraction')


def schedule_inputs(o: OptimizerConfig, total_steps: int) -> dict[str, Any]:
  return {'lr': jnp.float32(o.lr), 'warmup_steps': jnp.int32(o.warmup_steps),
          'cooldown_fraction': jnp.float32(o.cooldown_fraction),
          'total_steps': jnp.int32(total_steps)}


def traced_schedule(o: OptimizerConfig, inputs: dict[str, Any]) -> Callable[[Any], Any]:
  """schedule() with the numbers schedule_inputs made (traced in a step)."""
  o = dataclasses.replace(o, **{k: inputs[k] for k in SCHEDULE_INPUTS})
  return schedule(o, inputs['total_steps'])


def unit_lr(o: OptimizerConfig, m: ModelConfig | None = None) -> optax.GradientTransformation:
  """make() at a constant learning rate of 1: the train step scales each update
  by the schedule's learning rate itself, which is AdamW's arithmetic (decoupled
  weight decay included) with the rate outside the compiled constants."""
  return make(dataclasses.replace(o, lr=1.0, schedule='constant', warmup_steps=0), 1, m)


def _names(path) -> list[str]:
  """A parameter's path as its dict keys (flax's boxes add attribute keys)."""
  return [str(k.key) for k in path if hasattr(k, 'key')]


def decay_mask(params: Any, exclude: tuple[str, ...]) -> Any:
  """True where weight decay applies: not norms/biases/embeddings if excluded."""

  def keep(path, _):
    names = _names(path)
    leaf = names[-1]
    if 'norm' in exclude and (leaf == 'scale' or (
        leaf == 'bias' and len(names) > 1 and names[-2].endswith('norm'))):
      return False
    if 'bias' in exclude and leaf.endswith('bias'):  # Also query_bias, out_bias, ...
      return False
    if 'embedding' in exclude and leaf == 'embedding':
      return False
    return True

  return jax.tree_util.tree_map_with_path(keep, params)


# Hidden (width x width) weights by name: attention's projections are params of
# the Attention module; the MLP's and BERT's transform are nn.Dense kernels.
_HIDDEN_PARAMS = ('query', 'key', 'value', 'out')
_HIDDEN_DENSE = ('up', 'gate', 'down', 'mlm_dense')


_ENCODER_STACKS = tuple(s for s in STACKS if s.startswith('encoder'))


def lr_group(path) -> str:
  """'hidden' (muP: LR / width_mult), 'block' (a block's biases and norm scales)
  or 'other' (embeddings, output matrix, classifier, final norms); an
  encoder-decoder's encoder stack has its own 'enc_hidden' and 'enc_block'
  (its depth differs from the decoder's); a hidden matrix outside the blocks
  (BERT's head transform) is 'head_hidden': muP's width factor, no depth factor."""
  names = _names(path)
  enc = 'enc_' if names[0].startswith(_ENCODER_STACKS) else ''
  in_blocks = names[0].startswith(STACKS)
  if names[-1] in _HIDDEN_PARAMS or (names[-1] == 'kernel' and len(names) > 1
                                     and names[-2] in _HIDDEN_DENSE):
    return enc + 'hidden' if in_blocks else 'head_hidden'
  return enc + 'block' if in_blocks else 'other'


def lr_multipliers(m: ModelConfig) -> dict[str, float]:
  """Each LR group's multiplier of the learning rate (lm/model.py's table):
  muP divides the hidden weights' by width_mult; depth scaling multiplies
  everything inside the blocks by (layers / depth_base)^(alpha - 1), each stack
  by its own depth (an encoder-decoder's decoder has decoder_layers, as its
  residual branches do: lm/model.branch_multiplier)."""
  def depth(layers: int) -> float:
    return (layers / m.depth_base) ** (m.depth_alpha - 1) if m.depth_base else 1.0
  main = m.decoder_layers if m.family == 'encoder_decoder' else m.num_layers
  return {'hidden': depth(main) / m.width_mult, 'block': depth(main),
          'enc_hidden': depth(m.num_layers) / m.width_mult, 'enc_block': depth(m.num_layers),
          'head_hidden': 1.0 / m.width_mult, 'other': 1.0}


def make(o: OptimizerConfig, total_steps: int, m: ModelConfig | None = None
         ) -> optax.GradientTransformation:
  """Clipping, then AdamW. With a model config whose LR multipliers are not
  all 1 (muP, depth scaling), each group's update, decoupled weight decay
  included, is scaled by its multiplier: the effective decay per step is
  lr x multiplier x weight_decay (the convention of PyTorch's AdamW with
  per-group learning rates, as the mup package uses)."""
  lr = schedule(o, total_steps)
  parts = []
  if o.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(o.grad_clip))
  mults = lr_multipliers(m) if m is not None else {}
  mask = lambda p: decay_mask(p, o.wd_exclude)
  if all(v == 1.0 for v in mults.values()):
    parts.append(optax.adamw(lr, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
                             mask=mask))
  else:  # optax.adamw's three parts, with the per-group scaling before the LR.
    labels = lambda p: jax.tree_util.tree_map_with_path(lambda k, _: lr_group(k), p)
    parts += [optax.scale_by_adam(b1=o.b1, b2=o.b2, eps=o.eps),
              optax.add_decayed_weights(o.weight_decay, mask),
              optax.multi_transform({g: optax.scale(v) for g, v in mults.items()}, labels),
              optax.scale_by_learning_rate(lr)]
  tx = optax.chain(*parts)
  if o.freeze_backbone:  # Only the classifier head trains; no Adam state for the rest.
    tx = optax.multi_transform({'train': tx, 'frozen': optax.set_to_zero()}, head_labels)
  return float32_state(tx)


def _f32(tree: Any) -> Any:
  return jax.tree_util.tree_map(
      lambda x: x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def float32_state(tx: optax.GradientTransformation) -> optax.GradientTransformation:
  """`tx` with its state and arithmetic in float32 whatever the parameters'
  dtype (a no-op for float32 ones). With model.param_dtype='bfloat16', Adam's
  moments started in bfloat16: the first update promoted mu to float32 (the
  state's dtypes changed after step 0, so the step compiled twice and a
  checkpoint no longer matched the state it restores into), and nu stayed in
  bfloat16, where b2 * nu rounds back to nu for b2 >= ~0.998: the second moment
  stopped decaying. The updates come back in float32; the train step casts
  the new parameters to their dtype."""
  def init(params):
    return tx.init(_f32(params))

  def update(updates, state, params=None):
    return tx.update(_f32(updates), state, None if params is None else _f32(params))
  return optax.GradientTransformation(init, update)


def head_labels(params: Any) -> Any:
  return {k: jax.tree_util.tree_map(lambda _: 'train' if k == 'cls_head' else 'frozen', v)
          for k, v in params.items()}
