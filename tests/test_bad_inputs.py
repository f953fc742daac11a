"""Bad input ends in one line naming the value and exit 2, changing no file.

tools/bad_inputs.py holds the corpus (>= 100 cases across the CLIs) and runs
it all; here every config-value case is checked in-process (the same
validation the CLIs run first) and a sample of the others end to end."""

import os

import pytest

from configs import tiny as tiny_config
from lm import config as config_lib
from tests import forked_cli
from tools import bad_inputs

# Rejected by flag parsing, or later than config validation (objective table, mesh,
# the harness's task index).
_PARSED = ('many', 'd_modle', 'trian', 'train.objective', 'mesh.data=3', 'no_such_task')
CONFIG_CASES = [(n, a[-1], w) for n, a, w in bad_inputs.CASES
                if n.startswith('train --config.') and not any(x in n for x in _PARSED)]


def test_the_corpus_is_large_and_covers_every_cli():
  assert len(bad_inputs.CASES) >= 100
  clis = {a[1] for _, a, _ in bad_inputs.CASES}
  assert {'experiments.train', 'experiments.generate', 'experiments.sweep',
          'experiments.fill_mask', 'experiments.classify', 'tools.hf', 'tools.count',
          'tools.config', 'tools.shardings', 'tools.fit', 'tools.train_tokenizer'} <= clis


def test_whole_section_overrides_are_refused():
  """--config.train={...} would drop the config file's other train fields."""
  from lm import cli
  assert cli._whole_section(['x', "--config.train={'steps': 7}"]) == 'train'
  assert cli._whole_section(['x', '--config.sweep={}', '--config.model=1']) == 'sweep'
  assert cli._whole_section(['x', '--config.train.steps=7', '--config=configs/tiny.py',
                             '--', '--config.model={}']) is None


@pytest.mark.parametrize('name,flag,want', CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_config_values_are_refused_by_name(name, flag, want):
  import ast
  path, value = flag[len('--config.'):].split('=', 1)
  section, field = path.split('.')
  cd = tiny_config.get_config()
  default = cd[section][field]
  try:
    v = ast.literal_eval(value)
  except (ValueError, SyntaxError):
    v = float(value) if isinstance(default, float) else value  # inf, nan: as absl parses them.
  cd[section][field] = type(default)(v) if isinstance(default, float) and isinstance(
      v, int) else v
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.from_configdict(cd)
  assert want in str(e.value) and '\n' not in str(e.value), str(e.value)


SAMPLE = ['train: data dir of binary files', 'train: resume with another architecture',
          'sweep: collect an empty workdir', 'hf export: --overwrite onto a run',
          'train: a tuple of unquoted strings', 'sweep: plan with --only not in it',
          'train: resume from a damaged checkpoint',
          'generate: --score not UTF-8', 'config: a config file whose code fails',
          'fit_coverage: negative noise', 'generate: a run whose config.json is a JSON list',
          "train: --workdir inside a run's checkpoints",
          'eval: --canaries of a damaged canaries.json']  # tools/bad_inputs.py runs every case.


@pytest.mark.slow
def test_a_sample_of_cli_cases_end_to_end(tmp_path):
  cases = {n: (a, w) for n, a, w in bad_inputs.CASES}
  uses = lambda s: any(s in a for n in SAMPLE for a in cases[n][0])  # noqa: E731
  places = bad_inputs._prepare(str(tmp_path), hf=uses('{HF}'), sw=uses('{S}/sw'))
  for name in SAMPLE:
    res = bad_inputs.run_case(name, *cases[name], places, run=forked_cli.run)
    assert res['verdict'] == 'clear' and not res['damaged'], res


def test_tools_refuse_bad_flags_and_damaged_sweep_files_in_one_line(tmp_path):
  """Flags that crashed after minutes of work (an empty --out, zero timed steps),
  hung (10**6 fake devices), printed a NaN table or deleted a directory the
  tool had not made (its scratch --workdir), and sweep files with text where
  numbers belong: each a one-line exit 2 before any work, nothing changed."""
  bad_inputs._prepare_small(str(tmp_path))
  (tmp_path / 'full').mkdir()
  (tmp_path / 'full' / 'keep.txt').write_text('keep me')  # Not a tool's scratch: kept.
  places = {'S': str(tmp_path)}
  cases = {n: (a, w) for n, a, w in bad_inputs.CASES}
  for name in ('fault_inject: a --workdir it did not make',
               'bad_inputs: a --scratch it did not make',
               'eta_replay: a result whose wall_s is text',
               'eta_replay: a plan whose compute is text', 'coord_check: an empty --out',
               'bench_decode: --uncached_steps 0', 'memory: --devices past 8192',
               'fit_coverage: --decades past floating point',
               'config: an argument to a config that takes none',
               'config: get_config returning a number', 'fault_inject: negative --kills',
               'fit: --loss naming no column'):
    res = bad_inputs.run_case(name, *cases[name], places, run=forked_cli.run)
    assert res['verdict'] == 'clear' and not res['damaged'], res


def test_scratch_directories_are_replaced_only_when_the_tool_made_them(tmp_path):
  """fault_inject and bad_inputs rmtree'd any --workdir/--scratch: now only an
  empty one, one with their mark, or one holding only what they write (made
  before the mark)."""
  from lm import workdir
  old = tmp_path / 'old'  # An earlier version's scratch: no mark.
  (old / 'run').mkdir(parents=True)
  (old / 'cfg.py').write_text('x')
  workdir.fresh_scratch(str(old), 'workdir', frozenset({'cfg.py', 'run', 'reference'}))
  assert os.listdir(old) == [workdir.SCRATCH_MARK]
  (old / 'anything').write_text('x')  # Marked: replaced whatever it holds.
  workdir.fresh_scratch(str(old), 'workdir')
  assert os.listdir(old) == [workdir.SCRATCH_MARK]
  mine = tmp_path / 'mine'
  (mine / 'run').mkdir(parents=True)
  (mine / 'thesis.tex').write_text('keep me')
  for path in (mine, mine / 'thesis.tex', ''):
    with pytest.raises(workdir.NotWritable):
      workdir.fresh_scratch(str(path) if path else '', 'workdir', frozenset({'run'}))
  assert (mine / 'thesis.tex').read_text() == 'keep me'


def test_an_unknown_field_lists_its_sections_fields():
  from lm import cli
  out = cli._fields_of_unknown(['x', '--config.train.steps=3', '--config.model.dropout=0.1'])
  assert out.startswith(' (--config.model.dropout; model fields: family, ') and 'resid_dropout' in out
  assert cli._fields_of_unknown(['x', '--config.train.steps=3']) == ''


def test_a_missing_checkpoint_step_names_the_steps_there(tmp_path):
  from lm import checkpoint
  (tmp_path / 'checkpoints' / '3').mkdir(parents=True)
  (tmp_path / 'checkpoints' / '10').mkdir()
  with pytest.raises(checkpoint.CheckpointError, match=r'999 does not exist; .* holds steps 3, 10'):
    checkpoint.find(str(tmp_path / 'checkpoints' / '999'))
  assert checkpoint.find(str(tmp_path / 'checkpoints' / '3'))[1].endswith('checkpoints/3')


def test_only_a_bracketed_string_reads_as_an_unparsed_tuple(monkeypatch):
  """'(pos, neg)' is refused; an empty value (ml_collections: ('',)) is not
  called a tuple."""
  from ml_collections import config_dict

  from lm import cli
  cd = config_dict.ConfigDict({'data': {'labels': ('(pos, neg)',), 'tags': ('',)}})
  monkeypatch.setattr(cli.flags, 'FLAGS', type('Flags', (), {'config': cd})())
  assert 'not a Python tuple' in cli._unparsed_tuple(['x', '--config.data.labels=(pos, neg)'])
  assert cli._unparsed_tuple(['x', '--config.data.tags=']) is None


def test_one_text_per_line_files_are_read_alike(tmp_path):
  """generate --prompts_file and classify --file share one reader: empty lines
  are skipped (spaces are text), '\\n' is a newline, bad files fail in one line."""
  from lm import cli
  f = tmp_path / 'texts.txt'
  f.write_text('first\n  \n\nsecond\\nline\n  indented\n')
  assert cli.read_lines(str(f), 'file') == ['first', '  ', 'second\nline', '  indented']
  f.write_text('first\nsecond\n', encoding='utf-8-sig')  # A byte order mark is not text.
  assert cli.read_lines(str(f), 'file') == ['first', 'second']
  (tmp_path / 'blank.txt').write_text('\n\n')
  (tmp_path / 'bin.txt').write_bytes(b'ok\n\xff\xfe\n')
  for name, want in [('blank.txt', 'holds no text'), ('bin.txt', 'is not UTF-8'),
                     ('none.txt', 'does not exist'), ('', 'is a directory')]:
    with pytest.raises(config_lib.ConfigError) as e:
      cli.read_lines(str(tmp_path / name), 'prompts_file')
    assert f'--prompts_file={tmp_path / name} {want}' in str(e.value), str(e.value)


def test_command_line_text_that_is_not_utf8_and_seeds_past_32_bits_are_refused():
  """A shell's invalid byte reaches Python as a lone surrogate, which no
  tokenizer encodes (generate --score and classify --text failed with a
  traceback after loading the model); a JAX key keeps a seed's low 32 bits, so
  --seed=2**32 sampled what --seed=0 did."""
  from lm import cli, sampling
  assert cli.check_text('ok é', 'text') == 'ok é'
  with pytest.raises(ValueError, match=r"^--score: not UTF-8 text \(byte b'\\xff' at character 1\)"):
    cli.check_text('a\udcffb', 'score')
  sampling.validate(sampling.SamplingConfig(seed=2 ** 32 - 1))
  for seed in (2 ** 32, -1):
    with pytest.raises(sampling.SamplingError, match=f'seed={seed} is invalid'):
      sampling.validate(sampling.SamplingConfig(seed=seed))


def test_a_reader_that_goes_away_ends_the_cli_without_a_traceback():
  """`... | head`: the CLI's next write fails (BrokenPipeError); it had ended
  in a traceback. Now its output goes to /dev/null and it exits 1."""
  import subprocess
  import sys
  p = subprocess.Popen([sys.executable, '-m', 'tools.config', '--config=configs/tiny.py'],
                       cwd=bad_inputs.ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True)
  p.stdout.close()  # Before it writes: its first print fails.
  err = p.stderr.read()
  assert p.wait(timeout=120) == 1 and 'Traceback' not in err and 'BrokenPipe' not in err, err


def test_run_records_and_folders_named_checkpoints(tmp_path):
  """A project's own checkpoints/ folder of runs is not a run's (only one with
  step directories is), and a trained run's config.json stays readable under
  rules added after it was made (a wsd warmup past its cooldown's start)."""
  import dataclasses

  from lm import workdir
  (tmp_path / 'proj' / 'checkpoints' / 'run1').mkdir(parents=True)
  (tmp_path / 'proj' / 'config.json').write_text('{"editor": 1}')
  assert workdir.inside_checkpoints(str(tmp_path / 'proj' / 'checkpoints' / 'run1')) is None
  (tmp_path / 'proj' / 'checkpoints' / '3').mkdir()
  assert workdir.inside_checkpoints(str(tmp_path / 'proj' / 'checkpoints' / 'x' / 'y')) == str(
      tmp_path / 'proj')
  c = config_lib.from_configdict(tiny_config.get_config())
  old = config_lib.to_dict(dataclasses.replace(
      c, opt=dataclasses.replace(c.opt, schedule='wsd', warmup_steps=c.train.steps)))
  with pytest.raises(config_lib.ConfigError, match='inside the warmup'):
    config_lib.from_configdict(old)
  assert config_lib.from_configdict(old, recorded=True).opt.warmup_steps == c.train.steps


def test_a_coordinator_address_is_host_and_port_before_jax_distributed_starts():
  """gRPC crashed the process (SIGSEGV) on 'localhost:abc'; 99999 was accepted."""
  from lm import sharding
  for address in ('localhost:abc', 'localhost:-5', 'garbage', 'localhost:99999', ':80'):
    with pytest.raises(config_lib.ConfigError, match='give HOST:PORT, a port in 1..65535'):
      sharding.init_distributed(address, 1, 0)
  with pytest.raises(config_lib.ConfigError, match='--process_id=-7'):
    sharding.init_distributed('', 0, -7)
