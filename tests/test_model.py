"""Model invariants: shapes, causality, scan == unrolled, remat == none, counts."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm import config as config_lib
from lm import flops
from lm.config import ModelConfig
from lm.model import Transformer, cross_entropy, init_inputs, sinusoidal_table
from tests import forked_cli

BASE = ModelConfig(vocab_size=61, d_model=32, num_layers=2, num_heads=4, max_len=16,
                   mlp_dim=48)
VARIANTS = {
    'gpt2': BASE,
    'llama': dataclasses.replace(BASE, position='rope', norm='rmsnorm', activation='swiglu',
                                 use_bias=False, tie_embeddings=False, num_kv_heads=2),
    'sinusoidal_qknorm_relu2': dataclasses.replace(BASE, position='sinusoidal', qk_norm=True,
                                                   activation='relu2'),
    'nopos_mqa_unrolled': dataclasses.replace(BASE, position='none', num_kv_heads=1,
                                              scan_layers=False),
    'bf16': dataclasses.replace(BASE, dtype='bfloat16'),
}


def _init(m, B=2, L=16, seed=0):
  tokens = jax.random.randint(jax.random.key(seed + 1), (B, L), 0, m.vocab_size)
  init = jax.jit(lambda r, t: nn.unbox(Transformer(m).init(r, t)['params']))
  return init(jax.random.key(seed), tokens), tokens


def _apply(m, params, tokens, **kw):
  return jax.jit(lambda p, t: Transformer(m).apply({'params': p}, t, **kw))(params, tokens)


@pytest.mark.parametrize('name', VARIANTS)
def test_shapes_dtypes_and_param_count(name):
  m = VARIANTS[name]
  params, tokens = _init(m)
  logits = _apply(m, params, tokens)
  assert logits.shape == (2, 16, m.vocab_size)
  assert logits.dtype == jnp.float32  # Always float32, also with bf16 compute.
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(params))
  n = sum(p.size for p in jax.tree_util.tree_leaves(params))
  assert n == flops.param_counts(m)['total'], f'{name}: counted {flops.param_counts(m)}'


@pytest.mark.parametrize('name', VARIANTS)
def test_every_param_has_logical_axes(name):
  m = VARIANTS[name]
  tokens = jnp.zeros((1, 8), jnp.int32)
  boxed = jax.eval_shape(lambda: Transformer(m).init(jax.random.key(0), tokens))['params']
  leaves = jax.tree_util.tree_leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  for leaf in leaves:
    assert isinstance(leaf, nn.LogicallyPartitioned), f'unannotated param {leaf}'
    assert len(leaf.names) == leaf.value.ndim
    allowed = {'embed', 'heads', 'kv', 'head_dim', 'mlp', 'vocab', 'layers', 'length'}
    assert set(leaf.names) <= allowed, leaf.names


@pytest.mark.parametrize('position', ['learned', 'rope', 'sinusoidal', 'none'])
def test_causality(position):
  """Changing token t changes no logit before t, and does change logits at t."""
  m = dataclasses.replace(BASE, position=position)
  params, tokens = _init(m)
  t = 9
  changed = tokens.at[:, t].set((tokens[:, t] + 7) % m.vocab_size)
  f = jax.jit(lambda x: Transformer(m).apply({'params': params}, x))
  a, b = f(tokens), f(changed)
  np.testing.assert_array_equal(a[:, :t], b[:, :t])
  assert not np.allclose(a[:, t:], b[:, t:])


def _loss_and_grads(m, params, tokens):
  def loss(p):
    logits = Transformer(m).apply({'params': p}, tokens[:, :-1])
    nll, _, n = cross_entropy(logits, tokens[:, 1:], jnp.ones(tokens[:, 1:].shape))
    return nll / n
  return jax.jit(jax.value_and_grad(loss))(params)


def _stack_blocks(params, num_layers):
  """Unrolled params (block_i) -> the scanned layout (blocks, leading layer axis)."""
  blocks = [params.pop(f'block_{i}') for i in range(num_layers)]
  params['blocks'] = jax.tree_util.tree_map(lambda *x: jnp.stack(x), *blocks)
  return params


@pytest.mark.parametrize('name', ['llama'])
def test_scan_equals_unrolled(name):
  scanned = dataclasses.replace(VARIANTS[name], scan_layers=True)
  unrolled = dataclasses.replace(scanned, scan_layers=False)
  p_un, tokens = _init(unrolled)
  p_sc = _stack_blocks(dict(p_un), scanned.num_layers)
  l_un, g_un = _loss_and_grads(unrolled, p_un, tokens)
  l_sc, g_sc = _loss_and_grads(scanned, p_sc, tokens)
  np.testing.assert_allclose(l_un, l_sc, rtol=1e-6)
  g_un = _stack_blocks(dict(g_un), scanned.num_layers)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g_un),
                          jax.tree_util.tree_leaves(g_sc)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7, err_msg=jax.tree_util.keystr(path))


def test_bench_layers_ab_times_scanned_and_unrolled_steps():
  """tools/bench_train --layers_ab's measurement, small: one round of one step each."""
  from tools import bench_train
  r = bench_train.bench_layers_ab(8, steps=1, rounds=1)
  assert r['layers'] == 1 and r['scan ms'] > 0 and r['unrolled ms'] > 0
  assert r['scan compile s'] > 0 and r['unrolled compile s'] > 0
  np.testing.assert_allclose(r['speed-up'], r['scan ms'] / r['unrolled ms'])


def test_bench_train_refuses_flags_it_would_ignore_or_fail_on_late():
  """Checked before the matmul peak is measured (they were tracebacks after it,
  or silently ignored: --pack timed its own shapes whatever --dtype said, and
  --pack=3 --pack_devices=2 ran on one device)."""
  import sys

  from tools import bench_train
  for kw, want in (({'mesh_arg': 'abc'}, '--mesh=abc: give three'),
                   ({'mesh_arg': '1,1'}, '--mesh=1,1'),
                   ({'seq_len': 2}, '--seq_len=2'), ({'attention': 'flash'}, "'flash'"),
                   ({'batch': -3}, 'batch_size=-3')):
    with pytest.raises(config_lib.ConfigError, match=want):
      bench_train.bench_config('tiny', 'float32', False, **kw)
  assert bench_train.bench_config('tiny', 'float32', False, seq_len=2,
                                  document_mask=False).data.seq_len == 2
  for args, want in ((['--pack=2', '--dtype=bfloat16'], '--dtype would be ignored'),
                     (['--layers_ab', '--configs=tiny'], '--configs would be ignored'),
                     (['--pack=3', '--pack_devices=2'], 'does not divide --pack=3'),
                     (['--pack_devices=2'], 'applies only with --pack')):
    r = forked_cli.run([sys.executable, '-m', 'tools.bench_train', *args], capture_output=True,
                       text=True)
    assert r.returncode == 2 and want in r.stderr and 'Traceback' not in r.stderr, (args, r.stderr)


def test_bench_profile_table_reads_a_trace(tmp_path, capsys):
  """tools/bench_train --profile_dir: the kinds of GPU kernels by name, and the
  per-step table read back from a real (CPU) trace."""
  from tools import bench_train
  kinds = {'cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16': 'attention (cuDNN)',
           'nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_TNT': 'matmul',
           'sm90_xmma_gemm_f32f32_tf32f32_f32_nt_n_tilesize128x256x32': 'matmul',
           'gemm_fusion_dot_294': 'matmul', 'input_add_reduce_fusion_7': 'other fusion',
           'triton_softmax_fusion': 'triton fusion', 'MemcpyD2D': 'copy/memset'}
  assert {n: bench_train.kernel_kind(n) for n in kinds} == kinds
  f = jax.jit(lambda a: jnp.tanh(a @ a).sum())
  a = jnp.ones((64, 64))
  f(a).block_until_ready()
  with jax.profiler.trace(str(tmp_path)):
    for _ in range(3):
      f(a).block_until_ready()
  bench_train.profile_table(str(tmp_path), steps=3)
  out = capsys.readouterr().out
  total = float(out.split(': ')[1].split(' ms')[0])
  assert total > 0 and '| kind | ms/step | share |' in out and '| kernel |' in out


@pytest.mark.parametrize('scan,remat', [(True, 'full'), (False, 'save_dots'),
                                        (True, 'dots_saveable'), (True, 'save_proj'),
                                        (True, 'offload')])
def test_remat_equals_no_remat(scan, remat):
  base = dataclasses.replace(VARIANTS['llama'], scan_layers=scan)
  params, tokens = _init(base)
  l0, g0 = _loss_and_grads(base, params, tokens)
  l1, g1 = _loss_and_grads(dataclasses.replace(base, remat=remat), params, tokens)
  np.testing.assert_allclose(l0, l1, rtol=1e-6)
  for a, b in zip(jax.tree_util.tree_leaves(g0), jax.tree_util.tree_leaves(g1)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_remat_policies_trade_memory():
  """XLA's temporaries of the gradient shrink as the policy keeps less."""
  m0 = dataclasses.replace(BASE, num_layers=4, max_len=128)
  tok = jnp.zeros((8, 128), jnp.int32)
  params = Transformer(m0).init(jax.random.key(0), tok)

  def temp(remat):
    m = dataclasses.replace(m0, remat=remat)
    loss = lambda p: Transformer(m).apply(  # noqa: E731
        p, tok, targets_BL=tok, target_weights_BL=jnp.ones(tok.shape))['nll_sum']
    return jax.jit(jax.grad(loss)).lower(params).compile().memory_analysis().temp_size_in_bytes

  full, proj, none = temp('full'), temp('save_proj'), temp('none')
  assert full < proj < none, (full, proj, none)


def test_dropout_is_driven_by_the_rng():
  m = dataclasses.replace(BASE, embed_dropout=0.1, attn_dropout=0.1, resid_dropout=0.1)
  params, tokens = _init(m)
  f = jax.jit(lambda p, t, r: Transformer(m).apply({'params': p}, t, train=True,
                                                  rngs={'dropout': r}))
  apply = lambda seed: f(params, tokens, jax.random.key(seed))  # noqa: E731
  np.testing.assert_array_equal(apply(1), apply(1))
  assert not np.allclose(apply(1), apply(2))
  eval_a = _apply(m, params, tokens)
  eval_b = _apply(dataclasses.replace(m, embed_dropout=0.0, attn_dropout=0.0,
                                      resid_dropout=0.0), params, tokens)
  np.testing.assert_array_equal(eval_a, eval_b)  # Off at eval time.


def test_gqa_with_repeated_kv_equals_mha():
  """GQA with K heads equals MHA whose K/V heads are the K heads repeated G times."""
  gqa = dataclasses.replace(BASE, num_kv_heads=2)
  mha = dataclasses.replace(BASE, num_kv_heads=4)
  p_gqa, tokens = _init(gqa)
  p_mha = jax.tree_util.tree_map(lambda x: x, p_gqa)
  for name in ('key', 'value'):
    k = p_gqa['blocks']['attn'][name]  # [layers, D, K, Dh]
    p_mha['blocks']['attn'][name] = jnp.repeat(k, 2, axis=2)
    b = p_gqa['blocks']['attn'][name + '_bias']
    p_mha['blocks']['attn'][name + '_bias'] = jnp.repeat(b, 2, axis=1)
  a = _apply(gqa, p_gqa, tokens)
  b = _apply(mha, p_mha, tokens)
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_sinusoidal_formula():
  pe = np.asarray(sinusoidal_table(50, 16))
  pos, i = 37, 3
  np.testing.assert_allclose(pe[pos, 2 * i], np.sin(pos / 10000 ** (2 * i / 16)), rtol=1e-5)
  np.testing.assert_allclose(pe[pos, 2 * i + 1], np.cos(pos / 10000 ** (2 * i / 16)), rtol=1e-5)


def test_z_loss_adds_squared_log_normalizer():
  logits = jnp.array([[[1.0, 2.0, 3.0]]])
  targets = jnp.array([[2]])
  nll, z, n = cross_entropy(logits, targets, jnp.ones((1, 1)), z_loss=1e-2)
  lse = np.log(np.exp([1.0, 2.0, 3.0]).sum())
  np.testing.assert_allclose(nll, lse - 3.0, rtol=1e-6)
  np.testing.assert_allclose(z, 1e-2 * lse ** 2, rtol=1e-6)
  assert n == 1


@pytest.mark.parametrize('block', [4, 5])
def test_blocked_attention_equals_one_block(block):
  """Causal query blocks (incl. a ragged last block) change nothing but speed."""
  one = dataclasses.replace(VARIANTS['llama'], attn_block=0)
  blocked = dataclasses.replace(one, attn_block=block)
  params, tokens = _init(one)
  l0, g0 = _loss_and_grads(one, params, tokens)
  l1, g1 = _loss_and_grads(blocked, params, tokens)
  np.testing.assert_allclose(l0, l1, rtol=1e-6)
  for a, b in zip(jax.tree_util.tree_leaves(g0), jax.tree_util.tree_leaves(g1)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_causality_across_blocks():
  m = dataclasses.replace(BASE, attn_block=4)
  params, tokens = _init(m)
  f = jax.jit(lambda x: Transformer(m).apply({'params': params}, x))
  for t in (3, 4, 13):
    changed = tokens.at[:, t].set((tokens[:, t] + 7) % m.vocab_size)
    np.testing.assert_array_equal(f(tokens)[:, :t], f(changed)[:, :t])


def _loss_sums(m, params, tokens, z_loss=1e-3):
  w = (jnp.arange(tokens.shape[1] - 1) % 3 != 0).astype(jnp.float32)[None].repeat(
      tokens.shape[0], 0)  # Some zero weights, as padding makes.

  def f(p):
    s = Transformer(m).apply({'params': p}, tokens[:, :-1], targets_BL=tokens[:, 1:],
                             target_weights_BL=w, z_loss=z_loss)
    return s['nll_sum'] + s['z_sum'], s
  return jax.jit(jax.value_and_grad(f, has_aux=True))(params)  # Op by op: ~180 compiles.


@pytest.mark.parametrize('tie', [True, False])
def test_chunked_loss_equals_whole_logits(tie):
  m = dataclasses.replace(BASE, tie_embeddings=tie, max_len=32)
  params, _ = _init(m)
  tokens = jax.random.randint(jax.random.key(3), (2, 27), 0, m.vocab_size)
  (l0, s0), g0 = _loss_sums(m, params, tokens)
  (l1, s1), g1 = _loss_sums(dataclasses.replace(m, loss_chunk=8), params, tokens)  # 26 = 3x8+2.
  np.testing.assert_allclose(l1, l0, rtol=1e-5)
  for k in ('nll_sum', 'z_sum', 'tokens', 'correct'):
    np.testing.assert_allclose(s1[k], s0[k], rtol=1e-5, err_msg=k)
  assert float(s0['z_sum']) > 0  # z-loss is on.
  for a, b in zip(jax.tree_util.tree_leaves(g0), jax.tree_util.tree_leaves(g1)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  # The logits path agrees with the sums path.
  logits = Transformer(m).apply({'params': params}, tokens[:, :-1])
  nll, _, _ = cross_entropy(logits, tokens[:, 1:], jnp.ones(tokens[:, 1:].shape))
  s = Transformer(m).apply({'params': params}, tokens[:, :-1], targets_BL=tokens[:, 1:],
                           target_weights_BL=jnp.ones(tokens[:, 1:].shape))
  np.testing.assert_allclose(s['nll_sum'], nll, rtol=1e-5)


def _dot_dtypes(jaxpr) -> list[tuple[str, str]]:
  """Operand dtypes of every dot_general in a jaxpr, its sub-jaxprs included."""
  out = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == 'dot_general':
      out.append(tuple(str(v.aval.dtype) for v in eqn.invars))
    for v in eqn.params.values():
      for sub in v if isinstance(v, (tuple, list)) else (v,):
        sub = getattr(sub, 'jaxpr', sub)  # ClosedJaxpr -> Jaxpr.
        if hasattr(sub, 'eqns'):
          out += _dot_dtypes(sub)
  return out


def test_bfloat16_gradient_matmuls_run_in_bfloat16(capsys):
  """The float32 logits (and xla attention's float32 scores) must not turn the
  backward matmuls into float32 ones (TF32 GEMMs on GPUs: model.einsum_f32);
  the gradient still tracks the float32 model's. Chunked, so the logits'
  matmul sits inside the loss's rematerialised scan (the unchunked loss calls
  the same function)."""
  m = dataclasses.replace(BASE, max_len=32, loss_chunk=8, attention='xla')
  params, _ = _init(m)
  tokens = jax.random.randint(jax.random.key(3), (2, 27), 0, m.vocab_size)
  mb = dataclasses.replace(m, dtype='bfloat16')
  grad = lambda p: _loss_sums(mb, p, tokens)[1]  # noqa: E731
  dots = _dot_dtypes(jax.make_jaxpr(grad)(params).jaxpr)
  assert len(dots) >= 12  # 25: the projections', attention's and the logits' matmuls.
  assert all(d == ('bfloat16', 'bfloat16') for d in dots), sorted(set(dots))
  # The remat policy that saves every matmul still sees these (inside a custom VJP).
  from jax.ad_checkpoint import print_saved_residuals
  from lm import model
  q_BKGLD = jnp.ones((1, 2, 2, 8, 4), jnp.bfloat16)
  k_BKSD = jnp.ones((1, 2, 8, 4), jnp.bfloat16)
  print_saved_residuals(jax.checkpoint(
      lambda q, k, v: model.attend(q, k, v, jnp.zeros((8, 8))).astype(jnp.float32).sum(),
      policy=model._REMAT_POLICIES['dots_saveable']), q_BKGLD, k_BKSD, k_BKSD)
  assert capsys.readouterr().out.count("named 'einsum_f32'") == 2  # Scores and context.
  g16, g32 = jax.jit(grad)(params), jax.jit(lambda p: _loss_sums(m, p, tokens)[1])(params)
  flat = lambda g: jnp.concatenate([a.ravel() for a in jax.tree_util.tree_leaves(g)])  # noqa: E731
  err = jnp.linalg.norm(flat(g16) - flat(g32)) / jnp.linalg.norm(flat(g32))
  assert err < 0.03, float(err)  # ~0.01: bfloat16 rounding (key biases' gradients are 0).


def test_chunked_loss_frees_the_logits():
  """XLA's temporaries of the gradient fall by at least the float32 logits."""
  m = dataclasses.replace(BASE, vocab_size=4096, max_len=256, num_layers=1)
  tokens = jnp.zeros((4, 257), jnp.int32)
  params = Transformer(m).init(jax.random.key(0), tokens[:, :-1])['params']

  def temp(chunk):
    mc = dataclasses.replace(m, loss_chunk=chunk)
    f = lambda p: _loss_sums(mc, p, tokens)[1]  # noqa: E731
    return jax.jit(f).lower(params).compile().memory_analysis().temp_size_in_bytes

  logits_bytes = 4 * 256 * 4096 * 4
  whole, chunked = temp(0), temp(32)
  assert whole - chunked >= logits_bytes, (whole, chunked, logits_bytes)


def test_each_stack_s_output_projections_init_by_its_own_depth():
  """GPT-2's std / sqrt(2 layers) per stack: an encoder-decoder's 8-layer decoder
  had been initialised with the 2-layer encoder's std (2x too large)."""
  import math
  m = ModelConfig(family='encoder_decoder', vocab_size=256, d_model=128, num_layers=2,
                  num_decoder_layers=8, num_heads=4, max_len=64)
  p = nn.unbox(Transformer(m).init(jax.random.key(0), **init_inputs(m, 8))['params'])
  for stack, layers in (('encoder_blocks', 2), ('blocks', 8)):
    b = p[stack]
    outs = [b['attn']['out'], b['mlp']['down']['kernel']]
    outs += [b['cross_attn']['out']] if 'cross_attn' in b else []
    for w in outs:
      assert abs(np.std(w) / (m.init_std / math.sqrt(2 * layers)) - 1) < 0.05, (stack, np.std(w))
