"""Every invalid value gets one clear error naming the field, value and fix."""

import os
import subprocess
import sys

import pytest

from lm import config as config_lib
from lm import train
from lm.config import ConfigError
from tests.helpers import tiny, tiny_cd

CASES = [
    ({'model.d_model': 30}, r'model.d_model=30 .* divisible by model.num_heads=4'),
    ({'model.num_kv_heads': 3}, r'model.num_kv_heads=3 .* must divide model.num_heads=4'),
    ({'model.activation': 'swish'}, r"model.activation='swish' .* gelu, swiglu, relu2"),
    ({'model.norm': 'batchnorm'}, r"model.norm='batchnorm' .* layernorm, rmsnorm"),
    ({'model.position': 'alibi'}, r"model.position='alibi' .* learned, rope, sinusoidal, none"),
    ({'opt.schedule': 'step'}, r"opt.schedule='step' .* cosine, linear, constant"),
    ({'model.num_layers': 0}, r'model.num_layers=0 .* must be > 0'),
    ({'model.d_model': -8}, r'model.d_model=-8 .* must be > 0'),
    ({'train.batch_size': -1}, r'train.batch_size=-1 .* must be > 0'),
    ({'opt.warmup_steps': 100}, r'opt.warmup_steps=100 .* not be longer than train.steps=6'),
    ({'data.seq_len': 64}, r'data.seq_len=64 .* learned position table model.max_len=32'),
    ({'train.batch_size': 10, 'train.grad_accum': 4}, r'batch_size=10 .*grad_accum=4'),
    ({'model.attn_dropout': 1.5}, r'model.attn_dropout=1.5 .* \[0, 1\)'),
    ({'model.dtype': 'float16'}, r"model.dtype='float16' .* float32, bfloat16"),
    ({'data.source': 'dir'}, r"data.path='' .* directory or glob"),
    ({'mesh.data': 0}, r'mesh.data=0 .* positive size or -1'),
    ({'data.tokenizer': 'gpt2'}, r"data.tokenizer='gpt2' .* byte, sentencepiece, hf"),
    ({'data.tokenizer': 'hf'}, r"data.tokenizer_path='' .* Hugging Face tokenizer.json"),
]


@pytest.mark.parametrize('overrides,pattern', CASES, ids=[p.split()[0] for _, p in CASES])
def test_invalid_values(overrides, pattern):
  with pytest.raises(ConfigError, match=pattern):
    tiny(**overrides)


def test_unknown_fields_suggest_the_right_one():
  cd = tiny_cd()
  cd.model.d_modle = 64
  with pytest.raises(ConfigError, match=r"model.d_modle is not a known field \(did you mean 'd_model'"):
    config_lib.from_configdict(cd)
  cd = tiny_cd()
  cd.optim = {}
  with pytest.raises(ConfigError, match=r"config.optim is not a known section \(did you mean 'opt'"):
    config_lib.from_configdict(cd)


def test_wrong_types():
  # ConfigDict itself refuses type changes; plain dicts are checked by us.
  d = tiny_cd().to_dict()
  d['model']['num_layers'] = 2.5
  with pytest.raises(ConfigError, match=r'model.num_layers=2.5 .* integer'):
    config_lib.from_configdict(d)
  d = tiny_cd().to_dict()
  d['model']['scan_layers'] = 'yes'
  with pytest.raises(ConfigError, match=r"model.scan_layers='yes' .* True or False"):
    config_lib.from_configdict(d)


def test_batch_not_divisible_by_data_parallel_size(tmp_path, corpus_dir):
  # 8 devices on 'data'; a batch of 12 cannot be split 8 ways. Raised before
  # any data is prepared or anything compiled.
  c = tiny(corpus_dir, **{'train.batch_size': 12})
  with pytest.raises(ConfigError, match=r'batch_size=12 .* data-parallel size 8'):
    train.train_and_evaluate(c, str(tmp_path / 'w'))
  assert not os.path.exists(tmp_path / 'w' / 'checkpoints')


def test_mesh_product_must_match_devices(tmp_path, corpus_dir):
  c = tiny(corpus_dir, **{'mesh.data': 3})
  with pytest.raises(ConfigError, match=r'multiply to 3 .* 8 devices'):
    train.train_and_evaluate(c, str(tmp_path / 'w'))


def test_missing_and_empty_data_dir(tmp_path):
  with pytest.raises(ConfigError, match='does not exist'):
    train.train_and_evaluate(tiny(tmp_path / 'missing'), str(tmp_path / 'w1'))
  (tmp_path / 'empty').mkdir()
  with pytest.raises(ConfigError, match='holds no files'):
    train.train_and_evaluate(tiny(tmp_path / 'empty'), str(tmp_path / 'w2'))


def test_vocab_smaller_than_tokenizer():
  with pytest.raises(ConfigError, match=r'vocab_size=100 is smaller than the tokenizer'):
    train.resolve_vocab(tiny(**{'model.vocab_size': 100}), 259)


def test_cli_prints_one_line_error_without_traceback(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  r = subprocess.run(
      [sys.executable, '-m', 'experiments.train', '--config=configs/tiny.py',
       f'--workdir={tmp_path}', '--config.model.num_heads=5'],
      capture_output=True, text=True, env=env, cwd=os.path.dirname(os.path.dirname(__file__)),
      timeout=120)
  assert r.returncode == 2
  assert 'error: config.model.d_model=128 is invalid: must be divisible by model.num_heads=5' in r.stderr
  assert 'Traceback' not in r.stderr
