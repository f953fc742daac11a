"""Many small models per step: K models of one shape trained in one jitted step.

Small models leave most of a machine idle: a d_model-32 step is too little
work to fill two CPU cores, let alone an accelerator, so a sweep that trains
them one after another pays the per-step overhead K times. Packing stacks the
K members' train states on a leading member axis and `jax.vmap`s the train
step over it, so one dispatch does the work of K.

Each member keeps its own seed (initialisation and dropout), peak learning
rate, warmup, schedule length and data: the single-run step already reads its
schedule as inputs (lm/train.make_train_step) and stops a run past its last
step, so a member that has finished keeps its parameters, optimizer state and
step while the others go on. A member's losses equal its
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
  PER_MEMBER = {'name': None, 'opt': ('lr', 'warmup_steps', 'cooldown_fraction'),
                'train': ('seed', 'steps'),
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
        raise ValueError(f'members of a pack differ only in opt.lr, opt.warmup_steps, '
                         f'opt.cooldown_fraction, train.seed, train.steps and data.shuffle_seed; {c.name} also differs in: '
                         + ', '.join(diff or ['rules/init_from']))

  @property
  def size(self) -> int:
    return len(self.configs)

  def scalars(self) -> dict[str, jax.Array]:
    """Per-member schedule inputs (opt_lib.schedule_inputs), stacked."""
    rows = [opt_lib.schedule_inputs(c.opt, c.train.steps) for c in self.configs]
    return {k: jnp.stack([r[k] for r in rows]) for k in rows[0]}


def init(p: Pack) -> train.TrainState:
  """The members' initial states (each from its train.seed), stacked: K x ..."""
  c = p.configs[0]
  model, tx = Transformer(c.model), opt_lib.unit_lr(c.opt, c.model)
  f = jax.jit(jax.vmap(lambda r: nn.unbox(train.init_fn(c, model, tx)(r))))
  return f(jnp.stack([jax.random.key(m.train.seed) for m in p.configs]))


def make_step(p: Pack):
  """(stacked state, K x batch, K x schedule inputs) -> (stacked state, K x
  metrics), jitted: the single-run step (lm/train.make_train_step, which reads
  its schedule as inputs and stops a member at its last step) vmapped."""
  c = p.configs[0]
  step = train.make_train_step(c, Transformer(c.model), opt_lib.unit_lr(c.opt, c.model))
  return jax.jit(jax.vmap(step))


def member(state: train.TrainState, k: int) -> train.TrainState:
  """Member k's state, as a single run's (checkpoints, sampling, export)."""
  return jax.tree_util.tree_map(lambda x: x[k], state)


def stack_batches(batches: list[dict[str, Any]]) -> dict[str, np.ndarray]:
  return {k: np.stack([b[k] for b in batches]) for k in batches[0]}
