"""Fits a finished (or partly finished) sweep and writes figures, a report and fits.json.

Reads <workdir>/results.jsonl (lm/sweep.collect writes it) and each run's eval
curve; writes <workdir>/report/report.md, PNG figures, and
<workdir>/report/fits.json ({"approach1"|"approach2"|"approach3": {param:
{"estimate": x, "ci95": [lo, hi] or null}}}) for scripts and notebooks; every
approach's a and b are N_opt ~ C^a and D_opt ~ C^b with C in the sweep's
FLOP convention (approach3 also gives a_kND = beta / (alpha + beta), its a
were C = k N D).
Every fitted constant comes with a bootstrap interval; a fit that the data do
not constrain says so instead of printing a bare number. CLIs: tools/report.py
and experiments/sweep.py.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import math
import os
import time
from typing import Any

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from lm import scaling, sweep  # noqa: E402
from lm.workdir import check_writable, tables_lock, write_atomic  # noqa: E402


def _failed_at(excluded: list[dict], *keys: str) -> set[tuple]:
  """The `keys` values of every failed run: the points (e.g. a size's LR) at which
  some seed failed, which no surviving seed's mean may stand for."""
  return {tuple(r.get(k) for k in keys) for r in excluded if r.get('status') == 'failed'}


def _lr(v: float | None) -> str:
  return 'not recorded' if v is None else f'{v:.3g}'


def fit_points(rows: list[dict], excluded: list[dict]) -> tuple[list[dict], list[dict]]:
  """The runs the scaling fits use. A WSD sweep's stable runs are left out
  (constant LR, never cooled down: their branches are the points). With
  several learning rates per (budget, N, D), only the best one's runs (lowest
  mean final loss over seeds, among the LRs where no seed failed) stay: the
  others are not that size's loss at that budget, and pooling them would read
  LR spread as noise."""
  keep, out = [], list(excluded)
  for r in rows:
    if r.get('design') == 'wsd_stable':
      out.append({**r, 'reason': 'a WSD stable run (constant LR, not cooled down): its '
                  'branches are the fit points'})
    else:
      keep.append(r)
  groups: dict[tuple, dict[float, list[float]]] = {}
  for r in keep:
    key = (r.get('budget'), r['N'], r['D'])
    groups.setdefault(key, {}).setdefault(r.get('lr'), []).append(r['final_loss'])
  # An LR at which a seed failed is not eligible: its survivors' mean would favour it.
  failed = _failed_at(excluded, 'budget', 'N', 'D', 'lr')
  best = {}
  for k, v in groups.items():
    ok = [lr for lr in v if (*k, lr) not in failed] or list(v)
    best[k] = min(ok, key=lambda lr: float(np.mean(v[lr])))
  rows = []
  for r in keep:
    b = best[(r.get('budget'), r['N'], r['D'])]
    if r.get('lr') == b:
      rows.append(r)
    else:
      out.append({**r, 'reason': f'lr {_lr(r.get("lr"))} is not the best learning rate for '
                  f'its size and budget ({_lr(b)}); the fits use the best'
                  + (' (a seed failed at this lr)' if (r.get('budget'), r['N'], r['D'],
                                                       r.get('lr')) in failed else '')})
  return rows, out


def _results_path(workdir: str) -> str:
  path = os.path.join(workdir, 'results.jsonl')
  if not os.path.exists(path):
    raise scaling.FitError(f'{path} does not exist: run experiments.sweep (or --mode=collect)')
  return path


def load_rows(workdir: str) -> tuple[list[dict], list[dict]]:
  """(usable rows, excluded rows with the reason). Non-finite losses of runs
  marked done are an error: the table is inconsistent."""
  with open(_results_path(workdir)) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  ok, excluded = [], []
  for r in rows:
    if r['status'] != 'done':
      excluded.append({**r, 'reason': r['status'] + (f': {r["error"]}' if r.get('error') else '')})
      continue
    loss = r.get('final_loss')
    if loss is None or not math.isfinite(loss):
      raise scaling.FitError(f'results.jsonl: run {r["name"]} is marked done but its final loss '
                             f'is {loss!r}; re-run it or mark it failed')
    ok.append(r)
  return ok, excluded


def _fmt(v: float) -> str:
  return f'{v:.4g}'


def _ci(ci: dict, k: str, transform=None) -> str:
  """'[lo, hi]', or why there is none (no resamples asked for, or every refit failed)."""
  if k not in ci:
    if f'_why_{k}' in ci:
      return f'none: {ci[f"_why_{k}"]}'
    if '_why' in ci:
      return f'none: {ci["_why"]}'
    if ci['_failed'][1] == 0:
      return 'none: sweep.bootstrap = 0'
    return 'none: every bootstrap refit failed'
  lo, hi = ci[k]
  if transform is not None:
    lo, hi = transform(lo), transform(hi)
  return f'[{_fmt(lo)}, {_fmt(hi)}]'


@dataclasses.dataclass
class _Table:
  """The usable runs as arrays, and what the report accumulates."""
  workdir: str
  s: Any  # SweepConfig.
  rows: list[dict]
  n: np.ndarray
  d: np.ndarray
  c: np.ndarray
  budget: np.ndarray
  loss: np.ndarray
  md: list[str] = dataclasses.field(default_factory=list)
  figures: list = dataclasses.field(default_factory=list)
  fits: dict = dataclasses.field(default_factory=dict)

  @property
  def conv(self) -> str:
    return self.s.convention


def _exp(v: float) -> float:
  """exp, inf past float64's range (a wide log k interval's bound)."""
  return math.exp(v) if v < 709.0 else math.inf


def _fit_entry(estimate: float, ci: dict, key: str, transform=None) -> dict:
  """fits.json's {'estimate', 'ci95'}; an unbounded end is null, since JSON
  has no infinity."""
  lo_hi = ci.get(key)
  if lo_hi is not None and transform is not None:
    lo_hi = [transform(lo_hi[0]), transform(lo_hi[1])]
  return {'estimate': float(estimate) if math.isfinite(estimate) else None,
          'ci95': None if lo_hi is None else
          [float(v) if math.isfinite(v) else None for v in lo_hi]}


def _lack_of_fit(ci: dict, budgets: int) -> str:
  """What the Approach 2 lack-of-fit test found, or why it did not run."""
  if ci.get('_lack_of_fit_tested'):
    if ci['_lack_of_fit'] > 1:
      return ('The budgets\' optima scatter about the power law more than their noise '
              'explains, so the intervals are widened by sqrt(chi2/dof) = '
              f'{ci["_lack_of_fit"]:.2f}.')
    return 'The budgets\' optima lie on the power law within their noise.'
  why = ('with 2 budgets a line passes through both optima' if budgets == 2 else
         'no bootstrap' if '_why' in ci or not ci['_failed'][1] else
         'too few bootstrap refits succeeded')
  return f'Whether the budgets\' optima lie on the power law is not tested ({why}).'


def write_report(cd, workdir: str, log=lambda msg: None) -> str:
  """report/report.md, its figures and report/fits.json for a sweep directory;
  `log` hears each fit as it finishes, with its time. Read and written under
  workdir.tables_lock, as the tables are: a report started during a sweep
  cannot replace the sweep's newer one."""
  sweep.check_plan(workdir, sweep.make_plan(cd))  # Another config's sweep: refused.
  _results_path(workdir)  # A directory without tables: refused before a lock file is made.
  check_writable(os.path.join(workdir, 'report'), 'the report directory', sweep.REPORT_FILES)
  with tables_lock(workdir):
    return _write_report(cd, workdir, log)


def _write_report(cd, workdir: str, log) -> str:
  _, s = sweep.split(cd)
  rows, excluded = load_rows(workdir)
  if s.design == 'transfer':
    return _transfer_report(workdir, s, rows, excluded)
  if s.design == 'lr':
    return _lr_report(workdir, rows, excluded)
  rows, excluded = fit_points(rows, excluded)
  t = _Table(workdir, s, rows, *(np.array([r[k] for r in rows], float) for k in
                                 ('N', 'D', f'C_{s.convention}', 'budget', 'final_loss')))
  out_dir = os.path.join(workdir, 'report')
  os.makedirs(out_dir, exist_ok=True)
  _runs_table(t, excluded)
  t_fit = t_step = time.perf_counter()

  def done(what: str) -> None:
    nonlocal t_step
    now = time.perf_counter()
    log(f'[report] {what} ({now - t_step:.1f} s)')
    t_step = now

  log(f'[report] fitting {len(rows)} runs, {s.bootstrap} bootstrap resamples per fit')
  _approach1(t)
  done('approach 1: envelope')
  a2, tokens_for = _approach2(t)
  done('approach 2: IsoFLOP profiles')
  grid = _approach3(t)
  done('approach 3: parametric law')
  _held_out(t, a2, tokens_for, grid)
  done('held-out check')
  _agreement(t)
  _beyond_loss(t)
  t.md += _wall_time(workdir, time.perf_counter() - t_fit)
  t.md += ['## Figures', '']
  for fname, fig in t.figures:
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, fname), dpi=110)
    plt.close(fig)
    t.md.append(f'![{fname}]({fname})')
  write_atomic(os.path.join(out_dir, 'fits.json'), json.dumps(t.fits, indent=1) + '\n')
  path = os.path.join(out_dir, 'report.md')
  write_atomic(path, '\n'.join(t.md) + '\n')
  return path


def _keys(rows: list[dict], prefix: str, suffix: str = '') -> list[str]:
  return sorted({k for r in rows for k in r if k.startswith(prefix + '/')
                 and k.endswith(suffix) and r[k] is not None})


def _beyond_loss(t: _Table) -> None:
  """Harness task scores against compute (each run's evaluations, one colour
  per model size), canary exposure against model size (one line per
  repetition count) and the bias probe per run, where the runs recorded them
  (train.eval_tasks, data.canary_repeats, train.eval_bias_csv)."""
  from lm import metrics
  tasks, canaries = _keys(t.rows, 'task'), _keys(t.rows, 'canary', '/exposure')
  bias = _keys(t.rows, 'bias', '/stereotype_preferred')
  if not (tasks or canaries or bias):
    return
  t.md += ['## Beyond loss: downstream tasks, memorization, bias', '']
  sizes = sorted({r['N'] for r in t.rows})
  color = {n: plt.cm.viridis(i / max(len(sizes) - 1, 1)) for i, n in enumerate(sizes)}
  if tasks:
    t.md += ['Final harness task scores (lm/harness.py; curves over training in '
             'tasks.png):', '', '| run | N | C | ' + ' | '.join(tasks) + ' |',
             '|---|---|---|' + '---|' * len(tasks)]
    for r in sorted(t.rows, key=lambda r: r[f'C_{t.conv}']):
      t.md.append(f'| {r["name"]} | {r["N"]:,} | {r[f"C_{t.conv}"]:.3g} | ' + ' | '.join(
          _fmt(r[k]) if r.get(k) is not None else '-' for k in tasks) + ' |')
    t.md.append('')
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.8), squeeze=False)
    for ax, k in zip(axes[0], tasks):
      labelled = set()
      for r in t.rows:
        evals = [e for e in metrics.read(os.path.join(t.workdir, 'runs', r['name']), 'eval')
                 if k in e]
        if not evals:
          continue
        last = max(e['step'] for e in evals)
        xs = [r[f'C_{t.conv}'] * e['step'] / last for e in evals]
        ax.plot(xs, [e[k] for e in evals], 'o-', ms=3, color=color[r['N']],
                label=None if r['N'] in labelled else f'N={r["N"]:,}')
        labelled.add(r['N'])
      ax.set(xscale='log', xlabel=f'compute C ({t.conv}, FLOPs)', title=k[len('task/'):])
    axes[0, 0].legend(fontsize=7)
    t.figures.append(('tasks.png', fig))
  if canaries:
    t.md += ['Canary exposure in bits (Carlini et al. 2019; lm/probes.py), mean over runs '
             'of a size; a control canary (x0) was never inserted:', '',
             '| N | ' + ' | '.join(k.split('/')[1] for k in canaries) + ' |',
             '|---|' + '---|' * len(canaries)]
    mean = {k: [np.mean([r[k] for r in t.rows if r['N'] == n and r.get(k) is not None])
                for n in sizes] for k in canaries}  # Per canary, per size.
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for k in canaries:
      ax.plot(sizes, mean[k], 'o-', label=k.split('/')[1].split('_')[-1] + ' repeats')
    for i, n in enumerate(sizes):
      t.md.append(f'| {n:,} | ' + ' | '.join(f'{mean[k][i]:.2f}' for k in canaries) + ' |')
    t.md.append('')
    ax.set(xscale='log', xlabel='non-embedding parameters N', ylabel='exposure (bits)')
    ax.legend(fontsize=8)
    t.figures.append(('exposure.png', fig))
  if bias:
    t.md += ['Bias probe (fraction of pairs where the model prefers the more stereotypical '
             'sentence, bootstrap 95% interval; 0.5 = no preference):', '',
             '| run | N | ' + ' | '.join(k.split('/')[1] for k in bias) + ' |',
             '|---|---|' + '---|' * len(bias)]
    for r in sorted(t.rows, key=lambda r: (r['N'], r['name'])):
      cells = []
      for k in bias:
        base = k[:-len('/stereotype_preferred')]
        cells.append('-' if r.get(k) is None else
                     f'{r[k]:.2f} [{r[base + "/ci_lo"]:.2f}, {r[base + "/ci_hi"]:.2f}]')
      t.md.append(f'| {r["name"]} | {r["N"]:,} | ' + ' | '.join(cells) + ' |')
    t.md.append('')


def _wall_time(workdir: str, fit_s: float) -> list[str]:
  """Where the sweep's time went (report lines): the runs' recorded parts, and the fits."""
  recs = [sweep.read_result(workdir, os.path.basename(os.path.dirname(path))) for path in
          sorted(glob.glob(os.path.join(workdir, 'runs', '*', 'result.json')))]
  parts = sweep.wall_breakdown(recs)
  parts['fits (this report)'] = fit_s
  total = sum(parts.values()) or 1.0
  md = ['## Where the time went', '',
           f'Summed over the {sum(1 for r in recs if r.get("wall"))} runs that recorded it '
           '(a resumed run\'s parts add up every process that trained it). compile: the first train '
           'step\'s call; data: making each batch (on a CPU backend the training thread\'s CPU '
           'time, since the step shares its cores; on accelerators the wait for it); train: '
           'dispatching steps and waiting for the device; eval and '
           'checkpoint include their own compilation and writes; setup: config, data, '
           'model build, init or restore; other: process and sweep overhead.', '',
           '| part | seconds | share |', '|---|---|---|']
  return md + [f'| {k} | {v:.1f} | {100 * v / total:.0f}% |' for k, v in parts.items()] + ['']


def _runs_table(t: _Table, excluded: list[dict]) -> None:
  s, conv = t.s, t.conv
  t.md += [f'# Scaling report: {os.path.basename(os.path.abspath(t.workdir))}', '',
           f'Design: {s.design}; compute convention: `{conv}` (lm/flops.py); N = '
           'non-embedding parameters; D = training tokens; loss = final validation loss '
           f'(nats per target token); {s.bootstrap} bootstrap resamples, 95% percentile '
           'intervals.', '']
  every = t.rows + excluded
  objective = every[0].get('objective', 'lm') if every else 'lm'
  headline = every[0].get('headline', 'bits_per_byte') if every else 'bits_per_byte'
  t.md += [f'Objective: {objective}; headline metric: {headline} (final eval); fits use '
           'the loss.', '']
  t.md += ['## Runs', '', f'| run | N | D | C | final loss | {headline} | status |',
           '|---|---|---|---|---|---|---|']
  for r in every:
    t.md.append(f'| {r["name"]} | {r["N"]:,} | {r["D"]:,} | {r[f"C_{conv}"]:.3g} | '
                f'{_fmt(r["final_loss"]) if r.get("final_loss") is not None else "-"} | '
                f'{_fmt(r["final_headline"]) if r.get("final_headline") is not None else "-"} | '
                f'{r["status"] if r in t.rows else r["reason"]} |')
  t.md.append('')


# Resampling n runs with replacement gives C(2n-1, n) distinct tables: 35 for 4 runs,
# too few for 2.5% tails, 126 for 5.
MIN_RUNS_APPROACH1_CI = 5


def _approach1(t: _Table) -> None:
  """Envelope of the training curves."""
  md, rows, conv = t.md, t.rows, t.conv
  fpt_of = {r['name']: r[f'C_{conv}'] / r['D'] for r in rows}
  md += ['## Approach 1: lower envelope of loss vs compute', '']
  try:
    curves = {}
    for r in rows:
      ev = sweep.curves(t.workdir, [r['name']])[r['name']]
      steps = max(e['step'] for e in ev)
      tokens_per_step = r['D'] / steps
      curves[r['name']] = (np.array([fpt_of[r['name']] * e['step'] * tokens_per_step
                                     for e in ev]), np.array([e['loss'] for e in ev]))
    n_of = {r['name']: r['N'] for r in rows}
    a1 = scaling.approach1(curves, n_of, lambda name: fpt_of[name])
    envelope_runs = len({e[2] for e in a1['envelope']})
    names = list(curves)

    def refit1(idx):  # Resample whole runs (curves), keeping duplicates apart.
      picked = {f'{names[i]}#{j}': curves[names[i]] for j, i in enumerate(idx)}
      f = scaling.approach1(picked, {k: n_of[k.split('#')[0]] for k in picked},
                            lambda k: fpt_of[k.split('#')[0]])
      return {'a': f['N_opt'].exponent, 'b': f['D_opt'].exponent}

    if len(names) < MIN_RUNS_APPROACH1_CI:  # Few runs: few distinct resamples, so the
      # percentiles collapse onto the fit itself (2 runs: [a, a]), which is no interval.
      ci1 = {'_failed': (0, 0), '_why': f'{len(names)} runs; resampling whole runs needs '
                                        f'at least {MIN_RUNS_APPROACH1_CI}'}
    else:
      ci1 = scaling.bootstrap(refit1, len(names), resamples=t.s.bootstrap)
      if 'a' in ci1 and ci1['a'][0] == ci1['a'][1]:  # E.g. 2 runs on the envelope:
        # every refit that keeps both reproduces the fit, every other one fails.
        ci1 = {'_failed': ci1['_failed'],
               '_why': f'every refit that succeeded reproduced the fit '
                       f'({envelope_runs} runs on the envelope), '
                       'so its percentiles collapse onto it'}
    t.fits['approach1'] = {'a': _fit_entry(a1['N_opt'].exponent, ci1, 'a'),
                           'b': _fit_entry(a1['D_opt'].exponent, ci1, 'b')}
    md += [f'N_opt(C) = {_fmt(a1["N_opt"].k)} C^a with a = {_fmt(a1["N_opt"].exponent)} '
           f'(95% CI {_ci(ci1, "a")}); D_opt(C) = {_fmt(a1["D_opt"].k)} C^b with '
           f'b = {_fmt(a1["D_opt"].exponent)} (95% CI {_ci(ci1, "b")}). '
           f'{len(a1["envelope"])} envelope points from '
           f'{envelope_runs} runs; intervals resample whole runs '
           f'(failed refits: {ci1["_failed"][0]} of {ci1["_failed"][1]}).', '']
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, (cc, ll) in curves.items():
      ax.plot(cc, ll, alpha=0.5, lw=1)
    ec = [e[0] for e in a1['envelope']]
    ax.plot(ec, [e[1] for e in a1['envelope']], 'k--', lw=2, label='envelope')
    ax.set(xscale='log', xlabel=f'C (FLOPs, {conv})', ylabel='validation loss',
           title='Loss curves vs compute')
    ax.legend()
    t.figures.append(('loss_vs_flops.png', fig))
  except scaling.FitError as e:
    md += [f'Not fitted: {e}', '']



def _approach2(t: _Table):
  """IsoFLOP parabolas; returns (the fit or None, tokens_for)."""
  md, n, c, d, budget, loss, s = t.md, t.n, t.c, t.d, t.budget, t.loss, t.s
  tokens_for = None
  md += ['## Approach 2: IsoFLOP profiles', '']
  a2 = None
  if not len(budget):
    md += ['Not fitted: no run finished (the Runs table says why each one is missing).', '']
    return None, None
  if not (budget > 0).any():  # Grid and WSD runs have no budget: no profile to fit.
    md += [f'Not fitted: IsoFLOP profiles need runs planned at fixed compute budgets '
           f'(sweep.design=\'isoflop\'); this sweep\'s design is \'{s.design}\'.', '']
    return None, None
  try:
    tokens_for = scaling.tokens_at(n, c, d)
    a2 = scaling.approach2(budget, n, loss, tokens_for)
    draws: dict = {}
    ci2 = scaling.approach2_intervals(budget, n, loss, tokens_for, s.bootstrap, draws_out=draws)
    t.fits['approach2'] = {'a': _fit_entry(a2.N_opt.exponent, ci2, 'a'),
                           'b': _fit_entry(a2.D_opt.exponent, ci2, 'b'),
                           'k_N': _fit_entry(a2.N_opt.k, ci2, 'log_kn', _exp),
                           'k_D': _fit_entry(a2.D_opt.k, ci2, 'log_kd', _exp)}
    md += [f'N_opt(C) = k C^a with k = {_fmt(a2.N_opt.k)} (95% CI {_ci(ci2, "log_kn", _exp)}), '
           f'a = {_fmt(a2.N_opt.exponent)} (95% CI {_ci(ci2, "a")}); '
           f'D_opt(C) = k\' C^b with k\' = {_fmt(a2.D_opt.k)} (95% CI '
           f'{_ci(ci2, "log_kd", _exp)}), b = {_fmt(a2.D_opt.exponent)} '
           f'(95% CI {_ci(ci2, "b")}). '
           f'Intervals: residual bootstrap (every size kept, the noise redrawn from the '
           f'budget\'s own residuals when it has 10+ points, else from all budgets\' '
           f'pooled); refits that failed (a non-convex or nearly straight profile): {ci2["_failed"][0]} of '
           f'{ci2["_failed"][1]}. '
           + _lack_of_fit(ci2, len(a2.budgets)), '']
    seed_sd, resid_sd = _noise(t, a2)
    if seed_sd is not None:  # Before the table: a paragraph inside it would split it.
      md += [f'Noise: seed-to-seed sd of the final loss {_fmt(seed_sd)} (pooled over '
             f'points with several seeds) against the parabolas\' residual sd '
             f'{_fmt(resid_sd)}' + (' (the profiles fit the data within their noise).'
                                    if resid_sd <= 1.5 * seed_sd else
                                    ': the residuals exceed the seed noise, so a parabola '
                                    'does not describe these profiles well.'), '']
    md += ['Columns: the fitted parabola\'s minimum lies inside the sampled sizes; the '
           'lowest *measured* loss is at the smallest or largest sampled size (then the '
           'data do not bracket the optimum, whatever the parabola says).', '',
           '| budget | N_opt | loss at N_opt | parabola minimum inside sampled N | '
           'lowest measured loss at an end |', '|---|---|---|---|---|']
    at_end = []
    for bb, nn, ll, br in zip(a2.budgets, a2.n_opt, a2.loss_opt, a2.bracketed):
      sel = budget == bb  # With seeds, several rows share a size: compare sizes, not rows.
      end = n[sel][np.argmin(loss[sel])] in (n[sel].min(), n[sel].max())
      at_end.append(end)
      md.append(f'| {bb:.3g} | {nn:,.0f} | {_fmt(ll)} | {"yes" if br else "NO"} | '
                f'{"YES" if end else "no"} |')
    md.append('')
    if not all(a2.bracketed) or any(at_end):
      md += ['**Warning:** some budgets are not bracketed (the parabola\'s minimum lies '
             'outside the sampled sizes, or the lowest measured loss is at an end); their '
             'N_opt is an extrapolation: add sizes on that side.', '']
    fig, ax = plt.subplots(figsize=(6, 4))
    for bb, par, nn, ll in zip(a2.budgets, a2.parabolas, a2.n_opt, a2.loss_opt):
      sel = budget == bb
      pts = ax.scatter(n[sel], loss[sel], label=f'C={bb:.2g}')
      xs = np.linspace(np.log(n[sel].min()) - 0.3, np.log(n[sel].max()) + 0.3, 100)
      ax.plot(np.exp(xs), np.polyval(par, xs), color=pts.get_facecolor()[0])
      ax.plot([nn], [ll], 'k*', ms=12)
    ax.set(xscale='log', xlabel='N (non-embedding params)', ylabel='final validation loss',
           title='IsoFLOP profiles')
    ax.legend()
    t.figures.append(('isoflop.png', fig))
    fig, axs = plt.subplots(1, 2, figsize=(10, 4))
    cs = np.geomspace(a2.budgets.min() / 3, a2.budgets.max() * 3, 50)
    for ax, (label, law, pts, kk, ee) in zip(axs, [
        ('N_opt', a2.N_opt, a2.n_opt, 'log_kn', 'a'),
        ('D_opt', a2.D_opt, [tokens_for(bb, nn) for bb, nn in zip(a2.budgets, a2.n_opt)],
         'log_kd', 'b')]):
      ax.scatter(a2.budgets, pts, color='k', zorder=3)
      ax.plot(cs, law(cs), label=f'{label} ∝ C^{law.exponent:.3f}')
      if len(draws.get(kk, ())):
        band = np.exp(draws[kk][:, None] + draws[ee][:, None] * np.log(cs)[None, :])
        ax.fill_between(cs, *np.percentile(band, [2.5, 97.5], axis=0), alpha=0.25,
                        label='95% bootstrap band')
      ax.set(xscale='log', yscale='log', xlabel='C (FLOPs)', ylabel=label)
      ax.legend()
    t.figures.append(('optimal_vs_compute.png', fig))
  except scaling.FitError as e:
    md += [f'Not fitted: {e}', '']

  return a2, tokens_for


def _approach3(t: _Table):
  """The parametric law; returns the start grid it used."""
  md, n, c, d, loss, s = t.md, t.n, t.c, t.d, t.loss, t.s
  grid = scaling.GRID if s.grid == 'full' else scaling.COARSE_GRID
  md += ['## Approach 3: L(N, D) = E + A/N^alpha + B/D^beta', '']
  try:
    f3 = scaling.approach3(n, d, loss, grid=grid)
    # The frontier in the sweep's FLOP convention, over its budgets (or its
    # runs' compute range), so that a is the exponent Approaches 1 and 2 fit.
    tokens_for = scaling.tokens_at(n, c, d)
    budgets = scaling.frontier_budgets(t.budget, c)
    ci3 = scaling.approach3_intervals(n, d, loss, f3, s.bootstrap, tokens_for=tokens_for,
                                      budgets=budgets)
    est = {k: getattr(f3, k) for k in ('E', 'A', 'B', 'alpha', 'beta', 'a_kND', 'b_kND')}
    est.update(f3.frontier(tokens_for, budgets))
    at_zero = scaling.e_at_zero(f3, loss)
    if at_zero and 'E' in ci3:  # Refits started at E ~ 0 stay there.
      del ci3['E']
      ci3['_why_E'] = 'E is at its lower bound, where no refit moves it'
    if not math.isfinite(est['a']):
      ci3['_why_a'] = ci3['_why_b'] = ('the fitted law has no optimum within 10^4 times '
                                       'the 6ND optimum at some budget')
    t.fits['approach3'] = {k: _fit_entry(v, ci3, k) for k, v in est.items()}
    what = {'a': f'a: N_opt ~ C^a, C in {t.conv} FLOPs over {_fmt(budgets.min())}-'
                 f'{_fmt(budgets.max())}',
            'b': 'b: D_opt ~ C^b, the same C',
            'a_kND': 'a_kND = beta/(alpha+beta): a if C were k N D',
            'b_kND': 'b_kND = alpha/(alpha+beta)'}
    md += ['| parameter | estimate | 95% CI |', '|---|---|---|']
    for k, v in est.items():
      md.append(f'| {what.get(k, k)} | {_fmt(v) if math.isfinite(v) else "none"} | '
                f'{_ci(ci3, k)} |')
    md += ['', f'Objective (Huber, summed) {f3.objective:.4e}; gradient norm at the optimum '
           f'{f3.grad_norm:.2e}; from {f3.starts} grid starts, reached from {f3.best_start} '
           + ('(ONLY starts on the grid edge reached it: widen the grid). '
              if f3.start_on_grid_edge else '(inside the grid). ')
           + f'Bootstrap refits start from the full fit\'s optimum; failed: '
           f'{ci3["_failed"][0]} of {ci3["_failed"][1]}'
           + (f'; of those that converged, {ci3["_no_frontier"]} have no frontier optimum '
              'within 10^4 times the 6ND one at some budget and are left out of a and b'
              if ci3.get('_no_frontier') else '') + '.', '']
    wide = [k for k in ('E', 'alpha', 'beta') if ci3['_failed'][1] and (
            (k not in ci3 and f'_why_{k}' not in ci3) or
            (k in ci3 and ci3[k][1] - ci3[k][0] > 0.5 * abs(getattr(f3, k))))]
    if at_zero:
      md += [f'**E is at its lower bound (E = {_fmt(f3.E)} ≈ 0):** the fit puts the whole '
             'loss into the power-law terms, and refits that start there stay there, so '
             'the interval of E (and of A, alpha) is not informative.', '']
    if wide or len(loss) < 20:
      md += [f'**Poorly constrained:** {len(loss)} points'
             + (f'; the intervals of {", ".join(wide)} are wider than half the estimate'
                if wide else '') + '. Do not quote these constants without the intervals.', '']
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ns = np.geomspace(n.min() / 2, n.max() * 2, 80)
    ds = np.geomspace(d.min() / 2, d.max() * 2, 80)
    nn_, dd_ = np.meshgrid(ns, ds)
    cont = ax.contourf(nn_, dd_, f3.loss(nn_, dd_), levels=20, cmap='viridis')
    fig.colorbar(cont, label='predicted loss')
    ax.scatter(n, d, c='w', edgecolors='k', s=20, label='runs')
    nf, df = (v[0] for v in scaling.frontier(f3.x, tokens_for,
                                             np.geomspace(c.min() / 3, c.max() * 3, 50)))
    ax.plot(nf, df, 'r-', lw=2, label=f'frontier (C in {t.conv} FLOPs)')
    ax.set(xscale='log', yscale='log', xlabel='N', ylabel='D', xlim=(ns[0], ns[-1]),
           ylim=(ds[0], ds[-1]), title='Parametric fit')
    ax.legend(loc='lower left')
    t.figures.append(('parametric.png', fig))
  except scaling.FitError as e:
    md += [f'Not fitted: {e}', '']

  return grid


def _noise(t: _Table, a2) -> tuple[float | None, float]:
  """(pooled seed-to-seed sd of the final loss at points run with several
  seeds, or None; sd of the IsoFLOP parabolas' residuals)."""
  groups: dict[tuple[float, float], list[float]] = {}
  for b, n, l in zip(t.budget, t.n, t.loss):
    groups.setdefault((b, n), []).append(l)
  reps = [v for v in groups.values() if len(v) > 1]
  seed = (math.sqrt(sum(np.var(v, ddof=1) * (len(v) - 1) for v in reps)
                    / sum(len(v) - 1 for v in reps)) if reps else None)
  resid = []
  for b, par in zip(a2.budgets, a2.parabolas):
    sel = t.budget == b
    resid += list(t.loss[sel] - np.polyval(par, np.log(t.n[sel])))
  dof = max(len(resid) - 3 * len(a2.budgets), 1)
  return seed, math.sqrt(float(np.sum(np.square(resid))) / dof)


def _agreement(t: _Table) -> None:
  """Do the approaches' exponents a agree within their 95% intervals?"""
  got = {k: v['a'] for k, v in t.fits.items()
         if 'a' in v and v['a']['ci95'] and v['a']['estimate'] is not None}
  if len(got) < 2:
    return
  t.md += ['## Do the approaches agree?', '']
  names = sorted(got)
  apart = [(x, y) for i, x in enumerate(names) for y in names[i + 1:]
           if got[x]['ci95'][1] < got[y]['ci95'][0] or got[y]['ci95'][1] < got[x]['ci95'][0]]
  line = ', '.join(f'{k} a = {_fmt(v["estimate"])} [{_fmt(v["ci95"][0])}, '
                   f'{_fmt(v["ci95"][1])}]' for k, v in sorted(got.items()))
  if apart:
    t.md += [f'{line}. These disagree: ' + '; '.join(f'{x} and {y}' for x, y in apart)
             + ' have disjoint intervals. Approach 1 reads the envelope of training curves '
             '(biased when runs are too short for their cosine schedules to finish), '
             'Approach 2 only the final losses near each budget\'s minimum, Approach 3 '
             'assumes one law for all points; a disagreement says at least one of these '
             'assumptions fails on these data.', '']
  else:
    t.md += [f'{line}: every pair of 95% intervals overlaps.', '']


def _held_out(t: _Table, a2, tokens_for, grid) -> None:
  """Fit on the smaller budgets, predict the largest."""
  md, n, d, budget, loss, s = t.md, t.n, t.d, t.budget, t.loss, t.s
  md += ['## Held-out check', '']
  if s.design == 'isoflop' and len(np.unique(budget)) >= 3:
    big = budget == budget.max()
    try:
      f_small = scaling.approach3(n[~big], d[~big], loss[~big], grid=grid)
      err = np.abs(f_small.loss(n[big], d[big]) / loss[big] - 1)
      md += [f'Approach 3 fitted without budget {budget.max():.3g} predicts its '
             f'{big.sum()} final losses with mean relative error {err.mean():.2%} '
             f'(max {err.max():.2%}).']
      if a2 is not None:
        a2_small = scaling.approach2(budget[~big], n[~big], loss[~big], tokens_for)
        pred = a2_small.N_opt(budget.max())
        md += [f'Approach 2 fitted without it predicts N_opt = {pred:,.0f} there; the '
               f'profile measured there has its minimum at {a2.n_opt[-1]:,.0f} '
               f'(ratio {pred / a2.n_opt[-1]:.2f}).']
    except scaling.FitError as e:
      md += [f'Not computed: {e}']
  else:
    md += ['Not computed: needs an IsoFLOP design with at least 3 budgets.']
  md.append('')


# --- Learning-rate transfer (design 'transfer') --------------------------------

def transfer_optima(rows: list[dict], excluded: list[dict] = ()) -> dict[str, dict[int, dict]]:
  """{parametrization: {width: {lr, loss, index, edge}}}: the grid learning rate
  with the lowest final loss per width (index in the sorted LR grid; edge: the
  optimum is the grid's smallest or largest LR, so the true one may lie beyond).
  An LR at which a seed failed (in `excluded`) is not eligible; a width with no
  eligible LR has no entry."""
  out: dict[str, dict[int, dict]] = {}
  lrs = sorted({r['lr'] for r in rows})
  failed = _failed_at(excluded, 'parametrization', 'd_model', 'lr')
  for p in sorted({r['parametrization'] for r in rows}):
    out[p] = {}
    for w in sorted({r['d_model'] for r in rows if r['parametrization'] == p}):
      curve = [(lr, l) for lr, l in _mean_curve(rows, p, w)  # Seeds averaged per LR.
               if (p, w, lr) not in failed]
      if not curve:
        continue
      lr, loss = min(curve, key=lambda x: x[1])
      i = lrs.index(lr)
      out[p][w] = {'lr': lr, 'loss': loss, 'index': i, 'edge': i in (0, len(lrs) - 1),
                   'runs': sum(1 for r in rows if r['parametrization'] == p
                               and r['d_model'] == w)}
  return out


def _losses_by_lr(rows: list[dict]) -> dict[float, list[float]]:
  """Final losses per learning rate (one per seed)."""
  by_lr: dict[float, list[float]] = {}
  for r in rows:
    by_lr.setdefault(r['lr'], []).append(r['final_loss'])
  return by_lr


def _mean_curve(rows: list[dict], p: str, w: int) -> list[tuple[float, float]]:
  """(lr, final loss averaged over seeds) for one parametrization and width."""
  by_lr = _losses_by_lr([r for r in rows if r['parametrization'] == p and r['d_model'] == w])
  return sorted((lr, float(np.mean(v))) for lr, v in by_lr.items())


def _finish(workdir: str, md: list[str], fig, figure: str, summary: dict, excluded: list[dict]
            ) -> str:
  """A design report's tail: its figure, the excluded runs, where the time
  went, <figure stem>.json beside report.md; returns report.md's path."""
  out_dir = os.path.join(workdir, 'report')
  fig.tight_layout()
  fig.savefig(os.path.join(out_dir, figure), dpi=110)
  plt.close(fig)
  md += [f'![{figure}]({figure})', '']
  if excluded:
    md += ['## Excluded runs', '', *[f'- {r["name"]}: {r["reason"][:200]}' for r in excluded],
           '']
  md += _wall_time(workdir, 0.0)
  write_atomic(os.path.join(out_dir, figure.rsplit('.', 1)[0] + '.json'),
               json.dumps(summary, indent=1) + '\n')
  path = os.path.join(out_dir, 'report.md')
  write_atomic(path, '\n'.join(md) + '\n')
  return path


def _transfer_report(workdir: str, s, rows: list[dict], excluded: list[dict]) -> str:
  """Loss against learning rate per width, per parametrization; the optimum per
  width and how far it moves across widths, in grid steps (factors of the LR
  grid's spacing)."""
  out_dir = os.path.join(workdir, 'report')
  os.makedirs(out_dir, exist_ok=True)
  if not rows:
    raise scaling.FitError('no finished run to report on')
  opt = {p: v for p, v in transfer_optima(rows, excluded).items() if v}
  if not opt:
    raise scaling.FitError('a seed failed at every finished learning rate of every width')
  lrs = sorted({r['lr'] for r in rows})
  ratio = math.exp(np.mean(np.diff(np.log(lrs)))) if len(lrs) > 1 else float('nan')
  md = [f'# Learning-rate transfer: {os.path.basename(os.path.abspath(workdir))}', '',
        f'Widths {", ".join(str(w) for w in sorted({r["d_model"] for r in rows}))} '
        f'(d_model; depth and heads fixed); learning rates {", ".join(f"{x:.3g}" for x in lrs)} '
        f'(grid ratio {ratio:.3g}); {int(rows[0]["D"]):,} training tokens per run; loss = '
        'final validation loss (nats per token). muP (lm/model.py) with base_width = the '
        'smallest width unless the config sets one, so SP and muP coincide there.', '',
        '## Optimal learning rate per width', '',
        '| width | ' + ' | '.join(f'{p.upper()} best lr | {p.upper()} loss' for p in opt) + ' |',
        '|---|' + '---|---|' * len(opt)]
  widths = sorted({w for p in opt for w in opt[p]})
  for w in widths:
    cells = []
    for p in opt:
      o = opt[p].get(w)
      cells += ([f'{o["lr"]:.3g}' + (' (grid edge)' if o['edge'] else ''), _fmt(o['loss'])]
                if o else ['-', '-'])
    md.append(f'| {w} | ' + ' | '.join(cells) + ' |')
  md.append('')
  summary = {}
  for p in opt:
    idx = [o['index'] for o in opt[p].values()]
    spread = max(idx) - min(idx)
    drift = idx[-1] - idx[0]
    summary[p] = {'optimal_lr': {str(w): o['lr'] for w, o in opt[p].items()},
                  'loss_at_optimum': {str(w): o['loss'] for w, o in opt[p].items()},
                  'spread_grid_steps': spread, 'drift_grid_steps': drift,
                  'any_at_grid_edge': any(o['edge'] for o in opt[p].values())}
    verdict = ('stays within one grid step across widths' if spread <= 1 else
               f'moves by {spread} grid steps across widths')
    md.append(f'- {p.upper()}: the optimum {verdict} (smallest to largest width: '
              f'{drift:+d} steps, i.e. x{ratio ** drift:.3g})'
              + ('; some optimum lies on the grid edge' if summary[p]['any_at_grid_edge']
                 else '') + '.')
  md.append('')
  fig, axes = plt.subplots(1, len(opt), figsize=(5.5 * len(opt), 4), sharey=True,
                           squeeze=False)
  for ax, p in zip(axes[0], opt):
    for k, w in enumerate(widths):
      pts = _mean_curve(rows, p, w)
      if not pts:
        continue
      color = plt.cm.viridis(k / max(len(widths) - 1, 1))
      ax.plot(*zip(*pts), 'o-', color=color, label=f'width {w}')
      if w in opt[p]:
        ax.plot([opt[p][w]['lr']], [opt[p][w]['loss']], '*', ms=14, color=color)
    ax.set(xscale='log', xlabel='learning rate', title=p.upper())
    ax.set_xticks(lrs, [f'{x:.2g}' for x in lrs], minor=False)
    ax.tick_params(axis='x', labelsize=7, rotation=45)
  axes[0, 0].set_ylabel('final validation loss')
  axes[0, 0].legend(fontsize=8)
  return _finish(workdir, md, fig, 'transfer.png', summary, excluded)


# --- Learning-rate sweeps (design 'lr') ----------------------------------------

def lr_optimum(curve: list[tuple[float, float]], failed_lrs=()) -> dict:
  """The best grid LR of a (lr, loss) curve and the parabola in log LR through
  it and its two neighbours: its minimum (between those neighbours) is the
  fitted optimum, unless the best grid LR is at an end of the curve (then the
  optimum may lie beyond it: 'edge'). A larger LR whose run failed (diverged)
  bounds the optimum from above, so a best LR just below it is no edge
  ('bounded_by_failure'), though no parabola is fitted through a failure."""
  lrs, losses = map(np.array, zip(*sorted(curve)))
  i = int(np.argmin(losses))
  above = [lr for lr in failed_lrs if lr > lrs[-1]]
  bounded = i == len(lrs) - 1 and bool(above) and i > 0
  out = {'best_lr': float(lrs[i]), 'best_loss': float(losses[i]),
         'edge': i in (0, len(lrs) - 1) and not bounded, 'fitted_lr': None,
         'fitted_loss': None, 'bounded_by_failure': float(min(above)) if bounded else None}
  if i in (0, len(lrs) - 1):
    return out
  x = np.log(lrs[i - 1:i + 2])
  c2, c1, c0 = np.polyfit(x, losses[i - 1:i + 2], 2)
  if c2 > 0:
    x_min = -c1 / (2 * c2)
    if x[0] <= x_min <= x[-1]:
      out.update(fitted_lr=float(math.exp(x_min)), fitted_loss=float(c0 - c1 * c1 / (4 * c2)))
  return out


def _lr_report(workdir: str, rows: list[dict], excluded: list[dict]) -> str:
  """Loss against learning rate per size (seeds averaged, their spread shown),
  each size's optimum, and how the optimum scales with N (lr* ~ N^gamma)."""
  out_dir = os.path.join(workdir, 'report')
  os.makedirs(out_dir, exist_ok=True)
  if not rows:
    raise scaling.FitError('no finished run to report on')
  sizes = sorted({r['N'] for r in rows})
  lrs = sorted({r['lr'] for r in rows})
  md = [f'# Learning-rate sweep: {os.path.basename(os.path.abspath(workdir))}', '',
        f'{len(sizes)} sizes x {len(lrs)} learning rates ({", ".join(f"{x:.3g}" for x in lrs)}); '
        'loss = final validation loss (nats per target token), averaged over seeds (an lr '
        'at which a seed failed counts as failed). The fitted optimum is the minimum of the '
        'parabola in log LR through the best grid LR and its two neighbours.', '',
        '| N | d_model | tokens | best grid lr | loss | seed sd | fitted lr* | loss at lr* | '
        'not finished |', '|---|---|---|---|---|---|---|---|---|']
  summary, fig = {}, plt.figure(figsize=(6.5, 4.5))
  ax = fig.gca()
  for k, n in enumerate(sizes):
    mine = [r for r in rows if r['N'] == n]
    by_lr = _losses_by_lr(mine)
    # Runs of this size that did not finish: a failed (diverged) larger LR
    # bounds the optimum; a pending one leaves it open. An LR at which some seed
    # failed is a failed LR: the mean of its surviving seeds alone would favour it.
    unfinished = sorted((r['lr'], r['status']) for r in excluded if r.get('N') == n)
    failed = {lr for lr, st in unfinished if st == 'failed'}
    curve = sorted((lr, float(np.mean(v))) for lr, v in by_lr.items() if lr not in failed)
    if not curve:
      md.append(f'| {int(n):,} | {mine[0]["d_model"]} | {int(mine[0]["D"]):,} | - (a seed '
                f'failed at every finished lr) | - | - | - | - | '
                f'{", ".join(f"{lr:.3g} {st}" for lr, st in unfinished)} |')
      continue
    o = lr_optimum(curve, sorted(failed))
    sd = float(np.std(by_lr[o['best_lr']], ddof=1)) if len(by_lr[o['best_lr']]) > 1 else None
    summary[str(int(n))] = {**o, 'seed_sd_at_best': sd, 'd_model': mine[0]['d_model'],
                            'curve': curve, 'unfinished': unfinished}
    where = (' (edge of the finished runs)' if o['edge'] else
             f' (lr {o["bounded_by_failure"]:.3g} failed)' if o['bounded_by_failure'] else '')
    md.append(f'| {int(n):,} | {mine[0]["d_model"]} | {int(mine[0]["D"]):,} | '
              f'{o["best_lr"]:.3g}{where} | '
              f'{_fmt(o["best_loss"])} | {"-" if sd is None else _fmt(sd)} | '
              f'{"-" if o["fitted_lr"] is None else format(o["fitted_lr"], ".3g")} | '
              f'{"-" if o["fitted_loss"] is None else _fmt(o["fitted_loss"])} | '
              f'{", ".join(f"{lr:.3g} {st}" for lr, st in unfinished) or "-"} |')
    color = plt.cm.viridis(k / max(len(sizes) - 1, 1))
    ax.plot(*zip(*curve), 'o-', color=color, label=f'N={int(n):,}')
    if o['fitted_lr'] is not None:
      ax.plot([o['fitted_lr']], [o['fitted_loss']], '*', ms=14, color=color)
  md.append('')
  lost = sorted({r['N'] for r in excluded if 'N' in r} - set(sizes))
  if lost:
    md += [f'No finished run at N = {", ".join(f"{int(n):,}" for n in lost)} (see Excluded '
           'runs).', '']
  fitted = [(float(n), v['fitted_lr']) for n, v in summary.items() if v['fitted_lr']]
  if len(fitted) >= 2:
    law = scaling.fit_power_law(*map(np.array, zip(*fitted)))
    summary['_scaling'] = {'k': law.k, 'gamma': law.exponent, 'sizes': len(fitted)}
    md += [f'Optimal learning rate vs size: lr* = {law.k:.3g} N^{law.exponent:.3f} from '
           f'{len(fitted)} sizes with an interior optimum.', '']
  else:
    md += ['Fewer than 2 sizes have an interior optimum: no lr*(N) fit (widen the LR grid '
           'where an optimum is on its edge).', '']
  ax.set(xscale='log', xlabel='learning rate', ylabel='final validation loss',
         title='Loss vs learning rate per size')
  ax.legend(fontsize=8)
  return _finish(workdir, md, fig, 'lr.png', summary, excluded)
