"""Fits scaling laws to a results table (CSV or JSONL with N, D, C and loss columns).

python -m tools.fit --results=runs/isoflop/results.csv [--method=3] [--convention=exact]
  method 2 needs a `budget` column (an IsoFLOP design); method 3 needs N, D, loss.
Strict: a missing or non-finite value, or too few points, is an error. The
points are the report's (lm/report.fit_points): a WSD sweep's stable runs and
the runs at other than a size's best learning rate are left out, and said so.
"""

import csv
import json
import math
import sys

import numpy as np
from absl import app, flags

from lm import scaling, workdir
from lm.config import CONVENTIONS


def _define_flags() -> None:
  """Flags exist only when this runs as a program, so tests can import it."""
  flags.DEFINE_string('results', None, 'results.csv or results.jsonl.')
  flags.DEFINE_enum('method', '3', ['2', '3'], 'Hoffmann approach 2 or 3.')
  flags.DEFINE_enum('convention', 'exact', list(CONVENTIONS),
                    'The sweep.convention its budgets were planned in. Approach 2 fits N_opt '
                    'against each run\'s planned budget and reads D_opt from this C_<convention> '
                    'column, so give the sweep\'s own; approach 3 does not use it.')
  flags.DEFINE_string('loss', 'final_loss', 'Loss column.')
  flags.DEFINE_integer('bootstrap', 1000, 'Bootstrap resamples (0: no intervals).',
                       lower_bound=0, upper_bound=100_000)
  flags.mark_flags_as_required(['results'])


def read(path: str) -> list[dict]:
  """The rows of a results table; a file that is not one is a FitError naming it."""
  try:
    with open(path) as f:
      if path.endswith('.jsonl'):
        rows = []
        for i, line in enumerate(f):
          if line.strip():
            try:
              rows.append(json.loads(line))
            except json.JSONDecodeError as e:
              raise scaling.FitError(f'{path}: line {i + 1} is not JSON ({e.msg})') from None
            if not isinstance(rows[-1], dict):
              raise scaling.FitError(f'{path}: line {i + 1} is not a JSON object')
        return rows
      return list(csv.DictReader(f))
  except (OSError, UnicodeDecodeError, csv.Error) as e:
    raise scaling.FitError(f'--results={path} cannot be read as a results table: '
                           f'{workdir.reason(e)} '
                           '(a results.csv or results.jsonl that experiments.sweep wrote)') from None


def _num(v):
  try:
    return float(v)
  except (TypeError, ValueError):
    return v


def fit_rows(rows: list[dict]) -> tuple[list[dict], list[dict]]:
  """The finished rows the fits use, as the report chooses them
  (lm/report.fit_points), and those it leaves out (with a 'reason')."""
  from lm import report
  keys = ('N', 'D', 'budget', 'lr', 'final_loss')  # CSV cells are text.
  typed = [{**r, **{k: _num(r[k]) for k in keys if k in r and r[k] not in (None, '')}}
           for r in rows]
  for r in typed:
    if r.get('lr') in (None, ''):  # An empty CSV cell: no learning rate recorded.
      r.pop('lr', None)
  done = [r for r in typed if r.get('status', 'done') == 'done']
  kinds = sorted({str(r['parametrization']) for r in done if r.get('parametrization')})
  if len(kinds) > 1:  # A transfer sweep's table: one size's sp and mup runs are two models.
    raise scaling.FitError(f'the table mixes parametrizations ({", ".join(kinds)}): one law '
                           'fits one of them; keep only its rows (a transfer sweep is '
                           'compared by python -m tools.report, not fitted)')
  failed = [r for r in typed if r.get('status', 'done') != 'done']
  absent = [k for k in ('N', 'D') if done and not any(k in r for r in done)]
  if absent:  # Another kind of table (e.g. a run's metrics): not a row's fault.
    cols = ', '.join(sorted({str(k) for r in done for k in r}))[:200]
    raise scaling.FitError(f'the table has no {" or ".join(absent)} column (its columns: '
                           f'{cols}): give the results.csv or results.jsonl a sweep wrote')
  if not all('final_loss' in r for r in done):  # A table of other columns: all its rows.
    return done, []
  # fit_points groups by (budget, N, D, lr) and ranks by final_loss: each must
  # be a number here (a text cell or a missing column names its row).
  for i, r in enumerate(typed):
    if r.get('status', 'done') == 'done':
      for k in ('N', 'D', 'final_loss') + (('lr',) if 'lr' in r else ()):
        value(r, k, i)
  keep, out = report.fit_points(done, failed)
  return keep, [r for r in out if 'reason' in r]


def value(r: dict, key: str, i: int) -> float:
  """Row i's `key` as a finite float, or a FitError naming the row and the cell."""
  try:
    v = float(r.get(key))
  except (TypeError, ValueError):
    v = float('nan')
  if not math.isfinite(v):
    raise scaling.FitError(f'row {i} ({r.get("name", "?")}): {key}={r.get(key)!r} is missing '
                           'or not finite; drop or re-run that run')
  return v


def column(rows, key) -> np.ndarray:
  return np.asarray([value(r, key, i) for i, r in enumerate(rows)])


def _interval(ci: dict, k: str) -> str:
  if '_why' in ci:
    return f'none: {ci["_why"]}'
  if not ci['_failed'][1]:
    return 'none (--bootstrap=0)'
  if k not in ci:
    return f'none: all {ci["_failed"][1]} bootstrap refits failed'
  return f'[{ci[k][0]:.4g}, {ci[k][1]:.4g}] ({ci["_failed"][0]} of {ci["_failed"][1]} refits failed)'


def main(argv):
  del argv
  F = flags.FLAGS
  try:
    rows, left_out = fit_rows(read(F.results))
    if not rows:
      raise scaling.FitError(f'--results={F.results} holds no finished runs')
    if left_out:
      print(f'left out {len(left_out)} finished runs, as the report does: '
            + '; '.join(f'{r.get("name", "?")}: {r["reason"]}' for r in left_out[:3])
            + (' ...' if len(left_out) > 3 else ''))
    n, d = column(rows, 'N'), column(rows, 'D')
    if not any(F.loss in r for r in rows):
      cols = ', '.join(sorted({k for r in rows for k in r if 'loss' in k or 'headline' in k}))
      raise scaling.FitError(f'--loss={F.loss}: {F.results} has no such column (its loss '
                             f'columns: {cols or "none"})')
    if all(isinstance(_num(r.get(F.loss)), str) and r.get(F.loss) != '' for r in rows):
      cols = ', '.join(sorted({k for r in rows for k in r if 'loss' in k}))
      raise scaling.FitError(f'--loss={F.loss}: that column holds text (e.g. '
                             f'{rows[0][F.loss]!r}), not losses; loss columns: {cols or "none"}')
    loss = column(rows, F.loss)
    if F.method == '3':
      f = scaling.approach3(n, d, loss)
      # The frontier's exponents with C counted as the table counts it (as
      # --method=2 fits them), over the budgets or the runs' compute range.
      c = column(rows, f'C_{F.convention}') if all(
          _num(r.get(f'C_{F.convention}')) not in (None, '') for r in rows) else None
      if c is not None:
        budgets = scaling.frontier_budgets([_num(r.get('budget')) or 0 for r in rows], c)
        tokens_for = scaling.tokens_at(n, c, d)
        ci = scaling.approach3_intervals(n, d, loss, f, F.bootstrap, tokens_for=tokens_for,
                                         budgets=budgets)
        est = f.frontier(tokens_for, budgets)
      else:
        ci, est = scaling.approach3_intervals(n, d, loss, f, F.bootstrap), {}
      est.update({k: getattr(f, k) for k in ('E', 'A', 'B', 'alpha', 'beta', 'a_kND', 'b_kND')})
      at_zero = scaling.e_at_zero(f, loss)
      for k in ('E', 'A', 'B', 'alpha', 'beta', 'a', 'b', 'a_kND', 'b_kND'):
        if k in est:
          print(f'{k:6s} {est[k]:.4g}  95% CI ' + ('none: E is at its lower bound, where no '
                                                  'refit moves it' if k == 'E' and at_zero
                                                  else _interval(ci, k)))
      print('a, b: N_opt ~ C^a, D_opt ~ C^b with C in ' + (
          f'{F.convention} FLOPs over {budgets.min():.3g}-{budgets.max():.3g}' if c is not None
          else f'--convention={F.convention} FLOPs: the table has no C_{F.convention} column')
          + '; a_kND = beta/(alpha+beta), a if C were k N D')
      print(f'grad norm {f.grad_norm:.2e}; best start {f.best_start} '
            f'({"on the edge of" if f.start_on_grid_edge else "inside"} the start grid)')
      if at_zero:
        print(f'warning: E = {f.E:.3g} is at its lower bound (0): the fit puts all the loss in '
              'the power-law terms and the intervals of E, A and alpha are not informative')
    else:
      budget, c = column(rows, 'budget'), column(rows, f'C_{F.convention}')
      if np.any(budget <= 0):
        designs = sorted({str(r.get('design') or 'grid') for r, b in zip(rows, budget) if b <= 0})
        raise scaling.FitError(
            f'--method=2 needs an IsoFLOP sweep (runs planned at a budget), but '
            f'{int(np.sum(budget <= 0))} of {len(rows)} runs in {F.results} have budget 0 '
            f'(design {", ".join(designs)}); fit that table with --method=3')
      tokens_for = scaling.tokens_at(n, c, d)
      f = scaling.approach2(budget, n, loss, tokens_for)
      ci = scaling.approach2_intervals(budget, n, loss, tokens_for, F.bootstrap)
      print(f'N_opt = {f.N_opt.k:.4g} C^{f.N_opt.exponent:.4g} (a 95% CI {_interval(ci, "a")}); '
            f'D_opt = {f.D_opt.k:.4g} C^{f.D_opt.exponent:.4g}')
  except scaling.FitError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  _define_flags()
  from lm import cli
  app.run(main, flags_parser=cli.parse_flags)
