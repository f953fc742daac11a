"""Schedule values at chosen steps, and the weight-decay mask."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from lm import optimizer
from lm.config import OptimizerConfig

O = OptimizerConfig(lr=1.0, min_lr_ratio=0.1, warmup_steps=10)
T = 110  # 10 warmup + 100 decay steps.


def lr_at(schedule, step, **kw):
  return float(optimizer.schedule(dataclasses.replace(O, schedule=schedule, **kw), T)(step))


@pytest.mark.parametrize('schedule', ['cosine', 'linear', 'constant', 'inverse_sqrt', 'wsd'])
def test_linear_warmup(schedule):
  assert lr_at(schedule, 0) == pytest.approx(0.1)
  assert lr_at(schedule, 4) == pytest.approx(0.5)
  assert lr_at(schedule, 10) == pytest.approx(1.0)


def test_decay_shapes():
  # Cosine: halfway through the decay is the midpoint of peak and floor.
  assert lr_at('cosine', 60) == pytest.approx(0.55, abs=1e-6)
  assert lr_at('cosine', 110) == pytest.approx(0.1, abs=1e-6)
  assert lr_at('linear', 35) == pytest.approx(1.0 - 0.9 * 0.25)
  assert lr_at('constant', 99) == pytest.approx(1.0)
  assert lr_at('inverse_sqrt', 40) == pytest.approx((10 / 40) ** 0.5)


def test_wsd_cooldown():
  # 20% cooldown of 110 steps = 22 steps starting at step 88.
  kw = dict(cooldown_fraction=0.2)
  assert lr_at('wsd', 87, **kw) == pytest.approx(1.0)
  assert lr_at('wsd', 88, **kw) == pytest.approx(1.0)
  assert lr_at('wsd', 99, cooldown_shape='linear', **kw) == pytest.approx(1 - 0.9 * 0.5)
  assert lr_at('wsd', 99, cooldown_shape='1-sqrt', **kw) == pytest.approx(1 - 0.9 * 0.5 ** 0.5)
  assert lr_at('wsd', 110, **kw) == pytest.approx(0.1)


def test_decay_mask_excludes_norms_biases_embeddings():
  params = {'embed': {'embedding': 1}, 'blocks': {'attn': {'query': {'kernel': 1, 'bias': 1}},
                                                  'attn_norm': {'scale': 1}}}
  m = optimizer.decay_mask(params, ('norm', 'bias', 'embedding'))
  assert m == {'embed': {'embedding': False}, 'blocks': {
      'attn': {'query': {'kernel': True, 'bias': False}}, 'attn_norm': {'scale': False}}}
  m = optimizer.decay_mask(params, ())
  assert all(jnp.asarray(list(_leaves(m))).tolist())


def _leaves(d):
  for v in d.values():
    yield from (_leaves(v) if isinstance(v, dict) else [v])


def test_weight_decay_applies_only_through_the_mask():
  tx = optimizer.make(dataclasses.replace(O, warmup_steps=0, schedule='constant',
                                          weight_decay=0.5, grad_clip=0.0), 10)
  params = {'dense': {'kernel': jnp.ones(3), 'bias': jnp.ones(3)}}
  grads = {'dense': {'kernel': jnp.zeros(3), 'bias': jnp.zeros(3)}}
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates['dense']['kernel'], -0.5 * 1.0)  # -lr * wd * w.
  np.testing.assert_allclose(updates['dense']['bias'], 0.0)
