"""Preemption, crashes, a second process and divergence (lm/workdir.py, lm/train.py).

The longer version of the kill test is tools/fault_inject.py (20 injections)."""

import json
import os
import re
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from lm import checkpoint, metrics, train, workdir
from tests.helpers import tiny
from tools import fault_inject

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _losses(wd):
  return {r['step']: r['loss'] for r in metrics.read(str(wd), 'train')}


@pytest.fixture(scope='module')
def reference(tmp_path_factory, corpus_dir):
  """An uninterrupted 12-step run (the resumption tests compare against it)."""
  wd = tmp_path_factory.mktemp('reference')
  train.train_and_evaluate(tiny(corpus_dir, **{'train.steps': 12}), str(wd),
                           log=lambda *_: None)
  return _losses(wd)


@pytest.fixture(scope='module')
def cli_run(tmp_path_factory, corpus_dir):
  """(config file, workdir of an uninterrupted CLI run of it)."""
  d = tmp_path_factory.mktemp('cli')
  config = fault_inject.write_config(str(d / 'cfg.py'), 10, str(corpus_dir))
  env = fault_inject.environment(str(d / 'jax_cache'))  # Restarts skip compiling.
  r = subprocess.run(fault_inject._cmd(config, str(d / 'ref')), cwd=ROOT, capture_output=True,
                     text=True, env=env)
  assert r.returncode == 0, r.stderr
  return config, str(d / 'ref'), env


@pytest.mark.slow
def test_kills_sigterm_and_a_concurrent_start_end_bit_identically(tmp_path, cli_run):
  """Two SIGKILLs at random moments (checkpoints every 2 steps, so a kill can
  land in a checkpoint write; tools/fault_inject.py runs 20) and one SIGTERM, which must
  checkpoint and exit 75; the final losses equal an uninterrupted run's. Then
  two processes start on one workdir at once: one refuses, naming the holder."""
  config, ref, env = cli_run
  logs = []
  problems = fault_inject.inject(config, str(tmp_path / 'run'), ref, kills=2, seed=1,
                                 sigterm=True, log=logs.append, env=env)
  assert not problems, (problems, logs)
  assert logs[0].startswith('injection 1: SIGTERM') and logs[0].endswith('exit 75'), logs

  cmd = fault_inject._cmd(config, str(tmp_path / 'twice'))
  procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for _ in range(2)]
  outs = [(p.wait(), p.stderr.read()) for p in procs]
  codes = sorted(rc for rc, _ in outs)
  if codes != [0, 0]:  # [0, 0]: one finished first; the other resumed at the end.
    assert codes == [0, 2], outs
    refused = [err for rc, err in outs if rc == 2][0]
    assert 'is in use by training' in refused and 'pid' in refused, refused
  assert fault_inject.losses(str(tmp_path / 'twice')) == fault_inject.losses(ref)


@pytest.mark.slow
def test_a_killed_pack_sweep_ends_bit_identically(tmp_path, corpus_dir):
  """tools/fault_inject.py --pack, one SIGKILL: a sweep of one pack of six runs
  (4, 6 and 8 steps, checkpoints every 2) killed at a random moment and rerun
  ends with every member's losses equal to an uninterrupted sweep's."""
  config = fault_inject.write_config(str(tmp_path / 'cfg.py'), 8, str(corpus_dir), pack=True)
  logs = []
  problems = fault_inject.inject(config, str(tmp_path / 'run'), str(tmp_path / 'ref'), kills=1,
                                 seed=3, log=logs.append,
                                 env=fault_inject.environment(str(tmp_path / 'jax_cache')),
                                 pack=True)
  assert not problems, (problems, logs)
  assert len(fault_inject.losses(str(tmp_path / 'ref'), pack=True)) == 2 * (4 + 6 + 8)


def test_incomplete_checkpoint_writes_are_removed_and_the_run_continues(
    tmp_path, corpus_dir, reference):
  c = tiny(corpus_dir, **{'train.steps': 12})
  # Killed during its first save: only a temporary directory -> a fresh start.
  first = tmp_path / 'first'
  train.train_and_evaluate(c, str(first), stop_at=2, log=lambda *_: None)
  os.rename(first / 'checkpoints' / '2', first / 'checkpoints' / '3.orbax-checkpoint-tmp-9')
  msgs = []
  train.train_and_evaluate(c, str(first), log=msgs.append)
  assert any('removed incomplete checkpoint writes' in m and 'from scratch' in m
             for m in msgs), msgs
  assert _losses(first) == reference
  # Killed during a later save: back to the last complete step, then the same losses.
  later = tmp_path / 'later'
  train.train_and_evaluate(c, str(later), stop_at=6, log=lambda *_: None)
  (later / 'checkpoints' / '9.orbax-checkpoint-tmp-1').mkdir()
  with open(later / 'metrics.jsonl', 'a') as f:  # Rows written after the checkpoint...
    f.write(json.dumps({'step': 7, 'kind': 'train', 'loss': 9.9}) + '\n{"step": 8, "ki')
  msgs = []
  train.train_and_evaluate(c, str(later), log=msgs.append)
  assert 'resumed from step 6' in msgs[-1] and 'continuing from step 6' in msgs[0], msgs
  assert _losses(later) == reference  # ...are dropped: no step is logged twice.
  assert sorted(os.listdir(later / 'checkpoints'), key=int)[-1] == '12'


def test_a_kill_right_after_a_checkpoint_loses_no_metrics_row(tmp_path, corpus_dir, reference,
                                                            monkeypatch):
  """A checkpoint step that is not an eval step: its train row waited for the next
  step's flush, so a kill once the checkpoint had committed lost that row for
  good (the rerun resumes past it). Rows are flushed before every checkpoint."""
  c = tiny(corpus_dir, **{'train.steps': 12, 'train.checkpoint_every': 4,
                          'train.eval_every': 6})
  real = train.ckpt_lib.save

  def save_then_die(c, mngr, step, *args):
    real(c, mngr, step, *args)
    if step == 4:
      mngr.wait_until_finished()
      raise SystemExit('killed')  # Committed; the process dies before step 5.

  monkeypatch.setattr(train.ckpt_lib, 'save', save_then_die)
  with pytest.raises(SystemExit):
    train.train_and_evaluate(c, str(tmp_path), log=lambda *_: None)
  monkeypatch.setattr(train.ckpt_lib, 'save', real)
  msgs = []
  train.train_and_evaluate(c, str(tmp_path), log=msgs.append)
  assert 'resumed from step 4' in msgs[-1], msgs
  assert _losses(tmp_path) == reference


def test_write_atomic_replaces_whole_and_leaves_nothing_when_a_write_fails(tmp_path):
  path = str(tmp_path / 'f.json')
  workdir.write_atomic(path, 'old')
  with pytest.raises(UnicodeEncodeError):  # Fails mid-write, as a full disk would.
    workdir.write_atomic(path, 'new \ud800')
  assert open(path).read() == 'old' and os.listdir(tmp_path) == ['f.json']
  # Writers on other hosts (equal pids on a shared file system) and other
  # threads use other temporary names; threads writing at once leave one whole file.
  import threading
  names = []
  t = threading.Thread(target=lambda: names.append(workdir.tmp_name(path)))
  t.start()
  t.join()
  assert names[0] != workdir.tmp_name(path) and socket.gethostname() in names[0]
  texts = [str(i) * 100_000 for i in range(8)]
  threads = [threading.Thread(target=workdir.write_atomic, args=(path, x)) for x in texts]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert open(path).read() in texts and os.listdir(tmp_path) == ['f.json']


def test_workdir_lock_refuses_a_live_holder_and_takes_over_a_stale_one(tmp_path, corpus_dir):
  c = tiny(corpus_dir, **{'train.steps': 3})
  wd = tmp_path / 'run'
  wd.mkdir()
  holder = {'host': socket.gethostname(), 'pid': os.getpid(), 'what': 'training x',
            'started': '2026-01-01T00:00:00'}
  (wd / '.lock').write_text(json.dumps(holder))
  with pytest.raises(workdir.LockError, match=f'in use by training x .*pid {os.getpid()}'):
    train.train_and_evaluate(c, str(wd), log=lambda *_: None)
  assert not (wd / 'checkpoints').exists()
  dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'],
                        capture_output=True, text=True).stdout.strip()
  (wd / '.lock').write_text(json.dumps({**holder, 'pid': int(dead)}))
  msgs = []
  train.train_and_evaluate(c, str(wd), log=msgs.append)
  assert any('taking over the stale lock' in m for m in msgs), msgs
  assert not (wd / '.lock').exists()  # Released at the end.


def test_a_stale_lock_is_taken_over_by_one_process_only(tmp_path):
  """Four processes find the same dead holder at once: one takes the lock,
  the others are refused (they used to remove each other's fresh lock)."""
  import time
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  wd = tmp_path / 'run'
  wd.mkdir()
  dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'],
                        capture_output=True, text=True).stdout.strip()
  (wd / '.lock').write_text(json.dumps({'host': socket.gethostname(), 'pid': int(dead),
                                        'what': 'x', 'started': '?'}))
  go = tmp_path / 'go'
  script = ('import glob, os, sys, time\n'
            'from lm import workdir\n'
            f'while not os.path.exists({str(go)!r}): time.sleep(0.001)\n'
            'try:\n'
            f'  with workdir.lock({str(wd)!r}, log=lambda *_: None):\n'
            f'    open(os.path.join({str(wd)!r}, f"held-{{os.getpid()}}"), "w").close()\n'
            '    time.sleep(2.0)\n'  # Longer than any start-up skew.
            f'    print("held", len(glob.glob(os.path.join({str(wd)!r}, "held-*"))))\n'
            'except workdir.LockError:\n'
            '  print("refused")\n')
  procs = [subprocess.Popen([sys.executable, '-c', script], cwd=root, stdout=subprocess.PIPE,
                            text=True) for _ in range(4)]
  time.sleep(1.0)  # All started and polling.
  go.touch()
  outs = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
  assert outs == ['held 1', 'refused', 'refused', 'refused'], outs
  assert sorted(os.listdir(wd)) == [f for f in sorted(os.listdir(wd)) if f.startswith('held-')]


def test_divergence_halts_keeping_a_finite_checkpoint(tmp_path, corpus_dir):
  c = tiny(corpus_dir, **{'opt.lr': 1e30, 'opt.grad_clip': 0.0, 'train.steps': 12,
                          'train.checkpoint_every': 1, 'opt.warmup_steps': 0})
  wd = tmp_path / 'run'
  with pytest.raises(FloatingPointError, match='at step .*nonfinite.json'):
    train.train_and_evaluate(c, str(wd), log=lambda *_: None)
  info = json.loads((wd / 'nonfinite.json').read_text())
  steps = sorted(int(s) for s in os.listdir(wd / 'checkpoints') if s.isdigit())
  assert info['last_good_checkpoint'] in (steps[-1] if steps else None,)
  for s in steps:
    _, params = checkpoint.load_params(str(wd / 'checkpoints' / str(s)))
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(params))
  # skip: non-finite steps leave the parameters alone; too many in a row halt.
  skip = tiny(corpus_dir, **{'opt.lr': 1e30, 'opt.grad_clip': 0.0, 'train.steps': 12,
                             'opt.warmup_steps': 0, 'train.on_nonfinite': 'skip',
                             'train.max_skips': 3})
  with pytest.raises(FloatingPointError, match='4 steps in a row had a non-finite loss'):
    train.train_and_evaluate(skip, str(tmp_path / 'skip'), log=lambda *_: None)
  rows = metrics.read(str(tmp_path / 'skip'), 'train')
  assert sum(r.get('skipped', 0) for r in rows) >= 3
  for prev, row in zip(rows, rows[1:]):  # A skipped step leaves the parameters alone.
    if row.get('skipped'):
      assert row['param_norm'] == prev['param_norm'], (prev, row)


def _poisoned_build(monkeypatch, at_calls, loss_too: bool = True):
  """train.build whose train_step returns NaN parameters and loss on the given
  (1-based) calls: a divergence that a particular batch causes. Without
  `loss_too` the loss stays finite, as when the batch's gradient is NaN (the
  loss is computed before the update), and only the norms show it."""
  real_build, calls = train.build, [0]

  def build(*args, **kwargs):
    t = real_build(*args, **kwargs)
    step = t.train_step

    def poisoned(state, batch, sched):
      calls[0] += 1
      state, m = step(state, batch, sched)
      if calls[0] in at_calls:
        nan = lambda x: x * np.nan if np.issubdtype(x.dtype, np.floating) else x  # noqa: E731
        state = state.replace(params=jax.tree_util.tree_map(nan, state.params))
        m = {**m, 'grad_norm': m['grad_norm'] * np.nan, 'param_norm': m['param_norm'] * np.nan,
             **({'loss': m['loss'] * np.nan} if loss_too else {})}
      return state, m
    t.train_step = poisoned
    return t
  monkeypatch.setattr(train, 'build', build)
  return calls


def test_rollback_restores_the_last_good_checkpoint_and_drops_the_batch(
    tmp_path, corpus_dir, monkeypatch):
  c = tiny(corpus_dir, **{'train.steps': 10, 'train.checkpoint_every': 4,
                          'train.log_every': 1, 'train.on_nonfinite': 'rollback'})
  calls = _poisoned_build(monkeypatch, {6})  # Diverges at step 6 (after checkpoint 4).
  msgs = []
  out = train.train_and_evaluate(c, str(tmp_path / 'run'), log=msgs.append)
  assert out['step'] == 10 and np.isfinite(out['loss'])
  assert any('rolled back to step 4' in m for m in msgs), msgs
  rows = metrics.read(str(tmp_path / 'run'))
  rb = [r for r in rows if r['kind'] == 'rollback']
  assert len(rb) == 1 and rb[0]['step'] == 4 and rb[0]['diverged_at'] == 6
  assert rb[0]['dropped_batches'] == 1  # Step 5's loss was finite: only step 6's batch.
  train_steps = [r['step'] for r in rows if r['kind'] == 'train']
  assert train_steps == sorted(set(train_steps)) == list(range(1, 11))  # No step twice.
  assert calls[0] == 10 + 2  # Steps 5 and 6 ran twice (6 diverged, 5 replayed).
  # A NaN gradient with a finite loss: its own row's norms show it, so step 6's
  # batch is the one dropped (the finite loss had passed, and the rollback at
  # step 7 dropped a good batch and replayed the bad one).
  _poisoned_build(monkeypatch, {6}, loss_too=False)
  out = train.train_and_evaluate(c, str(tmp_path / 'grad'), log=lambda *_: None)
  rb = [r for r in metrics.read(str(tmp_path / 'grad')) if r['kind'] == 'rollback']
  assert [(r['step'], r['diverged_at'], r['dropped_batches']) for r in rb] == [(4, 6, 1)], rb
  assert rb[0]['why'] == 'gradient norm is nan' and np.isfinite(out['loss'])
  # Always diverging: halts after max_rollbacks, keeping the last good checkpoint.
  c2 = tiny(corpus_dir, **{'train.steps': 10, 'train.checkpoint_every': 2,
                           'train.on_nonfinite': 'rollback', 'train.max_rollbacks': 2})
  _poisoned_build(monkeypatch, set(range(5, 100)))
  with pytest.raises(FloatingPointError, match='after 2 rollbacks'):
    train.train_and_evaluate(c2, str(tmp_path / 'run2'), log=lambda *_: None)
  assert json.loads((tmp_path / 'run2' / 'nonfinite.json').read_text())[
      'last_good_checkpoint'] == 4


@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_starting_exits_75_and_releases_everything(tmp_path, sig):
  """Before the training loop (here: during the imports) a preemption signal
  exits with 75 and a one-line message, not by the signal (-15) or with a
  KeyboardInterrupt traceback; no lock is left behind."""
  import time
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  p = subprocess.Popen([sys.executable, '-m', 'experiments.train', '--config=configs/tiny.py',
                        f'--workdir={tmp_path / "run"}'], cwd=root, stderr=subprocess.PIPE,
                       text=True)
  time.sleep(1.0)  # Its handler is set in its first lines; the imports take longer.
  p.send_signal(sig)
  err = p.communicate(timeout=120)[1]
  assert p.returncode == 75, err
  assert 'stopped by SIG' in err and 'Traceback' not in err, err
  assert not (tmp_path / 'run' / '.lock').exists()


def test_a_full_disk_stops_between_checkpoints_in_one_line(tmp_path, corpus_dir, monkeypatch):
  """Too little space for the next checkpoint: DiskFull before orbax writes a
  byte (its writer threads would print hundreds of lines), earlier steps
  intact; ENOSPC from inside a writer is recognised too."""
  c = tiny(corpus_dir, **{'train.steps': 6, 'train.checkpoint_every': 2})
  real, saves = workdir._free_bytes, []

  def free(path):  # Room for the first checkpoint only.
    saves.append(path)
    return real(path) if len(saves) == 1 else 1000

  monkeypatch.setattr(workdir, '_free_bytes', free)
  with pytest.raises(workdir.DiskFull, match=r'has 0.0 MiB free, and the checkpoint of step 4 '
                                             r'needs about \d+\.\d MiB'):
    train.train_and_evaluate(c, str(tmp_path / 'run'), log=lambda *_: None)
  assert sorted(os.listdir(tmp_path / 'run' / 'checkpoints')) == ['2']
  assert workdir.disk_full(ValueError('RESOURCE_EXHAUSTED: ... No space left on device'))
  assert workdir.disk_full(OSError(28, 'x')) and not workdir.disk_full(OSError(13, 'x'))


def test_a_second_signal_during_training_ends_at_once_with_75(tmp_path):
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  script = ('import os, signal, time\n'
            'from lm import workdir\n'
            'workdir.exit_on_signals()\n'
            f'with workdir.lock({str(tmp_path)!r}), workdir.Preemption() as p:\n'
            '  os.kill(os.getpid(), signal.SIGINT)\n'
            '  time.sleep(0.1)\n'
            '  assert p.signame == "SIGINT"\n'
            '  os.kill(os.getpid(), signal.SIGINT)\n'
            '  time.sleep(10)\n')
  r = subprocess.run([sys.executable, '-c', script], cwd=root, capture_output=True, text=True,
                     timeout=60)
  assert r.returncode == 75 and 'a second SIGINT during training' in r.stderr, r.stderr
  assert not (tmp_path / '.lock').exists()


def test_a_signal_during_the_last_step_still_stops_the_caller(tmp_path, corpus_dir,
                                                              monkeypatch):
  """A SIGTERM in the last step: the run is whole (checkpoint and final eval
  written) and its result names the signal, so a sweep stops instead of
  training its next run in the scheduler's grace period (the flag had died
  with the loop's handler)."""
  real_build = train.build
  c = tiny(corpus_dir, **{'train.steps': 4, 'train.checkpoint_every': 4})

  def build(cfg, *args, **kwargs):
    t = real_build(cfg, *args, **kwargs)
    step = t.train_step

    def signalling(state, batch, sched):
      if int(state.step) == cfg.train.steps - 1:
        os.kill(os.getpid(), signal.SIGTERM)  # The loop's Preemption handler takes it.
      return step(state, batch, sched)
    t.train_step = signalling
    return t

  monkeypatch.setattr(train, 'build', build)
  out = train.train_and_evaluate(c, str(tmp_path), log=lambda *_: None)
  assert out['preempted'] == 'SIGTERM' and out['step'] == 4 and np.isfinite(out['loss'])
  assert os.listdir(tmp_path / 'checkpoints') == ['4']
  assert [r['step'] for r in metrics.read(str(tmp_path), 'eval')].count(4) == 1
  monkeypatch.setattr(train, 'build', real_build)
  again = train.train_and_evaluate(c, str(tmp_path), log=lambda *_: None)  # Read back.
  assert again['preempted'] is None and again['loss'] == out['loss']
  # Multi-host: the notice every process sees in the last step (orbax's
  # reached_preemption) is reported too; it had been checkpointed, then dropped.
  real_stop = train.stop_signal
  monkeypatch.setattr(train, 'stop_signal', lambda p, mngr, step, count: real_stop(
      p, type('M', (), {'reached_preemption': lambda self, s: s == 4})(), step, 2))
  out = train.train_and_evaluate(c, str(tmp_path / 'multi'), log=lambda *_: None)
  assert out['preempted'] == 'a preemption notice' and out['step'] == 4
  assert os.listdir(tmp_path / 'multi' / 'checkpoints') == ['4']


def test_skipped_steps_in_a_row_survive_a_preemption(tmp_path, corpus_dir, monkeypatch):
  """on_nonfinite=skip: the run of skipped steps and the flags not yet in a
  metric row are checkpointed (a 'skips' row), so a run preempted between rows
  halts where an uninterrupted one does, with the same rows; they had lived in
  memory only, so train.max_skips never stopped a run preempted often enough."""
  c = tiny(corpus_dir, **{'opt.lr': 1e30, 'opt.grad_clip': 0.0, 'opt.warmup_steps': 0,
                          'train.on_nonfinite': 'skip', 'train.max_skips': 5,
                          'train.steps': 12, 'train.log_every': 4, 'train.eval_every': 100,
                          'train.checkpoint_every': 100})
  real_build, term_at = train.build, {6}

  def build(cfg, *args, **kwargs):
    t = real_build(cfg, *args, **kwargs)
    step = t.train_step

    def signalling(state, batch, sched):
      if int(state.step) + 1 in term_at:
        os.kill(os.getpid(), signal.SIGTERM)  # Preempted between the rows at 4 and 8.
      return step(state, batch, sched)
    t.train_step = signalling
    return t

  monkeypatch.setattr(train, 'build', build)
  with pytest.raises(workdir.Preempted):
    train.train_and_evaluate(c, str(tmp_path / 'split'), log=lambda *_: None)
  term_at.clear()
  for wd in ('split', 'whole'):
    with pytest.raises(FloatingPointError, match='8 steps in a row .* at step 8'):
      train.train_and_evaluate(c, str(tmp_path / wd), log=lambda *_: None)
  rows = {wd: [(r['step'], r['skipped']) for r in metrics.read(str(tmp_path / wd), 'train')]
          for wd in ('split', 'whole')}
  assert rows['split'] == rows['whole'] == [(4, 4.0)], rows
  assert [(r['run'], r['flags']) for r in metrics.read(str(tmp_path / 'split'), 'skips')] == [
      (4, [1, 1])]


def test_a_damaged_metrics_row_is_refused_on_resume_not_dropped(tmp_path, corpus_dir):
  """Only a torn last line is a kill's doing; a damaged row before it is
  refused in one line before anything is written (a resume had silently
  deleted it while truncating)."""
  c = tiny(corpus_dir, **{'train.steps': 6, 'train.checkpoint_every': 2, 'train.log_every': 1})
  train.train_and_evaluate(c, str(tmp_path), stop_at=4, log=lambda *_: None)
  path = tmp_path / 'metrics.jsonl'
  lines = path.read_text().splitlines(keepends=True)
  lines[2] = lines[2][:20] + '\n'
  path.write_text(''.join(lines))
  before = {p: p.read_bytes() for p in tmp_path.rglob('*') if p.is_file()}
  with pytest.raises(metrics.MetricsError, match=r'metrics.jsonl:3 is not a JSON row'):
    train.train_and_evaluate(c, str(tmp_path), log=lambda *_: None)
  assert {p: p.read_bytes() for p in tmp_path.rglob('*') if p.is_file()} == before
  # A torn last line alone (a kill mid-write) is dropped and the run goes on.
  lines[2] = json.dumps({'step': 2, 'kind': 'train', 'loss': 1.0}) + '\n'
  path.write_text(''.join(lines) + '{"step": 4, "ki')
  assert train.train_and_evaluate(c, str(tmp_path), log=lambda *_: None)['step'] == 6
  # A fresh start (no checkpoint) drops every earlier row, damaged ones too.
  fresh = tmp_path / 'fresh'
  fresh.mkdir()
  (fresh / 'metrics.jsonl').write_text('{"step": 1, "kind": "train"}\n{"ste\n{"step": 2}\n')
  assert train.train_and_evaluate(c, str(fresh), log=lambda *_: None)['step'] == 6
  assert min(r['step'] for r in metrics.read(str(fresh))) == 0


def test_resuming_refuses_free_fields_that_change_the_optimizer_state(tmp_path, corpus_dir):
  """opt.grad_clip on/off and opt.freeze_backbone change the optimizer state's
  tree: refused by name (the restore had failed as 'damaged, remove the step')."""
  import dataclasses as dc
  c = train.train_and_evaluate(tiny(corpus_dir, **{'train.steps': 2}), str(tmp_path),
                               log=lambda *_: None)['config']  # Its vocabulary resolved.
  for opt, field in [(dc.replace(c.opt, grad_clip=0.0), 'opt.grad_clip: 1.0 != 0.0'),
                     (dc.replace(c.opt, freeze_backbone=True), 'opt.freeze_backbone')]:
    with pytest.raises(checkpoint.CheckpointError, match=re.escape(field)):
      checkpoint.check_workdir(str(tmp_path), dc.replace(c, opt=opt))
  assert checkpoint.check_workdir(str(tmp_path),
                                  dc.replace(c, opt=dc.replace(c.opt, grad_clip=0.5)))


def test_a_preempted_cli_exits_75_at_once_with_its_output_flushed(tmp_path):
  """exit_preempted skips Python's finalization, in which a second signal met
  the default handlers (exit 143/130); what was printed still comes out."""
  script = ('import signal, time\n'
            'from lm import workdir\n'
            f'with workdir.lock({str(tmp_path)!r}):\n'
            '  print("results so far")\n'
            '  workdir.exit_preempted("stopped by SIGTERM at step 3")\n')
  r = subprocess.run([sys.executable, '-c', script], cwd=ROOT, capture_output=True, text=True,
                     timeout=60)
  assert r.returncode == 75 and r.stdout == 'results so far\n', (r.returncode, r.stdout)
  assert r.stderr == 'stopped by SIGTERM at step 3\n'
  assert not (tmp_path / '.lock').exists()


def test_a_checkpoint_of_another_process_count_resumes_at_its_global_position(
    tmp_path, corpus_dir, reference):
  """Grain keeps each process's data position in its own file, which for our
  pipeline is the same global batch count in every process: a step written by
  2 processes resumes in 1 where they were (tests/test_sharding.py does it
  with two real processes). Positions that disagree are refused in one line,
  leaving the checkpoint as it was; so is a position grain would take and
  fail on at the first batch (a float: it crashed with a traceback)."""
  import shutil
  c = tiny(corpus_dir, **{'train.steps': 12, 'train.checkpoint_every': 3})
  wd = tmp_path / 'run'
  train.train_and_evaluate(c, str(wd), stop_at=3, log=lambda *_: None)
  edited = tmp_path / 'edited'
  shutil.copytree(wd, edited)
  (edited / 'checkpoints' / '3' / 'data' / 'process_0-of-1.json').write_text('{"next_index": 3.0}')
  with pytest.raises(checkpoint.CheckpointError, match=r'step 3 .* could not be restored '
                     r'\(ValueError: data position next_index=3.0 is not a count of batches\)'):
    train.train_and_evaluate(c, str(edited), log=lambda *_: None)
  assert sorted(os.listdir(edited / 'checkpoints')) == ['3']
  data = wd / 'checkpoints' / '3' / 'data'
  (data / 'process_0-of-1.json').rename(data / 'process_0-of-2.json')
  (data / 'process_1-of-2.json').write_text((data / 'process_0-of-2.json').read_text())
  bad = tmp_path / 'bad'
  shutil.copytree(wd, bad)
  (bad / 'checkpoints' / '3' / 'data' / 'process_1-of-2.json').write_text('{"next_index": 4}')
  with pytest.raises(checkpoint.CheckpointError, match=r'step 3 .* written by 2 process\(es\) '
                     r'whose data positions .* are not one global position, and this run has 1: '
                     r'resume it with 2 process\(es\)'):
    train.train_and_evaluate(c, str(bad), log=lambda *_: None)
  assert (bad / 'checkpoints' / '3' / 'data' / 'process_1-of-2.json').read_text() == \
      '{"next_index": 4}'
  (bad / 'checkpoints' / '3' / 'data' / 'process_1-of-2.json').unlink()  # Damaged, not 2's.
  with pytest.raises(checkpoint.CheckpointError, match=r'step 3 .* is damaged: a data position '
                     r'file .* is missing or unreadable \(1 of 2 readable\)'):
    train.train_and_evaluate(c, str(bad), log=lambda *_: None)
  train.train_and_evaluate(c, str(wd), log=lambda *_: None)
  assert _losses(wd) == reference


def test_a_run_from_before_the_data_order_record_resumes_on_its_own_batches(
    tmp_path, corpus_dir, monkeypatch):
  """Runs started before the shuffle seed was hashed (data order 1) have no
  data_order.json; resumed, they keep order 1, so they train on the batches
  they would have (the new order had silently repeated some windows of the
  epoch in flight and skipped others). New runs record order 2."""
  from lm import data as data_lib
  c = tiny(corpus_dir, **{'train.steps': 6, 'train.checkpoint_every': 3})
  whole, split = str(tmp_path / 'whole'), str(tmp_path / 'split')
  monkeypatch.setattr(data_lib, 'ORDER', 1)  # The code before the record.
  train.train_and_evaluate(c, whole, log=lambda *_: None)
  train.train_and_evaluate(c, split, stop_at=3, log=lambda *_: None)
  os.remove(os.path.join(split, data_lib.ORDER_FILE))  # It wrote none.
  monkeypatch.setattr(data_lib, 'ORDER', 2)
  train.train_and_evaluate(c, split, log=lambda *_: None)
  losses = lambda w: [r['loss'] for r in metrics.read(w, 'train')]  # noqa: E731
  assert losses(split) == losses(whole)
  assert json.load(open(os.path.join(split, data_lib.ORDER_FILE))) == {'order': 1}
  fresh = str(tmp_path / 'fresh')
  train.train_and_evaluate(c, fresh, log=lambda *_: None)
  assert json.load(open(os.path.join(fresh, data_lib.ORDER_FILE))) == {'order': 2}
  assert losses(fresh)[1:] != losses(whole)[1:]  # Other batches after the first step's.
  with open(os.path.join(split, data_lib.ORDER_FILE), 'w') as f:
    f.write('{"order": 7}')
  from lm.config import ConfigError
  with pytest.raises(ConfigError, match='data order 7 is not one this version reads'):
    train.train_and_evaluate(c, split, log=lambda *_: None)
