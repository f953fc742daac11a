"""Many small models per step: K models of one shape trained in one jitted step.

Small models leave most of a machine idle: a d_model-32 step is too little
work to fill two CPU cores, let alone an accelerator, so a sweep that trains
them one after another pays the per-step overhead K times. Packing stacks the
K members' train states on a leading member axis and `jax.vmap`s the train
step over it, so one dispatch does the work of K.

Each member keeps its own seed (initialisation and dropout), peak learning
rate, schedule length and data: the optimizer runs with a unit learning rate
and each member's update is scaled by its own schedule (lm/optimizer.schedule,
evaluated on traced values), which is AdamW's arithmetic unchanged; a member
past its last step stops updating (its parameters, optimizer state and step
stay as they were) while the others go on. A member's losses equal its
single-model run's to float rounding (tests/test_pack.py).

What varies between members must not change the shapes: the model and batch
shape are shared (lm/config.FIELD_KINDS 'arch' and 'fixed' fields).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lm import optimizer as opt_lib
from lm import train
from lm.config import Config
from lm.model import Transformer


@dataclasses.dataclass(frozen=True)
class Pack:
  """K configs trained together: the shared shape and the per-member scalars."""
  configs: tuple[Config, ...]

  # What may differ between members; everything else must be equal, since
  # the step is built from the first member's config.
  PER_MEMBER = {'name': None, 'opt': ('lr',), 'train': ('seed', 'steps'),
                'data': ('shuffle_seed',)}

  def __post_init__(self):
    def shared(c: Config) -> Config:  # c with the per-member fields of configs[0].
      base = self.configs[0]
      sections = {s: dataclasses.replace(getattr(c, s), **{
          f: getattr(getattr(base, s), f) for f in fields})
          for s, fields in self.PER_MEMBER.items() if fields}
      return dataclasses.replace(c, name=base.name, **sections)

    first = shared(self.configs[0])
    for c in self.configs[1:]:
      if shared(c) != first:
        diff = [f'{s}.{f.name}' for s in ('model', 'opt', 'data', 'train', 'mesh')
                for f in dataclasses.fields(getattr(c, s))
                if getattr(getattr(shared(c), s), f.name) != getattr(getattr(first, s), f.name)]
        raise ValueError(f'members of a pack differ only in opt.lr, train.seed, train.steps '
                         f'and data.shuffle_seed; {c.name} also differs in: '
                         + ', '.join(diff or ['rules/init_from']))

  @property
  def size(self) -> int:
    return len(self.configs)

  def scalars(self) -> dict[str, jax.Array]:
    """Per-member values the step reads: peak learning rate and schedule length."""
    return {'lr': jnp.asarray([c.opt.lr for c in self.configs], jnp.float32),
            'steps': jnp.asarray([c.train.steps for c in self.configs], jnp.int32)}


def unit_lr_tx(c: Config) -> optax.GradientTransformation:
  """The members' optimizer with learning rate 1: the step scales each update."""
  o = dataclasses.replace(c.opt, lr=1.0, schedule='constant', warmup_steps=0)
  return opt_lib.make(o, c.train.steps, c.model)


def init(p: Pack) -> train.TrainState:
  """The members' initial states (each from its train.seed), stacked: K x ..."""
  c = p.configs[0]
  model, tx = Transformer(c.model), unit_lr_tx(c)
  f = jax.jit(jax.vmap(lambda r: nn.unbox(train.init_fn(c, model, tx)(r))))
  return f(jnp.stack([jax.random.key(m.train.seed) for m in p.configs]))


def make_step(p: Pack):
  """(stacked state, K x batch, scalars) -> (stacked state, K x metrics), jitted."""
  c = p.configs[0]
  model, tx = Transformer(c.model), unit_lr_tx(c)
  grads = train.make_grad_fn(c, model)

  def member(state: train.TrainState, batch: dict, lr_peak, total_steps):
    rng = jax.random.fold_in(state.rng, state.step)
    loss, g = grads(state.params, batch, rng)
    direction, opt_state = tx.update(g, state.opt_state, state.params)
    o = dataclasses.replace(c.opt, lr=lr_peak)
    lr = opt_lib.schedule(o, total_steps)(state.step)
    active = state.step < total_steps
    params = jax.tree_util.tree_map(lambda w, u: jnp.where(active, w + lr * u, w),
                                    state.params, direction)
    opt_state = jax.tree_util.tree_map(lambda new, old: jnp.where(active, new, old),
                                       opt_state, state.opt_state)
    metrics = {'loss': loss, 'grad_norm': optax.tree.norm(g), 'lr': lr,
               'param_norm': optax.tree.norm(params), 'active': active}
    return state.replace(step=state.step + active.astype(jnp.int32), params=params,
                         opt_state=opt_state), metrics

  vstep = jax.vmap(member)

  @jax.jit
  def step(state, batch, scalars):
    return vstep(state, batch, scalars['lr'], scalars['steps'])

  return step


def member(state: train.TrainState, k: int) -> train.TrainState:
  """Member k's state, as a single run's (checkpoints, sampling, export)."""
  return jax.tree_util.tree_map(lambda x: x[k], state)


def stack_batches(batches: list[dict[str, Any]]) -> dict[str, np.ndarray]:
  return {k: np.stack([b[k] for b in batches]) for k in batches[0]}
