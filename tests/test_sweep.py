"""Ladder and sweep planning, the resumable sweep runner, results and report."""

import csv
import json
import os

import numpy as np
import pytest

from lm import flops, plan, sweep
from lm.config import ConfigError, ModelConfig
from tests.helpers import tiny_cd

BASE = ModelConfig(vocab_size=384, max_len=16)


def test_ladder_rule():
  rungs = plan.rungs(BASE, aspect=16, head_dim=8, max_layers=6)
  for k, (n, m) in enumerate(rungs, start=1):
    assert (m.num_layers, m.d_model, m.num_heads, m.mlp_dim) == (k, 16 * k, 2 * k, 64 * k)
    assert n == flops.param_counts(m)['non_embedding']
  m = plan.ladder_model(rungs[3][0] * 1.1, BASE, 16, 8)
  assert m.num_layers == 4
  with pytest.raises(ConfigError, match='no ladder model is within 2x of 10'):
    plan.ladder_model(10, BASE, 16, 8)
  with pytest.raises(ConfigError, match='aspect=12 must be a multiple of sweep.head_dim=8'):
    plan.rungs(BASE, 12, 8)


def test_isoflop_plan_brackets_the_expected_optimum():
  runs = plan.isoflop([1e11, 1e12], BASE, seq_len=16, tokens_per_step=128, convention='6N',
                      aspect=8, head_dim=8, sizes=5)
  for c in (1e11, 1e12):
    rs = [r for r in runs if r.budget == c]
    ns = [r.n for r in rs]
    assert len(rs) == 5 and ns == sorted(set(ns))
    n_star = (c / 120) ** 0.5
    assert ns[0] < n_star < ns[-1]  # Bracketed on both sides.
    for r in rs:  # Each run spends the budget, up to one step of rounding.
      assert abs(r.compute - c) <= 6 * r.n * 128 / 2 + 1
      assert r.compute == pytest.approx(6 * r.n * r.tokens)


def test_plan_errors():
  with pytest.raises(ConfigError, match='too small'):
    plan.isoflop([1e6], BASE, 16, 128, 'exact', 8, 8)
  with pytest.raises(ConfigError, match='needs at least 3 sizes'):
    plan.isoflop([1e12], BASE, 16, 128, 'exact', 8, 8, sizes=2)


def test_grid_and_wsd_plans():
  g = plan.grid([2e4, 1e5], [1e5, 1e6], BASE, 16, 128, 'exact', 8, 8)
  assert len(g) == 4 and len({r.n for r in g}) == 2
  w = plan.wsd_branches([1e5], [1e5, 4e5], BASE, 16, 128, 'exact', 8, 8,
                        cooldown_fraction=0.25)
  stable, b1, b2 = w
  assert stable.design == 'wsd_stable' and stable.overrides['opt.schedule'] == 'constant'
  assert stable.overrides['train.extra_checkpoints'] == (b1.branch_step, b2.branch_step)
  for b in (b1, b2):
    steps = b.overrides['train.steps']
    assert b.branch_from == stable.name and b.branch_step == int(steps * 0.75)


def _sweep_cd(corpus_dir, **sweep_kw):
  c = tiny_cd(corpus_dir, **{'train.batch_size': 8, 'data.seq_len': 16, 'opt.warmup_steps': 2,
                             'train.eval_batches': 1})
  c.sweep = dict(design='isoflop', convention='exact', budgets=[1e9, 3e9], sizes=3,
                 tokens_per_param=2.0, aspect=8, head_dim=8, evals_per_run=3, min_steps=5,
                 bootstrap=30, grid='coarse', **sweep_kw)
  return c


def test_sweep_runs_resumes_records_failures_and_reports(tmp_path, corpus_dir, monkeypatch):
  cd = _sweep_cd(corpus_dir)
  runs = sweep.make_plan(cd)
  assert len(runs) == 6
  wd = str(tmp_path / 'sw')
  from lm import train
  real = train.train_and_evaluate
  victim = runs[1].name

  def flaky(c, workdir, **kw):
    if c.name == victim:
      raise RuntimeError('simulated crash')
    return real(c, workdir, **kw)

  monkeypatch.setattr(train, 'train_and_evaluate', flaky)
  logs = []
  res = sweep.run_all(cd, wd, log=logs.append)
  assert [r['status'] for r in res].count('failed') == 1
  assert any('2/6 done, 4 left, ETA' in line and 'simulated crash' in line for line in logs)
  # Rerun: finished runs are skipped, the failed one is retried (and now works).
  monkeypatch.setattr(train, 'train_and_evaluate', real)
  logs2 = []
  res2 = sweep.run_all(cd, wd, log=logs2.append)
  assert all(r['status'] == 'done' for r in res2)
  assert sum('[sweep] ' in line and '/6 done' in line for line in logs2) == 1
  rows = sweep.collect(cd, wd)
  with open(os.path.join(wd, 'results.csv')) as f:
    table = list(csv.DictReader(f))
  assert len(table) == 6 and set(sweep.COLUMNS) <= set(table[0])
  for r in rows:
    assert r['status'] == 'done' and np.isfinite(r['final_loss'])
    assert r['C_6N'] == 6 * r['N'] * r['D']
    assert r['C_6N'] < r['C_exact']  # Exact adds attention and logits.
  # The same model has the same FLOPs per token in every budget.
  per_token = {}
  for r in rows:
    per_token.setdefault(r['N'], set()).add(round(r['C_exact'] / r['D']))
  assert all(len(v) == 1 for v in per_token.values())
  from tools import report
  path = report.write_report(cd, wd)
  text = open(path).read()
  for section in ('Approach 1', 'Approach 2', 'Approach 3', 'Held-out check', '95% CI',
                  'intervals resample whole runs'):
    assert section in text, section
  # Six tiny runs may or may not bracket a minimum per budget; either way the
  # report says what it found (test_scaling checks the fit on known data).
  assert "k' = " in text or 'is not convex' in text
  assert 'Poorly constrained' in text  # 6 points cannot pin down 5 parameters.
  pngs = ['loss_vs_flops.png', 'parametric.png']
  pngs += ['isoflop.png', 'optimal_vs_compute.png'] if "k' = " in text else []
  for png in pngs:
    assert os.path.getsize(os.path.join(wd, 'report', png)) > 1000, png


def test_sweep_refuses_a_different_plan_in_the_same_workdir(tmp_path, corpus_dir):
  wd = str(tmp_path)
  sweep.write_plan(wd, sweep.make_plan(_sweep_cd(corpus_dir)))
  before = open(os.path.join(wd, 'plan.json')).read()
  other = _sweep_cd(corpus_dir)
  other.sweep.budgets = [2e9, 6e9]
  with pytest.raises(ConfigError, match='holds a different sweep plan'):
    sweep.write_plan(wd, sweep.make_plan(other))
  assert open(os.path.join(wd, 'plan.json')).read() == before


def test_report_refuses_non_finite_losses(tmp_path, corpus_dir):
  from lm.scaling import FitError
  from tools import report
  with open(tmp_path / 'results.jsonl', 'w') as f:
    f.write(json.dumps({'name': 'r1', 'status': 'done', 'final_loss': None}) + '\n')
  with pytest.raises(FitError, match='r1 is marked done but its final loss is None'):
    report.load_rows(str(tmp_path))


def test_sweep_config_errors(corpus_dir):
  cd = _sweep_cd(corpus_dir)
  cd.sweep.design = 'random'
  with pytest.raises(ConfigError, match="sweep.design='random'"):
    sweep.make_plan(cd)
  cd = _sweep_cd(corpus_dir)
  cd.sweep.budgets = [1e3]
  with pytest.raises(ConfigError, match='too small'):
    sweep.make_plan(cd)
  cd = _sweep_cd(corpus_dir, typo=1)
  with pytest.raises(ConfigError, match='sweep.typo is not a known field'):
    sweep.make_plan(cd)


def test_count_table_and_strict_fit_columns():
  from tools import count, fit
  from lm.scaling import FitError
  models = plan.ladder([2e4, 1e5], BASE, 8, 8)
  text = count.table(models, 16)
  assert text.count('\n') == 3 and '6N/tok' in text and 'exact/tok' in text
  rows = [{'name': 'a', 'N': '100', 'D': '1e6', 'final_loss': '3.1'},
          {'name': 'b', 'N': '200', 'D': '', 'final_loss': '3.0'}]
  np.testing.assert_array_equal(fit.column(rows[:1], 'N'), [100.0])
  with pytest.raises(FitError, match=r"row 1 \(b\): D='' is missing or not finite"):
    fit.column(rows, 'D')


def test_wsd_branches_continue_from_the_stable_run(tmp_path, corpus_dir):
  """Branches start from the stable run's checkpoint and only add the cooldown."""
  from lm import metrics
  cd = _sweep_cd(corpus_dir)
  cd.sweep = dict(design='wsd', convention='exact', params=[6000.0], tokens=[2560.0, 5120.0],
                  aspect=8, head_dim=8, cooldown_fraction=0.25, evals_per_run=2)
  runs = sweep.make_plan(cd)
  assert [r.design for r in runs] == ['wsd_stable', 'wsd', 'wsd']
  wd = str(tmp_path / 'wsd')
  res = sweep.run_all(cd, wd, log=lambda *_: None)
  assert [r['status'] for r in res] == ['done'] * 3, res
  stable = {r['step']: r for r in metrics.read(os.path.join(wd, 'runs', runs[0].name), 'train')}
  for b in runs[1:]:
    rows = metrics.read(os.path.join(wd, 'runs', b.name), 'train')
    steps = [r['step'] for r in rows]
    assert min(steps) > b.branch_step  # Resumed, not retrained.
    assert max(steps) == b.overrides['train.steps']
    assert rows[-1]['lr'] < 0.5 * stable[b.branch_step]['lr']  # Cooled down.


def test_lr_and_seed_replicates_and_cluster_commands(corpus_dir):
  cd = _sweep_cd(corpus_dir, lrs=[1e-3, 3e-3], seeds=[0, 1])
  runs = sweep.make_plan(cd)
  assert len(runs) == 6 * 4 and len({r.name for r in runs}) == 24
  assert {(r.overrides['opt.lr'], r.overrides['train.seed']) for r in runs} == {
      (1e-3, 0), (1e-3, 1), (3e-3, 0), (3e-3, 1)}
  cmds = sweep.commands('configs/x.py', '/sw', runs)
  assert cmds[0]['command'] == ('python -m experiments.sweep --config=configs/x.py '
                                f'--workdir=/sw --only={runs[0].name}')
  assert json.loads(json.dumps(cmds))[0]['workdir'] == f'/sw/runs/{runs[0].name}'
