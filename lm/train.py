"""TrainState, sharded init, the train step, evaluation and the training loop."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import time
from typing import Any, Callable

import flax.linen as nn
import flax.struct
import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lm import checkpoint as ckpt_lib
from lm import data as data_lib
from lm import flops as flops_lib
from lm import metrics as metrics_lib
from lm import objectives
from lm import optimizer as opt_lib
from lm import probes
from lm import sharding as shard_lib
from lm import tokenizers
from lm import workdir as workdir_lib
from lm.config import Config, ConfigError
from lm.model import Transformer, init_inputs


CheckpointError = ckpt_lib.CheckpointError


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array


# --- Init ---------------------------------------------------------------------

def resolve_vocab(c: Config, vocab_size: int) -> Config:
  """Fills model.vocab_size from the tokenizer plus the ids the objective needs
  above it (MASK, sentinels), rounded up to a multiple of 128 (fast matmuls;
  shardable over `tensor`); a smaller explicit size is an error."""
  if c.model.vocab_size == 0:
    need = vocab_size + objectives.get(c).extra_ids(c)
    padded = -(-need // 128) * 128
    return dataclasses.replace(c, model=dataclasses.replace(c.model, vocab_size=padded))
  if c.model.vocab_size < vocab_size:
    raise ConfigError(f'config.model.vocab_size={c.model.vocab_size} is smaller than the '
                      f'tokenizer vocabulary ({vocab_size}); use 0 or >= {vocab_size}')
  return c


def init_fn(c: Config, model: nn.Module, tx: optax.GradientTransformation):
  def init(rng: jax.Array) -> TrainState:
    p_rng, rng = jax.random.split(rng)
    params = model.init(p_rng, **init_inputs(c.model, c.data.seq_len))['params']
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=tx.init(params), rng=rng)
  return init


def state_shardings(c: Config, model: nn.Module, tx, mesh) -> tuple[Any, Any]:
  """(abstract unboxed state, NamedShardings) from the logical axis names."""
  abstract = jax.eval_shape(init_fn(c, model, tx), jax.random.key(0))
  shardings = shard_lib.logical_to_sharding(abstract, mesh, c.rules)
  shard_lib.check_divisible(abstract.params, mesh, c.rules)
  return shard_lib.strip_boxes(abstract), shardings


def init_state(c: Config, model: nn.Module, tx, shardings) -> TrainState:
  """Initialises directly into its shards: the full state never sits on one host."""
  return make_init(c, model, tx, shardings)(jax.random.key(c.train.seed))


# XLA:CPU compiles the initialiser (a threefry hash and a normal transform per
# parameter) at its lowest backend optimisation level: the main job's d_model-16
# init compiled in 2.0 s instead of 5.5 s (d_model 48: 4.3 s instead of 8.8 s) and
# still runs once in milliseconds; values move by at most two float32 ULPs
# (tests/test_train.py). Other backends keep their defaults (not measured there).
CPU_INIT_OPTIONS = {'xla_backend_optimization_level': 0}


def init_compiler_options(platform: str) -> dict | None:
  return CPU_INIT_OPTIONS if platform == 'cpu' else None


def make_init(c: Config, model: nn.Module, tx, shardings):
  """jitted rng -> the initial state, in its shards."""
  init = init_fn(c, model, tx)
  platform = next(iter(jax.tree_util.tree_leaves(shardings)[0].device_set)).platform
  return jax.jit(lambda r: nn.unbox(init(r)), out_shardings=shardings,
                 compiler_options=init_compiler_options(platform))


# --- Steps --------------------------------------------------------------------

def loss_fn(params, model: nn.Module, objective: objectives.Objective, batch: dict,
            weights_B: jax.Array, rng: jax.Array, z_loss: float, train: bool):
  """The objective's mean loss (+ z-loss) over weighted rows, and its statistics."""
  rngs = {'dropout': rng} if train else {}
  apply = functools.partial(model.apply, {'params': params}, train=train, rngs=rngs)
  return objective.loss(apply, batch, weights_B, z_loss)


def _rows(batch: Any) -> int:
  return jax.tree_util.tree_leaves(batch)[0].shape[0]


def _head_only_grad_fn():
  """value_and_grad of loss_fn w.r.t. the classifier head only; the frozen
  backbone's grads are zeros. The backward pass then stops at the pooled
  features: with grads of every parameter, a frozen backbone still cost a full
  backward (the grad-norm metric kept XLA from pruning it)."""
  def head_loss(head, params, *args):
    return loss_fn({**params, 'cls_head': head}, *args)

  grad_head = jax.value_and_grad(head_loss, has_aux=True)

  def grad_fn(params, *args):
    out, g_head = grad_head(params['cls_head'], params, *args)
    g = {k: jax.tree_util.tree_map(jnp.zeros_like, v) for k, v in params.items()}
    return out, {**g, 'cls_head': g_head}

  return grad_fn


def make_grad_fn(c: Config, model: nn.Module):
  """(params, batch, rng) -> (mean loss, its mean NLL part without the z-loss, mean
  grads) over the batch, in grad_accum
  micro-batches. Each micro-batch's mean counts by its share of the batch's
  targets (objective.count: micro-batches of seq2seq or MLM rows hold different
  numbers of target tokens), so accumulation gives the full batch's mean."""
  A = c.train.grad_accum
  objective = objectives.get(c)
  grad_fn = (_head_only_grad_fn() if c.opt.freeze_backbone
             else jax.value_and_grad(loss_fn, has_aux=True))

  def grads(params, batch: dict, rng: jax.Array):
    B = _rows(batch)

    def one(mb, i):
      (loss, aux), g = grad_fn(params, model, objective, mb, jnp.ones(_rows(mb)),
                               jax.random.fold_in(rng, i), c.opt.z_loss, True)
      return loss, aux[objective.count], aux['nll_sum'], g

    if A == 1:
      loss, n, nll_sum, g = one(batch, 0)
      return (loss, nll_sum / jnp.maximum(n, 1.0),
              jax.tree_util.tree_map(lambda x: x.astype(jnp.float32), g))

    def micro(carry, xs):
      g_acc, loss_acc, nll_acc, n_acc = carry
      loss, n, nll_sum, g = one(xs[1], xs[0])
      g_acc = jax.tree_util.tree_map(lambda a, b: a + n * b.astype(jnp.float32), g_acc, g)
      return (g_acc, loss_acc + n * loss, nll_acc + nll_sum, n_acc + n), None

    zeros = jax.tree_util.tree_map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    # Micro-batches from strided rows keep each device's rows on that device.
    micro_batches = jax.tree_util.tree_map(
        lambda x: x.reshape(B // A, A, *x.shape[1:]).swapaxes(0, 1), batch)
    (g, loss, nll, n), _ = jax.lax.scan(micro, (zeros, 0.0, 0.0, 0.0),
                                        (jnp.arange(A), micro_batches))
    n = jnp.maximum(n, 1.0)
    return loss / n, nll / n, jax.tree_util.tree_map(lambda x: x / n, g)

  return grads


def make_train_step(c: Config, model: nn.Module, tx):
  """(state, batch, schedule inputs) -> (state, metrics). `tx` runs at unit
  learning rate (opt_lib.unit_lr) and the step scales the update by the
  schedule's rate, read from `sched` (opt_lib.schedule_inputs) rather than
  compiled in: runs of one shape then share an executable (lm/sweep.py). A
  run past its last step changes nothing (a packed member that has finished:
  lm/pack.py)."""
  grads = make_grad_fn(c, model)

  def train_step(state: TrainState, batch: dict, sched: dict | None = None
                 ) -> tuple[TrainState, dict]:
    if sched is None:  # This config's schedule, compiled in.
      sched = opt_lib.schedule_inputs(c.opt, c.train.steps)
    rng = jax.random.fold_in(state.rng, state.step)  # Same on resume: step is saved.
    loss, nll, g = grads(state.params, batch, rng)
    direction, opt_state = tx.update(g, state.opt_state, state.params)
    lr = opt_lib.traced_schedule(c.opt, sched)(state.step)
    params = jax.tree_util.tree_map(lambda p, u: (p + lr * u).astype(p.dtype),
                                    state.params, direction)
    grad_norm = optax.tree.norm(g)
    # 'loss' is the NLL, as eval reports it; the z-loss term the step also minimises
    # is its own metric.
    metrics = {'loss': nll, 'grad_norm': grad_norm, 'lr': lr}
    if c.opt.z_loss:
      metrics['z_loss'] = loss - nll
    ok = state.step < sched['total_steps']
    if c.train.on_nonfinite == 'skip':  # A non-finite step changes nothing but the step:
      # a non-finite loss or gradient, or an update that overflows the parameters.
      finite = (jnp.isfinite(loss) & jnp.isfinite(grad_norm)
                & jnp.isfinite(optax.tree.norm(params)))
      metrics['skipped'] = 1 - finite.astype(jnp.int32)
      ok = ok & finite
    keep = lambda new, old: jnp.where(ok, new, old)
    params = jax.tree_util.tree_map(keep, params, state.params)
    opt_state = jax.tree_util.tree_map(keep, opt_state, state.opt_state)
    metrics['param_norm'] = optax.tree.norm(params)
    return state.replace(step=state.step + (state.step < sched['total_steps']).astype(jnp.int32),
                         params=params, opt_state=opt_state), metrics

  return train_step


def make_eval_step(c: Config, model: nn.Module, byte_lengths: np.ndarray):
  """(params, batch, row weights) -> the objective's statistics, summed over rows."""
  objective = objectives.get(c)
  bytes_V = jnp.asarray(byte_lengths, jnp.float32)

  def eval_step(params, batch: dict, weights_B: jax.Array) -> dict:
    _, aux = loss_fn(params, model, objective, batch, weights_B, jax.random.key(0), 0.0,
                     False)
    return objective.eval_sums(aux, batch, weights_B, bytes_V)

  return eval_step


# --- The factory --------------------------------------------------------------

@dataclasses.dataclass
class Trainer:
  """Everything compiled code needs, built once from a resolved config.

  Used by train_and_evaluate, tools/bench_train and tools/shardings, so they
  train, time and size exactly the same step. Steps trace under `context()`."""
  cfg: Config
  objective: objectives.Objective
  model: nn.Module
  tx: optax.GradientTransformation
  mesh: Any
  abstract: TrainState  # Unboxed ShapeDtypeStructs.
  shardings: TrainState  # NamedShardings.
  batch_shardings: dict
  rows_sharding: Any
  train_step: Any  # jitted (state, batch, sched) -> (state, metrics); donates the state.
  eval_step: Any  # jitted (params, batch, row weights) -> statistics.
  init_step: Any  # jitted rng -> initial state.
  sched: dict  # This run's schedule inputs (opt_lib.schedule_inputs), train_step's third argument.

  @contextlib.contextmanager
  def context(self):
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(list(self.cfg.rules)):
      yield

  def init(self) -> TrainState:
    return self.init_step(jax.random.key(self.cfg.train.seed))

  def abstract_batch(self) -> dict:
    """The global train batch as sharded ShapeDtypeStructs (ahead-of-time lowering)."""
    B = self.cfg.train.batch_size
    return {k: jax.ShapeDtypeStruct((B, *shape), dtype, sharding=self.batch_shardings[k])
            for k, (shape, dtype) in self.objective.row_shapes(self.cfg).items()}

  def to_global(self, local: Any, sharding: Any = None) -> Any:
    """This process's rows -> one global array per leaf."""
    return jax.tree_util.tree_map(jax.make_array_from_process_local_data,
                                  sharding or self.batch_shardings, local)


# The config fields a run reads as inputs, not as compiled constants: the step
# takes its schedule scalars as arguments (opt_lib.schedule_inputs) and the
# initial state its seed, so runs that differ only here share compiled code
# (build's cache) and can train as members of one pack (lm/pack.py).
RUN_INPUTS = {'name': None, 'opt': ('lr', 'warmup_steps', 'cooldown_fraction'),
              'train': ('seed', 'steps', 'log_every', 'eval_every', 'checkpoint_every'),
              'data': ('shuffle_seed',)}


def shape_of(c: Config) -> Config:
  """c with its RUN_INPUTS fields at fixed values: equal for two configs whose
  steps compile to the same program."""
  return dataclasses.replace(c, name='', **{
      name: dataclasses.replace(getattr(c, name), **{
          f: getattr(type(getattr(c, name))(), f) for f in fields})
      for name, fields in RUN_INPUTS.items() if fields})


# Trainers built in this process, by shape (a sweep's runs of one size reuse
# one: no tracing, no compiling, no cache reads). A few, oldest dropped first.
_BUILT: dict[tuple, Trainer] = {}
_BUILT_MAX = 4


def build(c: Config, devices=None, byte_lengths: np.ndarray | None = None) -> Trainer:
  """Mesh, model, optimizer, shardings and jitted steps for a resolved config
  (model.vocab_size set: resolve_vocab). Checks the mesh, the batch and every
  parameter's divisibility; compiles nothing. A config of a shape built before
  in this process (shape_of) gets that Trainer's jitted steps, which have
  compiled by then."""
  devices = list(devices if devices is not None else jax.devices())
  key = (repr(shape_of(c)), tuple(d.id for d in devices),
         None if byte_lengths is None else np.asarray(byte_lengths).tobytes())
  t = _BUILT.get(key) or _build(c, devices, byte_lengths)
  _BUILT[key] = _BUILT.pop(key, t)  # Most recently used last.
  while len(_BUILT) > _BUILT_MAX:
    _BUILT.pop(next(iter(_BUILT)))
  # A copy: callers may wrap its steps (tests do) without touching the cache.
  return dataclasses.replace(t, cfg=c, sched=opt_lib.schedule_inputs(c.opt, c.train.steps))


def _build(c: Config, devices: list, byte_lengths: np.ndarray | None) -> Trainer:
  objective = objectives.get(c)
  mesh = shard_lib.make_mesh(c.mesh, devices)
  shard_lib.check_batch(c, mesh)
  model = Transformer(c.model)
  tx = opt_lib.unit_lr(c.opt, c.model)
  with jax.set_mesh(mesh), nn.logical_axis_rules(list(c.rules)):
    abstract, shardings = state_shardings(c, model, tx, mesh)
  batch_sh = {k: shard_lib.batch_sharding(mesh, c.rules, ndim=1 + len(shape))
              for k, (shape, _) in objective.row_shapes(c).items()}
  rows_sh = shard_lib.batch_sharding(mesh, c.rules, ndim=1)
  if byte_lengths is None:
    byte_lengths = np.ones(c.model.vocab_size, np.float32)
  step = make_train_step(c, model, tx)

  def train_step(state: TrainState, batch: dict, sched: dict) -> tuple[TrainState, dict]:
    return step(state, batch, sched)  # sched required: a cached Trainer serves many runs.

  train_step = jax.jit(train_step, in_shardings=(shardings, batch_sh, None),
                       out_shardings=(shardings, None), donate_argnums=(0,))
  eval_step = jax.jit(make_eval_step(c, model, byte_lengths),
                      in_shardings=(shardings.params, batch_sh, rows_sh))
  return Trainer(c, objective, model, tx, mesh, abstract, shardings, batch_sh, rows_sh,
                 train_step, eval_step, make_init(c, model, tx, shardings),
                 opt_lib.schedule_inputs(c.opt, c.train.steps))


# --- Loop ---------------------------------------------------------------------

def check_init_from(c: Config, tok) -> Config:
  """The source run's config, if its params fit this model and it was trained
  with this tokenizer (compared by content, wherever the file lies); else a
  clear error."""
  src = ckpt_lib.load_config(c.init_from)
  diffs = ckpt_lib.arch_diff(src.model, c.model)
  if src.data.tokenizer != c.data.tokenizer:
    diffs.append(f'data.tokenizer: {src.data.tokenizer!r} != {c.data.tokenizer!r}')
  else:
    rec = ckpt_lib.tokenizer_record(os.path.dirname(ckpt_lib.find(c.init_from)[0]))
    if rec is None and src.data.tokenizer_path:  # A run from before the record.
      same = (os.path.exists(src.data.tokenizer_path) and tokenizers.get_tokenizer(
          src.data.tokenizer, src.data.tokenizer_path).name == tok.name)
      rec = {'name': tok.name if same else '(unrecorded)', 'path': src.data.tokenizer_path}
    if (rec or {}).get('name', tok.name) != tok.name:
      diffs.append(f'the tokenizer\'s content: {rec["name"]} (then at {rec.get("path")}) != '
                   f'{tok.name} (data.tokenizer_path={c.data.tokenizer_path!r})')
  if diffs:
    raise CheckpointError(
        f'config.init_from={c.init_from!r} holds a model with another architecture or '
        'tokenizer than this config; differing fields (checkpoint != config): '
        + '; '.join(diffs))
  return src


def _pretrained(c: Config, tok) -> tuple[Config, Any]:
  """(the init_from run's config, its params on the host), checked and read
  before anything compiles or is written: a damaged source fails in one line."""
  src = check_init_from(c, tok)
  return src, ckpt_lib.load_params(c.init_from, src.model)[1]


def resolve(c: Config) -> tuple[Config, Any, objectives.Objective, Any]:
  """(config with vocabulary and data-decided fields filled, tokenizer,
  objective, loaded labelled/paired data or None): the cheap checks that come
  before the workdir is touched."""
  tok = tokenizers.get_tokenizer(c.data.tokenizer, c.data.tokenizer_path)
  c = resolve_vocab(c, tok.vocab_size)
  objective = objectives.get(c)
  objective.check(c, tok.vocab_size)
  c, loaded = objective.load(c)
  return c, tok, objective, loaded


def flops_per_token(c: Config) -> dict[str, float]:
  """Training FLOPs per token under every convention, for this objective."""
  conv = flops_lib.all_conventions(c.model, c.data.seq_len, None,
                                   *objectives.get(c).lengths(c))
  if c.opt.freeze_backbone:  # Forward only: the backward stops at the head.
    conv = {k: v / 3 for k, v in conv.items()}
  return conv


def data_reading(mesh) -> tuple[grain.ReadOptions | None, Callable[[], float]]:
  """How training reads batches, and the clock for the 'data' part of its wall
  breakdown. On a CPU backend the step runs on the cores that make the
  batches, and with async dispatch the wall-clock wait for the next batch also
  held the previous step's compute (the main job read 'data 9%'): there the
  batches are made in this thread (no grain prefetch threads competing for
  the cores; no slower, measured) and 'data' is this thread's CPU time in
  making them. On accelerators: grain's prefetching, and the wall-clock
  wait, which is then a stall of the device."""
  if all(d.platform == 'cpu' for d in mesh.devices.flat):
    return grain.ReadOptions(num_threads=0, prefetch_buffer_size=0), time.thread_time
  return None, time.perf_counter


def step_cost(c: Config) -> tuple[dict[str, float], float, float]:
  """(FLOPs per token by convention, FLOPs per step under
  train.flops_convention, peak FLOP/s of one device): what a run's setup and
  train rows report (MFU), for a single run and a packed member alike."""
  conv = flops_per_token(c)
  dev = jax.devices()[0]
  peak = c.train.peak_flops or flops_lib.peak_flops(dev.device_kind, c.model.dtype, dev.platform,
                                                     data_lib.cache_root(c.data))
  return conv, conv[c.train.flops_convention] * c.train.batch_size * c.data.seq_len, peak


def count_skips(run: int, flags) -> tuple[int, int]:
  """(skipped steps in a row so far, the longest such run) after the steps
  whose `skipped` flags these are, given `run` skipped in a row before them."""
  longest = run
  for f in flags:
    run = run + 1 if f else 0
    longest = max(longest, run)
  return run, longest


def stop_signal(preemption, mngr, step: int, process_count: int) -> str | None:
  """Why the run must stop after `step`: this process's signal, or with
  several processes a preemption notice that all of them see at the same step
  (orbax's reached_preemption); None to go on."""
  if preemption.signame:
    return preemption.signame
  return 'a preemption notice' if process_count > 1 and mngr.reached_preemption(step) else None


def skips_resumed(workdir: str, start: int) -> tuple[int, list[int]]:
  """on_nonfinite=skip, resumed at checkpoint `start`: (skipped steps in a
  row, the flags of the steps not yet in a metric row), from the 'skips' row
  written with that checkpoint; without them a preempted run forgot its run of
  skips, so train.max_skips never stopped a run preempted often enough."""
  rows = [r for r in metrics_lib.read(workdir, 'skips') if r['step'] == start] if start else []
  return (int(rows[-1]['run']), [int(f) for f in rows[-1]['flags']]) if rows else (0, [])


def diverged(m: dict) -> str:
  """Why a train metric row shows divergence ('' if it does not). The loss is
  computed before the step's update, so a batch whose gradient is non-finite
  shows a finite loss and non-finite norms in its own row; a skipped step
  (on_nonfinite=skip) changed nothing."""
  if m.get('skipped'):
    return ''
  return next((f'{name} is {m[k]}' for k, name in (('loss', 'loss'), ('grad_norm', 'gradient norm'),
                                                 ('param_norm', 'parameter norm'))
               if k in m and not math.isfinite(m[k])), '')


def row_verdict(c: Config, run: int, flags: list[int], m: dict) -> tuple[int, str, bool]:
  """A train metric row's check, for a single run and a packed member alike:
  (skipped steps in a row after the row's steps, why the run must stop or '',
  whether that is too many skips in a row). `flags` are the `skipped` flags of
  the steps since the last row; m['skipped'] becomes their sum."""
  run, longest = count_skips(run, flags)
  if longest > c.train.max_skips:
    why, too_many = (f'{longest} steps in a row had a non-finite loss or gradient '
                     f'(train.max_skips={c.train.max_skips})'), True
  else:
    why, too_many = diverged(m), False
  if 'skipped' in m:  # The steps skipped since the last row, not just this row's.
    m['skipped'] = float(sum(flags))
  return run, why, too_many


class _Progress:
  """Train metrics: read one step late (the loop never waits for the device),
  timed, written to metrics.jsonl and the progress bar."""

  def __init__(self, c: Config, workdir: str, writer, start: int, flops_per_step: float,
               peak_total: float, last_good):
    self.c, self.workdir, self.writer, self.last_good = c, workdir, writer, last_good
    self.skips, self.last_finite = 0, start
    # on_nonfinite=skip: (step, flag) of every step, read at the next metric
    # row (so max_skips counts steps, not rows, and the loop still never waits).
    self.skip_flags: list = []
    self.tokens_per_step = c.train.batch_size * c.data.seq_len
    self.flops_per_step, self.peak_total = flops_per_step, peak_total
    self.t_last, self.step_last, self.pending = time.perf_counter(), start, None
    # Seconds since the last row spent compiling, evaluating or checkpointing:
    # out of step_time, tokens/s and MFU (the wall breakdown counts them).
    self.paused = 0.0
    self.bar = None
    if c.train.progress and jax.process_index() == 0:
      from tqdm import tqdm
      self.bar = tqdm(total=c.train.steps, initial=start, unit='step', dynamic_ncols=True)

  def flush(self) -> None:
    if self.pending is not None:
      self._report(*self.pending)
      self.pending = None

  def _report(self, step: int, m: dict) -> None:
    m = {k: float(v) for k, v in jax.device_get(m).items()}
    upto = [f for s, f in self.skip_flags if s <= step]  # Not the step dispatched since.
    self.skip_flags = [(s, f) for s, f in self.skip_flags if s > step]
    upto = [int(f) for f in jax.device_get(upto)]
    self.skips, why, too_many = row_verdict(self.c, self.skips, upto, m)
    if why:
      if self.c.train.on_nonfinite == 'rollback':
        raise ckpt_lib.Diverged(step, why)
      ckpt_lib.halt(self.workdir, step, m['loss'], self.last_good(), why, skipping=too_many)
    self.last_finite = step
    now = time.perf_counter()
    dt = max(now - self.t_last - self.paused, 1e-9) / max(step - self.step_last, 1)
    self.t_last, self.step_last, self.paused = now, step, 0.0
    m.update(step_time=dt, tokens_per_s=self.tokens_per_step / dt,
             tokens=step * self.tokens_per_step, flops=step * self.flops_per_step,
             mfu=self.flops_per_step / dt / self.peak_total if self.peak_total
             else float('nan'))
    self.writer.write(step, 'train', m)
    if self.bar is not None:
      self.bar.set_postfix(loss=f'{m["loss"]:.4f}', tok_s=f'{m["tokens_per_s"]:.3g}')

  def skip_state(self) -> dict:
    """What skips_resumed reads back: the run of skips before the steps
    whose flags are not yet in a row, and those flags."""
    return {'run': self.skips,
            'flags': [int(f) for f in jax.device_get([f for _, f in self.skip_flags])]}

  def close(self) -> None:
    self.flush()
    if self.bar is not None:
      self.bar.close()


WALL_PARTS = ('setup', 'compile', 'data', 'train', 'eval', 'checkpoint')


def wall_resumed(workdir: str, start: int) -> dict[str, float]:
  """Seconds per part that earlier processes spent on a run resumed at
  `start`: the 'wall' row written with that checkpoint (rows past it were
  truncated). A killed process's time after its last checkpoint is not
  counted; its steps are trained again and counted then."""
  rows = [r for r in metrics_lib.read(workdir, 'wall') if r['step'] <= start] if start else []
  return {p: float(rows[-1].get(p, 0.0)) if rows else 0.0 for p in WALL_PARTS}


def with_train(wall: dict[str, float], loop_s: float) -> dict[str, float]:
  """`wall` with 'train' the loop's time outside its measured parts."""
  rest = sum(v for p, v in wall.items() if p not in ('setup', 'train'))
  return {**wall, 'train': max(loop_s - rest, 0.0)}


def add_wall(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
  return {p: a.get(p, 0.0) + b.get(p, 0.0) for p in WALL_PARTS}


def _evaluate(t: Trainer, params, evals: list, writer, step: int, extras,
              final: bool | None = None) -> dict[str, float]:
  """`final` (the run's last eval, which adds the final-only probes) defaults
  to step == the Trainer config's steps; a pack's members each pass their own."""
  outs = jax.device_get([t.eval_step(params, t.to_global(b), t.to_global(w, t.rows_sharding))
                         for b, w in evals])
  res = t.objective.summarize({k: sum(float(o[k]) for o in outs) for k in outs[0]})
  final = step == t.cfg.train.steps if final is None else final
  res.update(extras(params, final=final))  # lm/probes.eval_extras.
  writer.write(step, 'eval', res)
  return res


def _setup_row(c: Config, t: Trainer, conv: dict, peak: float) -> dict:
  counts = flops_lib.param_counts(c.model)
  n_params = sum(x.size for x in jax.tree_util.tree_leaves(t.abstract.params))
  assert n_params == counts['total'], (n_params, counts)
  return {'params_total': counts['total'], 'params_non_embedding': counts['non_embedding'],
          **{f'flops_per_token_{k}': v for k, v in conv.items()},
          'devices': t.mesh.size, 'processes': jax.process_count(), 'mesh': dict(t.mesh.shape),
          'device_kind': jax.devices()[0].device_kind, 'peak_flops_per_device': peak,
          'objective': t.objective.name}


def checkpoint_due(c: Config, done: int, end: int) -> bool:
  """Whether a run saves after `done` steps: its interval, an extra checkpoint
  (a WSD branch point) or its end (lm/pack.py saves a pack when any member's is due)."""
  return (done % c.train.checkpoint_every == 0 or done == end
          or done in c.train.extra_checkpoints)


def _start_state(c: Config, t: Trainer, workdir: str, mngr, data_iter, resume: bool,
                 src: tuple[Config, Any] | None, log) -> TrainState:
  """Restored, or fresh (with a fine-tuning run's pre-trained params)."""
  if resume:
    state = ckpt_lib.restore(mngr, t.abstract, t.shardings, data_iter)
    log(f'resumed from step {int(state.step)} in {workdir}')
    return state
  state = t.init()
  if src is not None:  # Fine-tuning: pre-trained params, fresh optimizer, step 0.
    loaded, why = _classes_of(src[1], src[0].data.labels, c.data.labels)
    params, taken, fresh = ckpt_lib.merge(state.params, loaded)
    state = state.replace(params=jax.device_put(params, t.shardings.params))
    log(f'initialised {taken} from {c.init_from}' + (f'; new: {fresh}' if fresh else '')
        + why)
  return state


def _classes_of(loaded: dict, src_labels: tuple[str, ...], labels: tuple[str, ...]
                ) -> tuple[dict, str]:
  """A source classifier's head for this run's classes: its rows reordered by
  name where both runs have the same label set, else left out (kept fresh), so
  row i always means this run's class i. Returns (params, why, for the log)."""
  if 'cls_head' not in loaded or tuple(src_labels) == tuple(labels):
    return loaded, ''
  rest = {k: v for k, v in loaded.items() if k != 'cls_head'}
  if not labels:  # An LM from a classifier: no head to keep.
    return rest, ' (the source\'s cls_head left out: this run has no classes)'
  if sorted(src_labels) != sorted(labels):
    return rest, (f' (cls_head fresh: trained for labels {list(src_labels)}, this run has '
                  f'{list(labels)})')
  order = np.array([list(src_labels).index(x) for x in labels])
  head = jax.tree_util.tree_map(lambda a: np.asarray(a)[..., order], loaded['cls_head'])
  return {**rest, 'cls_head': head}, f' (cls_head rows reordered to labels {list(labels)})'


def _rollback(c: Config, t: Trainer, mngr, data_iter, writer, progress: _Progress,
              discard: dict, e: 'ckpt_lib.Diverged', rollbacks: int, workdir: str, log):
  """Restores the last good checkpoint (state and data position) and drops the
  batches between the last finite logged loss and the divergence, which the
  replay then never sees; halts after train.max_rollbacks."""
  good = mngr.latest_step()
  if good is None or rollbacks > c.train.max_rollbacks:
    ckpt_lib.halt(workdir, e.step, float('nan'), good,
                  f'{e.why} after {rollbacks - 1} rollbacks (train.max_rollbacks='
                  f'{c.train.max_rollbacks})' if good is not None else e.why)
  mngr.wait_until_finished()
  state = ckpt_lib.restore(mngr, t.abstract, t.shardings, data_iter)
  first_bad = max(progress.last_finite, good)
  discard[first_bad] = discard.get(first_bad, 0) + e.step - first_bad
  if jax.process_index() == 0:
    workdir_lib.truncate_metrics(workdir, good, resuming=False)
  writer.restart_at(good)
  writer.write(good, 'rollback', {'diverged_at': e.step, 'why': e.why,
                                  'dropped_batches': e.step - first_bad,
                                  'rollbacks': rollbacks})
  log(f'{e.why} at step {e.step}: rolled back to step {good}, dropping the batches of '
      f'steps {first_bad + 1}-{e.step} (rollback {rollbacks} of at most '
      f'{c.train.max_rollbacks})')
  progress.pending, progress.skips, progress.last_finite = None, 0, good
  progress.step_last, progress.t_last, progress.paused = good, time.perf_counter(), 0.0
  return state, good


def train_and_evaluate(c: Config, workdir: str, stop_at: int | None = None,
                       log=print, devices=None) -> dict[str, Any]:
  """Trains (or resumes) a run in `workdir`; returns the final eval metrics.

  Everything that can fail on bad input (config, workdir, data) fails before
  the workdir is written. Training holds the workdir's lock (lm/workdir.py).
  SIGTERM/SIGINT finish the step, checkpoint and raise workdir.Preempted (in
  the last step: the run ends and its result's 'preempted' names the signal); a
  non-finite loss halts (FloatingPointError) keeping the last finite
  checkpoint, or with train.on_nonfinite=skip skips the update. `stop_at` ends
  the loop early after that many steps (to test resumption); `devices`
  restricts the mesh to some devices (default: all).
  """
  workdir_lib.check_writable(workdir, 'the workdir')
  workdir_lib.check_writable(data_lib.cache_root(c.data),
                             'the data cache (data.cache_dir, $LM_CACHE or ~/.cache/lm)')
  t_start = time.perf_counter()
  c, tok, objective, loaded = resolve(c)
  probes.check_tasks(c)
  resume = ckpt_lib.check_workdir(workdir, c)
  corpus = data_lib.corpus_record(c.data)
  if resume:  # Before the data are prepared.
    data_lib.run_order(workdir, resume)  # A damaged record: refused here.
    ckpt_lib.check_corpus(workdir, corpus)
    ckpt_lib.check_resumable(workdir, tok, c.train.steps)
    metrics_lib.read(workdir)  # A damaged metrics.jsonl: refused, not truncated.
  src = _pretrained(c, tok) if c.init_from and not resume else None
  t = build(c, devices, tok.byte_lengths())
  pidx, pcount = jax.process_index(), jax.process_count()
  data = objective.data(c, tok, loaded, pidx, pcount)
  held = (workdir_lib.lock(workdir, f'training {c.name}', log) if pidx == 0
          else contextlib.nullcontext())
  with held:
    if pidx == 0:  # Drop checkpoint writes that a kill cut short.
      workdir_lib.clean_incomplete(os.path.join(workdir, 'checkpoints'), log)
    if ckpt_lib.check_workdir(workdir, c) != resume:  # Changed before we held the lock.
      resume = not resume
      src = _pretrained(c, tok) if c.init_from and not resume else None
      if resume:
        ckpt_lib.check_corpus(workdir, corpus)
        metrics_lib.read(workdir)
    return _train(c, t, tok, objective, data, workdir, resume, src, stop_at, log, t_start,
                  corpus)


def _train(c: Config, t: Trainer, tok, objective, data, workdir: str, resume: bool,
           src: tuple[Config, Any] | None, stop_at: int | None, log, t_start: float,
           corpus: dict | None) -> dict[str, Any]:
  pidx, pcount = jax.process_index(), jax.process_count()
  mngr = ckpt_lib.checkpoint_manager(workdir, c)
  if resume:  # Before anything is written.
    ckpt_lib.check_tokenizer(workdir, tok)
    ckpt_lib.check_not_past_end(workdir, mngr.latest_step(), c.train.steps)
  canaries = probes.make_canaries(c.data, c.train.steps * c.train.batch_size, len(data.train))
  extras = functools.partial(probes.eval_extras, c, tokenizer=tok, canaries=canaries)
  read, data_clock = data_reading(t.mesh)
  order = data_lib.run_order(workdir, resume)  # A run started before 2026-11-29 keeps its.
  data_iter = iter(data_lib.batched(data.train, c.train.batch_size // pcount,
                                    c.data.shuffle_seed, pidx, pcount, data.transform, read,
                                    order))
  conv, flops_per_step, peak = step_cost(c)

  # With several processes JAX's own SIGTERM notifier (jax.distributed) must
  # stay installed: it is what brings every process to one save step
  # (mngr.reached_preemption); a local handler made each stop at its own step,
  # one in the save's barrier and the other in the next step's all-reduce.
  with t.context(), workdir_lib.Preemption(local=pcount == 1) as preemption:
    state = _start_state(c, t, workdir, mngr, data_iter, resume, src, log)
    start = int(state.step)
    if pidx == 0:  # After a restore that worked: a failed one leaves the run's config.
      ckpt_lib.write_config(workdir, c, tok)
      ckpt_lib.write_corpus(workdir, corpus)
      data_lib.write_order(workdir, order)
      if canaries:  # What tools.eval --canaries measures (lm/probes.py).
        workdir_lib.write_atomic(os.path.join(workdir, probes.CANARY_FILE),
                                 json.dumps({'canaries': canaries}, indent=1))
    if pidx == 0:  # Rows a killed process wrote after its last checkpoint.
      workdir_lib.truncate_metrics(workdir, start)
      with contextlib.suppress(FileNotFoundError):  # Trained alone now: its pack's record
        os.remove(os.path.join(workdir, 'pack.json'))  # (lm/pack.RECORD) no longer holds.
    writer = metrics_lib.Writer(workdir, start=start)
    before = wall_resumed(workdir, start)
    writer.write(start, 'setup', _setup_row(c, t, conv, peak))
    end = c.train.steps if stop_at is None else min(stop_at, c.train.steps)
    progress = _Progress(c, workdir, writer, start, flops_per_step, peak * t.mesh.size,
                         mngr.latest_step)
    if c.train.on_nonfinite == 'skip':
      progress.skips, flags = skips_resumed(workdir, start)
      progress.skip_flags = [(start, f) for f in flags]
    # Where the wall time goes (returned as 'wall', seconds, with earlier
    # processes' if resumed; a 'wall' row with every checkpoint): setup
    # (config, data, build, init or restore), compile (the first step's call),
    # data, train (dispatch and waiting for the device), eval, checkpoint.
    wall = dict.fromkeys(WALL_PARTS, 0.0)
    t_loop = time.perf_counter()
    wall['setup'] = t_loop - t_start
    last_eval, rollbacks, discard, step, compiled = {}, 0, {}, start, False
    notice = None  # A signal, or another process's preemption notice (multi-host).
    try:
      while True:
        try:
          while step < end:
            # Batches a rollback skips; kept, since a later rollback to an
            # earlier checkpoint replays this position again.
            for _ in range(discard.get(step, 0)):
              next(data_iter)
            t0 = data_clock()
            batch = t.to_global(next(data_iter))
            wall['data'] += data_clock() - t0
            t1 = time.perf_counter()
            state, m = t.train_step(state, batch, t.sched)
            if 'skipped' in m:
              progress.skip_flags.append((step + 1, m['skipped']))
            if not compiled:  # The first call; not a rollback's replay of it.
              spent = time.perf_counter() - t1
              wall['compile'] += spent
              progress.paused += spent
              compiled = True
            progress.flush()  # Step N's metrics, read after step N+1 was dispatched.
            done = step = step + 1
            if done % c.train.log_every == 0 or done == end:
              progress.pending = (done, m)
            if progress.bar is not None:
              progress.bar.update(1)
            if done % c.train.eval_every == 0 or done == c.train.steps:
              progress.flush()
              # The loop runs up to log_every steps ahead of the device: wait
              # for them first, so their time counts as train, not as eval or
              # checkpoint (a d_model-40 main-job run had put 15 s there).
              jax.block_until_ready(state)
              t0 = time.perf_counter()
              last_eval = _evaluate(t, state.params, data.evals, writer, done, extras)
              spent = time.perf_counter() - t0
              wall['eval'] += spent
              progress.paused += spent
              if progress.bar is not None:
                h = objective.headline
                progress.bar.write(f'step {done}: eval loss {last_eval["loss"]:.4f} '
                                   f'{h} {last_eval[h]:.4f}')
            signame = stop_signal(preemption, mngr, done, pcount)
            if signame or checkpoint_due(c, done, end):
              progress.flush()  # Every row up to this step is on disk before its checkpoint.
              jax.block_until_ready(state)  # As above.
              t0 = time.perf_counter()
              ckpt_lib.save(c, mngr, done, state, m, data_iter, workdir)
              spent = time.perf_counter() - t0
              wall['checkpoint'] += spent
              progress.paused += spent
              writer.write(done, 'wall', add_wall(
                  before, with_train(wall, time.perf_counter() - t_loop)))
              if c.train.on_nonfinite == 'skip':
                writer.write(done, 'skips', progress.skip_state())
            notice = notice or signame
            if signame and done < end:
              progress.close()
              raise workdir_lib.Preempted(done, signame, workdir)
          progress.flush()
          break
        except ckpt_lib.Diverged as e:  # train.on_nonfinite=rollback.
          rollbacks += 1
          state, step = _rollback(c, t, mngr, data_iter, writer, progress, discard, e,
                                  rollbacks, workdir, log)
      progress.close()
      if not last_eval and end == c.train.steps:  # Resumed at its end: the final eval, once.
        final = [e for e in metrics_lib.read(workdir, 'eval') if e['step'] == end]
        last_eval = ({k: v for k, v in final[-1].items() if k not in ('step', 'kind')}
                     if final else _evaluate(t, state.params, data.evals, writer, end, extras))
    finally:
      t0 = time.perf_counter()
      mngr.wait_until_finished()  # Never leave a save half-written on the way out.
      wall['checkpoint'] += time.perf_counter() - t0
      writer.close()
  mngr.close()
  wall = with_train(wall, time.perf_counter() - t_loop)
  # A signal in the last step or the closing waits: the run is whole, but the
  # caller must not start more work (a sweep stops after recording it).
  return {'step': end, **last_eval, 'preempted': preemption.signame or notice,
          'wall': add_wall(before, wall),
          'wall_resumed': sum(before.values()), 'params': flops_lib.param_counts(c.model)['total'],
          'state': state, 'config': c, 'tokenizer': tok, 'objective': objective}
