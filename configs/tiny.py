"""python -m experiments.train --config=configs/tiny.py --workdir=runs/tiny

A ~0.5M-parameter byte-level model on the default corpus (the Python standard
library); trains in a few minutes on a 2-core CPU.
"""

from configs import common


def get_config(arg=None):
  common.no_arg(arg)
  c = common.base()
  c.name = 'tiny'
  c.model.update(d_model=128, num_layers=2, num_heads=4, max_len=128,
                 position='learned', activation='gelu', norm='layernorm')
  c.data.update(seq_len=128)
  c.opt.update(lr=3e-3, warmup_steps=30, schedule='cosine')
  c.train.update(batch_size=32, steps=300, log_every=10, eval_every=100,
                 eval_batches=8, checkpoint_every=100)
  return c
