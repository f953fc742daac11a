"""Many small models per step: K models of one shape trained in one jitted step.

Small models leave most of a machine idle: a d_model-32 step is too little
work to fill two CPU cores, let alone an accelerator, so a sweep that trains
them one after another pays the per-step overhead K times. Packing stacks the
K members' train states on a leading member axis and `jax.vmap`s the train
step over it, so one dispatch does the work of K.

Each member keeps its own seed (initialisation and dropout), peak learning
rate, warmup, schedule length and data: the single-run step already reads its
schedule as inputs (lm/train.make_train_step) and stops a run past its last
step, and the stack drops a member once it has finished (or diverged), so
members of different lengths (one size across IsoFLOP budgets) pack without
idle compute. A member's losses equal its
single-model run's to float rounding (tests/test_pack.py).

What varies between members must not change the shapes: the model and batch
shape are shared (lm/config.FIELD_KINDS 'arch' and 'fixed' fields).

train_pack is the packed train_and_evaluate: each member writes config.json,
metrics.jsonl, checkpoints and its evaluations in its own run directory, as a
single run would, so generate, export, fit and resume treat it as one; a
member that is resumed (or was already finished) continues from its own
checkpoint. The member axis is split over the devices (member_mesh), so on a
pod each device group trains its own members; lm/sweep.py forms the packs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lm import checkpoint as ckpt_lib
from lm import data as data_lib
from lm import metrics as metrics_lib
from lm import optimizer as opt_lib
from lm import probes, train
from lm import workdir as workdir_lib
from lm.config import Config, ConfigError
from lm.model import Transformer


@dataclasses.dataclass(frozen=True)
class Pack:
  """K configs trained together: the shared shape and the per-member scalars."""
  configs: tuple[Config, ...]

  # What may differ between members (what a run reads as inputs); everything
  # else must be equal, since the step is built from the first member's config.
  PER_MEMBER = train.RUN_INPUTS

  def __post_init__(self):
    first = train.shape_of(self.configs[0])
    for c in self.configs[1:]:
      mine = train.shape_of(c)
      if mine != first:
        diff = [f'{s}.{f.name}' for s in ('model', 'opt', 'data', 'train', 'mesh')
                for f in dataclasses.fields(getattr(c, s))
                if getattr(getattr(mine, s), f.name) != getattr(getattr(first, s), f.name)]
        raise ValueError(f'members of a pack differ only in opt.lr, opt.warmup_steps, '
                         'opt.cooldown_fraction, train.seed, train.steps, the train '
                         'metric/eval/checkpoint intervals and '
                         f'data.shuffle_seed; {c.name} also differs in: '
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
  f = jax.jit(jax.vmap(lambda r: nn.unbox(train.init_fn(c, model, tx)(r))),
              compiler_options=train.init_compiler_options(jax.default_backend()))
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
  return _index(state, k)


# The tree helpers below are compiled whole, once per tree structure: op by op,
# every leaf shape compiled its own gather or stack (seconds per pack on CPU).
@jax.jit
def _index(tree: Any, k: jax.Array) -> Any:
  return jax.tree_util.tree_map(lambda x: x[k], tree)


@jax.jit
def _rows(tree: Any, rows: jax.Array) -> Any:
  return jax.tree_util.tree_map(lambda x: x[rows], tree)


def stack_batches(batches: list[dict[str, Any]]) -> dict[str, np.ndarray]:
  return {k: np.stack([b[k] for b in batches]) for k in batches[0]}


def packable(c: Config) -> str:
  """'' if c can train in a pack, else why not (the sweep then runs it alone)."""
  if c.init_from:
    return 'fine-tuning (init_from)'
  if c.train.on_nonfinite == 'rollback':
    return 'train.on_nonfinite=rollback'
  if c.data.canary_repeats:
    return 'canaries'
  if any(v not in (1, -1) for v in (c.mesh.data, c.mesh.fsdp, c.mesh.tensor)):
    return 'a mesh of several devices (a pack trains on one)'
  if c.model.attn_max_docs:  # JAX's cuDNN batching rule takes no member axis on offsets.
    return 'model.attn_max_docs (cuDNN packed documents)'
  return ''


@jax.jit
def _stack(states: list) -> Any:
  return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *states)


def member_mesh(K: int, devices=None) -> jax.sharding.Mesh:
  """The member axis over as many devices as divide K: on a pod each device
  group trains its own members (one device: the whole pack on it)."""
  devices = devices or jax.devices()
  n = max(d for d in range(1, min(K, len(devices)) + 1) if K % d == 0)
  return jax.sharding.Mesh(np.array(devices[:n]), ('members',))


def on_members(tree: Any, mesh: jax.sharding.Mesh) -> Any:
  """Each leaf's leading (member) axis split over the mesh."""
  sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('members'))
  return jax.tree_util.tree_map(lambda x: jax.device_put(x, sh), tree)


def _take(tree: Any, rows: list[int], mesh: jax.sharding.Mesh | None
          ) -> tuple[Any, jax.sharding.Mesh]:
  """Members `rows` (positions on the leading axis) of a stacked tree, split
  over a member mesh of their number; returns (tree, that mesh)."""
  with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
    tree = _rows(tree, np.array(rows))
  mesh = member_mesh(len(rows))
  return on_members(tree, mesh), mesh


def train_pack(configs: list[Config], workdirs: list[str], log=print) -> list[dict]:
  """Trains (or resumes) the members in their run directories; returns per
  member what train_and_evaluate returns (final eval metrics, 'wall',
  'objective'), or {'error': ...} for a member that diverged (recorded in its
  nonfinite.json; the others go on).

  A member's 'wall' is its share of the pack's time: its own evaluations and
  checkpoints as measured, the step's data and train time in proportion to
  the steps it trained (as if every member-step cost the same; one in a
  narrower stack costs a little more), setup and compilation split evenly.
  Its train rows' 'pack' is the width of the stack that step (members still
  training), its setup row's the pack's size.
  Non-finite losses follow train.on_nonfinite as a single run does at its
  metric rows: halt, or skip (halting after more than train.max_skips skipped
  steps in a row)."""
  t_start = time.perf_counter()
  for wd in workdirs:
    workdir_lib.check_writable(wd, 'the workdir')
  workdir_lib.check_writable(data_lib.cache_root(configs[0].data),
                             'the data cache (data.cache_dir, $LM_CACHE or ~/.cache/lm)')
  resolved = [train.resolve(c) for c in configs]
  cs = [r[0] for r in resolved]
  for c in cs:  # As train_and_evaluate does: a bad eval task fails before any data work.
    probes.check_tasks(c)
  _, tok, objective, loaded = resolved[0]
  p = Pack(tuple(cs))
  for c in cs:
    why = packable(c)
    if why:
      raise ConfigError(f'{c.name} cannot train in a pack: {why}')
  K, c0 = len(cs), cs[0]
  corpus = data_lib.corpus_record(c0.data)
  for wd, c in zip(workdirs, cs):  # Before the data are prepared (checked again below).
    if ckpt_lib.check_workdir(wd, c):
      ckpt_lib.check_corpus(wd, corpus)
      ckpt_lib.check_resumable(wd, tok, c.train.steps)
      metrics_lib.read(wd)
  t = train.build(c0, jax.devices()[:1], tok.byte_lengths())
  data = objective.data(c0, tok, loaded, 0, 1)
  with contextlib.ExitStack() as stack:
    for wd, c in zip(workdirs, cs):
      stack.enter_context(workdir_lib.lock(wd, f'training {c.name} (packed)', log))
      workdir_lib.clean_incomplete(os.path.join(wd, 'checkpoints'), log)
    resume = [ckpt_lib.check_workdir(wd, c) for wd, c in zip(workdirs, cs)]
    for wd, r in zip(workdirs, resume):
      if r:
        ckpt_lib.check_tokenizer(wd, tok)
        ckpt_lib.check_corpus(wd, corpus)
        metrics_lib.read(wd)  # A damaged metrics.jsonl: refused, not truncated.
    read, data_clock = train.data_reading(t.mesh)
    orders = [data_lib.run_order(wd, r) for wd, r in zip(workdirs, resume)]
    iters = [iter(data_lib.batched(data.train, c.train.batch_size, c.data.shuffle_seed, 0, 1,
                                   data.transform, read, o)) for c, o in zip(cs, orders)]
    # One spare checkpoint each: the step a kill between two members' commits
    # rolls the leading members back to (resume_steps).
    mngrs = [stack.enter_context(contextlib.closing(ckpt_lib.checkpoint_manager(wd, c, 1)))
             for wd, c in zip(workdirs, cs)]
    for wd, c, m, r in zip(workdirs, cs, mngrs, resume):
      if r:
        ckpt_lib.check_not_past_end(wd, m.latest_step(), c.train.steps)
    names = [c.name for c in cs]
    back = resume_steps(workdirs, names, mngrs, [c.train.steps for c in cs], log)
    resume = [r and b != 0 for r, b in zip(resume, back)]  # 0: back to a fresh start.
    with t.context(), workdir_lib.Preemption() as preemption:
      fresh = init(p)
      states = [ckpt_lib.restore(m, t.abstract, t.shardings, it, b) if r else member(fresh, k)
                for k, (m, it, r, b) in enumerate(zip(mngrs, iters, resume, back))]
      for m, b in zip(mngrs, back):  # After every restore worked: replayed exactly.
        for s in m.all_steps() if b is not None else ():
          if s > b:
            m.delete(s)
      for wd, c, o in zip(workdirs, cs, orders):  # After every restore worked.
        ckpt_lib.write_config(wd, c, tok)
        ckpt_lib.write_corpus(wd, corpus)
        data_lib.write_order(wd, o)
      steps = [int(s.step) for s in states]
      ends = [c.train.steps for c in cs]
      results: list[dict] = [{} for _ in range(K)]
      saved, recorded = list(steps), [None]

      def commit() -> None:
        """Once every member's last save is on disk: records those steps as the
        pack's point to resume from, and trims each member's spare checkpoint."""
        for mg in mngrs:
          mg.wait_until_finished()
        live = [s < e and 'error' not in r for s, e, r in zip(saved, ends, results)]
        if (saved, live) != recorded[0]:
          record(workdirs, names, saved, live)
          recorded[0] = (list(saved), live)
        for mg, c in zip(mngrs, cs):
          extra = set(c.train.extra_checkpoints or ())
          for s in sorted(mg.all_steps())[:-c.train.keep_checkpoints]:
            if s not in extra:
              mg.delete(s)

      commit()
      for wd, n in zip(workdirs, steps):  # Rows a killed process wrote after its checkpoint.
        workdir_lib.truncate_metrics(wd, n)
      writers = [metrics_lib.Writer(wd, start=n) for wd, n in zip(workdirs, steps)]
      for w in writers:
        stack.callback(w.close)
      flops_per_step, peaks, before = [], [], []
      for k, (wd, c) in enumerate(zip(workdirs, cs)):
        before.append(train.wall_resumed(wd, steps[k]))
        conv, fps, peak = train.step_cost(c)
        flops_per_step.append(fps)
        peaks.append(peak)
        writers[k].write(steps[k], 'setup', {**train._setup_row(c, t, conv, peak), 'pack': K})
      step_fn = make_step(p)
      extras = [functools.partial(probes.eval_extras, c, tokenizer=tok, canaries=())
                for c in cs]
      wall = dict.fromkeys(train.WALL_PARTS, 0.0)
      own = [dict.fromkeys(('eval', 'checkpoint'), 0.0) for _ in range(K)]  # Per member.

      def share(k: int, now: float | None = None) -> dict[str, float]:
        """Member k's wall time up to `now`, earlier processes' included."""
        w = {p: wall[p] + sum(o[p] for o in own) for p in ('eval', 'checkpoint')}
        w = train.with_train({**wall, **w}, (now or time.perf_counter()) - t_loop)
        total = sum(trained) or 1
        mine = {p: w[p] / K for p in ('setup', 'compile')}
        mine.update({p: w[p] * trained[k] / total for p in ('data', 'train')})
        mine.update({p: own[k][p] + (w[p] - sum(o[p] for o in own)) / K
                     for p in ('eval', 'checkpoint')})  # The closing waits, evenly.
        return train.add_wall(before[k], mine)

      trained, skips = [0] * K, [0] * K
      skip_flags: list[list] = [[] for _ in range(K)]
      for k, c in enumerate(cs):  # Resumed: the run of skips and the flags not yet in a row.
        if c.train.on_nonfinite == 'skip':
          skips[k], flags = train.skips_resumed(workdirs[k], steps[k])
          skip_flags[k] = [(np.asarray([f]), 0) for f in flags]

      def pending(k: int) -> list[int]:
        """Member k's skipped flags since its last row (each step's [rows] array, its row)."""
        got = jax.device_get([a for a, _ in skip_flags[k]])
        return [int(a[j]) for a, (_, j) in zip(got, skip_flags[k])]
      t_loop = time.perf_counter()
      wall['setup'] = t_loop - t_start
      for k in range(K):  # Resumed at its end: the final eval, once.
        if steps[k] == ends[k]:
          t0 = time.perf_counter()
          final = [e for e in metrics_lib.read(workdirs[k], 'eval') if e['step'] == ends[k]]
          results[k] = ({x: v for x, v in final[-1].items() if x not in ('step', 'kind')}
                        if final else train._evaluate(
                            t, jax.device_put(states[k].params, t.shardings.params),
                            data.evals, writers[k], ends[k], extras[k], final=True))
          own[k]['eval'] += time.perf_counter() - t0
      # The stack holds the members still training (rows, in member order) and
      # shrinks as they finish: a finished member costs no compute (each new
      # width compiles the step once; lm/sweep.use_compile_cache keeps it).
      rows = [k for k in range(K) if steps[k] < ends[k]]
      if rows:
        (state, sched), mm = _take((_stack(states), p.scalars()), rows, None)
      del states, fresh

      def one(tree: Any, k: int, sh: Any) -> Any:  # Member k, on the eval device.
        with jax.set_mesh(mm):
          return jax.device_put(_index(tree, rows.index(k)), sh)

      compiled_widths: set[int] = set()
      tokens = [c.train.batch_size * c.data.seq_len for c in cs]
      t_log = [time.perf_counter()] * K
      s_log = list(steps)
      # Seconds since a member's last row the stack spent compiling, evaluating or
      # checkpointing: out of its step_time, tokens/s and MFU, as in train._Progress.
      paused = [0.0] * K
      while rows:
        t0 = data_clock()
        batch = on_members(stack_batches([next(iters[k]) for k in rows]), mm)
        wall['data'] += data_clock() - t0
        t1 = time.perf_counter()
        with jax.set_mesh(mm), nn.logical_axis_rules(()):  # Members' activations unconstrained.
          state, m = step_fn(state, batch, sched)
        if len(rows) not in compiled_widths:
          jax.block_until_ready(m)
          spent = time.perf_counter() - t1
          wall['compile'] += spent
          paused = [p + spent for p in paused]
          compiled_widths.add(len(rows))
        host, signame = None, preemption.signame  # One answer for every member.
        # Checkpoints are pack-wide: when one member saves (its interval, an extra
        # checkpoint, its end) every member still training saves too. Members then
        # resume from a common step after a signal or a hard kill, so the stack's
        # widths, and with them each member's arithmetic, replay as in an
        # uninterrupted run. Each member's checkpoint commits on its own, so a
        # SIGKILL can land between two members' commits of one step: commit()
        # records the steps all members have on disk, and resume_steps takes
        # the members that got ahead back there (else the later stack widths,
        # each rounding differently, changed the lagging member's losses in the
        # last bits: measured 2.8173302 against 2.8173300 after 200 steps).
        ckpt_pack = bool(signame) or any(train.checkpoint_due(cs[k], steps[k] + 1, ends[k])
                                         for k in rows)
        if ckpt_pack:
          commit()  # The previous checkpoints: orbax's next save would wait for them anyway.
        for i, k in enumerate(rows):
          if 'skipped' in m:  # Every step's flag, read at the member's next row.
            skip_flags[k].append((m['skipped'], i))
          steps[k] += 1
          trained[k] += 1
          done, c = steps[k], cs[k]
          is_end = done == ends[k]
          log_now = done % c.train.log_every == 0 or is_end
          eval_now = done % c.train.eval_every == 0 or is_end
          ckpt_now = ckpt_pack
          if not (log_now or eval_now or ckpt_now):
            continue
          host = host if host is not None else jax.device_get(m)
          mk = {name: float(v[i]) for name, v in host.items()}
          if log_now:  # Non-finite losses checked at metric rows, as train._Progress does.
            flags = pending(k)
            skip_flags[k] = []
            skips[k], why, too_many = train.row_verdict(c, skips[k], flags, mk)
            if why:
              results[k] = {'error': _halt(workdirs[k], done, mk['loss'], mngrs[k], why,
                                           too_many)}
              continue
            now = time.perf_counter()
            dt = max(now - t_log[k] - paused[k], 1e-9) / max(done - s_log[k], 1)
            t_log[k], s_log[k], paused[k] = now, done, 0.0
            # MFU: this member's FLOPs over the stack's step time and the
            # devices the stack runs on, so the members' MFUs add up to the pack's.
            writers[k].write(done, 'train', {**mk, 'step_time': dt,
                                             'tokens_per_s': tokens[k] / dt,
                                             'tokens': done * tokens[k], 'pack': len(rows),
                                             'flops': done * flops_per_step[k],
                                             'mfu': flops_per_step[k] / dt
                                             / (peaks[k] * mm.size) if peaks[k]
                                             else float('nan')})
          if eval_now:
            t0 = time.perf_counter()
            params = one(state.params, k, t.shardings.params)
            results[k] = train._evaluate(t, params, data.evals, writers[k], done, extras[k],
                                         final=is_end)
            spent = time.perf_counter() - t0
            own[k]['eval'] += spent
            paused = [p + spent for p in paused]
          if ckpt_now:
            t0 = time.perf_counter()
            try:
              ckpt_lib.save(c, mngrs[k], done, one(state, k, t.shardings),
                            m_of(host, i), iters[k], workdirs[k])
              saved[k] = done
            except FloatingPointError as e:
              results[k] = {'error': str(e)}
            spent = time.perf_counter() - t0
            own[k]['checkpoint'] += spent
            paused = [p + spent for p in paused]
            writers[k].write(done, 'wall', share(k))
            if c.train.on_nonfinite == 'skip':
              writers[k].write(done, 'skips', {'run': skips[k], 'flags': pending(k)})
        if signame and any(steps[k] < ends[k] and 'error' not in results[k] for k in rows):
          commit()  # Every active member checkpointed at this step above.
          raise workdir_lib.Preempted(max(steps), signame, ','.join(workdirs))
        keep = [i for i, k in enumerate(rows) if steps[k] < ends[k] and 'error' not in results[k]]
        if len(keep) < len(rows):  # Members finished or diverged: shrink the stack.
          rows = [rows[i] for i in keep]
          if rows:
            (state, sched), mm = _take((state, sched), keep, mm)
      t0 = time.perf_counter()
      commit()
      wall['checkpoint'] += time.perf_counter() - t0
      now = time.perf_counter()
      out = [{**r, 'wall': share(k, now), 'wall_resumed': sum(before[k].values())}
             for k, r in enumerate(results)]
  return [r if 'error' in r else  # 'preempted': as lm/train.py's.
          {'step': ends[k], **r, 'preempted': preemption.signame, 'objective': objective}
          for k, r in enumerate(out)]


RECORD = 'pack.json'  # In each member's run directory.


def record(workdirs: list[str], names: list[str], steps: list[int], live: list[bool]) -> None:
  """Writes that the members `names` all have their checkpoints at `steps` on
  disk (0: none), a point from which the pack replays exactly; `live`: which
  were still training (not finished or diverged)."""
  if jax.process_index() == 0:
    text = json.dumps({'members': names, 'steps': steps, 'live': live})
    for wd in workdirs:
      workdir_lib.write_atomic(os.path.join(wd, RECORD), text)


def resume_steps(workdirs: list[str], names: list[str], mngrs: list, ends: list[int],
                 log=print) -> list[int | None]:
  """Per member, the step to resume from instead of its latest checkpoint
  (None: the latest; 0: a fresh start).

  Each member commits its checkpoint on its own, so a kill between two
  members' commits of one step leaves some members a checkpoint ahead. Resumed
  there, the lagging ones would train some steps in stacks of other widths
  than before, whose arithmetic rounds differently. The newest record of this
  pack (same members, in every member's directory: a member since trained in
  another pack or alone has another record or none) names the last step every
  member had committed: when some but not all members still training then are
  ahead of it, those go back to it, and the whole pack replays as if never
  killed."""
  recs = []
  for wd in workdirs:
    try:
      with open(os.path.join(wd, RECORD)) as f:
        r = json.load(f)
    except (OSError, ValueError):
      continue
    if (isinstance(r, dict) and r.get('members') == names
        and len(r.get('steps', ())) == len(r.get('live', ())) == len(names)):
      recs.append(([int(s) for s in r['steps']], [bool(x) for x in r['live']]))
  if len(recs) < len(names):  # A member trained since in another pack, or alone.
    return [None] * len(names)
  # Records only move forward; a kill may land between two members' writes.
  rec, live = max(recs, key=lambda x: sum(x[0]))
  latest = [m.latest_step() or 0 for m in mngrs]
  active = [k for k, (s, e) in enumerate(zip(rec, ends)) if s < e and live[k]]
  ahead = [k for k in active if latest[k] > rec[k]]
  if not ahead or len(ahead) == len(active):
    return [None] * len(names)
  if any(rec[k] and rec[k] not in mngrs[k].all_steps() for k in ahead):
    log(f'warning: the pack {",".join(names)} was stopped between its members\' checkpoints '
        'and the common step is gone: each member resumes from its latest checkpoint')
    return [None] * len(names)
  log(f'the pack {",".join(names)} was stopped between its members\' checkpoints: '
      + ', '.join(f'{names[k]} goes back from step {latest[k]} to {rec[k]}' for k in ahead))
  return [rec[k] if k in ahead else None for k in range(len(names))]


def m_of(m: dict, k: int) -> dict:
  return {name: v[k] for name, v in m.items()}


def _halt(workdir: str, step: int, loss: float, mngr, why: str, skipping: bool) -> str:
  try:
    ckpt_lib.halt(workdir, step, loss, mngr.latest_step(), why, skipping)
  except FloatingPointError as e:
    return str(e)
  return f'{why} at step {step}'
