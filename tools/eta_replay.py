"""Replays a finished sweep's measured run times through lm/sweep.eta_seconds.

python -m tools.eta_replay --workdir=runs/isoflop [--workers=2]

After each finished run, prints the ETA the sweep would have printed and the
time actually left, in two orders: local workers' shared queue (largest FLOPs
first, each worker taking the next run when it finishes) and a lone sweep's
plan order. A check of the estimator on real sweeps, not only the synthetic
one in tests/test_sweep.py; the walls are replayed with ideal queuing (no
process start-up between runs), so "left" is what those runs would take.
Each finished run is its own unit, as in an unpacked sweep (plan.json does
not say which runs a sweep packed); plans with WSD branches, which wait for
their stable run, are refused.

The main job (fresh clone, 2026-11-27, /tmp/mj11's 15 runs), two workers:

  done  at s  eta s  left s        lone: done  at s  eta s  left s
  1     110   373    353                 2     47    669    869
  2     131   347    332                 3     64    780    852
  3     202   288    261                 4     83    835    834
  4     247   235    216                 5     101   855    815

(Before the one-budget fit took a + c * FLOPs as per-run time: 773, 727, 633,
585 s and 295, 293, 281, 266 s at the same points.)
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys

from absl import app, flags

from lm import plan, sweep

FLAGS = flags.FLAGS


def replay(runs: list[plan.Run], wall: dict[str, float], workers: int,
           queue: bool) -> list[tuple[int, float, float, float]]:
  """(runs done, seconds since the start, ETA printed, seconds actually left)
  after each run but the last: runs in claim order (largest compute first)
  over `workers` workers, or in plan order one after another."""
  order = ([r for g in sweep.claim_groups([[r] for r in runs]) for u in g for r in u]
           if queue else list(runs))
  free = [0.0] * (workers if queue else 1)
  ends = []
  for r in order:
    w = min(range(len(free)), key=free.__getitem__)
    free[w] += wall[r.name]
    ends.append((free[w], r))
  ends.sort(key=lambda e: e[0])
  last = max(free)
  out = []
  for i, (t, _) in enumerate(ends[:-1]):
    done = [(r, wall[r.name]) for _, r in ends[:i + 1]]
    eta = sweep.eta_seconds(done, [r for _, r in ends[i + 1:]]) / len(free)
    out.append((i + 1, t, eta, last - t))
  return out


def _finite(v) -> bool:
  """A JSON number (not a bool) that is finite."""
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def main(argv):
  del argv
  path = os.path.join(FLAGS.workdir or '', 'plan.json')
  fields = {f.name for f in dataclasses.fields(plan.Run)}
  try:
    with open(path) as f:
      runs = [plan.Run(**{k: v for k, v in r.items() if k in fields}) for r in json.load(f)]
  except FileNotFoundError:
    print(f'error: --workdir={FLAGS.workdir}: no sweep plan at {path}', file=sys.stderr)
    sys.exit(2)
  except (OSError, ValueError, TypeError, AttributeError) as e:
    print(f'error: {path} cannot be read as a sweep plan ({e})', file=sys.stderr)
    sys.exit(2)
  for r in runs:  # Field types: claim_groups sums compute, the tables print names.
    if not (isinstance(r.name, str)
            and all(_finite(v) for v in (r.compute, r.budget, r.n, r.tokens))):
      print(f'error: {path}: run {r.name!r} is not a sweep plan\'s run (name a string; n, '
            'tokens, compute and budget finite numbers)', file=sys.stderr)
      sys.exit(2)
  if any(r.branch_from for r in runs):
    print(f'error: --workdir={FLAGS.workdir}: a WSD plan (branches wait for their stable '
          'run); the replay takes IsoFLOP and grid sweeps', file=sys.stderr)
    sys.exit(2)
  wall = {}
  for r in runs:
    rec = sweep.read_result(FLAGS.workdir, r.name)  # {} or 'pending' when unreadable.
    if rec.get('status') != 'done':
      continue
    w = rec.get('wall_s')
    if not (_finite(w) and w > 0):
      where = os.path.join(FLAGS.workdir, 'runs', r.name, 'result.json')
      print(f'error: {where}: wall_s={w!r}; a finished '
            'run records its positive wall time in seconds', file=sys.stderr)
      sys.exit(2)
    wall[r.name] = float(w)
  if len(wall) < len(runs):
    print(f'{len(runs) - len(wall)} of {len(runs)} planned runs are not done: left out')
  runs = [r for r in runs if r.name in wall]
  if len(runs) < 2:
    print(f'error: --workdir={FLAGS.workdir}: {len(runs)} finished runs; a replay needs 2',
          file=sys.stderr)
    sys.exit(2)
  for queue in (True, False):
    print(f'\n{"queue, " + str(FLAGS.workers) + " workers" if queue else "lone sweep"}: '
          f'{len(runs)} finished runs')
    print('| done | at s | eta s | left s |\n|---|---|---|---|')
    for n, t, eta, left in replay(runs, wall, FLAGS.workers, queue):
      print(f'| {n} | {t:.0f} | {eta:.0f} | {left:.0f} |')


if __name__ == '__main__':
  # Defined here, not at import: tests import replay() into processes whose
  # other CLI modules (experiments.fill_mask, ...) define --workdir too.
  flags.DEFINE_string('workdir', None, 'A sweep\'s --workdir (plan.json, runs/).')
  flags.DEFINE_integer('workers', 2, 'Local workers to replay the queue with.',
                       lower_bound=1, upper_bound=1024)
  flags.mark_flag_as_required('workdir')
  from lm import cli
  app.run(main, flags_parser=cli.parse_flags)
