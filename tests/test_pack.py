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
