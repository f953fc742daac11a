"""FLOP conventions: the exact count matches XLA's cost analysis of the step."""

import dataclasses
import json

import flax.linen as nn
import jax
import pytest

from lm import flops, optimizer, train
from lm.config import ModelConfig
from tests.helpers import tiny


@pytest.mark.parametrize('model', [
    ModelConfig(vocab_size=512, d_model=128, num_layers=2, num_heads=4, max_len=128),
    ModelConfig(vocab_size=384, d_model=96, num_layers=3, num_heads=6, num_kv_heads=2,
                max_len=128, position='rope', norm='rmsnorm', activation='swiglu',
                use_bias=False, tie_embeddings=False, attn_block=32),
    ModelConfig(vocab_size=256, d_model=128, num_layers=4, num_heads=2, max_len=128,
                position='sinusoidal', activation='relu2', qk_norm=True, mlp_dim=320,
                tie_embeddings=False, attn_block=0),
], ids=['gpt2', 'llama_gqa_blocked', 'relu2_qknorm_untied'])
def test_exact_flops_match_xla_cost_analysis(model):
  # Unrolled: XLA's cost analysis counts a while-loop body (nn.scan) once.
  model = dataclasses.replace(model, scan_layers=False)
  c = tiny()
  c = dataclasses.replace(c, model=model, data=dataclasses.replace(c.data, seq_len=128),
                          train=dataclasses.replace(c.train, batch_size=4))
  m = train.Transformer(model)
  tx = optimizer.unit_lr(c.opt)
  abstract = jax.eval_shape(lambda r: nn.unbox(train.init_fn(c, m, tx)(r)), jax.random.key(0))
  batch = {'tokens': jax.ShapeDtypeStruct((4, 129), 'int32')}
  # XLA's count on the lowered program: the same dots as the compiled one (and
  # 0.8 s instead of a 6-12 s compile per model).
  cost = jax.jit(train.make_train_step(c, m, tx)).lower(abstract, batch).cost_analysis()
  xla = float(cost['flops'])
  ours = flops.train_flops_per_token(model, 128, 'exact') * 4 * 128
  assert abs(xla / ours - 1) < 0.05, (xla, ours)


def test_conventions_order_and_param_split():
  m = ModelConfig(vocab_size=1000, d_model=256, num_layers=4, num_heads=4, max_len=512)
  p = flops.param_counts(m)
  assert p['non_embedding'] == 4 * (4 * 256 * 256 + 4 * 256 + 2 * 4 * 256 * 256 + 4 * 256 + 256
                                    + 2 * 2 * 256) + 2 * 256
  assert p['total'] == p['non_embedding'] + 1000 * 256 + 512 * 256
  f = flops.all_conventions(m, 512)
  assert f['6N'] == 6 * p['non_embedding']
  assert f['6N'] < f['6N_with_head'] < f['kaplan']
  # Blocks skip masked keys: the exact count falls as blocks shrink.
  one = flops.train_flops_per_token(dataclasses.replace(m, attn_block=0), 512)
  blocked = flops.train_flops_per_token(dataclasses.replace(m, attn_block=128), 512)
  assert blocked < one
  # The chunked path runs 512-blocks where attn_block is 0, and is counted so.
  ch = dataclasses.replace(m, attention='chunked', max_len=2048)
  assert (flops.train_flops_per_token(dataclasses.replace(ch, attn_block=0), 2048) ==
          flops.train_flops_per_token(dataclasses.replace(ch, attn_block=512), 2048) <
          flops.train_flops_per_token(dataclasses.replace(ch, attention='xla', attn_block=0),
                                      2048))


def test_paper_conventions_count_every_attention_of_an_encoder_decoder():
  """kaplan's 2 n_layer n_ctx d_attn (and chinchilla's softmax) summed over
  the encoder, the decoder and cross-attention, each over its own lengths:
  the decoder's attention had been left out."""
  m = ModelConfig(family='encoder_decoder', vocab_size=300, d_model=64, num_layers=2,
                  num_decoder_layers=3, num_heads=4, max_len=128)
  seq, enc, dec = 120, 100, 30
  f = flops.all_conventions(m, seq, enc_len=enc, dec_len=dec)
  pairs = (2 * enc * enc + 3 * dec * (dec + enc)) / seq
  n = flops.param_counts(m)['non_embedding']
  assert f['kaplan'] == pytest.approx(6 * n + 6 * pairs * 64)
  deeper = flops.all_conventions(dataclasses.replace(m, num_decoder_layers=6), seq, enc_len=enc,
                                 dec_len=dec)
  n6 = flops.param_counts(dataclasses.replace(m, num_decoder_layers=6))['non_embedding']
  assert deeper['kaplan'] - 6 * n6 == pytest.approx(
      6 * 64 * (2 * enc * enc + 6 * dec * (dec + enc)) / seq)
  # A decoder-only model: unchanged, n_layer x n_ctx pairs.
  d = ModelConfig(vocab_size=300, d_model=64, num_layers=2, num_heads=4, max_len=128)
  assert flops.train_flops_per_token(d, 128, 'kaplan') == pytest.approx(
      6 * flops.param_counts(d)['non_embedding'] + 6 * 2 * 128 * 64)


def test_measured_cpu_peak_is_kept_per_machine(tmp_path, monkeypatch):
  """Measured once, then read back by later processes (here: a cleared
  in-process memo); a damaged file is measured again and rewritten."""
  monkeypatch.setattr(flops, '_MEASURED', {})
  first = flops.measure_matmul_peak(n=64, seconds=0.05, cache_dir=str(tmp_path))
  [entry] = json.load(open(tmp_path / 'matmul_peak.json')).values()
  assert first > 0 and entry['flops_per_s'] == first
  monkeypatch.setattr(flops, '_MEASURED', {})
  assert flops.measure_matmul_peak(n=64, seconds=0.05, cache_dir=str(tmp_path)) == first
  (tmp_path / 'matmul_peak.json').write_text('{"truncated')
  monkeypatch.setattr(flops, '_MEASURED', {})
  assert flops.measure_matmul_peak(n=64, seconds=0.05, cache_dir=str(tmp_path)) > 0
  assert len(json.load(open(tmp_path / 'matmul_peak.json'))) == 1
  (tmp_path / 'a_file').write_text('')  # A cache that cannot be written: measured, no error.
  monkeypatch.setattr(flops, '_MEASURED', {})
  assert flops.measure_matmul_peak(n=64, seconds=0.05, cache_dir=str(tmp_path / 'a_file')) > 0
  assert sorted(p.name for p in tmp_path.iterdir()) == ['a_file', 'matmul_peak.json']
