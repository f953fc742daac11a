"""python -m experiments.sweep --config=configs/mup_transfer.py --workdir=runs/mup_transfer

Learning-rate transfer across width, SP against muP (Yang et al. 2022): 2-layer
byte-level models of d_model 32, 64, 128 and 256 (8x; 4 heads, so the head
dimension grows with width), each trained at every learning rate of a
factor-of-2 grid in both parametrizations, for the same tokens on the default
corpus. muP's base width is 32, so at width 32 the two are one model. The
report (report/report.md, transfer.png, transfer.json) gives the optimal
learning rate per width: under muP it should stay put, under SP it moves.
Sized for 2 CPU cores (the measured time is in the README).
"""

from configs import common


def get_config(arg=None):
  common.no_arg(arg)
  c = common.base()
  c.name = 'mup_transfer'
  c.model.update(d_model=32, num_layers=2, num_heads=4, max_len=64, position='learned',
                 activation='gelu', norm='layernorm', base_width=32)
  c.data.update(seq_len=64)
  c.opt.update(warmup_steps=10, schedule='cosine', min_lr_ratio=0.1)
  c.train.update(batch_size=16, steps=100, log_every=20, eval_batches=4, keep_checkpoints=1)
  c.sweep = common.sweep(design='transfer', widths=(32, 64, 128, 256),
                         lrs=tuple(2.0 ** k for k in range(-10, -4)),  # 1/1024 .. 1/32.
                         tokens=(100 * 16 * 64,), evals_per_run=1, seeds=(0,))
  return c
