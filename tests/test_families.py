"""Encoder (masked LM) and encoder-decoder families: attention structure, objectives,
cross-attention cache, training, FLOPs, sharding and bad input."""

import dataclasses
import json
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm import flops, objectives, optimizer, sampling, train
from lm.objectives import mlm, seq2seq, span
from lm.config import ConfigError, ModelConfig
from lm.model import Transformer, init_inputs
from lm.tokenizers import ByteTokenizer
from tests import forked_cli
from tests.helpers import tiny, tiny_cd

TOK = ByteTokenizer()
ENC = ModelConfig(family='encoder', vocab_size=384, d_model=32, num_layers=2, num_heads=4,
                  max_len=64, mlp_dim=64)
ED = dataclasses.replace(ENC, family='encoder_decoder', num_decoder_layers=3,
                         position='rope', num_kv_heads=2)


def _params(m, L=8):
  return jax.jit(lambda r: nn.unbox(Transformer(m).init(r, **init_inputs(m, L))['params']))(
      jax.random.key(0))


def _toks(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(0, 256, shape), jnp.int32)


def test_encoder_is_bidirectional_and_masks_padding():
  p = _params(ENC)
  x = _toks((2, 16))
  f = jax.jit(lambda t, v: Transformer(ENC).apply({'params': p}, t, valid_BL=v))
  valid = jnp.ones((2, 16), bool)
  a = f(x, valid)
  b = f(x.at[:, 12].set((x[:, 12] + 5) % 256), valid)
  assert not np.allclose(a[:, :12], b[:, :12])  # A later token changes earlier outputs.
  pad = valid.at[:, 10:].set(False)
  c = f(x, pad)
  d = f(x.at[:, 10:].set(7), pad)
  np.testing.assert_allclose(c[:, :10], d[:, :10], atol=1e-6)  # Pads are invisible.


def test_encoder_decoder_decoder_is_causal_and_sees_the_encoder():
  p = _params(ED)
  enc, dec = _toks((2, 12), 1), _toks((2, 10), 2)
  f = jax.jit(lambda e, d: Transformer(ED).apply({'params': p}, d, enc_tokens_BS=e))
  a = f(enc, dec)
  b = f(enc, dec.at[:, 6].set((dec[:, 6] + 3) % 256))
  np.testing.assert_array_equal(a[:, :6], b[:, :6])
  assert not np.allclose(a[:, 6:], b[:, 6:])
  c = f(enc.at[:, 11].set((enc[:, 11] + 3) % 256), dec)
  assert not np.allclose(a[:, 0], c[:, 0])  # Every decoder position sees all of the input.


def test_cross_attention_cache_matches_full_forward():
  p = _params(ED)
  enc, dec = _toks((2, 12), 3), _toks((2, 9), 4)
  apply = jax.jit(lambda d, e: Transformer(ED).apply({'params': p}, d, enc_tokens_BS=e))
  full = apply(dec, enc)  # Jitted: op by op, each shape compiled ~100 primitives.
  valid = jnp.ones((2, 12), bool)
  enc_out = sampling.encode(p, ED, enc, valid)
  start = jnp.zeros(2, jnp.int32)
  S = 9
  pos, visible, _ = sampling.prompt_documents(np.asarray(dec[:, :3]), np.zeros(2, np.int32), None)
  logits, cache = sampling.prefill(p, ED, dec[:, :3], pos, visible, S, enc_out, valid)
  np.testing.assert_allclose(logits, full[:, 2], atol=1e-5, rtol=1e-5)

  @jax.jit
  def step(tok, cache, slot):
    return Transformer(ED).apply({'params': p}, tok, pos_BL=jnp.full((2, 1), slot),
                                 mask_BLS=sampling._visible(slot[None], start, S),
                                 cache=cache, index=slot, enc_valid_BS=valid)

  for slot in range(3, 9):
    out, cache = step(dec[:, slot:slot + 1], cache, jnp.int32(slot))
    np.testing.assert_allclose(out[:, 0], full[:, slot], atol=1e-5, rtol=1e-5)
  # Greedy generation reuses it: the first token is the argmax after BOS.
  got = sampling.generate(p, ED, [[1], [1]], sampling.SamplingConfig(
      max_new_tokens=4, greedy=True), eos_id=-1, enc_inputs=[list(enc[0]), list(enc[1])])
  first = apply(jnp.ones((2, 1), jnp.int32), enc)
  assert [g[0][0] for g in got] == np.argmax(first[:, 0], -1).tolist()


def test_mlm_recipe_proportions():
  rng = np.random.default_rng(0)
  L, n = 100, 2000
  sel = masked = rand = kept = 0
  for _ in range(n):
    w = rng.integers(0, 256, L)
    ex = mlm.mlm(w, rng, 0.15, 0.8, 0.1, mask_id=259, vocab=256)
    s = ex['weights'] > 0
    assert s.sum() == 15 and (ex['targets'] == w).all()
    assert (ex['inputs'][~s] == w[~s]).all()  # Unselected positions are untouched.
    sel += s.sum()
    masked += (ex['inputs'][s] == 259).sum()
    changed = (ex['inputs'][s] != w[s]) & (ex['inputs'][s] != 259)
    rand += changed.sum()
    kept += (ex['inputs'][s] == w[s]).sum()
  # Random replacements equal the original 1/256 of the time (then they count as kept).
  assert abs(masked / sel - 0.8) < 0.01
  assert abs(rand / sel - 0.1 * 255 / 256) < 0.01
  assert abs(kept / sel - (0.1 + 0.1 / 256)) < 0.01


@pytest.mark.parametrize('objective', ['mlm', 'span'])
def test_eval_noise_does_not_depend_on_the_data_order_seed(corpus_dir, objective):
  """A pack builds one eval set for members that differ in data.shuffle_seed: the
  eval rows' masks and spans used to come from that seed, so every member was
  scored on member 0's rows. Now seeds share eval rows; training noise differs."""
  fam = {'mlm': 'encoder', 'span': 'encoder_decoder'}[objective]
  got = []
  for seed in (0, 3):
    c = train.resolve_vocab(tiny(corpus_dir, **{
        'model.family': fam, 'train.objective': objective, 'data.shuffle_seed': seed,
        'data.seq_len': 48, 'model.max_len': 64}), 259)  # Several spans per window.
    if objective == 'span':
      c = dataclasses.replace(c, model=dataclasses.replace(c.model, vocab_size=512))
    got.append(objectives.get(c).data(c, ByteTokenizer(), None, 0, 1))
  for (a, _), (b, _) in zip(got[0].evals, got[1].evals):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_mlm_never_selects_or_draws_special_tokens():
  """The EOS between documents (and BOS/PAD) is not a prediction target nor a
  random replacement, as BERT's [SEP] is not: rate counts ordinary positions."""
  rng = np.random.default_rng(0)
  special = (256, 257, 258)
  for _ in range(300):
    w = rng.integers(0, 256, 40)
    w[rng.choice(40, 8, replace=False)] = 257  # Document ends.
    ex = mlm.mlm(w, rng, 0.25, 0.0, 1.0, mask_id=259, vocab=259, special=special)
    s = ex['weights'] > 0
    assert s.sum() == 8 and not np.isin(w[s], special).any()  # round(32 * 0.25).
    assert not np.isin(ex['inputs'][s], special).any() and (ex['inputs'][~s] == w[~s]).all()
  every = mlm.mlm(np.full(8, 257), rng, 0.5, 0.8, 0.1, 259, 259, special)
  assert not every['weights'].any()  # A window of specials has no target.


def test_mlm_loss_counts_only_selected_positions():
  c = train.resolve_vocab(tiny(**{'model.family': 'encoder'}), 259)
  p = _params(c.model)
  ex = mlm.mlm(np.arange(16) % 256, np.random.default_rng(1), 0.25, 0.8, 0.1, 259, 256)
  batch = {k: jnp.asarray(v)[None] for k, v in ex.items()}
  f = jax.jit(lambda b: train.loss_fn(p, Transformer(c.model), objectives.get(c), b,
                                      jnp.ones(1), jax.random.key(0), 0.0, False))
  loss, aux = f(batch)
  assert float(aux['tokens']) == 4
  other = dict(batch, targets=jnp.where(batch['weights'] > 0, batch['targets'], 0))
  assert float(f(other)[0]) == float(loss)


def test_span_corruption_round_trips_with_fixed_lengths():
  rng = np.random.default_rng(0)
  spans_seen = []
  for n in (16, 100, 128, 301):
    enc_len, dec_len = span.span_lengths(n, 0.15, 3.0)
    for _ in range(200):
      w = rng.integers(0, 256, n)
      ex = span.span_corrupt(w, rng, 0.15, 3.0, sentinel0=383, eos_id=257, start_id=256)
      assert len(ex['enc_inputs']) == enc_len and len(ex['targets']) == dec_len
      assert ex['dec_inputs'][0] == 256 and (ex['dec_inputs'][1:] == ex['targets'][:-1]).all()
      np.testing.assert_array_equal(_span_restore(ex['enc_inputs'], ex['targets'],
                                                            259, 257), w)
      noise, spans = span.span_counts(n, 0.15, 3.0)
      spans_seen.append(noise / spans)
      assert abs(noise / n - 0.15) <= 0.5 / n + 1e-9
  assert abs(np.mean(spans_seen) - 3.0) < 0.35


@pytest.mark.parametrize('density,mean_span,side', [(0.15, 1.0, 'encoder'),
                                                     (0.9, 3.0, 'decoder')])
def test_span_sequences_past_the_position_table_are_refused(density, mean_span, side):
  """mean_span 1 makes the encoder input seq_len + 1 tokens; a high density
  makes the targets longer than the window. Either past a learned table's
  max_len read NaN positions; resolve() refuses it by name instead."""
  c = tiny(**{'model.family': 'encoder_decoder', 'data.noise_density': density,
              'data.mean_span': mean_span})
  c = dataclasses.replace(c, model=dataclasses.replace(c.model, max_len=c.data.seq_len))
  with pytest.raises(ConfigError, match=f'gives {side} sequences of .* longer than the '
                     f'learned position table model.max_len={c.data.seq_len}'):
    train.resolve(c)
  ok = dataclasses.replace(c, data=dataclasses.replace(c.data, noise_density=0.15,
                                                       mean_span=3.0))
  train.resolve(ok)


def _family_batch(c, seed=0):
  rng = np.random.default_rng(seed)
  rows = []
  for _ in range(c.train.batch_size):
    w = rng.integers(0, 256, c.data.seq_len)
    if c.model.family == 'encoder':
      rows.append(mlm.mlm_example(w, rng, c.data, TOK))
    else:
      rows.append(span.span_example(w, rng, c.data, c.model, TOK))
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


@pytest.mark.parametrize('family', ['encoder', 'encoder_decoder'])
def test_each_family_overfits_one_batch(family):
  from tests.test_train import overfit_losses
  losses = overfit_losses(_family_batch, **{'model.family': family})
  assert losses[-1] < 0.3 * losses[0], losses


def _xla_and_exact_flops(family: str, **over) -> tuple[float, float]:
  """XLA's and our `exact` FLOPs of one train step (batch 8 x 128)."""
  # d_model 128 as in test_flops: at 32, elementwise work XLA also counts is ~9%.
  c = train.resolve_vocab(tiny(**{'model.family': family, 'model.scan_layers': False,
                                  'data.seq_len': 128, 'model.max_len': 256,
                                  'model.d_model': 128, 'model.mlp_dim': 512,
                                  **({'model.num_decoder_layers': 3}
                                     if family == 'encoder_decoder' else {}), **over}), 259)
  model = Transformer(c.model)
  tx = optimizer.unit_lr(c.opt)
  abstract = jax.eval_shape(lambda r: nn.unbox(train.init_fn(c, model, tx)(r)),
                            jax.random.key(0))
  batch = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                                 _family_batch(c))
  # The lowered program's count (tests/test_flops.py): no compile needed.
  cost = jax.jit(train.make_train_step(c, model, tx)).lower(abstract, batch).cost_analysis()
  xla = float(cost['flops'])
  ours = flops.train_flops_per_token(c.model, 128, 'exact', None,
                                     *objectives.get(c).lengths(c)) * 8 * 128
  return xla, ours


@pytest.mark.parametrize('family', ['encoder', 'encoder_decoder'])
def test_exact_flops_match_xla(family):
  xla, ours = _xla_and_exact_flops(family)
  assert abs(xla / ours - 1) < 0.05, (xla, ours)


def test_mlm_transform_params_and_flops():
  """BERT's head transform: counted params equal the pytree's, and the FLOPs it
  adds equal what XLA sees it add (a few % of the step: compared as a difference)."""
  m = dataclasses.replace(ENC, mlm_transform=True)
  p = _params(m)
  assert set(p) >= {'mlm_dense', 'mlm_norm'}
  assert sum(x.size for x in jax.tree_util.tree_leaves(p)) == flops.param_counts(m)['total']
  assert (flops.param_counts(m)['non_embedding'] - flops.param_counts(ENC)['non_embedding']
          == 32 * 32 + 32 + 2 * 32)  # Dense with bias, LayerNorm scale and bias.
  (x0, o0), (x1, o1) = (_xla_and_exact_flops('encoder', **{'model.mlm_transform': t})
                        for t in (False, True))
  assert o1 > o0 and abs((x1 - x0) / (o1 - o0) - 1) < 0.1, (x1 - x0, o1 - o0)
  with pytest.raises(ConfigError, match="model.mlm_transform=True .* model.family='encoder'"):
    tiny(**{'model.mlm_transform': True})


@pytest.mark.parametrize('family', ['encoder', 'encoder_decoder'])
def test_sharded_mesh_matches_single_device(family):
  from tests.test_sharding import _mesh_cfg, _run

  def run(mesh_shape, devices):
    c = _mesh_cfg(mesh_shape, **{'model.family': family})
    losses, state = _run(c, devices, batches=[_family_batch(c, s) for s in range(3)])
    names = {jax.tree_util.keystr(k): v.sharding.spec for k, v in
             jax.tree_util.tree_leaves_with_path(state.params)}
    return losses, names

  ref, _ = run((1, 1, 1), jax.devices()[:1])
  got, specs = run((2, 2, 2), jax.devices())
  np.testing.assert_allclose(got, ref, rtol=1e-5)
  if family == 'encoder_decoder':  # New parameters are sharded by their logical axes.
    assert tuple(specs["['blocks']['cross_attn']['query']"]) == (None, 'fsdp', 'tensor', None)
    assert tuple(specs["['encoder_blocks']['attn']['out']"]) == (None, 'tensor', None, 'fsdp')


def test_classifier_on_the_encoder_family(tmp_path):
  from tests.test_finetune import _classifier
  out = train.train_and_evaluate(
      _classifier(tmp_path, **{'model.family': 'encoder', 'model.pool': 'first'}),
      str(tmp_path / 'cls'), log=lambda *a: None)
  assert out['accuracy'] >= 0.9, out


def test_seq2seq_pairs_from_jsonl(tmp_path):
  rng = np.random.default_rng(0)
  rows = []
  for _ in range(64):
    word = ''.join(rng.choice(list('abcdef'), 4))
    rows.append({'input': word, 'target': word[::-1]})
  path = tmp_path / 'pairs.jsonl'
  path.write_text(''.join(json.dumps(r) + '\n' for r in rows))
  c = tiny(**{'model.family': 'encoder_decoder', 'data.source': 'file',
              'data.path': str(path), 'data.text_key': 'input', 'data.target_key': 'target',
              'data.val_fraction': 0.25, 'data.seq_len': 8, 'train.steps': 6})
  out = train.train_and_evaluate(c, str(tmp_path / 'wd'), log=lambda *a: None)
  assert np.isfinite(out['loss']) and 0 <= out['accuracy'] <= 1 and out['tokens'] > 0
  bad = tmp_path / 'bad.jsonl'
  bad.write_text('{"input": "x"}\n')
  c = dataclasses.replace(c, data=dataclasses.replace(c.data, path=str(bad)))
  from lm import classify
  with pytest.raises(classify.LabelError, match=r"bad.jsonl:1: missing field 'target'"):
    train.train_and_evaluate(c, str(tmp_path / 'wd2'))


@pytest.mark.parametrize('override,match', [
    ({'model.family': 'bert'}, r"model.family='bert'.*decoder, encoder, encoder_decoder"),
    ({'data.mlm_rate': 1.0}, r"data.mlm_rate=1.0.*\(0, 1\)"),
    ({'data.mlm_rate': 0.0}, r"data.mlm_rate=0.0"),
    ({'data.noise_density': 1.5}, r"data.noise_density=1.5"),
    ({'data.mean_span': 0.5}, r"data.mean_span=0.5.*>= 1"),
    ({'model.family': 'encoder_decoder', 'data.label_key': 'l', 'data.source': 'file',
      'data.path': 'p.jsonl'}, r"data.label_key='l'.*'decoder' or 'encoder'"),
    ({'model.family': 'encoder', 'data.label_key': 'l', 'data.source': 'file',
      'data.path': 'p.jsonl'}, r"model.pool='last'.*'first'"),
    ({'data.target_key': 'y', 'data.source': 'file', 'data.path': 'p.jsonl'},
     r"data.target_key='y'.*model.family='encoder_decoder'"),
])
def test_bad_family_config(override, match):
  from lm import config as config_lib
  with pytest.raises(ConfigError, match=match):
    config_lib.from_configdict(tiny_cd(**override))


@pytest.mark.parametrize('family,cli,arg,message', [
    ('encoder_decoder', 'fill_mask', '--text=a [MASK]',
     'holds an encoder_decoder model; fill-mask needs'),
    ('encoder', 'generate', '--prompt=x', 'holds an encoder (masked LM)'),
    ('decoder_classifier', 'fill_mask', '--text=a [MASK]',
     'holds a decoder sequence classifier (2 classes); fill-mask needs'),
])
def test_cli_refuses_checkpoints_of_another_family(family, cli, arg, message, tmp_path):
  from lm import checkpoint
  over = {'model.family': family.removesuffix('_classifier')}
  if family.endswith('_classifier'):
    over.update({'model.num_classes': 2, 'data.source': 'file', 'data.path': 'x.jsonl',
                 'data.label_key': 'label', 'data.labels': ('a', 'b')})
  c = train.resolve_vocab(tiny(**over), 259)
  checkpoint.save_params(str(tmp_path / 'run'), c, _params(c.model))
  r = forked_cli.run([sys.executable, '-m', f'experiments.{cli}',
                      f'--workdir={tmp_path / "run"}', arg],
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 2 and message in r.stderr, r.stderr


@pytest.mark.parametrize('family', ['encoder', 'encoder_decoder'])
def test_sweep_plans_each_family_at_equal_compute(family, tmp_path):
  from lm import sweep
  from tests.test_sweep import _sweep_cd
  cd = _sweep_cd(tmp_path)
  cd.model.family = family
  runs = sweep.make_plan(cd)
  assert len(runs) == 6
  for r in runs:
    c = sweep._resolved(sweep.run_config(cd, r, 3))
    assert c.model.family == family
    fpt = flops.train_flops_per_token(c.model, c.data.seq_len, 'exact', None,
                                      *objectives.get(c).lengths(c))
    assert abs(fpt * r.tokens / r.budget - 1) < 0.35  # Steps are whole numbers.


def test_seq2seq_pairs_from_a_tfds_catalog_dataset_with_mock_data(tmp_path):
  import tensorflow_datasets as tfds
  from lm import classify
  from lm.config import DataConfig
  d = DataConfig(source='tfds', tfds_name='billsum', text_key='text',
                 target_key='summary', val_split='test', cache_dir=str(tmp_path))
  with tfds.testing.mock_data(num_examples=5):
    train_pairs, eval_pairs, names = classify.load(d, str(tmp_path))
  assert names == () and len(train_pairs) == 5 and len(eval_pairs) == 5
  assert all(isinstance(a, str) and isinstance(b, str) for a, b in train_pairs)
  out = seq2seq.encode_pairs(train_pairs, TOK, 16, 8)
  assert out['enc_inputs'].shape == (5, 16) and out['targets'].shape == (5, 8)
  assert (out['dec_inputs'][:, 0] == TOK.bos_id).all()


@pytest.mark.slow
def test_fill_mask_and_encoder_decoder_generate_clis(tmp_path):
  from experiments.fill_mask import FillMaskError, mask_ids, top_candidates
  from lm import checkpoint
  ids, where = mask_ids('ab[MASK]c[MASK]', TOK)
  assert ids == [97, 98, 259, 99, 259] and where == [2, 4]
  with pytest.raises(FillMaskError, match='no \\[MASK\\] marker'):
    mask_ids('abc', TOK)
  logits_V = np.linspace(0, 1, 320)  # A padded vocabulary; specials are the likeliest.
  top = top_candidates(logits_V, TOK, 300)  # More than there are text tokens.
  assert len(top) == 256 and {t for t, _ in top} == set(range(256))
  assert abs(sum(p for _, p in top) - 1) < 1e-9 and top[0][0] == 255
  sp = type('SP', (), dict(vocab_size=6, bos_id=1, eos_id=2, pad_id=-1))  # SentencePiece: no PAD.
  assert [t for t, _ in top_candidates(np.array([0, 0, 0, 0, 0, 5.0]), sp, 4)] == [5, 0, 3, 4]
  c = train.resolve_vocab(tiny(**{'model.family': 'encoder'}), 259)
  checkpoint.save_params(str(tmp_path / 'enc'), c, _params(c.model))
  r = forked_cli.run([sys.executable, '-m', 'experiments.fill_mask', f'--workdir={tmp_path / "enc"}',
                      '--text=def f(x):\\n    return x [MASK] 1[MASK]', '--top_k=3'],
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr
  blocks = r.stdout.split('[MASK] ')[1:]
  assert len(blocks) == 2 and all(len(b.strip().splitlines()) == 4 for b in blocks)
  probs = [float(line.split()[-1]) for b in blocks for line in b.strip().splitlines()[1:]]
  assert all(0 < p < 1 for p in probs)
  c = train.resolve_vocab(tiny(**{'model.family': 'encoder_decoder'}), 259)
  checkpoint.save_params(str(tmp_path / 'ed'), c, _params(c.model))
  r = forked_cli.run([sys.executable, '-m', 'experiments.generate', f'--workdir={tmp_path / "ed"}',
                      '--prompt=import os', '--prompt=x', '--greedy', '--max_new_tokens=5'],
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr
  assert '=== prompt 1, sample 0 ===' in r.stdout
  # Infilling: <extra_id_N> in the prompt is span corruption's sentinel N; and
  # --score gives log p(target | input).
  ed = [sys.executable, '-m', 'experiments.generate', f'--workdir={tmp_path / "ed"}']
  r = forked_cli.run(ed + ['--prompt=import <extra_id_0> os', '--greedy', '--max_new_tokens=4'],
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0 and '=== prompt 0, sample 0 ===' in r.stdout, r.stderr
  r = forked_cli.run(ed + ['--prompt=import <extra_id_0>', '--score=<extra_id_0> os'],
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr
  lines = r.stdout.splitlines()  # Specials unquoted (text is quoted): sentinel, ' ', 'o', 's', EOS.
  assert [ln.split()[0] for ln in lines[:5]] == ['<extra_id_0>', "'", "'o'", "'s'", '<eos>'], lines
  assert 'tokens 5  nll' in r.stdout, r.stdout
  r = forked_cli.run(ed + ['--prompt=import os', '--score=<extra_id_0>'], capture_output=True,
                     text=True, timeout=300)  # No text bytes to score (divided by zero).
  assert r.returncode == 0 and 'bits per byte n/a' in r.stdout, r.stderr
  r = forked_cli.run(ed + ['--prompt=x <extra_id_999>'], capture_output=True, text=True,
                     timeout=300)
  assert r.returncode == 2 and ('<extra_id_999>: the model was trained with 1 sentinel, '
                                '<extra_id_0>') in r.stderr, r.stderr
  r = forked_cli.run(ed + ['--prompt=' + 'x' * 200, '--greedy', '--max_new_tokens=4'],
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 2 and 'prompt 0 is 201 tokens as the encoder input' in r.stderr, (
      r.stderr)
  r = forked_cli.run(ed + ['--prompt=x', '--max_new_tokens=32'], capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 2 and "decoder's start token exceed" in r.stderr, r.stderr
  r = forked_cli.run(ed + ['--score=os'], capture_output=True, text=True, timeout=300)
  assert r.returncode == 2 and 'give exactly one --prompt' in r.stderr
  (tmp_path / 'more.txt').write_text('y\n')  # Was read and silently not used.
  r = forked_cli.run(ed + ['--score=os', '--prompt=x', f'--prompts_file={tmp_path}/more.txt'],
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 2 and 'exactly one --prompt and no --prompts_file' in r.stderr, r.stderr
  # Its input always ends with EOS and decoding starts at BOS: the flag changed nothing.
  r = forked_cli.run(ed + ['--prompt=x', '--nodoc_start'], capture_output=True, text=True,
                     timeout=300)
  assert r.returncode == 2 and r.stderr.startswith('error: --[no]doc_start only applies to '
                                                   'a decoder'), r.stderr


def _span_restore(enc_inputs: np.ndarray, targets: np.ndarray, text_vocab: int,
                 eos_id: int) -> np.ndarray:
  """The original window from a corrupted pair: the inverse that checks span_corrupt.

  Ids >= text_vocab (the tokenizer's size) are sentinels; text never has them."""
  spans: dict[int, list[int]] = {}
  cur = None
  for t in targets.tolist()[:-1]:  # The last target is EOS.
    if t >= text_vocab:
      cur = t
      spans[cur] = []
    else:
      spans[cur].append(t)
  out = []
  for t in enc_inputs.tolist()[:-1]:  # The last input is EOS.
    out += spans[t] if t >= text_vocab else [t]
  return np.asarray(out, np.int32)
