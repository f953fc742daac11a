"""Runs a planned sweep, then fits and reports: the main job.

python -m experiments.sweep --config=configs/isoflop_tiny.py --workdir=runs/isoflop
  --mode=run       run every run not yet done, one after another (default), then
                   collect results.csv/jsonl and write the report (--report)
  --mode=plan      print the plan (N, D, C per run) and stop
  --mode=commands  print one command per run (--json: a JSON run list) for a cluster
  --mode=collect   tabulate results (after cluster runs) and write the report
  --only=NAME      run just that run (what each cluster command does)
"""

import json
import os
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

from lm import config as config_lib
from lm import cli, host, report, scaling, sweep, workdir

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Sweep config (a run config + sweep).')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Sweep directory.')
_MODE = flags.DEFINE_enum('mode', 'run', ['run', 'plan', 'commands', 'collect'], 'What to do.')
_ONLY = flags.DEFINE_string('only', '', 'Run only this run.')
_JSON = flags.DEFINE_bool('json', False, 'With --mode=commands: a JSON list.')
_REPORT = flags.DEFINE_bool('report', True, 'Write the report after running or collecting.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  host.keep_freed_memory()  # Before JAX starts its CPU client: lm/host.py.
  logging.set_verbosity(logging.WARNING)
  wd = _WORKDIR.value
  try:
    cd = _CONFIG.value
    runs = sweep.make_plan(cd)
    if _MODE.value == 'plan':
      for r in runs:
        print(f'{r.name:34s} N={r.n:>12,}  D={r.tokens:>14,}  C={r.compute:.3e}')
      return
    if _MODE.value == 'commands':
      cmds = sweep.commands(flags.FLAGS['config'].serialize().split('=', 1)[1], wd, runs,
                            sweep.config_overrides(sys.argv[1:]))
      print(json.dumps(cmds, indent=1) if _JSON.value else '\n'.join(c['command'] for c in cmds))
      return
    if _MODE.value == 'run':
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
    print(f'sweep stopped by {e}', file=sys.stderr)
    sys.exit(workdir.PREEMPTED_EXIT)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
