"""Schedule values at chosen steps, and the weight-decay mask."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
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
  assert lr_at(schedule, 9) == pytest.approx(1.0)  # Warmup's last step is at the peak.


def test_decay_shapes():
  # Steps 10 .. 109 decay (step s at fraction (s + 1 - 10) / 100): halfway is
  # the midpoint of peak and floor, the last trained step (109) the floor.
  assert lr_at('cosine', 59) == pytest.approx(0.55, abs=1e-6)
  assert lr_at('cosine', 109) == pytest.approx(0.1, abs=1e-6)
  assert lr_at('cosine', 10) < 1.0
  assert lr_at('linear', 34) == pytest.approx(1.0 - 0.9 * 0.25)
  assert lr_at('linear', 109) == pytest.approx(0.1)
  assert lr_at('constant', 99) == pytest.approx(1.0)
  # Update number step + 1 throughout: the peak at step 9 only (step 10 had
  # repeated it, and the decay ran a step late).
  assert lr_at('inverse_sqrt', 9) == pytest.approx(1.0)
  assert lr_at('inverse_sqrt', 10) == pytest.approx((10 / 11) ** 0.5)
  assert lr_at('inverse_sqrt', 39) == pytest.approx((10 / 40) ** 0.5)


def test_wsd_cooldown():
  # 20% cooldown of 110 steps = steps 88 .. 109; the last trained one at the floor
  # (a short cooldown's last step ran at 10% of the peak, linear, before).
  kw = dict(cooldown_fraction=0.2)
  assert lr_at('wsd', 87, **kw) == pytest.approx(1.0)
  assert lr_at('wsd', 88, **kw) < 1.0
  assert lr_at('wsd', 98, cooldown_shape='linear', **kw) == pytest.approx(1 - 0.9 * 0.5)
  assert lr_at('wsd', 98, cooldown_shape='1-sqrt', **kw) == pytest.approx(1 - 0.9 * 0.5 ** 0.5)
  for shape in ('linear', '1-sqrt'):
    assert lr_at('wsd', 109, cooldown_shape=shape, **kw) == pytest.approx(0.1)


def test_decay_mask_excludes_norms_biases_embeddings():
  params = {'embed': {'embedding': 1}, 'blocks': {'attn': {'query': {'kernel': 1, 'bias': 1}},
                                                  'attn_norm': {'scale': 1}}}
  m = optimizer.decay_mask(params, ('norm', 'bias', 'embedding'))
  assert m == {'embed': {'embedding': False}, 'blocks': {
      'attn': {'query': {'kernel': True, 'bias': False}}, 'attn_norm': {'scale': False}}}
  m = optimizer.decay_mask(params, ())
  assert all(jnp.asarray(list(_leaves(m))).tolist())
  # 'norm' alone: a LayerNorm's shift is a norm parameter too; other biases decay.
  ln = {'attn_norm': {'scale': 1, 'bias': 1}, 'query': {'kernel': 1, 'bias': 1}}
  assert optimizer.decay_mask(ln, ('norm',)) == {'attn_norm': {'scale': False, 'bias': False},
                                                 'query': {'kernel': True, 'bias': True}}


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


def test_optimizer_state_stays_float32_for_bfloat16_parameters():
  """With bfloat16 parameters Adam's moments started in bfloat16: the first
  update promoted mu to float32 (a second compile; a checkpoint that no longer
  matched the state it restores into) and nu, left in bfloat16, stopped
  decaying (0.999 * nu rounds back to nu)."""
  o = OptimizerConfig(lr=1.0, schedule='constant', warmup_steps=0, b2=0.999, weight_decay=0.0,
                      grad_clip=0.0)
  params = {'w': jnp.ones((4,), jnp.bfloat16)}
  tx = optimizer.make(o, 10)
  state = tx.init(params)
  dtypes = lambda t: {str(x.dtype) for x in jax.tree_util.tree_leaves(t)  # noqa: E731
                      if jnp.issubdtype(x.dtype, jnp.floating)}
  assert dtypes(state) == {'float32'}
  step = jax.jit(tx.update)
  _, state = step({'w': jnp.ones((4,), jnp.float32)}, state, params)
  for _ in range(100):  # Zero gradients: nu decays by b2 each step.
    u, state = step({'w': jnp.zeros((4,), jnp.float32)}, state, params)
  assert dtypes(state) == {'float32'} and u['w'].dtype == jnp.float32
  assert step._cache_size() == 1
  nu = [s for s in jax.tree_util.tree_leaves(state, is_leaf=lambda x: isinstance(
      x, optax.ScaleByAdamState)) if isinstance(s, optax.ScaleByAdamState)][0].nu['w']
  np.testing.assert_allclose(nu, (1 - 0.999) * 0.999 ** 100, rtol=1e-5)
