"""Runs a planned sweep, then fits and reports: the main job.

python -m experiments.sweep --config=configs/isoflop_tiny.py --workdir=runs/isoflop
  --mode=run       run every run not yet done, one after another (default), then
                   collect results.csv/jsonl and write the report (--report)
  --mode=plan      print the plan (N, D, C per run) and stop
  --mode=commands  print one command per run, or per pack with sweep.pack > 1 (--json,
                   alone or with it: a JSON list), for a cluster
  --mode=collect   tabulate results (after cluster runs) and write the report
  --only=NAME      run just that run (what each cluster command does; a comma-separated
                   list runs those, packed as the plan packs them)
  sweep.executor=slurm  one submitit job per run or pack (lm/sweep.submit)
  --workers=N      the local executor: N processes, each one CPU thread, take the
                   runs from one queue, largest first (lm/sweep.claim_groups); on 2
                   CPU cores 2 workers train ~1.4x faster than one process using
                   both cores (tiny models' ops are too small to split across
                   threads). Default: sweep.workers.
"""

import json
import os
import signal
import sys
import time

from lm import workdir

workdir.exit_on_signals()  # Before the slow imports: a signal now exits 75, not -15.

from absl import app, flags, logging  # noqa: E402

from lm import config as config_lib  # noqa: E402
from lm import cli, host, report, scaling, sweep  # noqa: E402
from lm import data as data_lib  # noqa: E402

_CONFIG = cli.define_config('Sweep config (a run config + sweep).')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Sweep directory.')
_MODE = flags.DEFINE_enum('mode', 'run', ['run', 'plan', 'commands', 'collect'], 'What to do.')
_ONLY = flags.DEFINE_string('only', '', 'Run only this run.')
_JSON = flags.DEFINE_bool('json', False, 'With --mode=commands: a JSON list.')
_REPORT = flags.DEFINE_bool('report', True, 'Write the report after running or collecting.')
_WORKERS = flags.DEFINE_integer('workers', 0, 'Local worker processes (0: sweep.workers).',
                                lower_bound=0)
_WORKER = flags.DEFINE_string('worker', '', 'Internal: i/n, run as worker i of n on the shared queue.')


# Each local worker runs its XLA:CPU ops on one thread (and is pinned to one core).
_ONE_THREAD = ' --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1'


def _parent_death_signal():
  """A function for a worker to call before exec so that it gets SIGTERM
  (checkpoint and stop) when this coordinator dies, even by SIGKILL: an
  orphaned worker would go on training beside the next sweep. Linux prctl
  PR_SET_PDEATHSIG; elsewhere a no-op."""
  import ctypes
  me = os.getpid()
  try:
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # Loaded here, not after fork.
  except (OSError, AttributeError):
    return lambda: None

  def arm():
    prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG.
    if os.getppid() != me:  # The coordinator died before the line above.
      os._exit(workdir.PREEMPTED_EXIT)
  return arm


def _run_workers(cd, wd: str, n: int) -> list[dict]:
  """Holds the sweep lock, writes the plan and runs n copies of this command
  as workers, which take the runs from one queue; returns every run's record."""
  import subprocess
  with workdir.lock(wd, 'sweep', print):
    runs = sweep.make_plan(cd)
    sweep.write_plan(wd, runs)
    sweep.reset_claims(wd)  # The workers share one queue of runs: lm/sweep.claim_groups.
    args = sweep.worker_args(sys.argv[1:])
    cpus = sorted(os.sched_getaffinity(0))
    die_with_me = _parent_death_signal()
    procs = []
    for i in range(n):
      env = {**os.environ, 'XLA_FLAGS': os.environ.get('XLA_FLAGS', '') + _ONE_THREAD}
      pin = {cpus[i % len(cpus)]} if n <= len(cpus) else None

      def start(pin=pin):  # In the child, before exec.
        die_with_me()
        if pin:
          os.sched_setaffinity(0, pin)
      procs.append(subprocess.Popen(
          [sys.executable, '-m', 'experiments.sweep', *args, f'--worker={i}/{n}', '--noreport'],
          env=env, preexec_fn=start))
    # A SIGTERM (a scheduler's preemption) goes on to the workers, which
    # checkpoint and stop; a terminal's SIGINT reaches them by itself. Either
    # way this process waits for them (holding the lock) and then exits 75.
    old = {signal.SIGTERM: signal.signal(
               signal.SIGTERM, lambda *_: [p.send_signal(signal.SIGTERM) for p in procs]),
           signal.SIGINT: signal.signal(signal.SIGINT, lambda *_: None)}
    try:
      codes = [p.wait() for p in procs]
      sweep.reset_claims(wd)  # Every worker is gone: the queue leaves nothing behind.
    finally:
      for sig, handler in old.items():  # Collecting and reporting stop as usual.
        signal.signal(sig, handler)
  # A worker signalled before it installed its handler (still starting) dies
  # of the signal (a negative code): nothing of its runs was lost either.
  stopped = (workdir.PREEMPTED_EXIT, -signal.SIGINT, -signal.SIGTERM)
  crashed = [c for c in codes if c and c not in stopped]
  if any(c in stopped for c in codes):
    if crashed:  # Said, not hidden behind the requeue code: a rerun may meet it again.
      print(f'error: a worker exited with {crashed[0]} (its output above) while another '
            'was stopped by a signal', file=sys.stderr)
    workdir.exit_preempted(f'sweep stopped by a signal: the workers checkpointed their runs '
                           f'in {wd}; rerun the same command to continue')
  if crashed:
    print(f'error: a worker exited with {crashed[0]}', file=sys.stderr)
    sys.exit(crashed[0] if crashed[0] > 0 else 1)
  out = sweep.read_results(wd, runs)
  print('[sweep] ' + sweep.wall_line(sweep.wall_breakdown(out)))
  return out
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  host.keep_freed_memory()  # Before JAX starts its CPU client: lm/host.py.
  logging.set_verbosity(logging.WARNING)
  wd = _WORKDIR.value
  try:
    cd = _CONFIG.value
    if _JSON.value and _MODE.value != 'commands':
      if flags.FLAGS['mode'].present:
        raise config_lib.ConfigError(f'--json lists the commands of --mode=commands, not of '
                                     f'--mode={_MODE.value}')
      flags.FLAGS.mode = 'commands'  # --json alone: the JSON command list.
    if _WORKER.value:  # Internal (written by _run_workers), but checked as any flag.
      i, _, n = _WORKER.value.partition('/')
      if not (i.isdigit() and n.isdigit() and int(i) < int(n)):
        raise config_lib.ConfigError(f'--worker={_WORKER.value}: give i/n with 0 <= i < n '
                                     '(experiments.sweep sets it for its own workers)')
    if flags.FLAGS['report'].present and _MODE.value in ('plan', 'commands'):
      raise config_lib.ConfigError(cli.ignored_flags(('report',), '--mode=run and --mode=collect'))
    if _ONLY.value and _MODE.value == 'collect':
      raise config_lib.ConfigError('--only picks runs to train, plan or list; --mode=collect '
                                   'tabulates the whole sweep: drop --only')
    s = sweep.split(cd)[1]
    if flags.FLAGS['workers'].present and _WORKERS.value > 1 and (
        _ONLY.value or s.executor != 'local' or _MODE.value != 'run'):
      raise config_lib.ConfigError(
          f'--workers={_WORKERS.value} starts local worker processes for a whole sweep run '
          f'(--mode=run, sweep.executor=local, no --only); here it would be ignored')
    runs = sweep.make_plan(cd)
    booleans = frozenset(n for n in flags.FLAGS
                         if n.startswith('config.') and flags.FLAGS[n].boolean)
    overrides = sweep.config_overrides(sys.argv[1:], booleans)
    if overrides:
      sweep.check_overrides(cd, overrides, runs, cli.config_file())
    only = sweep.only_names(runs, _ONLY.value) if _ONLY.value else None
    # Every mode refuses a name the plan does not have; plan and commands show just
    # the named runs (in the packs the whole plan puts them in, numbered as in it).
    numbered = [(i, kept) for i, u in enumerate(sweep.plan_packs(cd, runs))
                if (kept := [r for r in u if only is None or r.name in only])
                ] if _MODE.value in ('plan', 'commands') else []
    units = [u for _, u in numbered]
    if _MODE.value == 'plan':
      pack_of = {r.name: i for i, u in numbered for r in u}
      for r in runs:
        if r.name in pack_of:
          print(f'{r.name:34s} N={r.n:>12,}  D={r.tokens:>14,}  C={r.compute:.3e}  '
                f'pack {pack_of[r.name]}')
      print(f'{len(pack_of)} runs in {len(units)} packs (sweep.pack={s.pack})'
            + (f' (--only: {len(pack_of)} of the plan\'s {len(runs)} runs)' if only else ''))
      return
    if _MODE.value == 'commands':
      overrides = sweep.config_overrides(sys.argv[1:], booleans)
      cmds = sweep.commands(flags.FLAGS['config'].serialize().split('=', 1)[1], wd, units,
                            overrides)
      print(json.dumps(cmds, indent=1) if _JSON.value else '\n'.join(c['command'] for c in cmds))
      return
    sweep.use_compile_cache(wd)
    workers = _WORKERS.value or s.workers
    if _MODE.value == 'run' and _WORKER.value:
      i, n = (int(x) for x in _WORKER.value.split('/'))
      sweep.run_all(cd, wd, worker=(i, n),
                    log=lambda m: print(f'[worker {i + 1}/{n}] {m}', flush=True))
      return
    if _MODE.value == 'run':
      # Before the lock a coordinator (workers, executors) takes there.
      workdir.check_writable(wd, 'the sweep directory', sweep.TABLES)
      if _REPORT.value and not _ONLY.value:  # Not after the training, when it is written.
        workdir.check_writable(os.path.join(wd, 'report'), 'the report directory',
                               sweep.REPORT_FILES)
      sweep.check_configs(cd, wd, runs)
      sweep.check_corpus(cd, wd, runs)
      # The runs' shared text, as the train CLI checks it: a missing or empty
      # data.path or an unusable cache, before plan.json and the runs' records.
      d = sweep.run_config(cd, runs[0], s.evals_per_run).data
      workdir.check_writable(data_lib.cache_root(d),
                             'the data cache (data.cache_dir, $LM_CACHE or ~/.cache/lm)')
      data_lib.corpus_record(d)
      if s.executor in ('slurm', 'ray') and not _ONLY.value:
        results = sweep.submit(cd, wd)
      elif workers > 1 and not _ONLY.value:
        results = _run_workers(cd, wd, workers)
      else:
        results = sweep.run_all(cd, wd, only=_ONLY.value)
      failed = [r for r in results if r['status'] == 'failed']
      if results and len(failed) == len(results):
        print(f'error: every run failed ({len(failed)}); the first: {failed[0]["name"]}: '
              f'{failed[0]["error"][:300]} (tracebacks in {wd}/runs/*/result.json)',
              file=sys.stderr)
        sys.exit(1)
      if _ONLY.value:
        return
    rows = sweep.collect(cd, wd)
    print(f'results: {os.path.join(wd, "results.csv")} ({len(rows)} runs, '
          f'{sum(r["status"] == "done" for r in rows)} done)')
    if _REPORT.value:
      t0 = time.perf_counter()
      path = report.write_report(cd, wd, log=print)
      print(f'report: {path} (fits and report in {time.perf_counter() - t0:.0f} s; where the '
            'time went: its "Where the time went" section)')
  except (config_lib.ConfigError, scaling.FitError, workdir.LockError,
          workdir.NotWritable) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  except workdir.Preempted as e:  # The run in progress checkpointed; rerun to continue.
    workdir.exit_preempted(f'sweep stopped by {e}')
  except workdir.DiskFull as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
