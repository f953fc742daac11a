"""Ladder and sweep planning, the resumable sweep runner, results and report."""

import copy
import dataclasses
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from lm import config as config_lib
from lm import flops, metrics, plan, sweep, workdir
from lm.config import ConfigError, ModelConfig
from tests import forked_cli
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
  # num_kv_heads == num_heads is multi-head attention, as 0 is: every rung
  # multi-head (a 3-head rung had got gcd(3, 4) = 1 KV head, multi-query).
  mha = dataclasses.replace(BASE, num_heads=4, num_kv_heads=4, d_model=32)
  assert {m.num_kv_heads for _, m in plan.rungs(mha, 8, 8, max_layers=6)} == {0}
  gqa = dataclasses.replace(BASE, num_heads=4, num_kv_heads=2, d_model=32)
  assert [m.num_kv_heads for _, m in plan.rungs(gqa, 8, 8, max_layers=4)] == [1, 2, 1, 2]


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


def test_isoflop_sizes_spaced_by_a_ratio_on_the_fine_ladder():
  runs = plan.isoflop([1e12], BASE, seq_len=16, tokens_per_step=128, convention='6N',
                      aspect=8, head_dim=4, sizes=7, size_ratio=1.5)
  ns = [r.n for r in runs]
  assert len(ns) == 7 and ns == sorted(set(ns))
  ratios = np.array(ns[1:]) / np.array(ns[:-1])
  assert np.all((ratios > 1.1) & (ratios < 1.5 ** 2)), ratios
  with pytest.raises(ConfigError, match='no distinct ladder model near'):
    plan.isoflop([1e7], BASE, 16, 128, '6N', 8, 4, sizes=7, size_ratio=1.5)


def test_plan_errors(corpus_dir):
  with pytest.raises(ConfigError, match='too small'):
    plan.isoflop([1e6], BASE, 16, 128, 'exact', 8, 8)
  with pytest.raises(ConfigError, match='needs at least 3 sizes'):
    plan.isoflop([1e12], BASE, 16, 128, 'exact', 8, 8, sizes=2)
  # A planned run whose config is invalid is refused at planning, not recorded
  # as a failed run when the sweep reaches it (RoPE at head_dim 36 / 4 = 9).
  cd = tiny_cd(corpus_dir, **{'model.position': 'rope'})
  cd.sweep = dict(design='transfer', widths=(32, 36), lrs=(1e-3, 2e-3, 4e-3),
                  tokens=(2048.0,), parametrizations=('sp', 'mup'))
  with pytest.raises(ConfigError, match=r'plans run sp_d36_lr0.001, whose config is invalid: '
                                        r'.*head_dim=9 .*RoPE needs an even'):
    sweep.make_plan(cd)
  cd.sweep.parametrizations = ()  # Had planned 0 runs and exited 0.
  with pytest.raises(ConfigError, match=r'sweep.parametrizations=\(\) is invalid'):
    sweep.make_plan(cd)


def test_encoder_decoder_rungs_deepen_the_decoder_too():
  """Rung k of an encoder-decoder ladder has k encoder layers and a decoder in
  the base's proportion (had stayed at the base's depth on every rung)."""
  same = dataclasses.replace(BASE, family='encoder_decoder', num_layers=2, num_decoder_layers=2)
  half = dataclasses.replace(same, num_layers=4)
  for base, want in ((same, [1, 2, 3, 4]), (half, [1, 1, 2, 2])):
    ms = [m for _, m in plan.rungs(base, 8, 8, 4)]
    assert [m.decoder_layers for m in ms] == want
    assert [plan._model_overrides(m)['model.num_decoder_layers'] for m in ms] == [
        m.num_decoder_layers for m in ms]
  assert 'model.num_decoder_layers' not in plan._model_overrides(BASE)  # Decoders: as before.


def test_grid_and_wsd_plans():
  g = plan.grid([2e4, 1e5], [1e5, 1e6], BASE, 16, 128, 'exact', 8, 8)
  assert len(g) == 4 and len({r.n for r in g}) == 2
  w = plan.wsd_branches([1e5], [1e5, 4e5], BASE, 16, 128, 'exact', 8, 8,
                        cooldown_fraction=0.25, warmup_steps=1000)
  stable, b1, b2 = w
  assert stable.design == 'wsd_stable' and stable.overrides['opt.schedule'] == 'constant'
  # Each branch records the warmup the stable run trained (a tenth of its
  # steps here), not one clamped to the branch's own length.
  assert {r.overrides['opt.warmup_steps'] for r in w} == {stable.overrides['train.steps'] // 10}
  # A branch far shorter than the stable run starts after the warmup too (its
  # warmup had been the stable run's, longer than the branch itself).
  far = plan.wsd_branches([1e5], [4e3, 4e5], BASE, 16, 128, 'exact', 8, 8,
                          cooldown_fraction=0.25, warmup_steps=1000)
  assert all(r.overrides['opt.warmup_steps'] <= min(b.branch_step for b in far[1:]) for r in far)
  assert stable.overrides['train.extra_checkpoints'] == (b1.branch_step, b2.branch_step)
  for b in (b1, b2):
    steps = b.overrides['train.steps']
    # Its cooldown counted as opt.schedule=wsd counts a run's: round(f x steps).
    assert b.branch_from == stable.name and b.branch_step == steps - round(steps * 0.25)
  # Not a float floor of steps x (1 - f): 90 x 0.7 = 62.999..., 10 x 0.1 = 0.999...
  for steps, f, start in ((90, 0.3, 63), (10, 0.9, 1)):
    w = plan.wsd_branches([1e5], [steps * 128.0], BASE, 16, 128, 'exact', 8, 8,
                          cooldown_fraction=f, warmup_steps=0)
    assert w[1].branch_step == start, (steps, f, w[1].branch_step)
  # A 1-step branch would cool down from step 0, which no stable run saves.
  with pytest.raises(ConfigError, match=r'branch of 1 steps .* from step 0'):
    plan.wsd_branches([1e5], [128, 4e5], BASE, 16, 128, 'exact', 8, 8,
                      cooldown_fraction=0.25, warmup_steps=1000)


def _sweep_cd(corpus_dir, **sweep_kw):
  c = tiny_cd(corpus_dir, **{'train.batch_size': 8, 'data.seq_len': 16, 'opt.warmup_steps': 2,
                             'train.eval_batches': 1, 'train.log_every': 10})
  c.sweep = dict(design='isoflop', convention='exact', budgets=[1e9, 3e9], sizes=3,
                 tokens_per_param=2.0, aspect=8, head_dim=8, evals_per_run=3, min_steps=5,
                 bootstrap=15, grid='coarse', **sweep_kw)
  return c


@pytest.mark.slow
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
  # A real SIGTERM (as a preempted VM gets) during the 4th run's 3rd step.
  real_build, preempted = train.build, runs[3].name

  def build(c, *args, **kwargs):
    t = real_build(c, *args, **kwargs)
    if c.name == preempted:
      step, calls = t.train_step, [0]

      def signalled(state, batch, sched):
        calls[0] += 1
        if calls[0] == 3:
          os.kill(os.getpid(), signal.SIGTERM)  # The loop's handler catches it.
        return step(state, batch, sched)
      t.train_step = signalled
    return t

  monkeypatch.setattr(train, 'build', build)
  logs = []
  with pytest.raises(workdir.Preempted):
    sweep.run_all(cd, wd, log=logs.append)
  assert any('2/6 done, 4 left, ETA' in line and 'simulated crash' in line for line in logs)
  assert any(f'stopped during {preempted}' in line for line in logs), logs
  pdir = os.path.join(wd, 'runs', preempted)
  assert os.listdir(os.path.join(pdir, 'checkpoints')) == ['3']  # Checkpointed at the signal.
  assert not os.path.exists(os.path.join(pdir, 'result.json'))
  assert not os.path.exists(os.path.join(wd, 'runs', runs[4].name))  # The sweep stopped.
  # The interrupted run is not resumed, nor the finished ones tabulated, under
  # another config (it went on mid-schedule with the new learning rate).
  changed = copy.deepcopy(cd)
  changed.opt.lr = 0.5
  with pytest.raises(ConfigError, match=re.escape(preempted) + ' in .* another config .*opt.lr'):
    sweep.check_configs(changed, wd, [r for r in runs if r.name == preempted])
  with pytest.raises(ConfigError, match='another config'):
    sweep.collect(changed, wd)
  # Rerun: finished runs are skipped, the failed one is retried (and now works),
  # the preempted one continues from its checkpoint, then the rest run.
  monkeypatch.setattr(train, 'train_and_evaluate', real)
  monkeypatch.setattr(train, 'build', real_build)
  logs2 = []
  res2 = sweep.run_all(cd, wd, log=logs2.append)
  assert all(r['status'] == 'done' for r in res2)
  assert sum('[sweep] ' in line and '/6 done' in line for line in logs2) == 4
  # Runs 0 and 2 finished before: counted from the first line (it read 2/6).
  assert '3/6 done, 3 left' in next(line for line in logs2 if '/6 done' in line), logs2
  steps = [r['step'] for r in metrics.read(pdir, 'train')]
  assert steps == sorted(set(steps))  # No step twice after the resume.
  # Killed after its last checkpoint, before result.json: recorded as done on
  # rerun from its final eval, without training again.
  # A result.json cut short counts as none. A run another live process holds
  # is left to it, not recorded as failed.
  lost, busy = runs[2].name, runs[0].name
  with open(os.path.join(wd, 'runs', lost, 'result.json'), 'w') as f:
    f.write('{"status": "do')
  os.remove(os.path.join(wd, 'runs', busy, 'result.json'))
  n_rows = len(metrics.read(os.path.join(wd, 'runs', lost), 'train'))
  n_evals = len(metrics.read(os.path.join(wd, 'runs', lost), 'eval'))
  logs3 = []
  with workdir.lock(os.path.join(wd, 'runs', busy), 'training elsewhere'):
    res3 = sweep.run_all(cd, wd, log=logs3.append)
  assert len(res3) == 5 and all(r['status'] == 'done' for r in res3), res3
  assert any(f'{busy}: in use by another process' in line for line in logs3), logs3
  with workdir.lock(os.path.join(wd, 'runs', busy), 'training elsewhere'):
    with pytest.raises(workdir.LockError, match=f'--only: {re.escape(busy)} in use by another'):
      sweep.run_all(cd, wd, only=busy, log=lambda *_: None)  # A cluster job: not a success.
  assert not os.path.exists(os.path.join(wd, 'runs', busy, 'result.json'))
  assert len(metrics.read(os.path.join(wd, 'runs', lost), 'train')) == n_rows
  assert len(metrics.read(os.path.join(wd, 'runs', lost), 'eval')) == n_evals
  assert sweep.run_all(cd, wd, log=lambda *_: None)[0]['status'] == 'done'  # Released.
  with open(os.path.join(wd, 'runs', lost, 'metrics.jsonl'), 'a') as f:
    f.write('{"step": 9, "kind": "ev')  # A kill mid-write: the rows before it stand.
  assert len(metrics.read(os.path.join(wd, 'runs', lost), 'eval')) == n_evals
  rows = sweep.collect(cd, wd)
  with open(os.path.join(wd, 'results.csv')) as f:
    table = list(csv.DictReader(f))
  assert len(table) == 6 and set(sweep.COLUMNS) <= set(table[0])
  # Another writer of the tables (a collect or report started during the sweep)
  # holds them: this collect waits, then reads the runs afresh (last wins, and
  # it read the latest).
  import threading
  stamp = os.stat(os.path.join(wd, 'results.jsonl')).st_mtime_ns
  with workdir.tables_lock(wd):
    waiting = threading.Thread(target=sweep.collect, args=(cd, wd))
    waiting.start()
    waiting.join(1.0)
    assert waiting.is_alive()
    assert os.stat(os.path.join(wd, 'results.jsonl')).st_mtime_ns == stamp
  waiting.join(60)
  assert not waiting.is_alive()
  assert os.stat(os.path.join(wd, 'results.jsonl')).st_mtime_ns > stamp
  assert {(t['objective'], t['headline']) for t in table} == {('lm', 'bits_per_byte')}
  for r in rows:
    assert r['status'] == 'done' and np.isfinite(r['final_loss'])
    assert r['C_6N'] == 6 * r['N'] * r['D']
    assert r['C_6N'] < r['C_exact']  # Exact adds attention and logits.
  # The same model has the same FLOPs per token in every budget.
  per_token = {}
  for r in rows:
    per_token.setdefault(r['N'], set()).add(round(r['C_exact'] / r['D']))
  assert all(len(v) == 1 for v in per_token.values())
  from lm import report
  path = report.write_report(cd, wd)
  text = open(path).read()
  for section in ('Approach 1', 'Approach 2', 'Approach 3', 'Held-out check', '95% CI',
                  'intervals resample whole runs', 'headline metric: bits_per_byte'):
    assert section in text, section
  # Six tiny runs may or may not bracket a minimum per budget; either way the
  # report says what it found (test_scaling checks the fit on known data).
  assert "k' = " in text or 'is not convex' in text
  assert 'Poorly constrained' in text  # 6 points cannot pin down 5 parameters.
  # Where the time went: every part recorded, the shares add up.
  assert any(line.startswith('[sweep] wall time of the runs: setup') for line in logs2)
  w = json.load(open(os.path.join(wd, 'runs', runs[5].name, 'result.json')))['wall']
  assert set(w) == {'setup', 'compile', 'data', 'train', 'eval', 'checkpoint'}
  assert w['compile'] > 0 and w['train'] > 0 and w['setup'] > 0
  section = text.split('## Where the time went')[1].split('##')[0]
  shares = [int(x.split('|')[3].strip()[:-1]) for x in section.splitlines() if x.count('|') == 4
            and x.split('|')[3].strip().endswith('%')]
  assert len(shares) == 8 and 97 <= sum(shares) <= 103, section
  pngs = ['loss_vs_flops.png', 'parametric.png']
  pngs += ['isoflop.png', 'optimal_vs_compute.png'] if "k' = " in text else []
  for png in pngs:
    assert os.path.getsize(os.path.join(wd, 'report', png)) > 1000, png
  # No bootstrap asked for: estimates without intervals, said so (it crashed).
  cd.sweep.bootstrap = 0
  text0 = open(report.write_report(cd, wd)).read()
  assert 'none: sweep.bootstrap = 0' in text0 and 'every bootstrap refit failed' not in text0
  fits0 = json.load(open(os.path.join(wd, 'report', 'fits.json')))
  assert fits0 and all(e['ci95'] is None for fit in fits0.values() for e in fit.values())
  cd.sweep.bootstrap = 1000
  # Rerun with another config: its finished runs are not passed off as this
  # config's results.
  cd.opt.lr = 0.5
  with pytest.raises(ConfigError, match=r'was trained with another config \(differing: opt.lr\)'):
    sweep.run_all(cd, wd, log=lambda *_: None)


def test_runs_written_before_a_config_field_existed_still_match(tmp_path, corpus_dir):
  """A finished run's config.json from before a field was added holds no
  value for it: it trained with the default, so a rerun is not refused."""
  from lm import train
  cd = _sweep_cd(corpus_dir)
  r = sweep.make_plan(cd)[0]
  c = train.resolve(sweep.run_config(cd, r, cd.sweep.evals_per_run))[0]
  stored = json.loads(json.dumps(config_lib.to_dict(c)))
  del stored['model']['attn_max_docs']
  rdir = tmp_path / 'runs' / r.name
  rdir.mkdir(parents=True)
  (rdir / 'config.json').write_text(json.dumps(stored))
  (rdir / 'result.json').write_text(json.dumps({'status': 'done'}))
  sweep.check_configs(cd, str(tmp_path), [r])
  stored['model']['attn_max_docs'] = 8  # Stored and different: refused as before.
  (rdir / 'config.json').write_text(json.dumps(stored))
  with pytest.raises(ConfigError, match=r'another config \(differing: model.attn_max_docs\)'):
    sweep.check_configs(cd, str(tmp_path), [r])


def test_more_training_on_another_corpus_than_the_sweeps_runs_read_is_refused(
    tmp_path, corpus_dir):
  """A file added to the corpus after some runs trained: the others would train
  on another text and be fitted with them (the interrupted run failed alone,
  exit 0). Refused while anything is left to train; a finished sweep is not."""
  from lm import data as data_lib
  cd = _sweep_cd(corpus_dir)
  first, second = sweep.make_plan(cd)[:2]
  rdir = tmp_path / 'runs' / first.name
  rdir.mkdir(parents=True)
  rec = data_lib.corpus_record(sweep.run_config(cd, first, cd.sweep.evals_per_run).data)
  (rdir / data_lib.CORPUS_FILE).write_text(json.dumps(rec))
  sweep.check_corpus(cd, str(tmp_path), [first, second])  # The same text: fine.
  (rdir / data_lib.CORPUS_FILE).write_text(json.dumps({**rec, 'content_sha256': 'f' * 64}))
  with pytest.raises(ConfigError, match=re.escape(first.name) + ' of this sweep: the corpus '
                     'is not the text'):
    sweep.check_corpus(cd, str(tmp_path), [first, second])
  for only in ('', second.name):  # Before anything trains, with --only too.
    with pytest.raises(ConfigError, match='the corpus is not the text'):
      sweep.run_all(cd, str(tmp_path), only=only, log=lambda *_: None)
  assert sorted(os.listdir(tmp_path / 'runs')) == [first.name]
  for r in (first, second):  # All finished: nothing would train on the new text.
    (tmp_path / 'runs' / r.name).mkdir(exist_ok=True)
    (tmp_path / 'runs' / r.name / 'result.json').write_text(json.dumps({'status': 'done'}))
  sweep.check_corpus(cd, str(tmp_path), [first, second])


def test_tables_of_a_directory_without_a_sweep_are_refused_and_nothing_is_made(
    tmp_path, corpus_dir):
  """collect and the report take their lock file only in a sweep's directory
  (in a missing one it was a FileNotFoundError traceback; in an empty one a
  stray .tables.lock)."""
  from lm import report
  from lm.scaling import FitError
  cd = _sweep_cd(corpus_dir)
  (tmp_path / 'empty').mkdir()
  for wd in (tmp_path / 'none', tmp_path / 'empty'):
    with pytest.raises(ConfigError, match='holds no run of this sweep'):
      sweep.collect(cd, str(wd))
    with pytest.raises(FitError, match='results.jsonl does not exist'):
      report.write_report(cd, str(wd))
  assert not (tmp_path / 'none').exists() and not os.listdir(tmp_path / 'empty')


def test_sweep_refuses_a_different_plan_in_the_same_workdir(tmp_path, corpus_dir):
  wd = str(tmp_path)
  sweep.write_plan(wd, sweep.make_plan(_sweep_cd(corpus_dir)))
  before = open(os.path.join(wd, 'plan.json')).read()
  other = _sweep_cd(corpus_dir)
  other.sweep.budgets = [2e9, 6e9]
  with pytest.raises(ConfigError, match='holds a different sweep plan') as e:
    sweep.write_plan(wd, sweep.make_plan(other))
  # It says where the plans differ (both had 6 isoflop runs, which said nothing).
  assert 'only the stored plan has C1.00e+09_' in str(e.value), e.value
  assert 'and 4 more; only this config plans C2.00e+09_' in str(e.value), e.value
  same_runs = _sweep_cd(corpus_dir)
  same_runs.train.batch_size = 4
  with pytest.raises(ConfigError, match=r'differs \(stored != this config.s\): '
                                       r'.*overrides\.train\.steps: \d+ != \d+'):
    sweep.write_plan(wd, sweep.make_plan(same_runs))
  assert open(os.path.join(wd, 'plan.json')).read() == before
  # Nor does collecting or reporting it under the other config (tools.report
  # rewrote a grid sweep's report as an IsoFLOP one).
  from lm import report
  os.makedirs(os.path.join(wd, 'runs', 'x'))
  for f in (sweep.collect, report.write_report):
    with pytest.raises(ConfigError, match='holds a different sweep plan'):
      f(other, wd)
  # Nor training one of its runs with --only (it trained into this sweep).
  with pytest.raises(ConfigError, match='holds a different sweep plan'):
    sweep.run_all(other, wd, only=sweep.make_plan(other)[0].name)
  assert sorted(os.listdir(wd)) == ['plan.json', 'runs']
  assert os.listdir(os.path.join(wd, 'runs')) == ['x']
  with open(os.path.join(wd, 'plan.json'), 'w') as f:
    f.write('7')  # Valid JSON, but no plan (it was a TypeError from len()).
  with pytest.raises(ConfigError, match=r'plan.json cannot be read \(it holds a JSON int'):
    sweep.write_plan(wd, sweep.make_plan(other))


def test_report_refuses_non_finite_losses(tmp_path, corpus_dir):
  from lm.scaling import FitError
  from lm import report
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
  text = count.table(config_lib.from_configdict({'data': {'seq_len': 16}}), models)
  assert text.count('\n') == 3 and '6N/tok' in text and 'exact/tok' in text
  rows = [{'name': 'a', 'N': '100', 'D': '1e6', 'final_loss': '3.1'},
          {'name': 'b', 'N': '200', 'D': '', 'final_loss': '3.0'}]
  np.testing.assert_array_equal(fit.column(rows[:1], 'N'), [100.0])
  # A run config (no sweep section) shapes its ladder like its own model: the
  # README's GPT-2 small example (it needed --aspect and --head_dim).
  import sys
  r = forked_cli.run([sys.executable, '-m', 'tools.count', '--config=configs/gpt2_small.py',
                      '--ladder=1e6,1e7'], capture_output=True, text=True)
  assert r.returncode == 0 and '| 3 | 192 | 3 |' in r.stdout, r.stderr
  # --aspect shapes ladder rungs only: without --ladder it was silently ignored.
  r = forked_cli.run([sys.executable, '-m', 'tools.count', '--config=configs/gpt2_small.py',
                      '--aspect=-8'], capture_output=True, text=True)
  assert r.returncode == 2 and '--aspect' in r.stderr and 'Traceback' not in r.stderr, r.stderr
  r = forked_cli.run([sys.executable, '-m', 'tools.count', '--config=configs/gpt2_small.py',
                      '--head_dim=64'], capture_output=True, text=True)
  assert r.returncode == 2 and '--head_dim=64 shapes the rungs of --ladder' in r.stderr, r.stderr
  with pytest.raises(FitError, match=r"row 1 \(b\): D='' is missing or not finite"):
    fit.column(rows, 'D')


@pytest.mark.slow
def test_wsd_branches_continue_from_the_stable_run(tmp_path, corpus_dir, monkeypatch):
  """Branches start from the stable run's checkpoint and only add the cooldown."""
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
  # Packed (sweep.pack=4), the branches lost and run again: they train as one
  # pack, each resumed from its own branch step, and end where they ended alone.
  cd.sweep.pack = 4
  assert [[r.name for r in u] for u in sweep.plan_packs(cd, runs)] == [
      [runs[0].name], [runs[1].name, runs[2].name]]
  # What kills during seeding left: an empty checkpoints/ (seeded in place by
  # older versions, which then trained the branch from step 0) and a copy cut
  # short; both are seeded again.
  for b in runs[1:]:
    shutil.rmtree(os.path.join(wd, 'runs', b.name))
  os.makedirs(os.path.join(wd, 'runs', runs[1].name, 'checkpoints'))
  os.makedirs(os.path.join(wd, 'runs', f'.{runs[2].name}.seeding', 'copy', 'checkpoints'))
  packed = {r['name']: r for r in sweep.run_all(cd, wd, log=lambda *_: None)}
  for r in res[1:]:
    assert len(packed[r['name']]['pack']) == 2
    np.testing.assert_allclose(packed[r['name']]['final_loss'], r['final_loss'], rtol=2e-4)
  for e in os.listdir(os.path.join(wd, 'runs')):  # Seeding left only its empty lock dirs.
    assert 'seeding' not in e or not os.listdir(os.path.join(wd, 'runs', e)), e
  # A branch that failed after its seed, before its restore (a crash building
  # the model), still holds its stable run's config: a rerun and collect take
  # it as untrained (they refused it as "trained with another config").
  from lm import train
  real, cd.sweep.pack = train.train_and_evaluate, 1
  shutil.rmtree(os.path.join(wd, 'runs', runs[1].name))

  def crash(c, *a, **k):
    if c.name == runs[1].name:
      raise RuntimeError('simulated crash')
    return real(c, *a, **k)
  monkeypatch.setattr(train, 'train_and_evaluate', crash)
  assert sweep.run_all(cd, wd, only=runs[1].name, log=lambda *_: None)[0]['status'] == 'failed'
  monkeypatch.setattr(train, 'train_and_evaluate', real)
  sweep.collect(cd, wd)
  retried = sweep.run_all(cd, wd, only=runs[1].name, log=lambda *_: None)[0]
  np.testing.assert_allclose(retried['final_loss'], res[1]['final_loss'], rtol=2e-4)
  cd.sweep.pack = 4
  # The stable checkpoint one branch starts from is gone: that branch fails
  # alone, naming it; its pack-mate still trains to the same loss.
  for b in runs[1:]:
    shutil.rmtree(os.path.join(wd, 'runs', b.name))
  shutil.rmtree(os.path.join(wd, 'runs', runs[0].name, 'checkpoints', str(runs[1].branch_step)))
  again = {r['name']: r for r in sweep.run_all(cd, wd, log=lambda *_: None)}
  assert again[runs[1].name]['status'] == 'failed'
  assert 'does not exist yet' in again[runs[1].name]['error']
  np.testing.assert_allclose(again[runs[2].name]['final_loss'], res[2]['final_loss'], rtol=2e-4)
  assert 'pack' not in again[runs[2].name]  # It trained alone.


def test_eta_from_per_run_per_token_and_per_flop_time():
  def run(tokens, compute):
    return plan.Run(name=f'{tokens}_{compute}', overrides={}, n=1, tokens=tokens,
                    compute=compute, budget=compute, design='isoflop')
  wall = lambda r: 20 + 1e-4 * r.tokens + 1e-10 * r.compute  # Seconds.
  done = [run(t, c) for c in (1e10, 3e10, 1e11) for t in (1e5, 3e5, 1e6)]
  left = [run(t, 1e12) for t in (1e6, 3e6, 1e7)]
  assert sweep.eta_seconds([], left) is None
  assert sweep.eta_seconds([(r, wall(r)) for r in done], []) == 0
  # Recovered from the finished runs (their FLOP rate alone reads 2.6x).
  assert sweep.eta_seconds([(r, wall(r)) for r in done], left) == pytest.approx(
      sum(map(wall, left)), rel=1e-6)
  # One budget so far: per-run and per-FLOP time are one column, taken as
  # per-FLOP time (here, where the per-run 20 s dominates, that overshoots).
  one = [(r, wall(r)) for r in done[:3]]
  per_flop = (20 + 1e-10 * 1e10) / 1e10
  assert sweep.eta_seconds(one, left) == pytest.approx(
      sum(per_flop * r.compute + 1e-4 * r.tokens for r in left), rel=1e-6)
  # One run: all of its time per FLOP.
  assert sweep.eta_seconds(one[:1], left) == pytest.approx(
      sum(wall(done[0]) / 1e10 * r.compute for r in left), rel=1e-6)


def test_eta_replay_of_a_finished_sweep(tmp_path):
  """tools/eta_replay: the queue's schedule and the ETA it would print; and a
  workdir without a plan is a one-line error."""
  from tools import eta_replay
  runs = [plan.Run(name=f'r{i}', overrides={}, n=1, tokens=t, compute=c, budget=c,
                   design='isoflop') for i, (t, c) in enumerate([(1e5, 1e10), (3e5, 1e10),
                                                                  (1e5, 1e11), (3e5, 1e11)])]
  wall = {r.name: 1e-10 * r.compute + 1e-4 * r.tokens for r in runs}  # 11, 31, 20, 40 s.
  rows = eta_replay.replay(runs, wall, workers=2, queue=True)
  # r2 (20 s) and r3 (40 s) start first; r0 then r1 follow r2 on its worker.
  assert [round(t) for _, t, _, _ in rows] == [20, 31, 40]
  assert [round(left) for _, _, _, left in rows] == [42, 31, 22]
  assert all(eta >= 0 for _, _, eta, _ in rows)
  lone = eta_replay.replay(runs, wall, workers=2, queue=False)
  assert [round(t) for _, t, _, _ in lone] == [11, 42, 62]
  # Two budgets done: the fit is exact on this law.
  assert lone[-1][2] == pytest.approx(lone[-1][3], rel=1e-6)
  r = forked_cli.run([sys.executable, '-m', 'tools.eta_replay', f'--workdir={tmp_path}'],
                     capture_output=True, text=True)
  assert r.returncode == 2 and 'no sweep plan' in r.stderr and 'Traceback' not in r.stderr


def test_plan_packs_groups_by_shape_and_leaves_unpackable_runs_alone(corpus_dir):
  cd = _sweep_cd(corpus_dir, lrs=[1e-3, 3e-3], seeds=[0, 1], pack=4)
  runs = sweep.make_plan(cd)
  packs = sweep.plan_packs(cd, runs)
  assert sorted(r.name for u in packs for r in u) == sorted(r.name for r in runs)
  assert all(len(u) == 4 and len({r.n for r in u}) == 1 for u in packs)  # 2 LRs x 2 seeds.
  cd.data.canary_repeats = (2,)  # Canaries: pack.packable says no.
  assert [len(u) for u in sweep.plan_packs(cd, runs)] == [1] * len(runs)
  cd.data.canary_repeats = ()
  cd.model.attn_max_docs = 8  # cuDNN's packed documents do not batch over members.
  assert [len(u) for u in sweep.plan_packs(cd, runs)] == [1] * len(runs)


def test_claim_groups_keep_wsd_branches_with_their_packed_stable_run(tmp_path):
  """Stable runs of one size pack together; the branches of the second member
  of that pack must be claimed with it (they start from its checkpoint).
  Groups come largest first; a group is claimed once per sweep."""
  def run(name, compute, branch_from=''):
    return plan.Run(name=name, overrides={}, n=1, tokens=1, compute=compute, budget=0.0,
                    design='wsd', branch_from=branch_from)
  units = [[run('S_a', 10.0), run('S_b', 10.0)],
           [run('B1_a', 3.0, 'S_a'), run('B2_a', 3.0, 'S_a')],
           [run('B1_b', 3.0, 'S_b'), run('B2_b', 3.0, 'S_b')],
           [run('other', 12.0)],
           [run('small', 1.0)]]
  groups = sweep.claim_groups(units)
  assert [[u[0].name for u in g] for g in groups] == [['S_a', 'B1_a', 'B1_b'], ['other'],
                                                       ['small']]
  wd = str(tmp_path)
  assert sweep._claim(wd, 'S_a') and not sweep._claim(wd, 'S_a') and sweep._claim(wd, 'other')
  sweep.reset_claims(wd)
  assert sweep._claim(wd, 'S_a')  # A new sweep starts with an empty queue.


def test_a_worker_resumes_a_sweep_from_the_shared_queue(tmp_path, corpus_dir):
  """A worker claims groups largest first, skips runs an earlier sweep
  finished (without reporting them as its own) and counts the whole sweep."""
  cd = _sweep_cd(corpus_dir)
  runs = sweep.make_plan(cd)
  wd = str(tmp_path / 'sw')
  first = sweep.claim_groups(sweep.plan_packs(cd, runs))[0][0][0]
  for r in runs:
    if r is not first:
      os.makedirs(os.path.join(wd, 'runs', r.name))
      workdir.write_atomic(os.path.join(wd, 'runs', r.name, 'result.json'), json.dumps(
          {'status': 'done', 'final_loss': 1.0, 'wall_s': 1.0, 'wall': {'train': 1.0}}))
  logs = []
  res = sweep.run_all(cd, wd, worker=(0, 2), log=logs.append)
  assert [r['name'] for r in res] == [first.name] and res[0]['status'] == 'done'
  assert any('6/6 done, 0 left' in x and first.name in x for x in logs), logs
  assert sweep.run_all(cd, wd, worker=(1, 2), log=lambda *_: None) == []  # All claimed.
  # A run that failed in an earlier sweep, tried again by the other worker, is
  # still to do (it counted as done, "6/6 done, ETA 0" while it trained); its
  # old wall time (a crash 3 hours in) is no guide to the ETA.
  groups = sweep.claim_groups(sweep.plan_packs(cd, runs))
  again = groups[1][0][0]
  workdir.write_atomic(os.path.join(wd, 'runs', again.name, 'result.json'), json.dumps(
      {'status': 'failed', 'error': 'x', 'wall_s': 1e4, 'wall': {'train': 1e4}}))
  shutil.rmtree(os.path.join(wd, 'runs', first.name))
  sweep.reset_claims(wd)
  assert sweep._claim(wd, again.name)  # The other worker's.
  logs = []
  res = sweep.run_all(cd, wd, worker=(0, 2), log=logs.append)
  assert [r['name'] for r in res] == [first.name], logs
  assert any('5/6 done, 1 left, ETA 0.0 min' in x for x in logs), logs


def test_two_settings_that_plan_one_run_name_are_refused(corpus_dir):
  """LRs equal to 6 digits share a run name (one directory): the second
  would be skipped as done and counted twice, so the plan is refused."""
  cd = _sweep_cd(corpus_dir, lrs=[1e-3, 1.0000001e-3])
  with pytest.raises(ConfigError, match=r'plans run \S+_lr0.001 twice, with different'):
    sweep.make_plan(cd)


def test_lr_and_seed_replicates_and_cluster_commands(corpus_dir, tmp_path):
  cd = _sweep_cd(corpus_dir, lrs=[1e-3, 3e-3], seeds=[0, 1])
  runs = sweep.make_plan(cd)
  assert len(runs) == 6 * 4 and len({r.name for r in runs}) == 24
  assert {(r.overrides['opt.lr'], r.overrides['train.seed']) for r in runs} == {
      (1e-3, 0), (1e-3, 1), (3e-3, 0), (3e-3, 1)}
  cmds = sweep.commands('configs/x.py', '/sw', [[r] for r in runs])
  assert cmds[0]['command'] == ('python -m experiments.sweep --config=configs/x.py '
                                f'--workdir=/sw --only={runs[0].name}')
  argv = ['--workdir=/sw', '--config.opt.lr=1e-3', '--config.sweep.budgets', '(1e9, 2e9)']
  assert sweep.config_overrides(argv) == ['--config.opt.lr=1e-3',
                                          '--config.sweep.budgets=(1e9, 2e9)']
  # Every spelling absl accepts is carried: one dash, and bare or negated booleans.
  assert sweep.config_overrides(
      ['-config.sweep.seeds=(0,)', '--noconfig.train.progress', '-config.train.progress',
       '--config.opt.lr', '0.1', '--', '--config.opt.lr=9'],
      frozenset({'config.train.progress'})) == [
          '--config.sweep.seeds=(0,)', '--config.train.progress=False',
          '--config.train.progress=True', '--config.opt.lr=0.1']
  # And those in a --flagfile, which the sweep itself reads (they were dropped).
  flagfile = tmp_path / 'flags.txt'
  flagfile.write_text('--config.opt.lr=0.003\n-noconfig.train.progress\n')
  assert sweep.config_overrides(['--config.train.seed=2', f'--flagfile={flagfile}'],
                                frozenset({'config.train.progress'})) == [
      '--config.train.seed=2', '--config.opt.lr=0.003', '--config.train.progress=False']
  cmd = sweep.commands('configs/x.py', '/sw', [runs[:1]], sweep.config_overrides(argv))[0]
  assert cmd['command'] == ("python -m experiments.sweep --config=configs/x.py --workdir=/sw "
                            "--config.opt.lr=1e-3 '--config.sweep.budgets=(1e9, 2e9)' "
                            f'--only={runs[0].name}')
  assert json.loads(json.dumps(cmds))[0]['runs'][0]['workdir'] == f'/sw/runs/{runs[0].name}'
  # Packed: one command per pack, naming its members; every run in exactly one.
  cd.sweep.pack = 4
  units = sweep.plan_packs(cd, runs)
  cmds = sweep.commands('configs/x.py', '/sw', units)
  assert len(cmds) == len(units) < len(runs) and max(len(c['runs']) for c in cmds) == 4
  assert sorted(m['name'] for c in cmds for m in c['runs']) == sorted(r.name for r in runs)
  assert all(c['command'].endswith('--only=' + ','.join(m['name'] for m in c['runs']))
             for c in cmds)


@pytest.mark.parametrize('family', ['encoder', 'encoder_decoder'])
def test_sweep_of_every_family_records_its_headline_metric(tmp_path, corpus_dir, family):
  """A 1 x 2 grid sweep of masked-LM / span-corruption models: every run done,
  results.csv and the report name the objective's headline metric."""
  cd = _sweep_cd(corpus_dir)
  cd.model.family = family
  base = sweep._resolved(config_lib.from_configdict(sweep.split(cd)[0])).model
  rung1 = float(plan.rungs(base, 8, 8, max_layers=1)[0][0])
  cd.sweep = dict(design='grid', convention='exact', params=[rung1],
                  tokens=[640.0, 1280.0], aspect=8, head_dim=8, evals_per_run=1,
                  bootstrap=10, grid='coarse')
  wd = str(tmp_path / family)
  res = sweep.run_all(cd, wd, log=lambda *_: None)
  assert [r['status'] for r in res] == ['done'] * 2, res
  rows = sweep.collect(cd, wd)
  want = {'encoder': 'mlm', 'encoder_decoder': 'span'}[family]
  assert {(r['objective'], r['headline']) for r in rows} == {(want, 'accuracy')}
  assert all(0.0 <= r['final_headline'] <= 1.0 and r['best_headline'] >= r['final_headline']
             for r in rows)
  from lm import report
  text = open(report.write_report(cd, wd)).read()
  assert f'Objective: {want}; headline metric: accuracy' in text
  assert '| accuracy | status |' in text
  # Without budgets Approach 2 has nothing to fit, and says why (not "budget
  # must be positive", as if the data were bad).
  assert ("Not fitted: IsoFLOP profiles need runs planned at fixed compute budgets "
          "(sweep.design='isoflop'); this sweep's design is 'grid'.") in text


def _sweep_cli(tmp_path, *args):
  import sys
  cfg = tmp_path / 'sweep_cfg.py'
  cfg.write_text(
      'from configs import common\n'
      'def get_config(arg=None):\n'
      '  c = common.base()\n'
      "  c.model.update(max_len=16)\n"
      "  c.data.update(seq_len=16, source='dir', path=%r)\n"
      "  c.opt.update(warmup_steps=2)\n"
      "  c.train.update(batch_size=8, eval_batches=1, progress=False)\n"
      "  c.sweep = common.sweep(design='grid', params=(6000.0,), tokens=(640.0,), aspect=8,\n"
      "                         head_dim=8, evals_per_run=2, bootstrap=10, grid='coarse')\n"
      '  return c\n' % str(tmp_path / 'corpus'))
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=root)
  return forked_cli.run([sys.executable, '-m', 'experiments.sweep', f'--config={cfg}',
                         f'--workdir={tmp_path / "sw"}', *args], capture_output=True,
                        text=True, cwd=root, env=env)


def test_sweep_cli_overrides_lists_workers_and_fails_when_every_run_fails(tmp_path):
  (tmp_path / 'corpus').mkdir()
  (tmp_path / 'corpus' / 'a.py').write_text('x = 1\n' * 10)  # Far too little text.
  r = _sweep_cli(tmp_path, '--mode=commands', "--config.sweep.tokens=(640.0, 1280.0)")
  assert r.returncode == 0, r.stderr
  lines = r.stdout.strip().splitlines()
  assert len(lines) == 2 and all("'--config.sweep.tokens=(640.0, 1280.0)'" in x for x in lines)
  r = _sweep_cli(tmp_path, '--json', "--config.sweep.tokens=(640.0, 1280.0)")  # Alone: commands.
  assert r.returncode == 0 and [c['command'] for c in json.loads(r.stdout)] == lines, r.stderr
  name = lines[1].split('--only=')[1]  # --only narrows the list to that run's command.
  r = _sweep_cli(tmp_path, '--mode=commands', "--config.sweep.tokens=(640.0, 1280.0)",
                 f'--only={name}')
  assert r.returncode == 0 and r.stdout.strip().splitlines() == [lines[1]], (r.stdout, r.stderr)
  run = type('Run', (), {'name': name})()  # A tab-completed run directory names it too.
  assert sweep.only_names([run], f'runs/sw/{name}/') == {name}
  assert not (tmp_path / 'sw').exists()  # Nothing ran.
  r = _sweep_cli(tmp_path, '--json', '--mode=plan')
  assert r.returncode == 2 and '--json lists the commands' in r.stderr, r.stderr
  r = _sweep_cli(tmp_path, '--config.sweep.params=(-1.0,)', '--mode=plan')
  assert r.returncode == 2 and 'sweep.params' in r.stderr and 'Traceback' not in r.stderr
  # The plan sets every run's steps, sizes and seeds: overrides of them were
  # accepted and ignored.
  for o, instead in (('train.steps=77', 'sweep.tokens'), ('model.d_model=256', 'sweep.params'),
                     ('train.seed=5', 'sweep.seeds'), ('train.eval_every=3', 'evals_per_run')):
    r = _sweep_cli(tmp_path, f'--config.{o}', '--mode=plan')
    field = o.split('=')[0]
    assert r.returncode == 2 and (f"--config.{o}: the sweep's plan sets every run's {field}, so "
                                  'this would change nothing') in r.stderr, r.stderr
    assert instead in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
  # ... but not a field the plan computes from the base's: a ladder's KV heads
  # (their gcd with the base's).
  r = _sweep_cli(tmp_path, '--config.model.num_kv_heads=1', '--mode=plan')
  assert r.returncode == 0, r.stderr
  # Judged against the config file's value, not the field's default: runs of 30
  # steps cap warmup at 3, so 40 plans what the default 50 plans, but not what
  # the file's 2 plans (it had been refused as changing nothing).
  r = _sweep_cli(tmp_path, '--config.opt.warmup_steps=40', '--config.sweep.tokens=(3840.0,)',
                 '--mode=plan')
  assert r.returncode == 0, r.stderr
  # A warmup above the base's own train.steps (500), which no run uses: each
  # run caps it at a tenth of its steps (it had been refused against the 500).
  r = _sweep_cli(tmp_path, '--config.opt.warmup_steps=800', '--config.sweep.tokens=(3840.0,)',
                 '--mode=plan')
  assert r.returncode == 0, r.stderr
  r = _sweep_cli(tmp_path, '--config.train.progress', '--mode=plan')  # A bare boolean.
  assert r.returncode == 2 and '--config.train.progress=True: the sweep' in r.stderr, r.stderr
  # One file cannot be split into train and validation: refused as the train
  # CLI refuses it, before plan.json or any run's record (every run had failed).
  r = _sweep_cli(tmp_path)
  assert r.returncode == 2 and 'a split by file needs at least 2' in r.stderr, r.stderr
  assert not (tmp_path / 'sw').exists()
  (tmp_path / 'corpus' / 'b.py').write_text('y = 2\n' * 10)  # Two, still far too little.
  r = _sweep_cli(tmp_path)
  assert r.returncode == 1, (r.stdout, r.stderr)
  assert 'every run failed (1)' in r.stderr and 'ConfigError' in r.stderr
  # The local executor: two worker processes share the runs; the parent reports.
  r = _sweep_cli(tmp_path, '--config.sweep.tokens=(640.0, 1280.0)', '--workers=2',
                 f'--workdir={tmp_path / "sw2"}')
  assert r.returncode == 1 and 'every run failed (2)' in r.stderr, (r.stdout, r.stderr)
  assert '[worker 1/2]' in r.stdout and '[worker 2/2]' in r.stdout, r.stdout
  # One queue: each run trained (and failed) once, by one worker, counted sweep-wide.
  lines = [x for x in r.stdout.splitlines() if '[sweep] ' in x and '/2 done, ' in x]
  assert len({x.split('  (')[1].split(':')[0] for x in lines}) == len(lines) == 2, r.stdout
  assert not (tmp_path / 'sw2' / 'claims').exists()  # The spent queue is removed.


def test_a_crashed_worker_is_named_beside_a_preempted_one(tmp_path):
  """One worker stopped by a signal (exit 75: rerun to continue) and another
  crashed: the coordinator still exits 75, but says the crash, which its
  requeue would otherwise hide."""
  _sweep_cli(tmp_path, '--mode=plan')  # Writes the config file.
  script = ('import importlib.util, subprocess, sys\n'
            'sys.argv = ["sweep"]\n'
            'from experiments import sweep as cli\n'
            f'spec = importlib.util.spec_from_file_location("c", {str(tmp_path / "sweep_cfg.py")!r})\n'
            'm = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n'
            'codes = iter([75, 1])\n'
            'class Fake:\n'
            '  def __init__(self, *a, **k): self.code = next(codes)\n'
            '  def wait(self): return self.code\n'
            'subprocess.Popen = Fake\n'
            f'cli._run_workers(m.get_config(), {str(tmp_path / "sw")!r}, 2)\n')
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  r = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, cwd=root,
                     env=dict(os.environ, PYTHONPATH=root))
  assert r.returncode == 75, (r.stdout, r.stderr)
  assert 'a worker exited with 1' in r.stderr and 'stopped by a signal' in r.stderr, r.stderr


def test_planned_counts_and_compute_match_the_trained_models(corpus_dir):
  """Randomly drawn valid bases (GQA, untied, gated MLPs, RoPE, biases, QK-norm,
  every family): each planned run's N is the trained model's, its parameter
  tree has exactly the counted size, and its C is within 2% of its budget."""
  import flax.linen as nn
  import jax

  from lm import objectives
  from lm.model import Transformer, init_inputs
  rng = np.random.default_rng(0)
  for trial in range(6):
    family = ('decoder', 'encoder', 'encoder_decoder')[trial % 3]
    conv = str(rng.choice(flops.CONVENTIONS))
    cd = _sweep_cd(corpus_dir)
    cd.sweep.update(budgets=[3e9, 1e10], min_steps=50, convention=conv)
    cd.model.update(
        family=family, num_kv_heads=int(rng.choice([0, 1, 2])),
        head_dim=int(rng.choice([0, 16])), activation=str(rng.choice(['gelu', 'swiglu', 'relu2'])),
        position=str(rng.choice(['learned', 'rope', 'sinusoidal'])),
        use_bias=bool(rng.integers(2)), tie_embeddings=bool(rng.integers(2)),
        qk_norm=bool(rng.integers(2)), norm=str(rng.choice(['layernorm', 'rmsnorm'])),
        mlm_transform=family == 'encoder' and bool(rng.integers(2)))
    for r in sweep.make_plan(cd):
      c = sweep._resolved(sweep.run_config(cd, r, 3))
      counts = flops.param_counts(c.model)
      tree = jax.eval_shape(lambda k, m=c.model: Transformer(m).init(
          k, **init_inputs(m, c.data.seq_len))['params'], jax.random.key(0))
      size = sum(x.size for x in jax.tree_util.tree_leaves(nn.unbox(tree)))
      assert (r.n, size) == (counts['non_embedding'], counts['total']), (trial, r.name)
      C = flops.all_conventions(c.model, c.data.seq_len, None,
                                *objectives.get(c).lengths(c))[conv] * r.tokens
      assert abs(C / r.budget - 1) < 0.02, (trial, r.name, conv, C, r.budget)


def test_transfer_plan_and_report(tmp_path, corpus_dir):
  """The transfer design: every width x parametrization x LR, muP's base width
  the smallest width; its report finds each width's optimal LR and says how
  far it moves (on synthetic results: SP's optimum halves per doubling of
  width, muP's stays)."""
  from lm import report
  cd = _sweep_cd(corpus_dir)
  cd.sweep = dict(design='transfer', widths=[16, 32, 64], lrs=[1e-3, 2e-3, 4e-3, 8e-3],
                  tokens=[640])
  runs = sweep.make_plan(cd)
  assert len(runs) == 2 * 3 * 4 and runs[0].name == 'sp_d16_lr0.001'
  assert {(r.overrides['model.parametrization'], r.overrides['model.d_model'],
           r.overrides['model.base_width'], r.overrides['model.mlp_dim'])
          for r in runs} >= {('mup', 64, 16, 128), ('sp', 16, 16, 32)}
  assert {r.overrides['train.steps'] for r in runs} == {5}
  c = sweep.run_config(cd, runs[-1], 2)
  assert (c.model.parametrization, c.model.d_model, c.opt.lr) == ('mup', 64, 8e-3)
  # Every run sets model.base_width and mlp_dim, but from the base's: they count.
  for key, value in (('base_width', 32), ('mlp_dim', 96)):
    was, cd.model[key] = cd.model[key], value
    sweep.check_overrides(cd, [f'--config.model.{key}={value}'], sweep.make_plan(cd))
    cd.model[key] = was
  cd.train.seed = 3
  with pytest.raises(ConfigError, match=r"sets every run's train.seed.*sweep.seeds"):
    sweep.check_overrides(cd, ['--config.train.seed=3'], runs)
  cd.train.seed = 0
  for bad, match in ((dict(lrs=[1e-3, 2e-3]), '3 learning rates'),
                     (dict(parametrizations=['ntk']), 'sweep.parametrizations'),
                     (dict(widths=[18, 32]), 'not divisible by model.num_heads')):
    cd.sweep = {**dict(design='transfer', widths=[16, 32], lrs=[1e-3, 2e-3, 4e-3],
                       tokens=[640]), **bad}
    with pytest.raises(ConfigError, match=match):
      sweep.make_plan(cd)
  rows = []
  lrs = [1e-3, 2e-3, 4e-3, 8e-3]
  for p in ('sp', 'mup'):
    for k, w in enumerate((16, 32, 64)):
      best = 3 - k if p == 'sp' else 2  # Index of the best LR.
      for i, lr in enumerate(lrs):
        rows.append({'name': f'{p}_d{w}_lr{lr:g}', 'status': 'done', 'parametrization': p,
                     'd_model': w, 'lr': lr, 'D': 640, 'final_loss': 2.0 + 0.1 * (i - best) ** 2})
  (tmp_path / 'results.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
  cd.sweep = dict(design='transfer', widths=[16, 32, 64], lrs=lrs, tokens=[640])
  md = open(report.write_report(cd, str(tmp_path))).read()
  out = json.loads((tmp_path / 'report' / 'transfer.json').read_text())
  assert out['sp']['optimal_lr'] == {'16': 8e-3, '32': 4e-3, '64': 2e-3}
  assert out['sp']['drift_grid_steps'] == -2 and out['mup']['spread_grid_steps'] == 0
  assert out['sp']['any_at_grid_edge'] and not out['mup']['any_at_grid_edge']
  assert '- MUP: the optimum stays within one grid step across widths' in md
  assert '- SP: the optimum moves by 2 grid steps across widths' in md
  assert (tmp_path / 'report' / 'transfer.png').stat().st_size > 10_000


def test_lr_optimum_of_a_curve():
  from lm import report
  lrs = np.geomspace(1e-4, 1e-1, 7)
  curve = [(lr, 2.0 + 0.1 * np.log(lr / 3e-3) ** 2) for lr in lrs]
  o = report.lr_optimum(curve)
  assert o['fitted_lr'] == pytest.approx(3e-3, rel=1e-6) and not o['edge']
  o = report.lr_optimum([(lr, 3.0 - lr) for lr in lrs])  # Still falling at the largest LR.
  assert o['edge'] and o['fitted_lr'] is None and o['best_lr'] == lrs[-1]
  # The next LR was tried and diverged: the optimum is bounded, not on an edge.
  o = report.lr_optimum([(lr, 3.0 - lr) for lr in lrs[:-1]], failed_lrs=[lrs[-1]])
  assert not o['edge'] and o['bounded_by_failure'] == lrs[-1] and o['best_lr'] == lrs[-2]


def test_fits_use_cooled_runs_at_their_best_learning_rate():
  """WSD stable runs are not fit points; with several LRs per point only the
  best LR's runs (all its seeds) are (the fits pooled every LR and stable run)."""
  from lm import report
  rows = [{'name': 'S', 'design': 'wsd_stable', 'budget': 0.0, 'N': 10, 'D': 80,
           'lr': 1e-3, 'final_loss': 3.5}]
  for lr, loss in ((1e-3, 3.0), (1e-2, 2.5)):
    for seed in (0, 1):
      rows.append({'name': f'B_lr{lr}_s{seed}', 'design': 'isoflop', 'budget': 1e9, 'N': 10,
                   'D': 100, 'lr': lr, 'final_loss': loss + 0.01 * seed})
  keep, out = report.fit_points(rows, [])
  assert sorted(r['name'] for r in keep) == ['B_lr0.01_s0', 'B_lr0.01_s1']
  why = {r['name']: r['reason'] for r in out}
  assert 'WSD stable run' in why['S'] and 'not the best learning rate' in why['B_lr0.001_s0']


def test_lr_report_shows_runs_that_did_not_finish(tmp_path):
  """A diverged LR bounds its size's optimum; pending and failed runs are named
  in the size's row, and a size with no finished run is said to have none."""
  from lm import report
  lrs = [1e-3, 1e-2, 1e-1]
  rows = [{'name': f'n1_lr{lr}', 'status': 'done', 'N': 1000, 'd_model': 16, 'D': 2e4,
           'lr': lr, 'final_loss': 3.0 - i} for i, lr in enumerate(lrs[:2])]
  rows += [{'name': f'n2_lr{lr}', 'status': 'done', 'N': 4000, 'd_model': 32, 'D': 2e4,
            'lr': lr, 'final_loss': 3.0 - i} for i, lr in enumerate(lrs[:2])]
  excluded = [{'name': 'n1_lr0.1', 'status': 'failed', 'N': 1000, 'lr': 0.1,
               'reason': 'failed: non-finite loss'},
              {'name': 'n2_lr0.1', 'status': 'pending', 'N': 4000, 'lr': 0.1,
               'reason': 'pending'},
              {'name': 'n3_lr0.1', 'status': 'failed', 'N': 16000, 'lr': 0.1,
               'reason': 'failed: out of memory'}]
  md = open(report._lr_report(str(tmp_path), rows, excluded)).read()
  summary = json.load(open(tmp_path / 'report' / 'lr.json'))
  assert summary['1000']['bounded_by_failure'] == 0.1 and not summary['1000']['edge']
  assert summary['4000']['edge'] and summary['4000']['bounded_by_failure'] is None
  assert '| 0.01 (lr 0.1 failed) |' in md and '| 0.1 failed |' in md
  assert '| 0.01 (edge of the finished runs) |' in md and '| 0.1 pending |' in md
  assert 'No finished run at N = 16,000' in md and '- n3_lr0.1: failed: out of memory' in md


def test_an_lr_where_a_seed_failed_is_not_an_optimum(tmp_path):
  """Seed 1 diverged at lr 0.1 and seed 0 reached the lowest loss there: the
  survivor's mean alone made 0.1 the best LR. The lr report, the transfer
  report and the fits' choice of LR all treat that LR as failed."""
  from lm import report
  rows, excluded = [], []
  for lr, loss in ((1e-3, 3.0), (1e-2, 2.5), (1e-1, 2.0)):
    for seed in (0, 1):
      r = {'name': f'lr{lr}_s{seed}', 'status': 'done', 'N': 1000, 'd_model': 16, 'D': 2e4,
           'budget': 1e9, 'parametrization': 'mup', 'lr': lr, 'final_loss': loss}
      if lr == 1e-1 and seed == 1:
        excluded.append({**r, 'status': 'failed', 'reason': 'failed: non-finite loss'})
      else:
        rows.append(r)
  report._lr_report(str(tmp_path), rows, excluded)
  o = json.load(open(tmp_path / 'report' / 'lr.json'))['1000']
  assert o['best_lr'] == 1e-2 and o['bounded_by_failure'] == 0.1 and not o['edge']
  assert report.transfer_optima(rows, excluded)['mup'][16]['lr'] == 1e-2
  keep, out = report.fit_points(rows, excluded)
  assert {r['lr'] for r in keep} == {1e-2}
  assert any('a seed failed at this lr' in r['reason'] for r in out if r['lr'] == 1e-1)


@pytest.mark.slow
def test_lr_design_plans_packs_and_reports(tmp_path, corpus_dir):
  """sizes x lrs; a size's runs form one pack; the report gives the optimum
  per size and lr.json."""
  cd = _sweep_cd(corpus_dir)
  cd.sweep = dict(design='lr', convention='exact', params=[900.0], tokens=[768.0],
                  lrs=(1e-3, 1e-2, 1e-1), aspect=8, head_dim=8, evals_per_run=1, pack=8)
  runs = sweep.make_plan(cd)
  assert len(runs) == 3 and {r.design for r in runs} == {'lr'}
  assert [len(u) for u in sweep.plan_packs(cd, runs)] == [3]
  wd = str(tmp_path / 'lr')
  res = sweep.run_all(cd, wd, log=lambda *_: None)
  assert all(r['status'] == 'done' for r in res), res
  sweep.collect(cd, wd)
  from lm import report
  md = open(report.write_report(cd, wd)).read()
  assert '| N | d_model | tokens | best grid lr |' in md
  summary = json.load(open(os.path.join(wd, 'report', 'lr.json')))
  assert len([k for k in summary if not k.startswith('_')]) == 1
  for k, v in summary.items():
    if not k.startswith('_'):
      assert v['best_lr'] in (1e-3, 1e-2, 1e-1) and v['seed_sd_at_best'] is None  # 1 seed.
  with pytest.raises(ConfigError, match='at least 3 learning rates'):
    cd.sweep.lrs = (1e-3, 1e-2)
    sweep.make_plan(cd)


def test_slurm_executor_through_submitits_local_cluster(tmp_path, corpus_dir):
  """executor=slurm hands each run (or pack) to submitit; with submitit's
  local cluster the jobs run as processes here and write their results."""
  pytest.importorskip('submitit')
  cd = _sweep_cd(corpus_dir)
  cd.sweep = dict(design='grid', convention='exact', params=[6000.0], tokens=[768.0],
                  aspect=8, head_dim=8, evals_per_run=1, seeds=(0, 1), pack=2,
                  executor='slurm')
  logs = []
  res = sweep.submit(cd, str(tmp_path / 'sub'), log=logs.append, cluster='local')
  assert [r['status'] for r in res] == ['done', 'done'], res
  assert len([m for m in logs if 'submitted 2 run(s) as job' in m]) == 1  # One pack, one job.
  assert all(len(r['pack']) == 2 for r in res)
  # A run its job could not train (another process holds it) is named on the
  # console, not only in the job's log.
  rdir = str(tmp_path / 'sub' / 'runs' / res[0]['name'])
  os.remove(os.path.join(rdir, 'result.json'))
  logs = []
  with workdir.lock(rdir, 'another sweep', log=lambda *_: None):
    res = sweep.submit(cd, str(tmp_path / 'sub'), log=logs.append, cluster='local')
  assert [r['status'] for r in res] == ['failed', 'done'], res
  assert any(res[0]['name'] in m and 'not done' in m and 'rerun' in m for m in logs), logs


def test_workers_get_the_coordinators_arguments_without_its_own_flags():
  """`--workers 2` (a space, as absl allows) left the `2` to every worker, which
  refused it as a stray word."""
  assert sweep.worker_args(['--config=c', '--workers', '2', '--workdir=w', '--noreport',
                            '--worker=1/2', '--report=false', '--config.sweep.workers=3',
                            '-workers=4', '--only', 'a']) == [
      '--config=c', '--workdir=w', '--config.sweep.workers=3', '--only', 'a']


def test_slurm_executor_without_slurm_is_refused(tmp_path, corpus_dir, monkeypatch):
  """Without sbatch, submitit's AutoExecutor ran 'slurm' jobs as local processes
  and said nothing."""
  cd = _sweep_cd(corpus_dir)
  cd.sweep = dict(design='grid', convention='exact', params=[6000.0], tokens=[768.0],
                  aspect=8, head_dim=8, evals_per_run=1, executor='slurm')
  monkeypatch.setattr(sweep.shutil, 'which', lambda _: None)
  with pytest.raises(config_lib.ConfigError, match='no Slurm'):
    sweep.submit(cd, str(tmp_path / 'sub'), log=lambda *_: None)
  assert not os.path.exists(tmp_path / 'sub')  # Refused before the plan is written.


@pytest.mark.slow
def test_ray_executor_on_a_local_instance(tmp_path, corpus_dir):
  """executor=ray: one Ray task per run (or pack) on a local Ray instance."""
  ray = pytest.importorskip('ray')
  cd = _sweep_cd(corpus_dir)
  cd.sweep = dict(design='grid', convention='exact', params=[6000.0], tokens=[768.0],
                  aspect=8, head_dim=8, evals_per_run=1, executor='ray', job_cpus=1)
  ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
  try:
    logs = []
    res = sweep.submit(cd, str(tmp_path / 'ray'), log=logs.append)
  finally:
    ray.shutdown()
  assert [r['status'] for r in res] == ['done'], res
  assert len([m for m in logs if 'as a Ray task' in m]) == 1


def test_a_worker_gets_sigterm_when_its_coordinator_is_killed(tmp_path):
  """Workers die with the coordinator, even one SIGKILLed: an orphan would go on
  training beside the rerun's workers (experiments/sweep._parent_death_signal)."""
  import subprocess
  import sys
  import time
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  ready, got = tmp_path / 'ready', tmp_path / 'got'
  child = ('import signal, sys, time\n'
           f'signal.signal(signal.SIGTERM, lambda *a: (open({str(got)!r}, "w").write("TERM"), '
           'sys.exit(75)))\n'
           f'open({str(ready)!r}, "w").close()\n'
           'time.sleep(60)\n')
  coordinator = ('import subprocess, sys, time\n'
                 'from experiments.sweep import _parent_death_signal\n'
                 f'subprocess.Popen([sys.executable, "-c", {child!r}], '
                 'preexec_fn=_parent_death_signal())\n'
                 'time.sleep(60)\n')
  parent = subprocess.Popen([sys.executable, '-c', coordinator], cwd=root)
  deadline = time.time() + 60
  while not ready.exists() and time.time() < deadline:
    time.sleep(0.1)
  assert ready.exists()
  parent.kill()
  parent.wait()
  while not (got.exists() and got.read_text()) and time.time() < deadline:
    time.sleep(0.1)  # Created before it is written: wait for the text too.
  assert got.read_text() == 'TERM'


def test_collect_skips_the_nan_evals_of_a_run_that_diverged(tmp_path, corpus_dir):
  """A diverging run evaluates NaN parameters before it halts; metrics.jsonl
  holds 'nan' for them, which best-of compared with floats (TypeError: the
  whole collect, results and report, failed)."""
  cd = _sweep_cd(corpus_dir)
  r = sweep.make_plan(cd)[-1]
  rdir = tmp_path / 'runs' / r.name
  w = metrics.Writer(str(rdir))
  w.write(10, 'eval', {'loss': 5.1, 'bits_per_byte': 2.0})
  w.write(r.overrides['train.steps'], 'eval', {'loss': float('nan'), 'bits_per_byte': float('nan')})
  w.close()
  (rdir / 'result.json').write_text(json.dumps({'status': 'failed', 'error': 'loss is nan'}))
  row = {x['name']: x for x in sweep.collect(cd, str(tmp_path))}[r.name]
  assert (row['best_loss'], row['best_headline']) == (5.1, 2.0)
  assert np.isnan(row['final_loss']) and np.isnan(row['final_headline'])


def test_a_signal_in_a_run_s_last_step_stops_the_sweep_after_recording_it(tmp_path, corpus_dir,
                                                                          monkeypatch):
  """A unit whose run took a signal in its last step is recorded (result.json,
  without the flag) and the sweep raises Preempted before starting the next;
  when nothing is left, it just finishes (an executor job must not fail)."""
  cd = _sweep_cd(corpus_dir)
  runs = sweep.make_plan(cd)
  wd, trained, signalled = str(tmp_path / 'sw'), [], {runs[0].name, runs[1].name}

  def fake_unit(cd, workdir, todo, s, log):
    trained.extend(r.name for r in todo)
    return [{'status': 'done', 'final_loss': 1.0, 'headline': 'loss', 'final_headline': 1.0,
             'wall': {'train': 1.0}, 'wall_resumed': 0.0,
             **({'_preempted': ('SIGTERM', 7)} if r.name in signalled else {})}
            for r in todo]

  monkeypatch.setattr(sweep, '_train_unit', fake_unit)
  logs = []
  with pytest.raises(workdir.Preempted, match='SIGTERM at step 7'):
    sweep.run_all(cd, wd, log=logs.append)
  assert trained == [runs[0].name]
  rec = json.load(open(os.path.join(wd, 'runs', runs[0].name, 'result.json')))
  assert rec['status'] == 'done' and '_preempted' not in rec
  assert any(f'stopped after {runs[0].name} (SIGTERM in its last step)' in x for x in logs)
  # An executor's job (--only its pack) signalled in its last step: recorded,
  # and it ends normally, as nothing of its own is left.
  only = sweep.run_all(cd, wd, only=runs[1].name, log=logs.append)
  assert [r['status'] for r in only] == ['done'] and trained == [runs[0].name, runs[1].name]


def test_a_sweep_and_a_run_do_not_share_a_directory(tmp_path):
  """A run trained into a sweep directory (beside plan.json), or a sweep into
  a trained run (beside checkpoints/), is refused before anything is written."""
  from lm import checkpoint
  (tmp_path / 'sw').mkdir()
  (tmp_path / 'sw' / 'plan.json').write_text('[]')
  with pytest.raises(checkpoint.CheckpointError, match='is a sweep directory'):
    checkpoint.check_workdir(str(tmp_path / 'sw'), None)
  (tmp_path / 'run' / 'checkpoints').mkdir(parents=True)
  with pytest.raises(ConfigError, match='is a run directory'):
    sweep.check_plan(str(tmp_path / 'run'), [])
  assert sorted(os.listdir(tmp_path / 'sw')) == ['plan.json']
  assert os.listdir(tmp_path / 'run') == ['checkpoints']


def _fake_isoflop_sweep(wd: str, cd, failed=()) -> list:
  """A sweep directory as if trained, each run's eval curve from the law
  L = 1.5 + 30 / N^0.35 + 300 / D^0.3 (no training)."""
  runs = sweep.make_plan(cd)
  sweep.write_plan(wd, runs)
  evals = cd.sweep.evals_per_run
  for r, row in zip(runs, sweep._collect(cd, wd, runs)):
    rdir = os.path.join(wd, 'runs', r.name)
    os.makedirs(rdir)
    steps = r.overrides['train.steps']
    with open(os.path.join(rdir, 'metrics.jsonl'), 'w') as f:
      for k in sorted({*range(max(1, steps // evals), steps + 1, max(1, steps // evals)), steps}):
        loss = 1.5 + 30 / row['N'] ** 0.35 + 300 / (row['D'] * k / steps) ** 0.3
        f.write(json.dumps({'step': k, 'kind': 'eval', 'loss': loss}) + '\n')
    status = 'failed' if r.name in failed else 'done'
    with open(os.path.join(rdir, 'result.json'), 'w') as f:
      json.dump({'status': status, 'wall_s': 1.0, **({'error': 'boom'} if r.name in failed
                                                        else {})}, f)
  sweep.collect(cd, wd)
  return runs


def test_report_says_what_a_degenerate_sweep_cannot_give(tmp_path):
  """One budget of 5 runs, 2 of them on the loss envelope: every Approach 1
  refit that succeeds is the fit itself, so its percentiles were a zero-width
  "95% CI" that then declared the approaches in disagreement. Every run failed:
  Approach 2 said the design was not 'isoflop' (it was). A file where the
  report directory goes: a FileExistsError traceback from tools.report."""
  from configs import isoflop_tiny
  from lm import report
  cd = isoflop_tiny.get_config()
  cd.sweep.update(budgets=(4e11,), bootstrap=30, grid='coarse')
  wd = str(tmp_path / 'one')
  _fake_isoflop_sweep(wd, cd)
  md = open(report.write_report(cd, wd)).read()
  assert ('every refit that succeeded reproduced the fit (2 runs on the envelope), so its '
          'percentiles collapse onto it') in md, md
  fits = json.load(open(os.path.join(wd, 'report', 'fits.json')))
  assert fits['approach1']['a']['ci95'] is None and fits['approach3']['a']['ci95']
  assert 'approach1 and approach3' not in md
  wd = str(tmp_path / 'failed')
  runs = _fake_isoflop_sweep(wd, cd, failed={r.name for r in sweep.make_plan(cd)})
  md = open(report.write_report(cd, wd)).read()
  assert 'Not fitted: no run finished (the Runs table says why each one is missing).' in md
  assert "this sweep's design is" not in md and md.count('| failed: boom |') == len(runs)
  # The report directory cannot be made: one line, before the tables are rewritten.
  shutil.rmtree(os.path.join(wd, 'report'))
  open(os.path.join(wd, 'report'), 'w').close()
  before = {f: open(os.path.join(wd, f)).read() for f in ('results.csv', 'results.jsonl')}
  for run in (lambda: report.write_report(cd, wd),
              lambda: forked_cli.run(
                  [sys.executable, '-m', 'tools.report', '--config=configs/isoflop_tiny.py',
                   f'--workdir={wd}', '--config.sweep.budgets=(4e11,)'], check=False,
                  capture_output=True, text=True,
                  cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))):
    try:
      out = run()
    except workdir.NotWritable as e:
      assert 'report' in str(e) and 'is a file' in str(e), e
      continue
    assert out.returncode == 2 and out.stderr.startswith('error: the report directory'), out
    assert 'Traceback' not in out.stderr and out.stderr.count('\n') == 1, out.stderr
  assert {f: open(os.path.join(wd, f)).read() for f in before} == before
