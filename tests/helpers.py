"""Small configs for tests."""

from configs import common
from lm import config as config_lib


def tiny_cd(corpus_dir=None, **overrides):
  """A ConfigDict for a very small model; overrides are 'section.field': value."""
  c = common.base()
  c.model.update(d_model=32, num_layers=2, num_heads=4, max_len=32, mlp_dim=64)
  c.data.update(seq_len=16, val_fraction=0.2)
  if corpus_dir is not None:
    c.data.update(source='dir', path=str(corpus_dir))
  c.opt.update(lr=1e-2, warmup_steps=2)
  c.train.update(batch_size=8, steps=6, log_every=1, eval_every=3, eval_batches=2,
                 checkpoint_every=3, progress=False)
  for k, v in overrides.items():
    section, field = k.split('.')
    c[section][field] = v
  return c


def tiny(corpus_dir=None, **overrides) -> config_lib.Config:
  return config_lib.from_configdict(tiny_cd(corpus_dir, **overrides))


def run_cli(module: str, *args: str):
  """`python -m module args` run in this process: (returncode, stdout, stderr)
  like subprocess.run's result, without a new interpreter's ~3 s of imports or
  its compiles (this process's caches serve them). For entry points whose
  behaviour is their output and exit status; signals, process exits and
  memory settings are tested in real subprocesses."""
  import contextlib
  import importlib
  import io
  import os
  import types

  from absl import flags

  from lm import cli
  main = importlib.import_module(module).main
  out, err, code = io.StringIO(), io.StringIO(), 0
  keep = os.environ.get('LM_KEEP_FREED_MEMORY')
  os.environ['LM_KEEP_FREED_MEMORY'] = '0'  # Not this process's allocator (lm/host.py).
  flags.FLAGS.unparse_flags()
  try:
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
      try:
        main(cli.parse_flags([module, *args]))
      except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
  finally:
    flags.FLAGS.unparse_flags()
    if keep is None:
      os.environ.pop('LM_KEEP_FREED_MEMORY')
    else:
      os.environ['LM_KEEP_FREED_MEMORY'] = keep
  return types.SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())
