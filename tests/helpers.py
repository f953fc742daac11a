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

