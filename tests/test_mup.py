"""muP and depth scaling (lm/model.py's table): equal to SP at the base width,
the init and Adam-LR multipliers it names, multipliers that fold into the
weights exactly, and training that shards and resumes like SP."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm import model as model_lib
from lm import optimizer, train
from lm.config import ModelConfig, OptimizerConfig
from tests import forked_cli
from tests.helpers import tiny
from tests.test_sharding import _mesh_cfg, _run

M = ModelConfig(vocab_size=64, d_model=64, num_layers=2, num_heads=4, max_len=16,
                tie_embeddings=False, scan_layers=False)
TOKENS = jnp.asarray(np.random.default_rng(0).integers(0, 64, (2, 16)))


def _init(m: ModelConfig, seed: int = 0) -> dict:
  kw = {'enc_tokens_BS': TOKENS} if m.family == 'encoder_decoder' else {}
  p = jax.jit(lambda r: model_lib.Transformer(m).init(r, TOKENS, **kw)['params'])(
      jax.random.key(seed))
  return jax.tree_util.tree_map(lambda x: x.value, p, is_leaf=lambda x: hasattr(x, 'value'))


def _apply(m: ModelConfig, params: dict, **kw):
  return jax.jit(lambda p: model_lib.Transformer(m).apply({'params': p}, TOKENS, **kw))(params)


def _grads(m: ModelConfig, params: dict) -> dict:
  def loss(p):
    s = model_lib.Transformer(m).apply({'params': p}, TOKENS[:, :-1], targets_BL=TOKENS[:, 1:],
                                       target_weights_BL=jnp.ones((2, 15)))
    return s['nll_sum']
  return jax.jit(jax.grad(loss))(params)


def _update(m: ModelConfig, params: dict, grads: dict) -> dict:
  """One AdamW update of m's optimizer (no decay, clipping or warmup)."""
  o = OptimizerConfig(lr=0.01, warmup_steps=0, schedule='constant', weight_decay=0.0,
                      grad_clip=0.0)
  tx = optimizer.make(o, 10, m)
  return tx.update(grads, tx.init(params), params)[0]


def _at(tree: dict, path: tuple[str, ...]):
  for k in path:
    tree = tree[k]
  return np.asarray(tree)


def test_mup_at_its_base_width_is_sp():
  mup = dataclasses.replace(M, parametrization='mup', base_width=64)
  a, b = _init(M), _init(mup)
  jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
  np.testing.assert_array_equal(_apply(M, a), _apply(mup, b))
  jax.tree_util.tree_map(np.testing.assert_array_equal, _update(M, a, _grads(M, a)),
                         _update(mup, b, _grads(mup, b)))


def test_mup_scales_init_lr_and_multipliers_by_width():
  """d_model 256 at base 64 (m = 4): hidden init std / 2, hidden Adam updates
  / 4 (Adam's first step is lr x sign(g)), embeddings and head as in SP,
  logits x 1/4, queries x sqrt(16 / 64) on top of 1/sqrt(Dh)."""
  wide = dataclasses.replace(M, d_model=256)
  mup = dataclasses.replace(wide, parametrization='mup', base_width=64)
  assert (model_lib.output_multiplier(mup), model_lib.attn_multiplier(mup)) == (0.25, 0.5)
  p_sp, p_mup = _init(wide), _init(mup)
  for name, ratio in (('query', 0.5), ('out', 0.5), ('embedding', 1.0)):
    leaf = {'query': lambda p: p['block_0']['attn']['query'],
            'out': lambda p: p['block_1']['mlp']['down']['kernel'],
            'embedding': lambda p: p['embed']['embedding']}[name]
    np.testing.assert_allclose(np.std(leaf(p_mup)) / np.std(leaf(p_sp)), ratio, rtol=0.05)
  g = _grads(mup, p_mup)  # The same params and grads; only the optimizer differs.
  u_sp, u_mup = _update(wide, p_mup, g), _update(mup, p_mup, g)
  for path, ratio in ((('block_0', 'attn', 'query'), 0.25),
                      (('block_1', 'mlp', 'up', 'kernel'), 0.25),
                      (('block_1', 'mlp', 'up', 'bias'), 1.0),
                      (('embed', 'embedding'), 1.0), (('head', 'kernel'), 1.0)):
    a, b = np.abs(_at(u_mup, path)), np.abs(_at(u_sp, path))
    big = b > 1e-3  # Where Adam's first step is a full +-lr (not a ~0 gradient).
    assert big.any()
    np.testing.assert_allclose(a[big] / b[big], ratio, rtol=1e-4, err_msg=str(path))


def test_depth_scaling_lr_rule():
  m = dataclasses.replace(M, num_layers=8, depth_base=2, depth_alpha=0.5,
                          parametrization='mup', base_width=32)
  assert model_lib.branch_multiplier(m, 8) == 0.5
  assert optimizer.lr_multipliers(m) == {'hidden': 0.5 / 2, 'block': 0.5, 'enc_hidden': 0.5 / 2,
                                         'enc_block': 0.5, 'head_hidden': 0.5, 'other': 1.0}
  m1 = dataclasses.replace(m, depth_alpha=1.0)
  assert optimizer.lr_multipliers(m1) == {'hidden': 0.5, 'block': 1.0, 'enc_hidden': 0.5,
                                          'enc_block': 1.0, 'head_hidden': 0.5, 'other': 1.0}
  # An encoder-decoder's stacks scale by their own depths, as their branches do:
  # 2 encoder layers (at depth_base), 8 decoder layers (branch multiplier 0.5).
  ed = dataclasses.replace(m, family='encoder_decoder', num_layers=2, num_decoder_layers=8)
  assert model_lib.branch_multiplier(ed, ed.decoder_layers) == 0.5
  mult = optimizer.lr_multipliers(ed)
  assert (mult['block'], mult['enc_block']) == (0.5, 1.0)
  # BERT's head transform is a hidden matrix outside the blocks: width factor only
  # (it had the blocks' depth factor, though no branch multiplier scales it).
  params = {'blocks': {'attn': {'query': 1, 'norm': {'scale': 1}}},
            'encoder_blocks': {'attn': {'query': 1}, 'attn_norm': {'scale': 1}}, 'embed': 1,
            'mlm_dense': {'kernel': 1, 'bias': 1}}
  groups = jax.tree_util.tree_map_with_path(lambda k, _: optimizer.lr_group(k), params)
  assert groups == {'blocks': {'attn': {'query': 'hidden', 'norm': {'scale': 'block'}}},
                    'encoder_blocks': {'attn': {'query': 'enc_hidden'},
                                       'attn_norm': {'scale': 'enc_block'}}, 'embed': 'other',
                    'mlm_dense': {'kernel': 'head_hidden', 'bias': 'other'}}


FOLDS = {
    'decoder_qk_norm_gqa': dict(qk_norm=True, num_kv_heads=2, position='rope', scan_layers=True),
    'encoder_mlm': dict(family='encoder', mlm_transform=True, tie_embeddings=True),
    'classifier': dict(num_classes=3),
    'encoder_decoder': dict(family='encoder_decoder', num_decoder_layers=3),
}


@pytest.mark.parametrize('name', FOLDS)
def test_multipliers_fold_into_an_equivalent_sp_model(name):
  m = dataclasses.replace(M, d_model=128, parametrization='mup', base_width=32, depth_base=1,
                          depth_alpha=0.5, **FOLDS[name])
  leaves, tree = jax.tree_util.tree_flatten(_init(m))  # Norm biases etc. non-zero:
  params = jax.tree_util.tree_unflatten(tree, [
      a + 0.05 * jax.random.normal(jax.random.key(i), a.shape) for i, a in enumerate(leaves)])
  kw = {'enc_tokens_BS': TOKENS} if m.family == 'encoder_decoder' else {}
  want = _apply(m, params, **kw)
  folded, sp = model_lib.fold_multipliers(params, m)
  assert sp.parametrization == 'sp' and sp.depth_base == 0
  np.testing.assert_allclose(_apply(sp, folded, **kw), want, atol=1e-5, rtol=1e-5)
  assert not np.allclose(_apply(sp, params, **kw), want, atol=1e-3)  # Multipliers matter.


def test_mup_gqa_sharded_matches_single_device():
  kw = {'model.parametrization': 'mup', 'model.base_width': 16, 'model.num_kv_heads': 2,
        'model.depth_base': 1}
  one, _ = _run(_mesh_cfg((1, 1, 1), **kw), jax.devices()[:1])
  many, _ = _run(_mesh_cfg((2, 2, 2), **kw), jax.devices())
  np.testing.assert_allclose(many, one, rtol=1e-5)


def test_mup_resume_is_bitwise_identical(tmp_path, corpus_dir):
  c = tiny(corpus_dir, **{'model.parametrization': 'mup', 'model.base_width': 16})
  whole, split = str(tmp_path / 'whole'), str(tmp_path / 'split')
  train.train_and_evaluate(c, whole, log=lambda *_: None)
  train.train_and_evaluate(c, split, stop_at=3, log=lambda *_: None)
  train.train_and_evaluate(c, split, log=lambda *_: None)
  from lm import metrics
  losses = lambda w: {r['step']: r['loss'] for r in metrics.read(w, 'train')}
  assert losses(whole) == losses(split)


@pytest.mark.slow
def test_coordinate_check_passes_for_mup_and_fails_for_sp(tmp_path, corpus_dir):
  """tools/coord_check on 8x of width (32 and 256): every muP curve is flat
  (|log-log slope| <= 0.1), the attention logits' does not rise (a scale too
  large, e.g. the multiplier inverted, reads +0.54); SP's logits and hidden
  activations grow."""
  import json
  import os
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = tmp_path / 'cc'
  forked_cli.run(
      [sys.executable, '-m', 'tools.coord_check', f'--config=tests/tiny_config.py:{corpus_dir}',
       f'--out={out}', '--widths=32,256', '--steps=3', '--seeds=1',
       '--config.train.batch_size=4'],
      cwd=root, check=True, capture_output=True, text=True)
  result = json.loads((out / 'coord_check.json').read_text())
  assert (out / 'coord_check.png').stat().st_size > 10_000
  assert set(result['mup']) == {'embedding', 'attn_logits', 'attention', 'mlp', 'residual',
                                'logits'}
  for layer, slope in result['mup'].items():
    if layer == 'attn_logits':  # Must not grow; falls in a few steps (tools/coord_check.py).
      assert slope <= 0.1, slope
    else:
      assert abs(slope) <= 0.1, (layer, slope)
  assert result['sp']['logits'] > 0.3
  assert min(result['sp'][k] for k in ('attention', 'mlp', 'residual')) > 1.0


def test_coordinate_check_refuses_bad_widths():
  from lm.config import ConfigError
  from tools import coord_check
  assert coord_check.parse_widths('32,64', 4) == [32, 64]
  for bad in ('64', '64,32', '30,64', 'a,b', '0,32'):
    with pytest.raises(ConfigError, match='--widths'):
      coord_check.parse_widths(bad, 4)
  from lm import config as config_lib
  from lm import plan
  with pytest.raises(ConfigError, match='model.head_dim=8: the coordinate check grows'):
    plan.check_widens(config_lib.ModelConfig(head_dim=8), 'the coordinate check')


def test_every_config_is_one_field_from_mup():
  """--config.model.parametrization=mup on every shipped config validates and
  builds the optimizer's LR groups; widening one of them then scales."""
  import glob
  import importlib
  import os
  from lm import config as config_lib
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  names = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(root, 'configs', '*.py'))
                 if not p.endswith(('__init__.py', 'common.py')))
  assert len(names) >= 10
  for name in names:
    cd = importlib.import_module(f'configs.{name}').get_config()
    if 'sweep' in cd:
      del cd['sweep']
    cd.model.parametrization = 'mup'
    if name.startswith('finetune'):  # Validation only; nothing is loaded.
      cd.init_from = '/nonexistent'
      cd.data.path = cd.data.path or '/nonexistent.csv'
    c = config_lib.from_configdict(cd)
    assert set(optimizer.lr_multipliers(c.model).values()) == {1.0}, name
    wide = dataclasses.replace(c.model, base_width=c.model.d_model // 2)
    assert optimizer.lr_multipliers(wide)['hidden'] == 0.5, name
