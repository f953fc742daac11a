"""Packed training (lm/pack.py): each member trains as its own single run."""

import dataclasses

import flax.linen as nn
import jax
import numpy as np
import pytest

from lm import optimizer as opt_lib
from lm import pack, train
from lm.model import Transformer
from tests.helpers import tiny


def _member_configs():
  base = tiny(**{'data.document_mask': False, 'train.steps': 6})
  out = []
  for k, (lr, steps, seed) in enumerate([(1e-2, 6, 0), (3e-3, 6, 1), (2e-2, 3, 2)]):
    out.append(dataclasses.replace(
        base, name=f'm{k}', opt=dataclasses.replace(base.opt, lr=lr),
        train=dataclasses.replace(base.train, steps=steps, seed=seed)))
  return [train.resolve_vocab(c, 259) for c in out]


def _single_run(c, batches):
  model = Transformer(c.model)
  tx = opt_lib.unit_lr(c.opt)
  state = jax.jit(lambda r: nn.unbox(train.init_fn(c, model, tx)(r)))(
      jax.random.key(c.train.seed))
  step = jax.jit(train.make_train_step(c, model, tx))
  losses = []
  for b in batches[:c.train.steps]:
    state, m = step(state, b)
    losses.append(float(m['loss']))
  return losses, state


def test_members_train_as_their_single_runs():
  configs = _member_configs()
  rng = np.random.default_rng(0)
  batches = [[{'tokens': rng.integers(0, 256, (8, 17)).astype(np.int32)} for _ in range(6)]
             for _ in configs]
  p = pack.Pack(tuple(configs))
  step, state, scal = pack.make_step(p), pack.init(p), p.scalars()
  packed = []
  for i in range(6):
    state, m = step(state, pack.stack_batches([b[i] for b in batches]), scal)
    packed.append(np.asarray(m['loss']))
  packed = np.stack(packed, axis=1)  # K x steps
  for k, c in enumerate(configs):
    losses, single = _single_run(c, batches[k])
    np.testing.assert_allclose(packed[k, :c.train.steps], losses, rtol=1e-5)
    mine = pack.member(state, k)
    assert int(mine.step) == c.train.steps  # The 3-step member stopped at 3.
    for a, b in zip(jax.tree_util.tree_leaves(mine.params),
                    jax.tree_util.tree_leaves(single.params)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=5e-5)  # Noise on ~0 leaves (key bias).


def test_pack_refuses_members_of_another_shape():
  a, b = _member_configs()[:2]
  b = dataclasses.replace(b, model=dataclasses.replace(b.model, d_model=64))
  with pytest.raises(ValueError, match='model.d_model'):
    pack.Pack((a, b))
  b = dataclasses.replace(a, model=dataclasses.replace(a.model, init_std=0.5))
  with pytest.raises(ValueError, match='model.init_std'):  # Would be silently ignored.
    pack.Pack((a, b))


def test_train_pack_checks_eval_probes_and_the_cache_before_any_work(tmp_path):
  """As train_and_evaluate: a bias CSV the probe cannot read, or a data
  cache that cannot be written, fails before the data are prepared."""
  from lm.config import ConfigError
  from lm.workdir import NotWritable
  a, b = _member_configs()[:2]
  wds = [str(tmp_path / 'a'), str(tmp_path / 'b')]
  bad = [dataclasses.replace(c, train=dataclasses.replace(
      c.train, eval_bias_csv=str(tmp_path / 'missing.csv'))) for c in (a, b)]
  with pytest.raises(ConfigError, match='missing.csv'):
    pack.train_pack(bad, wds)
  (tmp_path / 'file').write_text('')
  cache = dataclasses.replace(a, data=dataclasses.replace(a.data, cache_dir=str(tmp_path / 'file')))
  with pytest.raises(NotWritable, match='data cache'):
    pack.train_pack([cache, dataclasses.replace(b, data=cache.data)], wds)
  assert not any(p.exists() for p in map(type(tmp_path), wds))


@pytest.mark.slow
def test_sweep_packs_seeds_and_lengths_like_single_runs(tmp_path, corpus_dir):
  """sweep.pack=4: 2 seeds x 2 lengths of one size train as one pack (the
  member axis split over the fake devices, the stack shrinking to the two long
  members after step 6); each member has its own run directory, metrics and
  checkpoints, and its final-only probes at its own last step; a rerun skips
  them, and a long member lost after the shrink resumes alone from its
  checkpoint to the same final loss."""
  import json
  import os
  import shutil

  from lm import metrics, sweep
  from tests.helpers import tiny_cd
  from tests.test_probes import PAIRS
  cd = tiny_cd(corpus_dir, **{'train.eval_batches': 1, 'train.eval_bias_csv': PAIRS})
  cd.sweep = dict(design='grid', convention='exact', params=[6000.0], tokens=[768.0, 1536.0],
                  aspect=8, head_dim=8, evals_per_run=2, seeds=(0, 1), lrs=(1e-2,),
                  bootstrap=0, grid='coarse')
  runs = sweep.make_plan(cd)
  steps = {r.name: sweep.run_config(cd, r, 2).train.steps for r in runs}
  assert sorted(steps.values()) == [6, 6, 12, 12]
  cd.sweep.pack = 4
  assert [len(u) for u in sweep.plan_packs(cd, runs)] == [4]
  wd = str(tmp_path / 'packed')
  packed = {r['name']: r for r in sweep.run_all(cd, wd, log=print)}
  for name, r in packed.items():
    assert r['status'] == 'done' and len(r['pack']) == 4, r
    rdir = os.path.join(wd, 'runs', name)
    assert os.path.exists(os.path.join(rdir, 'config.json'))
    assert os.listdir(os.path.join(rdir, 'checkpoints'))
    n = steps[name]
    evals = metrics.read(rdir, 'eval')
    assert [e['step'] for e in evals] == [n // 2, n]
    # The final-only probes (bias) at each member's own last step.
    assert ['bias/all/stereotype_preferred' in e for e in evals] == [False, True], name
    # The rows a single run writes: FLOPs and MFU, the device's peak.
    rows = metrics.read(rdir, 'train')
    assert rows[-1]['flops'] > 0 and 0 < rows[-1]['mfu'] < 1, rows[-1]
    assert metrics.read(rdir, 'setup')[0]['peak_flops_per_device'] > 0
  assert all(r['status'] == 'done' for r in sweep.run_all(cd, wd, log=print))
  # A long member's run lost after its mid-way checkpoint (step 6, where the
  # stack shrank): it resumes from there alone and ends where it ended in the
  # pack (members equal single runs at every step before the shrink:
  # test_members_train_as_their_single_runs).
  victim_name = max(steps, key=steps.get)
  want = packed[victim_name]['final_loss']
  victim = os.path.join(wd, 'runs', victim_name)
  os.remove(os.path.join(victim, 'result.json'))
  shutil.rmtree(os.path.join(victim, 'checkpoints', '12'))
  again = {r['name']: r for r in sweep.run_all(cd, wd, log=print)}
  np.testing.assert_allclose(again[victim_name]['final_loss'], want, rtol=2e-4)
  with open(os.path.join(victim, 'result.json')) as f:
    assert json.load(f)['status'] == 'done'
  # Trained alone, its pack's record (lm/pack.resume_steps) no longer holds.
  assert [os.path.exists(os.path.join(wd, 'runs', n, pack.RECORD)) for n in steps] == \
      [n != victim_name for n in steps]
  # Two members to record again, one of them held by another process: the
  # other trains (resumed at its end), the held one is left to its holder.
  from lm import workdir
  held, other = [r.name for r in runs if r.name != victim_name][:2]
  for name in (held, other):
    os.remove(os.path.join(wd, 'runs', name, 'result.json'))
  logs = []
  with workdir.lock(os.path.join(wd, 'runs', held), 'training elsewhere'):
    third = {r['name']: r for r in sweep.run_all(cd, wd, log=logs.append)}
  assert held not in third and third[other]['status'] == 'done', (third, logs)
  assert any(f'{held}: in use by another process' in line for line in logs), logs


@pytest.mark.slow
def test_train_pack_skips_like_a_single_run_and_resumes_a_finished_member(tmp_path, corpus_dir):
  """train.on_nonfinite=skip in a pack: the diverging member's non-finite steps
  leave its parameters alone and it halts once more than train.max_skips
  steps in a row were skipped (steps 1-4: at lr 1e30 every update overflows
  the parameters; seen at its row of step 4, rows every 2 steps), as a single
  run does, while its pack-mates train on; a member already at its end
  in a later pack is not trained again (its result read back), and every
  member's 'wall' and train rows' 'pack' (the stack's width) say what it cost."""
  import dataclasses as dc
  import json
  import os

  from lm import metrics
  base = tiny(corpus_dir, **{'train.on_nonfinite': 'skip', 'train.max_skips': 3,
                             'opt.grad_clip': 0.0, 'opt.warmup_steps': 0, 'train.steps': 10,
                             'train.checkpoint_every': 4, 'train.eval_every': 4})
  ok = dc.replace(base, name='ok')
  bad = dc.replace(base, name='bad', opt=dc.replace(base.opt, lr=1e30), train=dc.replace(
      base.train, log_every=2, checkpoint_every=3))
  short = dc.replace(base, name='short', train=dc.replace(base.train, steps=4))
  wds = [str(tmp_path / n) for n in ('ok', 'bad', 'short')]
  out = pack.train_pack([ok, bad, short], wds, log=lambda *_: None)
  with pytest.raises(FloatingPointError, match='4 steps in a row had a non-finite loss') as e:
    train.train_and_evaluate(bad, str(tmp_path / 'bad_alone'), log=lambda *_: None)
  assert 'at step 4;' in str(e.value)
  assert out[1]['error'].startswith('4 steps in a row had a non-finite loss'), out[1]
  # One check for both loops (train.row_verdict): the same message and advice.
  assert out[1]['error'] == str(e.value).replace(str(tmp_path / 'bad_alone'), wds[1])
  # A sweep records it as it records the run failing alone (type name first).
  from lm import sweep
  assert sweep._record(out[1])['error'] == f'FloatingPointError: {out[1]["error"][:500]}'
  assert json.loads(open(os.path.join(wds[1], 'nonfinite.json')).read())['step'] == 4
  rows = metrics.read(wds[1], 'train')
  assert [(r['step'], r['skipped']) for r in rows] == [(2, 2)]  # Both steps since the last row.
  assert np.isfinite(rows[0]['param_norm'])  # Skipped steps leave the parameters alone.
  assert 'error' not in out[0] and out[0]['step'] == 10
  assert [r['pack'] for r in metrics.read(wds[0], 'train')] == [3] * 4 + [1] * 6
  # Of the pack's 10 + 4 + 4 member-steps 'short' and 'bad' trained 4 each:
  # their shares of the step time are 4/18, 'ok''s 10/18; 'ok' paid its own 3 evaluations.
  w_ok, w_bad, w_short = (o['wall'] for o in out)
  np.testing.assert_allclose(w_short['train'] / w_ok['train'], 4 / 10, rtol=1e-6)
  np.testing.assert_allclose(w_bad['train'] / w_ok['train'], 4 / 10, rtol=1e-6)
  assert w_ok['eval'] > w_short['eval'] > 0 and w_ok['setup'] == w_short['setup']
  # 'short' again, now packed with a fresh member: resumed at its end, it is
  # evaluated from its metrics, not trained, and its rows are not repeated.
  again = pack.train_pack([short, dc.replace(short, name='new')],
                          [wds[2], str(tmp_path / 'new')], log=lambda *_: None)
  assert again[0]['loss'] == out[2]['loss']
  # Its wall time is the first pack's share (the 'wall' row of its last
  # checkpoint) and the second's: no training, an even share of its setup.
  last = metrics.read(wds[2], 'wall')[-1]
  assert again[0]['wall_resumed'] == pytest.approx(sum(last[p] for p in train.WALL_PARTS))
  assert again[0]['wall']['train'] == pytest.approx(last['train'])
  assert again[0]['wall']['setup'] > last['setup']
  assert [r['step'] for r in metrics.read(wds[2], 'train')] == [1, 2, 3, 4]
  assert [r['step'] for r in metrics.read(str(tmp_path / 'new'), 'train')] == [1, 2, 3, 4]
  assert [r['pack'] for r in metrics.read(str(tmp_path / 'new'), 'train')] == [1] * 4


def test_build_reuses_the_compiled_steps_of_a_shape():
  """Runs that differ only in what a run reads as inputs (train.RUN_INPUTS:
  the pack's per-member fields) share one Trainer's jitted steps, each with its
  own config and schedule; another shape builds its own."""
  a = train.resolve_vocab(tiny(**{'train.steps': 6}), 259)
  b = dataclasses.replace(a, name='b', opt=dataclasses.replace(a.opt, lr=0.5),
                          train=dataclasses.replace(a.train, seed=3, steps=9))
  wide = dataclasses.replace(a, model=dataclasses.replace(a.model, mlp_dim=128))
  devs = jax.devices()[:1]
  ta, tb, tw = (train.build(c, devs) for c in (a, b, wide))
  assert train.shape_of(a) == train.shape_of(b) != train.shape_of(wide)
  assert tb.train_step is ta.train_step and tb.init_step is ta.init_step
  assert tw.train_step is not ta.train_step
  assert tb.cfg is b and int(tb.sched['total_steps']) == 9 and float(tb.sched['lr']) == 0.5
  with tb.context():  # b's own seed.
    k_a, k_b = (jax.random.key_data(t.init().rng) for t in (ta, tb))
  assert not np.array_equal(k_a, k_b)


def test_bench_pack_times_both_ways_with_the_member_axis_split():
  """tools/bench_train --pack's measurement, small: K members one after
  another and packed, the packed step's member axis over 2 devices."""
  from tools import bench_train
  r = bench_train.bench_pack(16, K=2, steps=1, n_devices=2)
  assert r['devices'] == 2 and r['K'] == 2 and r['params'] > 0
  assert r['seq ms'] > 0 and r['packed ms'] > 0
  np.testing.assert_allclose(r['speed-up'], r['seq ms'] / r['packed ms'])
  np.testing.assert_allclose(r['packed tokens/s'] / r['seq tokens/s'], r['speed-up'])


def _before_step_call(monkeypatch, n: int, action):
  """Patches pack.make_step so that `action` runs before the n-th step call;
  returns the real make_step, to restore."""
  real, calls = pack.make_step, [0]

  def make_step(p):
    step = real(p)

    def wrapped(*args):
      calls[0] += 1
      if calls[0] == n:
        action()
      return step(*args)
    return wrapped

  monkeypatch.setattr(pack, 'make_step', make_step)
  return real


def test_a_signal_during_a_pack_s_last_step_still_stops_the_caller(tmp_path, corpus_dir,
                                                                   monkeypatch):
  """As for a single run (tests/test_faults.py): the members are whole and
  their results name the signal; a rerun reads them back without training."""
  import os
  import signal

  base = tiny(corpus_dir, **{'train.steps': 3, 'train.checkpoint_every': 3})
  cs = [dataclasses.replace(base, name=f'p{k}', train=dataclasses.replace(base.train, seed=k))
        for k in range(2)]
  wds = [str(tmp_path / c.name) for c in cs]
  # The loop's Preemption handler takes it.
  real = _before_step_call(monkeypatch, 3, lambda: os.kill(os.getpid(), signal.SIGTERM))
  out = pack.train_pack(cs, wds, log=lambda *_: None)
  assert [(o['step'], o['preempted']) for o in out] == [(3, 'SIGTERM')] * 2
  assert all(os.listdir(os.path.join(wd, 'checkpoints')) == ['3'] for wd in wds)
  monkeypatch.setattr(pack, 'make_step', real)
  again = pack.train_pack(cs, wds, log=lambda *_: None)  # Read back, not trained.
  assert [o['loss'] for o in again] == [o['loss'] for o in out]
  assert all(o['preempted'] is None and o['wall']['train'] > 0 for o in again)


def test_a_packed_member_s_skips_in_a_row_survive_a_preemption(tmp_path, corpus_dir,
                                                              monkeypatch):
  """As for a single run (tests/test_faults.py): preempted at step 6, between
  its rows at 4 and 8, the diverging member halts at step 8 (8 skipped in a
  row > max_skips 5) as it does uninterrupted; its run of skips had been
  forgotten on resume, so it went on to halt later, at step 12."""
  import os
  import signal

  base = tiny(corpus_dir, **{'train.on_nonfinite': 'skip', 'train.max_skips': 5,
                             'opt.grad_clip': 0.0, 'opt.warmup_steps': 0, 'train.steps': 12,
                             'train.log_every': 4, 'train.eval_every': 100,
                             'train.checkpoint_every': 100})
  ok = dataclasses.replace(base, name='ok')
  bad = dataclasses.replace(base, name='bad', opt=dataclasses.replace(base.opt, lr=1e30))
  wds = [str(tmp_path / n) for n in ('ok', 'bad')]
  real = _before_step_call(monkeypatch, 6, lambda: os.kill(os.getpid(), signal.SIGTERM))
  from lm import metrics, workdir
  with pytest.raises(workdir.Preempted):
    pack.train_pack([ok, bad], wds, log=lambda *_: None)
  monkeypatch.setattr(pack, 'make_step', real)
  out = pack.train_pack([ok, bad], wds, log=lambda *_: None)
  assert out[1]['error'].startswith('8 steps in a row had a non-finite loss'), out[1]
  assert 'at step 8;' in out[1]['error'] and out[0]['step'] == 12
  assert [(r['step'], r['skipped']) for r in metrics.read(wds[1], 'train')] == [(4, 4.0)]


def _pair_and_its_uninterrupted_run(tmp_path, corpus_dir, **over):
  """Members A (8 steps, checkpoints every 4) and B (12, every 6), the results
  of their pack trained without interruption into tmp_path/full, and the run
  directories (tmp_path/killed/A, B) for the interrupted one."""
  import dataclasses as dc
  base = tiny(corpus_dir, **{'train.eval_every': 100, **over})
  A = dc.replace(base, name='A', train=dc.replace(base.train, steps=8, checkpoint_every=4,
                                                  seed=1))
  B = dc.replace(base, name='B', opt=dc.replace(base.opt, lr=5e-3),
                 train=dc.replace(base.train, steps=12, checkpoint_every=6, seed=2))
  full = pack.train_pack([A, B], [str(tmp_path / 'full' / n) for n in 'AB'], log=lambda *_: None)
  return A, B, full, [str(tmp_path / 'killed' / n) for n in 'AB']


def _steps_on_disk(wds: list[str]) -> list[list[int]]:
  import os
  return [sorted(int(e) for e in os.listdir(os.path.join(wd, 'checkpoints')) if e.isdigit())
          for wd in wds]


def _assert_same_params(tmp_path, wds: list[str]) -> None:
  """Each killed member's final params equal its uninterrupted twin's, bit for bit."""
  from lm import checkpoint as ckpt_lib
  for n, wd in zip('AB', wds):
    _, p1 = ckpt_lib.load_params(str(tmp_path / 'full' / n))
    _, p2 = ckpt_lib.load_params(wd)
    jax.tree_util.tree_map(np.testing.assert_array_equal, p1, p2)


def test_a_pack_killed_between_checkpoints_resumes_as_if_uninterrupted(tmp_path, corpus_dir,
                                                                      monkeypatch):
  """Members of different lengths once saved at their own steps (A every 4, B
  every 6): killed after step 6 (no signal, so no last save), A resumed at 4
  and B at 6, A trained steps 5-6 alone and B steps 7-8 beside A's replay, at
  other stack widths than before, and B's result differed. Checkpoints are
  pack-wide now: both resume at 6 and end bit-identical to a run never killed."""
  A, B, full, wds = _pair_and_its_uninterrupted_run(tmp_path, corpus_dir)

  def die():  # After step 6's checkpoints, before step 7.
    raise SystemExit('killed')

  real = _before_step_call(monkeypatch, 7, die)
  with pytest.raises(SystemExit):
    pack.train_pack([A, B], wds, log=lambda *_: None)
  monkeypatch.setattr(pack, 'make_step', real)
  assert _steps_on_disk(wds) == [[4, 6], [4, 6]]
  again = pack.train_pack([A, B], wds, log=lambda *_: None)
  assert [o['loss'] for o in again] == [o['loss'] for o in full]
  _assert_same_params(tmp_path, wds)


def test_a_kill_between_two_members_commits_replays_the_pack_exactly(tmp_path, corpus_dir,
                                                                      monkeypatch):
  """Each member commits its own checkpoint: killed after A's step-6 commit and
  before B's, A is a checkpoint ahead. Resumed there, B trained steps 5-6 in a
  stack of one instead of two and its last bits differed; the pack's record
  (pack.json) takes A back to step 4, its spare checkpoint (keep_checkpoints=1
  keeps one more until both commit), and both end bit-identical to a run never
  killed, with one checkpoint each on disk."""
  from lm import checkpoint as ckpt_lib
  A, B, full, wds = _pair_and_its_uninterrupted_run(tmp_path, corpus_dir,
                                                    **{'train.keep_checkpoints': 1})
  real = ckpt_lib.save

  def save(c, mngr, step, *args):
    if c.name == 'B' and step == 6:
      raise SystemExit('killed')  # A's step 6 commits as the managers close.
    return real(c, mngr, step, *args)

  monkeypatch.setattr(ckpt_lib, 'save', save)
  with pytest.raises(SystemExit):
    pack.train_pack([A, B], wds, log=lambda *_: None)
  monkeypatch.setattr(ckpt_lib, 'save', real)
  assert _steps_on_disk(wds) == [[4, 6], [4]]
  said = []
  again = pack.train_pack([A, B], wds, log=said.append)
  assert said == ["the pack A,B was stopped between its members' checkpoints: A goes back "
                  'from step 6 to 4']
  assert [o['loss'] for o in again] == [o['loss'] for o in full]
  assert _steps_on_disk(wds) == [[8], [12]]
  _assert_same_params(tmp_path, wds)
  for n, wd in zip('AB', wds):
    assert [r['step'] for r in train.metrics_lib.read(wd, 'train')] == \
        [r['step'] for r in train.metrics_lib.read(str(tmp_path / 'full' / n), 'train')]


def test_resume_steps_rolls_back_only_a_torn_round(tmp_path):
  """pack.json's record against each member's checkpoints on disk."""
  import json
  import os

  class Mngr:
    def __init__(self, *steps):
      self.steps = list(steps)

    def latest_step(self):
      return max(self.steps, default=None)

    def all_steps(self):
      return self.steps

  wds = [str(tmp_path / n) for n in 'ABC']
  for wd in wds:
    os.makedirs(wd)
  names, ends = ['A', 'B', 'C'], [8, 12, 12]
  pack.record(wds, names, [4, 4, 2], [True, True, False])  # C diverged after step 2.
  said = []

  def back(*mngrs):
    return pack.resume_steps(wds, names, list(mngrs), ends, said.append)
  assert back(Mngr(4, 6), Mngr(4, 6), Mngr(2)) == [None] * 3  # Every live member committed 6.
  assert back(Mngr(4, 6), Mngr(4), Mngr(2)) == [4, None, None]  # A got ahead.
  assert back(Mngr(6), Mngr(4), Mngr(2)) == [None] * 3 and said[-1].startswith('warning')
  assert pack.resume_steps(wds, ['A', 'B'], [Mngr(4, 6), Mngr(4)], ends[:2]) == [None] * 2
  pack.record(wds[:2], names[:2], [8, 8], [False, True])  # Since trained as a pack of A, B:
  assert back(Mngr(8), Mngr(8), Mngr(2)) == [None] * 3  # C's record of A, B, C is stale.
  pack.record(wds, names, [0, 0, 0], [True] * 3)  # A fresh pack: back to no checkpoint.
  assert back(Mngr(2), Mngr(), Mngr()) == [0, None, None]
  with open(tmp_path / 'B' / 'pack.json', 'w') as f:  # Killed between two record writes.
    json.dump({'members': names, 'steps': [4, 4, 4], 'live': [True] * 3}, f)
  assert back(Mngr(4, 6), Mngr(4), Mngr(4)) == [4, None, None]
