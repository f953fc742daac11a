"""Every invalid value gets one clear error naming the field, value and fix."""

import dataclasses
import os
import subprocess
import sys

import pytest

from lm import config as config_lib
from lm import train
from lm.config import ConfigError
from tests import forked_cli
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
    ({'train.steps': -5, 'opt.warmup_steps': 0}, r'train.steps=-5 .* must be > 0'),
    ({'data.seq_len': 64}, r'data.seq_len=64 .* learned position table model.max_len=32'),
    ({'train.batch_size': 10, 'train.grad_accum': 4}, r'batch_size=10 .*grad_accum=4'),
    ({'model.attn_dropout': 1.5}, r'model.attn_dropout=1.5 .* \[0, 1\)'),
    ({'model.attn_dropout': 0.1, 'model.attention': 'pallas'},
     r"model.attention='pallas' .* attention dropout \(model.attn_dropout=0.1\) exists only "
     r'on the xla path'),
    ({'model.dtype': 'float16'}, r"model.dtype='float16' .* float32, bfloat16"),
    ({'data.source': 'dir'}, r"data.path='' .* directory or glob"),
    ({'mesh.data': 0}, r'mesh.data=0 .* positive size or -1'),
    ({'data.tokenizer': 'gpt2'}, r"data.tokenizer='gpt2' .* byte, sentencepiece, hf"),
    ({'data.tokenizer': 'hf'}, r"data.tokenizer_path='' .* Hugging Face tokenizer.json"),
    # Non-finite numbers would train to NaN or hang a schedule; none is meaningful.
    ({'opt.lr': float('inf')}, r'opt.lr=inf .* finite number'),
    ({'opt.weight_decay': float('nan')}, r'opt.weight_decay=nan .* finite number'),
    ({'opt.eps': float('inf')}, r'opt.eps=inf .* finite number'),
    ({'model.init_std': float('inf')}, r'model.init_std=inf .* finite number'),
    ({'data.mean_span': float('inf')}, r'data.mean_span=inf .* finite number'),
    ({'train.peak_flops': float('nan')}, r'train.peak_flops=nan .* finite number'),
    ({'model.rope_theta': 0.0}, r'model.rope_theta=0.0 .* must be > 0'),
    ({'train.extra_checkpoints': (3, -1)}, r'extra_checkpoints=\(3, -1\) .* step >= 1'),
    ({'train.seed': -1}, r'train.seed=-1 .* in \[0, 2\*\*32\)'),
    ({'train.seed': 2 ** 32}, r'train.seed=4294967296 .* in \[0, 2\*\*32\)'),
    # A causal decoder's first token attends to itself only: a classifier of one token.
    ({'model.pool': 'first', 'data.source': 'file', 'data.path': 'x.csv',
      'data.label_key': 'label'}, r"model.pool='first' .* first token sees only itself"),
    # Rows past a position table were clamped to its last row, silently.
    ({'model.position': 'sinusoidal', 'data.seq_len': 64},
     r'data.seq_len=64 .* sinusoidal position table model.max_len=32'),
    ({'model.family': 'encoder_decoder', 'data.source': 'file', 'data.path': 'x.jsonl',
      'data.target_key': 'target', 'data.target_len': 64},
     r'data.target_len=64 .* learned position table model.max_len=32'),
    # Fields no part of the chosen model or objective reads: they changed nothing, silently.
    ({'model.family': 'encoder_decoder', 'data.target_len': 16},
     r"data.target_len=16 .* read only with \(input, target\) pairs .* span corruption's"),
    ({'model.num_decoder_layers': 2},
     r"model.num_decoder_layers=2 .* read only with model.family='encoder_decoder'"),
    ({'model.rope_theta': 5e5}, r"model.rope_theta=500000.0 .* read only with model.position="
                                r"'rope', so it changes nothing here; leave it at its default "
                                r'10000.0'),
    ({'model.attention': 'xla', 'model.attn_max_docs': 16},
     r"model.attn_max_docs=16 .* read only with model.attention='dot_product' \(or 'auto'"),
    ({'data.text_key': 'body'}, r"data.text_key='body' .* data.source='file' or 'tfds'"),
    ({'data.tfds_name': 'glue/sst2'}, r"data.tfds_name='glue/sst2' .* data.source='tfds'"),
    ({'data.tokenizer_path': 'x.model'}, r"data.tokenizer_path='.*x.model' .* data.tokenizer="),
    ({'train.max_skips': 3}, r"train.max_skips=3 .* train.on_nonfinite='skip'"),
    ({'train.max_rollbacks': 5}, r"train.max_rollbacks=5 .* train.on_nonfinite='rollback'"),
    ({'train.eval_tasks_limit': 5}, r'train.eval_tasks_limit=5 .* read only with '
                                    r'train.eval_tasks'),
    ({'data.mlm_rate': 0.3}, r'data.mlm_rate=0.3 is read only by the mlm objective, and this '
                             r'run trains lm: leave it at its default 0.15'),
    ({'model.family': 'encoder', 'data.mean_span': 5.0},
     r'data.mean_span=5.0 is read only by the span objective, and this run trains mlm'),
    ({'model.pool': 'mean'}, r"model.pool='mean' is read only by the classify objective"),
    ({'data.canary_digits': 3}, r'data.canary_digits=3 .* read only with data.canary_repeats'),
    # Validation on the training split, silently.
    ({'data.source': 'tfds', 'data.tfds_name': 'tiny_shakespeare', 'data.val_split': 'train'},
     r"data.val_split='train' .* data.train_split too"),
]


def test_an_objective_s_own_fields_are_its_to_set():
  assert tiny(**{'model.family': 'encoder', 'data.mlm_rate': 0.3}).data.mlm_rate == 0.3
  assert tiny(**{'model.family': 'encoder_decoder', 'data.mean_span': 5.0}).data.mean_span == 5
  assert tiny(**{'data.canary_repeats': (0, 4), 'data.canary_digits': 3}).data.canary_digits == 3


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
  d = tiny_cd().to_dict()
  d['opt']['lr'] = '3e-3'
  with pytest.raises(ConfigError, match=r"opt.lr='3e-3' .* finite number"):
    config_lib.from_configdict(d)
  d = tiny_cd().to_dict()
  d['train']['extra_checkpoints'] = 5
  with pytest.raises(ConfigError, match=r'train.extra_checkpoints=5 .* tuple'):
    config_lib.from_configdict(d)
  for seeds in ((0, 1.5), (True,), (-1,), (0, 2 ** 32)):
    with pytest.raises(ConfigError, match=r'sweep.seeds=.* integers in \[0, 2\*\*32\)'):
      config_lib.sweep_config({'design': 'isoflop', 'budgets': (1e12,), 'seeds': seeds})


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
  r = forked_cli.run(
      [sys.executable, '-m', 'experiments.train', '--config=configs/tiny.py',
       f'--workdir={tmp_path}', '--config.model.num_heads=5'],
      capture_output=True, text=True, env=env, cwd=os.path.dirname(os.path.dirname(__file__)),
      timeout=120)
  assert r.returncode == 2
  assert 'error: config.model.d_model=128 is invalid: must be divisible by model.num_heads=5' in r.stderr
  assert 'Traceback' not in r.stderr


def test_config_tool_lists_every_field_and_cli_errors_are_one_line(tmp_path):
  import sys

  from lm import config as config_lib
  from tools import config as tool
  from configs import isoflop_tiny
  cd = isoflop_tiny.get_config()
  cd.model.d_model = 64
  text = tool.table(cd)
  for path, (_, meaning) in config_lib.field_help().items():
    assert meaning, path  # Every field is explained beside its definition.
    assert meaning.count('(') == meaning.count(')'), (path, meaning)  # Not cut off.
    assert path in text, path
  # A meaning that goes on in a comment line below its field is read whole.
  assert config_lib.field_help()['opt.z_loss'][1].endswith('(the NLL, as eval reports it).')
  line = next(x for x in text.splitlines() if x.startswith('model.d_model '))
  assert '*64' in line and 'arch' in line and 'Width of the residual stream' in line
  for args, want in [(['--config.model.d_modle=3'], 'Did you mean "d_model"'),
                     (['--config.train.steps=abc'], "invalid literal for int() with base 10: 'abc'")]:
    r = forked_cli.run([sys.executable, '-m', 'experiments.train', '--config=configs/tiny.py',
                        f'--workdir={tmp_path / "w"}', *args], capture_output=True, text=True)
    assert r.returncode == 2 and want in r.stderr and 'Traceback' not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
  r = forked_cli.run([sys.executable, '-m', 'tools.config', '--config=configs/nope.py'],
                     capture_output=True, text=True)
  assert r.returncode == 2 and 'configs/nope.py' in r.stderr and 'Traceback' not in r.stderr
  assert not (tmp_path / 'w').exists()
  # config.rules from the command line: a preset by name (or a whole table).
  r = forked_cli.run([sys.executable, '-m', 'tools.config', '--config=configs/tiny.py',
                      '--config.rules=dp'], capture_output=True, text=True)
  assert r.returncode == 0 and '*preset dp ' in r.stdout, r.stderr


def test_rules_take_a_preset_or_a_table():
  from lm import config as config_lib
  cd = tiny_cd()
  assert config_lib.from_configdict(cd).rules == config_lib.DEFAULT_RULES
  cd.rules = ('dp',)  # What --config.rules=dp gives.
  assert config_lib.from_configdict(cd).rules == config_lib.RULE_PRESETS['dp']
  cd.rules = [['batch', ['data', 'fsdp']], ['embed', None]]  # A config file's list.
  assert config_lib.from_configdict(cd).rules == (('batch', ('data', 'fsdp')), ('embed', None))
  for bad, pattern in [(('zz',), r"config.rules='zz' .* a preset \(dp, fsdp, tp, fsdp_tp\)"),
                       ((('batch',),), r"config.rules=\('batch',\) .* \(logical axis, mesh"),
                       ((('batch', 'nope'),), r"mesh axes must be in"),
                       ((3,), r"config.rules=3 .* \(logical axis, mesh axes\) pair")]:
    cd.rules = bad
    with pytest.raises(ConfigError, match=pattern):
      config_lib.from_configdict(cd)


def test_finetune_configs_refuse_to_start_without_init_from():
  from configs import finetune_classify, finetune_lm
  for mod in (finetune_lm, finetune_classify):
    cd = mod.get_config()
    cd.data.path = '/data'
    with pytest.raises(ConfigError, match='config.init_from=.* fine-tunes a pre-trained model'):
      config_lib.from_configdict(cd)
    cd.init_from = 'runs/tiny'
    config_lib.from_configdict(cd)


def test_field_kinds_decide_architecture_and_resume_diffs():
  from lm import checkpoint
  c = tiny()
  m = dataclasses.replace(c.model, mlp_dim=0)
  # 0-means-default spellings are the same architecture.
  same = dataclasses.replace(m, mlp_dim=4 * m.d_model, num_kv_heads=m.num_heads,
                             head_dim=m.d_model // m.num_heads)
  assert checkpoint.arch_diff(m, same) == []
  assert checkpoint.arch_diff(m, dataclasses.replace(m, resid_dropout=0.1, remat='full',
                                                     dtype='bfloat16')) == []
  assert checkpoint.arch_diff(m, dataclasses.replace(m, num_kv_heads=2)) == [
      'model.num_kv_heads: 4 != 2']
  # Resume: free fields may change, fixed ones (data, batch) may not.
  free = dataclasses.replace(c, train=dataclasses.replace(c.train, steps=99, eval_every=7))
  assert config_lib.kind_diff(c, free, (config_lib.ARCH, config_lib.HEAD, config_lib.FIXED)) == []
  other = dataclasses.replace(c, data=dataclasses.replace(c.data, seq_len=8))
  assert config_lib.kind_diff(c, other, (config_lib.FIXED,)) == ['data.seq_len: 16 != 8']
  fields = config_lib.field_help()  # 0.2 s a call (it parses the source).
  for path in config_lib.FIELD_KINDS:  # The table names real fields only.
    assert path in fields, path


def test_cli_modules_the_tests_import_load_into_one_process():
  """The tests import functions from tools/ and experiments/ modules into shared
  pytest workers, so none of those modules may define at import a flag that
  another of them defines (tools.eta_replay's --workdir clashed with
  experiments.fill_mask's and failed whichever test a worker ran second)."""
  import glob
  import re
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  mods = set()
  for path in glob.glob(os.path.join(root, 'tests', '*.py')):
    for pkg, names in re.findall(r'^\s*from (tools|experiments\.\w+) import ([\w, ]+)',
                                 open(path).read(), re.M):
      mods |= {f'{pkg}.{n.split()[0]}' for n in names.split(',')} if pkg == 'tools' else {pkg}
  assert {'tools.eta_replay', 'experiments.fill_mask', 'tools.bench_train'} <= mods, mods
  r = subprocess.run([sys.executable, '-c', 'import ' + ', '.join(sorted(mods))], cwd=root,
                     capture_output=True, text=True, timeout=120,
                     env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert r.returncode == 0, r.stderr[-2000:]


def test_override_checks_see_inside_a_flagfile(tmp_path):
  """A repeated tuple override or a whole-section override given in a
  --flagfile is refused as on the command line (they were concatenated, or
  reset the section's other fields, without a word)."""
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  twice, section = tmp_path / 'twice.txt', tmp_path / 'section.txt'
  twice.write_text("--config.train.eval_tasks=('a',)\n")
  section.write_text("--config.train={'steps': 70}\n")
  for extra, want in (([f'--flagfile={twice}', "--config.train.eval_tasks=('b',)"],
                       'error: --config.train.eval_tasks is given twice'),
                      ([f'--flagfile={section}'], 'would replace the whole train section'),
                      # ml_collections reads flagfiles when --config is defined, at import:
                      # a missing one was a traceback from there.
                      ([f'--flagfile={tmp_path}/none.txt'],
                       f'error: Unable to open flagfile: [Errno 2] No such file or directory: '
                       f"'{tmp_path}/none.txt'")):
    r = forked_cli.run([sys.executable, '-m', 'tools.config', '--config=configs/tiny.py', *extra],
                       cwd=root, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and want in r.stderr and 'Traceback' not in r.stderr, r.stderr
