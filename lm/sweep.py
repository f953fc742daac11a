"""Plans a sweep from its config, runs it (resumably), and tabulates results.

A sweep config is a run config plus a `sweep` section (see
configs/isoflop_tiny.py). Each run trains in <workdir>/runs/<name>; a run
with result.json status 'done' is skipped, an interrupted one resumes from
its checkpoint, and a failed one is recorded and does not stop the others.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import re
import shlex
import shutil
import time
import traceback
from typing import Any

import ml_collections
import numpy as np

from lm import checkpoint as ckpt_lib
from lm import config as config_lib
from lm import data as data_lib
from lm import flops, metrics, objectives, plan, tokenizers, train
from lm import pack as pack_lib
from lm import workdir as workdir_lib

def split(cd: ml_collections.ConfigDict) -> tuple[ml_collections.ConfigDict, Any]:
  """(run ConfigDict without `sweep`, validated SweepConfig)."""
  if 'sweep' not in cd:  # Its sweep.* overrides would be refused as unknown fields.
    raise config_lib.ConfigError(
        f'config {cd.get("name", "")!r} has no sweep section: give a sweep config (e.g. '
        'configs/isoflop_tiny.py, configs/lr_sweep.py) or add c.sweep = common.sweep(...) to it')
  cd = ml_collections.ConfigDict(cd.to_dict())  # Unlocked copy (config_flags locks).
  raw = cd.sweep.to_dict()
  del cd['sweep']
  return cd, config_lib.sweep_config(raw)


def make_plan(cd: ml_collections.ConfigDict) -> list[plan.Run]:
  """Validates the base config and the sweep settings, then plans every run."""
  run_cd, s = split(cd)
  # The plan sets every run's train.steps and run_config caps each run's warmup
  # at a tenth of them: the base's own steps are no run's, so its warmup is
  # checked as a run's would be, not against them (a warmup above the base's
  # steps had been refused, and raising those refused as the plan's to set).
  w = run_cd.opt.get('warmup_steps')
  if isinstance(w, int) and not isinstance(w, bool) and isinstance(run_cd.train.get('steps'), int):
    run_cd.train.steps = max(run_cd.train.steps, 10 * w)
  base = _resolved(config_lib.from_configdict(run_cd))
  m = base.model
  tps = base.train.batch_size * base.data.seq_len
  common = dict(base=m, seq_len=base.data.seq_len, tokens_per_step=tps,
                convention=s.convention, aspect=s.aspect, head_dim=s.head_dim,
                lengths=objectives.get(base).lengths(base))
  if s.design == 'isoflop':
    if not s.budgets:
      raise config_lib.ConfigError('config.sweep.budgets is empty: list compute budgets in FLOPs')
    runs = plan.isoflop(list(s.budgets), sizes=s.sizes, tokens_per_param=s.tokens_per_param,
                        min_steps=s.min_steps, size_ratio=s.size_ratio, **common)
  elif s.design == 'grid':
    runs = plan.grid(list(s.params), list(s.tokens), **common)
  elif s.design == 'lr':  # Each size for its tokens (one value, or one per size), x lrs below.
    toks = list(s.tokens) * (len(s.params) if len(s.tokens) == 1 else 1)
    runs = [dataclasses.replace(r, design='lr') for n, t in zip(s.params, toks)
            for r in plan.grid([n], [t], **common)]
  elif s.design == 'transfer':
    runs = plan.transfer(list(s.widths), list(s.parametrizations), s.tokens[0], base=m,
                         seq_len=common['seq_len'], tokens_per_step=tps,
                         convention=s.convention, lengths=common['lengths'])
  else:
    runs = plan.wsd_branches(list(s.params), list(s.tokens), cooldown_fraction=s.cooldown_fraction,
                             warmup_steps=base.opt.warmup_steps, **common)
  out = []
  for r in runs:  # Optional LR sweep and seed replicates.
    for lr in (list(s.lrs) or [None]):
      for seed in s.seeds:
        extra = {'train.seed': seed, 'data.shuffle_seed': seed}
        if lr:
          extra['opt.lr'] = lr
        # A WSD branch continues the stable run of the same LR and seed.
        suffix = (f'_lr{lr:g}' if lr else '') + (f'_s{seed}' if len(s.seeds) > 1 else '')
        out.append(dataclasses.replace(
            r, name=r.name + suffix, overrides={**r.overrides, **extra},
            branch_from=r.branch_from + suffix if r.branch_from else ''))
  for r in out:  # Refused here, not recorded as failed runs when the sweep reaches them.
    try:
      run_config(cd, r, s.evals_per_run)
    except config_lib.ConfigError as e:
      raise config_lib.ConfigError(f'the sweep plans run {r.name}, whose config is invalid: '
                                   f'{e}') from None
  seen: dict[str, plan.Run] = {}
  for r in out:  # One name is one run directory: a second would be skipped as done.
    if r.name in seen:
      same = 'the same' if r.overrides == seen[r.name].overrides else 'different'
      raise config_lib.ConfigError(
          f'the sweep plans run {r.name} twice, with {same} settings: two values of '
          'sweep.params, sweep.tokens or sweep.lrs give one model, step count or LR name '
          '(a ladder model or step count rounds to the same one; LRs are named to 6 '
          'significant digits); drop or separate one of them')
    seen[r.name] = r
  return out


def _resolved(c: config_lib.Config) -> config_lib.Config:
  """The config with the vocabulary size the run will use (FLOPs depend on it)."""
  tok = tokenizers.get_tokenizer(c.data.tokenizer, c.data.tokenizer_path)
  return train.resolve_vocab(c, tok.vocab_size)


def run_config(cd: ml_collections.ConfigDict, r: plan.Run, evals: int) -> config_lib.Config:
  run_cd, _ = split(cd)
  for k, v in r.overrides.items():
    sec, field = k.split('.')
    run_cd[sec][field] = v
  steps = r.overrides['train.steps']
  run_cd.train.eval_every = max(1, steps // evals)
  run_cd.train.log_every = max(1, min(run_cd.train.log_every, steps // 10 or 1))
  if 'opt.warmup_steps' not in r.overrides:  # WSD plans set their branches' (lm/plan).
    run_cd.opt.warmup_steps = min(run_cd.opt.warmup_steps, max(steps // 10, 1))
  if 'train.checkpoint_every' not in r.overrides:
    run_cd.train.checkpoint_every = max(1, steps // 2)
  run_cd.train.progress = False
  run_cd.name = r.name
  return config_lib.from_configdict(run_cd)


_INSTEAD = {'train.steps': 'set sweep.tokens or sweep.budgets instead',
            'train.seed': 'set sweep.seeds instead', 'data.shuffle_seed': 'set sweep.seeds instead',
            'opt.lr': 'set sweep.lrs instead',
            'train.eval_every': 'set sweep.evals_per_run instead'}


def check_overrides(cd: ml_collections.ConfigDict, overrides: list[str],
                    runs: list[plan.Run], file_cd: ml_collections.ConfigDict | None = None
                    ) -> None:
  """A ConfigError for a --config override of a run field that the plan (or
  run_config) overwrites in every run, so that the planned runs are the same
  with it as with the config file's value (`file_cd`, the config before any
  override; else the field's default): it would be accepted and change
  nothing. Tried, not listed: whether a field counts depends on the design
  and the base config (a WSD plan caps the base warmup; a ladder's MLP width
  follows the base's mlp_dim / d_model)."""
  _, s = split(cd)
  planned = None  # The runs' configs, made once an override needs them.
  for o in overrides:
    field = o[len('--config.'):].split('=', 1)[0]
    sec, _, key = field.partition('.')
    cls = config_lib.SECTIONS.get(sec)
    fields = {f.name: f.default for f in dataclasses.fields(cls)} if cls else {}
    if key not in fields:
      continue
    other = fields[key]  # The run configs with another value in its place: the file's.
    if file_cd is not None and sec in file_cd and key in file_cd[sec]:
      other = file_cd[sec][key]
    if json.dumps(cd[sec][key]) == json.dumps(other):
      if not isinstance(other, bool):
        continue  # As the file has it: whether it counts cannot be told from that.
      other = not other
    planned = planned or [config_lib.to_dict(run_config(cd, r, s.evals_per_run)) for r in runs]
    alt = ml_collections.ConfigDict(cd.to_dict())
    try:
      alt[sec][key] = other
      alt_runs = make_plan(alt)
    except (config_lib.ConfigError, TypeError, ValueError):
      continue  # Another plan, or none: it counts.
    if ([r.name for r in alt_runs] == [r.name for r in runs] and planned == [
        config_lib.to_dict(run_config(alt, r, s.evals_per_run)) for r in alt_runs]):
      design = ('the plan sets each run\'s width (sweep.widths)' if s.design == 'transfer' else
                "the plan sizes each run's model (sweep.params or sweep.budgets, sweep.aspect, "
                'sweep.head_dim)')
      instead = _INSTEAD.get(field, design if sec == 'model' else '')
      raise config_lib.ConfigError(
          f"{o}: the sweep's plan sets every run's {field}, so this would change nothing"
          + (f'; {instead}' if instead else ''))


def config_hash(c: config_lib.Config) -> str:
  return hashlib.sha256(json.dumps(config_lib.to_dict(c), sort_keys=True,
                                   default=str).encode()).hexdigest()[:12]


def _result_path(workdir: str, name: str) -> str:
  return os.path.join(workdir, 'runs', name, 'result.json')


def read_result(workdir: str, name: str) -> dict:
  """A run's result.json; {} when it has none, or a 'pending' record naming
  the damage when the file cannot be read (a run whose result is unreadable is
  trained again, which resumes from its checkpoints)."""
  path = _result_path(workdir, name)
  try:
    with open(path) as f:
      rec = json.load(f)
  except FileNotFoundError:
    return {}
  except (OSError, ValueError) as e:
    return {'name': name, 'status': 'pending', 'error': f'{path} is unreadable ({e})'}
  if not isinstance(rec, dict):
    return {'name': name, 'status': 'pending', 'error': f'{path} is not a JSON object'}
  return rec


def _mtime(path: str) -> int | None:
  try:
    return os.stat(path).st_mtime_ns
  except OSError:
    return None


def _plan_json(runs: list[plan.Run]) -> list[dict]:
  """The plan as plan.json holds it (tuples as lists, as when read back)."""
  return json.loads(json.dumps([dataclasses.asdict(r) for r in runs]))


def check_plan(workdir: str, runs: list[plan.Run]) -> bool:
  """True if plan.json holds this plan, False if there is none; a different
  plan (another config's sweep) is a ConfigError, so nothing run, collected or
  reported mixes two sweeps."""
  path = os.path.join(workdir, 'plan.json')
  if os.path.isdir(os.path.join(workdir, 'checkpoints')):  # A sweep inside a trained run.
    raise config_lib.ConfigError(f'{workdir} is a run directory (it holds checkpoints/); it '
                                 'was left untouched: give the sweep its own --workdir')
  if not os.path.exists(path):
    return False
  new = _plan_json(runs)
  try:
    with open(path, encoding='utf-8') as f:
      old = json.load(f)
  except (OSError, ValueError) as e:  # Truncated, not UTF-8, a directory.
    raise config_lib.ConfigError(f'{path} cannot be read ({workdir_lib.reason(e)}); it was '
                                 'left untouched') from None
  if not isinstance(old, list):
    raise config_lib.ConfigError(f'{path} cannot be read (it holds a JSON '
                                 f'{type(old).__name__}, not a list of runs); it was left untouched')
  if old != new:
    designs = sorted({r.get('design', '?') for r in old if isinstance(r, dict)})
    raise config_lib.ConfigError(
        f'{workdir} holds a different sweep plan ({len(old)} runs, design '
        f'{", ".join(designs)}; this config plans {len(runs)} runs, design '
        f'{", ".join(sorted({r.design for r in runs}))}; {_plan_difference(old, new)}); it was '
        'left untouched: use the config it was planned with, or another --workdir')
  return True


def _plan_difference(old: list, new: list[dict]) -> str:
  """Where two plans first differ, for check_plan's error: the runs only one
  plan has, else the first differing run's fields (lm/config.diff)."""
  if not all(isinstance(r, dict) for r in old):
    return 'the stored plan is not a list of runs'
  names_old, names_new = [r.get('name') for r in old], [r['name'] for r in new]
  gone = [n for n in names_old if n not in names_new]
  added = [n for n in names_new if n not in names_old]
  if gone or added:
    parts = []
    for names, where in ((gone, 'only the stored plan has'), (added, 'only this config plans')):
      if names:
        more = f' and {len(names) - 2} more' if len(names) > 2 else ''
        parts.append(f'{where} {", ".join(map(str, names[:2]))}{more}')
    return '; '.join(parts)
  if names_old != names_new:
    return 'the same runs in another order'
  a, b = next((a, b) for a, b in zip(old, new) if a != b)
  return (f'run {b["name"]} differs (stored != this config\'s): '
          + ', '.join(config_lib.diff(a, b)[:4]))


def write_plan(workdir: str, runs: list[plan.Run]) -> None:
  """Saves plan.json; refuses to replace a different plan already there."""
  os.makedirs(workdir, exist_ok=True)
  if not check_plan(workdir, runs):
    workdir_lib.write_atomic(os.path.join(workdir, 'plan.json'),
                             json.dumps(_plan_json(runs), indent=1))


def use_compile_cache(workdir: str) -> None:
  """JAX's persistent compilation cache in <workdir>/cache/jax (unless
  JAX_COMPILATION_CACHE_DIR names another): runs of one shape share a train
  step (lm/train.make_train_step reads the schedule as inputs), so later runs,
  other workers and a resumed sweep load it instead of compiling."""
  import jax
  if not os.environ.get('JAX_COMPILATION_CACHE_DIR'):
    jax.config.update('jax_compilation_cache_dir', os.path.join(workdir, 'cache', 'jax'))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)


def claim_groups(units: list[list[plan.Run]]) -> list[list[list[plan.Run]]]:
  """Units (runs or packs: plan_packs) in the groups local workers claim whole,
  largest compute first: a WSD branch stays with the stable run it continues
  (it starts from that run's checkpoint); within a group, plan order. Workers
  take the next unclaimed group when they finish one (a shared queue), so
  they end together even where compute does not predict wall time: with a
  fixed split by FLOPs the main job's two workers ended 6.5 and 7.1 min in."""
  groups: dict[str, list[list[plan.Run]]] = {}
  unit_of = {r.name: u[0].name for u in units for r in u}  # A stable run may be in a pack.
  for u in units:
    key = unit_of.get(u[0].branch_from, u[0].branch_from) or u[0].name
    groups.setdefault(key, []).append(u)
  cost = lambda g: sum(r.compute for u in g for r in u)
  return sorted(groups.values(), key=lambda g: -cost(g))  # Stable: plan order on ties.


CLAIMS = 'claims'


def reset_claims(workdir: str) -> None:
  """Empties <workdir>/claims: the coordinator of local workers does this,
  holding the sweep lock, before it starts them and after they have exited."""
  shutil.rmtree(os.path.join(workdir, CLAIMS), ignore_errors=True)


def _claim(workdir: str, name: str) -> bool:
  """Whether this worker is the first of this sweep to take the group led by
  `name` (an exclusively created file: one winner, also on NFS v3+); a group
  once claimed is never taken again in the same sweep, so a failed run is not
  retried by the next worker."""
  d = os.path.join(workdir, CLAIMS)
  os.makedirs(d, exist_ok=True)
  try:
    os.close(os.open(os.path.join(d, name), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
  except FileExistsError:
    return False
  return True


def run_all(cd: ml_collections.ConfigDict, workdir: str, only: str = '',
            log=print, worker: tuple[int, int] | None = None) -> list[dict]:
  """Runs every planned run not yet done; returns their result records.

  Holds the sweep directory's lock (one sweep process at a time; --only runs,
  one per cluster job, and local workers lock their own run directories
  instead). `worker=(i, n)` makes this process worker i of n: it claims
  groups of runs (claim_groups) one at a time under <workdir>/claims until
  none is left. A run
  stopped by SIGTERM/SIGINT checkpoints and the sweep stops
  (workdir.Preempted): rerun it to continue where it was. An `only` run that
  another process holds is a LockError (a job that trained nothing fails)."""
  workdir_lib.check_writable(workdir, 'the sweep directory', TABLES)
  if only or worker:
    return _run_all(cd, workdir, only, log, worker)
  with workdir_lib.lock(workdir, 'sweep', log):
    return _run_all(cd, workdir, only, log, None)


def check_configs(cd: ml_collections.ConfigDict, workdir: str, runs: list[plan.Run]) -> None:
  """Refuses a sweep whose trained runs, finished or interrupted, were trained
  with another config than this one gives them (e.g. a changed
  --config.opt.lr on rerun): the sweep would otherwise report their old
  results under the new config, or resume them under it mid-schedule (a
  single run may change free fields on resume; a sweep's run is its plan's).
  A WSD branch counts once it has trained as itself: until then (a seed, or a
  branch that failed before its restore) its directory holds its stable run's
  config, and a rerun trains it from the seed."""
  _, s = split(cd)
  for r in runs:
    rdir = os.path.join(workdir, 'runs', r.name)
    done = os.path.exists(_result_path(workdir, r.name))
    started = os.path.isdir(os.path.join(rdir, 'checkpoints'))
    if not ((done or started) and os.path.exists(os.path.join(rdir, 'config.json'))):
      continue
    try:
      with open(os.path.join(rdir, 'config.json'), encoding='utf-8') as f:
        old = json.load(f)
      if not (isinstance(old, dict) and all(isinstance(old.get(s, {}), dict)
                                            for s in config_lib.SECTIONS)):
        raise ValueError('not an object of config sections')
    except (OSError, ValueError, RecursionError) as e:
      raise config_lib.ConfigError(
          f'{rdir}/config.json is unreadable ({workdir_lib.reason(e)}); restore it, or delete '
          f'{rdir} to train {r.name} again') from None
    if r.branch_from and old.get('name') == r.branch_from:  # Its stable run's seed.
      continue
    c, tok = train.resolve(run_config(cd, r, s.evals_per_run))[:2]  # As the run stored it.
    new = json.loads(json.dumps(config_lib.to_dict(c)))
    diffs = []
    for sec, v in new.items():
      if isinstance(v, dict):  # The tokenizer is compared by content, below, not by path.
        was = {**_defaults(sec), **old.get(sec, {})}  # Fields added since: their defaults.
        diffs += [f'{sec}.{k}' for k in v if was.get(k) != v[k]
                  and f'{sec}.{k}' != 'data.tokenizer_path']
      elif old.get(sec) != v:
        diffs.append(sec)
    rec = ckpt_lib.tokenizer_record(rdir)
    if rec is not None and rec.get('name') != tok.name:
      diffs.append(f'the tokenizer ({rec.get("name")} then, {tok.name} now)')
    if diffs:
      raise config_lib.ConfigError(
          f'{r.name} in {workdir} was trained with another config (differing: '
          f'{", ".join(diffs[:6])}); rerun with the config it was trained with, use another '
          f'--workdir, or delete {rdir} to train it again')


def check_corpus(cd: ml_collections.ConfigDict, workdir: str, runs: list[plan.Run]) -> None:
  """Refuses to train more of a sweep whose started or finished runs read
  another corpus than the config's data gives now (a file added, removed or
  edited since, lm/data.corpus_record): the rest would train on another text
  and be fitted with them as one sweep (an interrupted run failed alone, and
  the others trained). Give it the whole plan, not an --only subset. The
  tables and report do not check: finished runs stay what they were."""
  if all(read_result(workdir, r.name).get('status') == 'done' for r in runs):
    return  # Nothing left to train.
  _, s = split(cd)
  records: dict[str, dict | None] = {}  # Per data config, read once.
  for r in runs:
    rdir = os.path.join(workdir, 'runs', r.name)
    if not os.path.exists(os.path.join(rdir, data_lib.CORPUS_FILE)):
      continue
    d = run_config(cd, r, s.evals_per_run).data
    key = json.dumps(dataclasses.asdict(d), sort_keys=True, default=str)
    if key not in records:
      records[key] = data_lib.corpus_record(d)
    try:
      ckpt_lib.check_corpus(rdir, records[key])
    except ckpt_lib.CheckpointError as e:
      raise config_lib.ConfigError(f'{r.name} of this sweep: {e}') from None


def _defaults(section: str) -> dict:
  """A config section's field defaults as config.json stores them: a run
  directory written before a field existed trained with its default."""
  cls = config_lib.SECTIONS.get(section)
  fields = dataclasses.fields(cls) if cls else ()
  return json.loads(json.dumps({f.name: f.default for f in fields
                                if f.default is not dataclasses.MISSING}))


def worker_args(argv: list[str]) -> list[str]:
  """A coordinator's command-line arguments for its workers (experiments/sweep.py):
  without --workers and --worker (`--workers=2` or `--workers 2`: a worker
  refuses the stray `2`) and --report/--noreport, which the coordinator keeps."""
  out, skip = [], False
  for a in argv:
    name = a.lstrip('-').split('=', 1)[0]
    if skip:
      skip = False
    elif a.startswith('-') and name in ('workers', 'worker'):
      skip = '=' not in a  # `--workers 2`: its value is the next word.
    elif a.startswith('-') and name in ('report', 'noreport'):
      pass
    else:
      out.append(a)
  return out


def only_names(runs: list[plan.Run], only: str) -> set[str]:
  """The run names --only=NAME[,NAME...] gives (a run directory's last part
  will do); a ConfigError names the first that is not a run of the plan."""
  names = {x.rstrip('/').rsplit('/', 1)[-1] for x in only.split(',')}  # runs/sw/NAME/ too.
  unknown = names - {r.name for r in runs}
  if unknown:
    raise config_lib.ConfigError(f'--only: {sorted(unknown)[0]!r} is not a run of this sweep')
  return names


def _run_all(cd: ml_collections.ConfigDict, workdir: str, only: str, log,
             worker: tuple[int, int] | None) -> list[dict]:
  runs = make_plan(cd)
  _, s = split(cd)
  if not worker:  # Workers: their coordinator wrote it. Another config's plan: refused,
    write_plan(workdir, runs)  # with --only too (its runs would mix into that sweep).
  check_corpus(cd, workdir, runs)
  if only:
    names = only_names(runs, only)
    runs = [r for r in runs if r.name in names]
  check_configs(cd, workdir, runs)
  units = plan_packs(cd, runs)
  # Worker i of n takes the next group no worker has claimed; alone, every unit
  # in plan order.
  groups = claim_groups(units) if worker else [[u] for u in units]
  t0 = time.time()
  results, timed, left_runs = [], [], list(runs)
  stop = None  # (signal, step), run: a signal came in a run's last step.
  # A worker's progress (below): a run that failed before this sweep is tried
  # again, so it is finished only once its result.json is rewritten.
  stale = {r.name: _mtime(_result_path(workdir, r.name)) for r in runs
           if read_result(workdir, r.name).get('status') != 'done'} if worker else {}

  def finished(r: plan.Run, rec: dict) -> bool:
    return rec.get('status') == 'done' or (
        rec.get('status') == 'failed' and _mtime(_result_path(workdir, r.name)) != stale.get(r.name))
  if not worker:  # Runs finished before this process: out of the count from the start.
    for r in runs:
      prev = read_result(workdir, r.name)
      if prev.get('status') == 'done':
        left_runs.remove(r)
        if prev.get('wall_s'):
          timed.append((r, prev['wall_s']))
  for group in groups:
    if worker and not _claim(workdir, group[0][0].name):
      continue
    for unit in group:
      todo = []
      for r in unit:
        prev = read_result(workdir, r.name)
        if prev.get('status') != 'done':
          todo.append(r)
        elif not worker:  # A worker reports only what it trained; its progress: below.
          results.append(prev)
          if r in left_runs:  # Finished by another process since the count above.
            left_runs.remove(r)
            if prev.get('wall_s'):
              timed.append((r, prev['wall_s']))
      if not todo:
        continue
      if stop:  # The last unit ended in a signal: this one is not started.
        (signame, step), name = stop
        log(f'[sweep] stopped after {name} ({signame} in its last step); rerun to continue')
        raise workdir_lib.Preempted(step, signame, os.path.join(workdir, 'runs', name))
      t_run = time.time()
      recs = _train_unit(cd, workdir, todo, s, log)
      busy = [r.name for r, rec in zip(todo, recs) if rec is None]
      if busy:  # Another process trains them: theirs to record, not ours.
        log(f'[sweep] {", ".join(busy)}: in use by another process (see above); not '
            'recorded here: rerun the sweep when it has finished')
        todo, recs = [r for r, rec in zip(todo, recs) if rec], [rec for rec in recs if rec]
        if not todo:
          continue
      # A member's wall time: its own parts (lm/pack.train_pack's shares, with
      # the processes' before this one if resumed) and an even share of the
      # unit's time outside them.
      outside = (time.time() - t_run) - sum(
          sum(rec.get('wall', {}).values()) - rec.get('wall_resumed', 0.0) for rec in recs)
      for r, rec in zip(todo, recs):
        if '_preempted' in rec:
          stop = rec.pop('_preempted'), r.name
        rec.update(name=r.name, wall_s=sum(rec.get('wall', {}).values()) + outside / len(todo))
        os.makedirs(os.path.join(workdir, 'runs', r.name), exist_ok=True)
        workdir_lib.write_atomic(_result_path(workdir, r.name), json.dumps(rec, indent=1))
        results.append(rec)
        if not worker:
          left_runs.remove(r)
          if rec['status'] == 'done':  # A failed run's time says nothing of the others'.
            timed.append((r, rec['wall_s']))
      if worker:  # The whole sweep's progress: every worker's results so far.
        recs_now = {r.name: read_result(workdir, r.name) for r in runs}
        left_runs = [r for r in runs if not finished(r, recs_now[r.name])]
        timed = [(r, recs_now[r.name]['wall_s']) for r in runs
                 if recs_now[r.name].get('status') == 'done' and recs_now[r.name].get('wall_s')]
      left = len(left_runs)
      eta = (eta_seconds(timed, left_runs) or 0.0) / (worker[1] if worker else 1)
      for r, rec in zip(todo, recs):
        log(f'[sweep] {len(runs) - left}/{len(runs)} done, {left} left, ETA {eta / 60:.1f} min  '
            f'({r.name}: {rec["status"]}'
            + (f', val loss {rec["final_loss"]:.4f}' if rec['status'] == 'done' else
               f': {rec["error"][:200]}') + f', {rec["wall_s"]:.0f}s'
            + (f', packed with {len(rec["pack"]) - 1} more' if 'pack' in rec else '') + ')')
  log(f'[sweep] finished in {(time.time() - t0) / 60:.1f} min')
  log('[sweep] ' + wall_line(wall_breakdown(results)))
  busy = only and names - {r['name'] for r in results}
  if busy:  # A cluster job's command: exit 0 would say it was trained (afterok).
    raise workdir_lib.LockError(
        f'--only: {", ".join(sorted(busy))} in use by another process: not trained or '
        'recorded here; rerun this command once it has finished')
  return results


def submit(cd: ml_collections.ConfigDict, workdir: str, log=print, cluster: str | None = None
           ) -> list[dict]:
  """sweep.executor slurm or ray: one job per run or pack (plan_packs), each
  running `run_all(only=<its runs>)`; waits for them and returns every run's
  record. slurm goes through submitit (`cluster`: submitit's, e.g. 'local' to
  run the jobs as local processes in tests; logs in <workdir>/submitit); ray
  submits tasks to the cluster ray.init() finds (RAY_ADDRESS, or a local
  instance). A WSD branch's job starts after its stable run's."""
  _, s = split(cd)
  if s.executor == 'slurm' and cluster is None and not shutil.which('sbatch'):
    # submitit would run the jobs as local processes instead, saying nothing.
    raise config_lib.ConfigError('sweep.executor=slurm, but this machine has no Slurm (no '
                                 'sbatch on PATH): run it on a login node, or use '
                                 'sweep.executor=local')
  runs = make_plan(cd)
  with workdir_lib.lock(workdir, f'sweep ({s.executor})', log):
    write_plan(workdir, runs)
  plain, waits = cd.to_dict(), []
  if s.executor == 'ray':
    try:
      import ray
    except ImportError:
      raise config_lib.ConfigError('sweep.executor=ray needs Ray: pip install ray==2.60.0'
                                   ) from None
    if not ray.is_initialized():
      ray.init(log_to_driver=False)
    task = ray.remote(num_cpus=s.job_cpus, num_gpus=s.job_gpus)(_job)
    ref_of = {}
    for unit in plan_packs(cd, runs):
      after = [ref_of[r.branch_from] for r in unit if r.branch_from in ref_of]
      ref = task.remote(plain, workdir, ','.join(r.name for r in unit), *after)
      log(f'[sweep] submitted {len(unit)} run(s) as a Ray task: ' + ', '.join(r.name for r in unit))
      ref_of.update({r.name: ref for r in unit})
      waits.append((str(ref), lambda ref=ref: ray.get(ref)))
  else:
    import submitit
    ex = submitit.AutoExecutor(folder=os.path.join(workdir, 'submitit', '%j'), cluster=cluster)
    params = dict(timeout_min=s.slurm_minutes, cpus_per_task=s.job_cpus, name=s.executor)
    if ex.cluster == 'slurm':
      params.update(slurm_partition=s.slurm_partition or None, gpus_per_node=s.job_gpus)
    ex.update_parameters(**{k: v for k, v in params.items() if v is not None})
    job_of = {}
    for unit in plan_packs(cd, runs):
      after = [job_of[r.branch_from] for r in unit if r.branch_from in job_of]
      if ex.cluster == 'slurm':
        ex.update_parameters(slurm_additional_parameters={'dependency': 'afterok:' + ':'.join(
            j.job_id for j in after)} if after else {})
      else:
        for j in after:
          j.wait()
      job = ex.submit(_job, plain, workdir, ','.join(r.name for r in unit))
      log(f'[sweep] submitted {len(unit)} run(s) as job {job.job_id}: '
          + ', '.join(r.name for r in unit))
      job_of.update({r.name: job for r in unit})
      waits.append((job.job_id, job.result))
  for name, wait in waits:
    try:
      wait()
    except Exception as e:  # The job's runs record their own failures; this is the job's.
      log(f'[sweep] job {name} failed: {str(e).strip().splitlines()[-1][:300]}')
  out = read_results(workdir, runs)
  for rec in out:  # Said here, not only in a job's log (e.g. a run another process held).
    if rec['status'] != 'done':
      log(f'[sweep] {rec["name"]}: not done ({rec.get("error", "")[:200]}); rerun to train it')
  return out


def read_results(workdir: str, runs: list[plan.Run]) -> list[dict]:
  """Every run's result.json, as other processes (workers, jobs) wrote them; a
  run without one is recorded as failed."""
  out = []
  for r in runs:
    rec = read_result(workdir, r.name)
    out.append(rec if rec.get('status') in ('done', 'failed') else
               {'name': r.name, 'status': 'failed',
                'error': rec.get('error', 'its job wrote no result')})
  return out


def _job(cd_dict: dict, workdir: str, names: str, *after) -> None:
  """One job of an executor: these runs (one pack) of the sweep; `after`
  (Ray: the stable run's task) only orders it."""
  del after
  use_compile_cache(workdir)
  run_all(ml_collections.ConfigDict(cd_dict), workdir, only=names)


def _record(out: dict) -> dict:
  if 'error' in out:
    # A packed member's divergence, worded as the same run's alone (failed() below).
    return {'status': 'failed', 'error': f'FloatingPointError: {out["error"][:500]}',
            **{k: out[k] for k in ('wall', 'wall_resumed') if k in out}}
  h = out['objective'].headline
  return {'status': 'done', 'final_loss': out['loss'], 'headline': h,
          'final_headline': out[h], 'wall': out['wall'], 'wall_resumed': out['wall_resumed'],
          # A signal in the last step (lm/train.py): run_all stops before more work.
          **({'_preempted': (out['preempted'], out['step'])} if out.get('preempted') else {})}


def _train_unit(cd, workdir: str, todo: list[plan.Run], s, log) -> list[dict]:
  """Trains one run or one pack; a failure is recorded, never raised (but a
  preemption stops the sweep). A WSD branch that cannot start (its stable
  run's checkpoint is missing) fails alone; the pack trains the others."""
  def failed(e: Exception) -> dict:
    return {'status': 'failed', 'error': f'{type(e).__name__}: {str(e)[:500]}',
            'traceback': traceback.format_exc()[-2000:]}
  recs: list[dict | None] = [None] * len(todo)  # None after training: in use elsewhere.
  busy = set()
  for i, r in enumerate(todo):
    if r.branch_from and not _seeded(os.path.join(workdir, 'runs', r.name)):
      try:
        _start_branch(workdir, r)
      except workdir_lib.LockError as e:  # Another process seeds it.
        log(f'[sweep] {e}')
        busy.add(i)
      except Exception as e:  # Its own failure, not its pack's.
        recs[i] = failed(e)
  live = [i for i, rec in enumerate(recs) if rec is None and i not in busy]
  try:
    configs = [run_config(cd, todo[i], s.evals_per_run) for i in live]
    rdirs = [os.path.join(workdir, 'runs', todo[i].name) for i in live]
    if len(live) > 1:
      names = [todo[i].name for i in live]  # The members that trained together.
      outs = [{**_record(o), 'pack': names}
              for o in pack_lib.train_pack(configs, rdirs, log=lambda *_: None)]
    elif live:
      outs = [_record(train.train_and_evaluate(configs[0], rdirs[0], log=lambda *_: None))]
    else:
      outs = []
  except workdir_lib.Preempted:
    log(f'[sweep] stopped during {", ".join(r.name for r in todo)} (checkpointed); rerun '
        'to continue')
    raise
  except workdir_lib.DiskFull:  # Every later run would fail the same way: stop.
    raise
  except workdir_lib.LockError as e:  # A run of it is being trained elsewhere.
    log(f'[sweep] {e}')
    free = [i for i in live if not workdir_lib.held(os.path.join(workdir, 'runs',
                                                                  todo[i].name))]
    outs = [None for _ in live]
    if 0 < len(free) < len(live):  # The pack without the members held elsewhere.
      sub = _train_unit(cd, workdir, [todo[i] for i in free], s, log)
      outs = [sub[free.index(i)] if i in free else None for i in live]
  except Exception as e:  # One failed run must not stop the sweep.
    outs = [failed(e) for _ in live]
  for i, rec in zip(live, outs):
    recs[i] = rec
  return recs


def plan_packs(cd: ml_collections.ConfigDict, runs: list[plan.Run]) -> list[list[plan.Run]]:
  """The runs grouped into packs of at most sweep.pack members (lm/pack.py):
  runs that share a shape (seeds, learning rates, one size across budgets) and
  can pack (pack.packable); the others alone. WSD branches pack with the
  other branches of their own stable run (each resumes from that run's
  checkpoint at its own branch step), never with another's. Within a shape
  the runs are ordered by length before they are cut into packs, so members of
  a pack end at similar steps (the pack drops members as they finish). In plan
  order of each pack's first run."""
  _, s = split(cd)
  if s.pack <= 1:
    return [[r] for r in runs]
  groups: dict[str, list[plan.Run]] = {}
  for r in runs:
    c = run_config(cd, r, s.evals_per_run)
    if pack_lib.packable(c):
      groups[r.name] = [(0, r)]
      continue
    d = config_lib.to_dict(c)
    for sec, fields in pack_lib.Pack.PER_MEMBER.items():
      for f in fields or ():
        d[sec].pop(f)
    d.pop('name')
    d['branch_from'] = r.branch_from  # Its stable run must have finished first.
    groups.setdefault(json.dumps(d, sort_keys=True, default=str), []).append((c.train.steps, r))
  out = []
  for g in groups.values():
    g = [r for _, r in sorted(g, key=lambda x: x[0])]  # Stable: plan order within a length.
    out += [g[i:i + s.pack] for i in range(0, len(g), s.pack)]
  order = {r.name: i for i, r in enumerate(runs)}
  return sorted(out, key=lambda u: order[u[0].name])


def eta_seconds(done: list[tuple[plan.Run, float]], left: list[plan.Run]) -> float | None:
  """Seconds the runs `left` should take, from the (run, wall seconds) of
  finished ones: wall = a + b * tokens + c * FLOPs, fitted with a, b, c >= 0
  (per-run setup and compilation; per-token work, such as the vocabulary
  softmax that dominates tiny models; and the rest). Extrapolating FLOPs
  alone from an IsoFLOP sweep's smallest budgets, whose tiny models run at a
  fraction of the large ones' FLOP/s, read 1.4-9.5x the time actually left
  (measured on the main job and a 5-budget sweep).

  Until two budgets are done, a and c * FLOPs are one column: it is taken as
  per-FLOP time (and a single run's time as all per-FLOP), because the fixed
  per-run part is small beside a run's work and shrinks once compiled steps
  are reused. Replayed on the main job's 15 measured runs (python -m
  tools.eta_replay), after the first 1-4 runs of the local workers'
  largest-first queue this read 373, 347, 288, 235 s against 353, 332, 261,
  216 s actually left, where taking it as per-run time read 773, 727, 633,
  585 s; in a lone sweep's smallest-first order, after runs 2-5, 669-855 s
  against 815-869 s, where per-run time read 266-295 s (after its first run,
  which holds the data preparation: 1564 s against 886 s, per-run 432 s).
  None before any run."""
  if not done:
    return None
  from scipy.optimize import nnls
  x = np.array([[1.0, r.tokens, r.compute] for r, _ in done])
  y = np.array([w for _, w in done])
  if x[:, 2].max() > 1.5 * x[:, 2].min():
    cols = [0, 1, 2]
  else:  # One budget: per-run and per-FLOP time are one column (see above).
    cols = [1, 2] if len(done) > 1 else [2]
  scale = x[:, cols].max(axis=0)
  coef = np.zeros(3)
  coef[cols] = nnls(x[:, cols] / scale, y)[0] / scale
  return float(sum(coef @ [1.0, r.tokens, r.compute] for r in left))


WALL_PARTS = ('setup', 'compile', 'data', 'train', 'eval', 'checkpoint', 'other')


def wall_breakdown(results: list[dict]) -> dict[str, float]:
  """Seconds per part summed over the runs that recorded one; 'other' is each
  run's wall time outside train_and_evaluate's parts (process and Python
  overhead, the sweep's own bookkeeping)."""
  out = dict.fromkeys(WALL_PARTS, 0.0)
  for r in results:
    w = r.get('wall')
    if not w:
      continue
    for k, v in w.items():
      out[k] += v
    out['other'] += max(r.get('wall_s', 0.0) - sum(w.values()), 0.0)
  return out


def wall_line(parts: dict[str, float]) -> str:
  total = sum(parts.values()) or 1.0
  return 'wall time of the runs: ' + ', '.join(
      f'{k} {v:.0f} s ({100 * v / total:.0f}%)' for k, v in parts.items() if v or k == 'train')


def _seeded(rdir: str) -> bool:
  """Whether a WSD branch's directory holds its seed (or its own later
  checkpoints): a config and at least one complete checkpoint step."""
  ckpt = os.path.join(rdir, 'checkpoints')
  return (os.path.exists(os.path.join(rdir, 'config.json')) and os.path.isdir(ckpt)
          and any(e.isdigit() for e in os.listdir(ckpt)))


def _start_branch(workdir: str, r: plan.Run) -> None:
  """Seeds a WSD branch with its stable run's checkpoint at the branch step.

  Built in a temporary directory and renamed into place, so a kill leaves
  either no branch directory or a whole seed, never an empty checkpoints/ that
  would train the branch from step 0; under a lock of its own, so two
  processes never seed one branch at once. A branch directory without a seed
  (a kill mid-copy by an older version) never trained and is replaced."""
  src = os.path.join(workdir, 'runs', r.branch_from)
  ckpt = os.path.join(src, 'checkpoints', str(r.branch_step))
  if not os.path.isdir(ckpt):
    raise FileNotFoundError(f'{r.name} branches from {ckpt}, which does not exist yet; '
                            f'run {r.branch_from} first')
  dst = os.path.join(workdir, 'runs', r.name)
  seeding = os.path.join(workdir, 'runs', f'.{r.name}.seeding')  # Its lock and its copy.
  with workdir_lib.lock(seeding, f'seeding {r.name}', log=lambda *_: None):
    if _seeded(dst):  # Another process seeded it meanwhile.
      return
    tmp = os.path.join(seeding, 'copy')
    shutil.rmtree(tmp, ignore_errors=True)  # Left by a killed seeding.
    shutil.copytree(ckpt, os.path.join(tmp, 'checkpoints', str(r.branch_step)))
    for f in ('config.json', ckpt_lib.TOKENIZER_FILE):
      if os.path.exists(os.path.join(src, f)):
        shutil.copy(os.path.join(src, f), os.path.join(tmp, f))
    if os.path.exists(dst):  # Never trained: training needs a seed.
      shutil.rmtree(dst)
    os.rename(tmp, dst)


def config_overrides(argv: list[str], boolean: frozenset[str] = frozenset()) -> list[str]:
  """The config overrides of a command line, each as one --config.x=value
  string, in every spelling absl accepts: one or two dashes, '--flag value',
  and for the fields named in `boolean` a bare --config.x or --noconfig.x,
  also inside --flagfile files (expanded as absl does). A dropped override
  would send cluster jobs off with another config."""
  from lm import cli
  argv = cli.expand_flagfiles(argv)
  out, i = [], 0
  while i < len(argv) and argv[i] != '--':  # absl stops parsing flags at '--'.
    m = re.fullmatch(r'--?(no)?(config\.[^=]+)(?:=(.*))?', argv[i], re.S)
    if m:
      no, name, value = m.groups()
      if name in boolean and value is None:
        out.append(f'--{name}={not no}')
      elif not no:
        if value is None and i + 1 < len(argv):  # The '--flag value' form.
          value, i = argv[i + 1], i + 1
        out.append(f'--{name}={value}')
    i += 1
  return out


def commands(cd_arg: str, workdir: str, units: list[list[plan.Run]], overrides: list[str] = ()
             ) -> list[dict]:
  """One launchable command per pack (plan_packs; a run alone when sweep.pack
  is 1), e.g. one cluster job or TPU pod each, carrying the sweep's --config.*
  overrides so every job runs this plan. 'after' names the runs outside the
  pack that must finish first (a WSD branch's stable run)."""
  extra = ''.join(' ' + shlex.quote(o) for o in overrides)
  out = []
  for u in units:
    names = [r.name for r in u]
    only = ','.join(names)
    cmd = (f'python -m experiments.sweep --config={shlex.quote(cd_arg)} '
           f'--workdir={shlex.quote(workdir)}{extra} --only={only}')
    after = sorted({r.branch_from for r in u if r.branch_from} - set(names))
    out.append({'name': only, 'command': cmd, 'after': after, 'runs': [
        {'name': r.name, 'workdir': os.path.join(workdir, 'runs', r.name),
         **{k: v for k, v in dataclasses.asdict(r).items()
            if k in ('n', 'tokens', 'compute', 'budget')}} for r in u]})
  return out


# `headline` names the objective's headline metric (lm/objectives: bits_per_byte
# for a causal LM, accuracy for the others); final_/best_headline are its values.
COLUMNS = ['name', 'status', 'design', 'objective', 'parametrization', 'd_model', 'lr',
           'budget', 'config_hash', 'N',
           'N_with_head', 'N_total', 'D', *[f'C_{k}' for k in flops.CONVENTIONS],
           'final_loss', 'best_loss', 'headline', 'final_headline', 'best_headline',
           'wall_s', 'error']


# Final-eval metrics that become results columns when present (lm/probes.py).
EXTRA_PREFIXES = ('task', 'canary', 'bias')
TABLES = ('results.csv', 'results.jsonl')  # collect writes them in the sweep directory.
REPORT_FILES = ('.md', '.json', '.png')  # What lm/report writes in report/.


def collect(cd: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  """results.csv and results.jsonl: one row per planned run, whatever its state
  (read and written under workdir.tables_lock: another collect waits)."""
  workdir_lib.check_writable(workdir, 'the sweep directory', TABLES)  # It writes the tables.
  runs = make_plan(cd)
  check_plan(workdir, runs)
  check_configs(cd, workdir, runs)  # Results are tabulated under this config.
  if not any(os.path.isdir(os.path.join(workdir, 'runs', r.name)) for r in runs):
    raise config_lib.ConfigError(f'{workdir} holds no run of this sweep: run it first '
                                 '(--mode=run, or the --mode=commands jobs)')
  with workdir_lib.tables_lock(workdir):  # Only in a sweep's directory: it makes a file.
    return _collect(cd, workdir, runs)


def _collect(cd: ml_collections.ConfigDict, workdir: str, runs: list[plan.Run]) -> list[dict]:
  _, s = split(cd)
  rows = []
  for r in runs:
    c = _resolved(run_config(cd, r, s.evals_per_run))
    obj = objectives.get(c)
    counts = flops.param_counts(c.model)
    rdir = os.path.join(workdir, 'runs', r.name)
    res = read_result(workdir, r.name)
    evals = metrics.read(rdir, 'eval')
    final_step = r.overrides['train.steps']
    final = [e for e in evals if e['step'] == final_step]
    if res.get('status') == 'done' and not final:  # Checked before a table is written.
      raise config_lib.ConfigError(
          f'{rdir}/metrics.jsonl has no evaluation at step {final_step}, though its '
          'result.json marks the run done: restore it, or delete the run directory to '
          'train it again')
    h = obj.headline
    best = max if obj.higher_is_better else min

    def finite(key: str) -> list[float]:
      """A run that diverged evaluates NaN parameters before it halts: its
      rows hold 'nan' (metrics._plain), which best-of skips, not compares."""
      return [x for x in (metrics.number(e[key]) for e in evals if key in e) if math.isfinite(x)]

    row = {'name': r.name, 'status': res.get('status', 'pending'), 'design': r.design,
           'objective': obj.name, 'parametrization': c.model.parametrization,
           'd_model': c.model.d_model, 'lr': c.opt.lr, 'budget': r.budget,
           'config_hash': config_hash(c),
           'N': counts['non_embedding'],
           'N_with_head': counts['non_embedding'] + c.model.d_model * c.model.vocab_size,
           'N_total': counts['total'], 'D': r.tokens,
           **{f'C_{k}': v * r.tokens for k, v in flops.all_conventions(
               c.model, c.data.seq_len, None, *obj.lengths(c)).items()},
           'final_loss': metrics.number(final[-1]['loss']) if final else float('nan'),
           'best_loss': min(finite('loss'), default=float('nan')),
           'headline': h,
           'final_headline': metrics.number(final[-1].get(h)) if final else float('nan'),
           'best_headline': best(finite(h), default=float('nan')),
           'wall_s': res.get('wall_s', float('nan')), 'error': res.get('error', '')}
    if final:  # Harness tasks, canary exposure, bias (lm/probes.eval_extras).
      row.update({k: v for k, v in final[-1].items() if k.split('/')[0] in EXTRA_PREFIXES})
    rows.append(row)
  workdir_lib.write_atomic(os.path.join(workdir, 'results.jsonl'), ''.join(
      json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v)
                  for k, v in row.items()}) + '\n' for row in rows))
  table = io.StringIO()
  extra = sorted({k for row in rows for k in row if k not in COLUMNS})
  w = csv.DictWriter(table, COLUMNS + extra)
  w.writeheader()
  w.writerows(rows)
  workdir_lib.write_atomic(os.path.join(workdir, 'results.csv'), table.getvalue())
  return rows


def curves(workdir: str, names: list[str]) -> dict[str, list[dict]]:
  """Each run's eval rows (step, loss), for the envelope method."""
  return {n: metrics.read(os.path.join(workdir, 'runs', n), 'eval') for n in names}

