"""python -m experiments.sweep --config=configs/lr_sweep.py --workdir=runs/lr_sweep

A learning-rate sweep (sweep.design='lr'): three tiny byte-level model sizes,
each trained at every learning rate of a factor-of-2 grid for two seeds on the
default corpus; the runs of one size share a shape and a length, so with
sweep.pack > 1 they train as packs (lm/pack.py). The report
(report/report.md, lr.png, lr.json) gives loss against learning rate per size,
each size's fitted optimum and lr*(N) ~ N^gamma. Sized for 2 CPU cores: 60
runs in 2 min 14 s with its two workers (2026-11-26, corpus already prepared).
"""

from configs import common


def get_config(arg=None):
  common.no_arg(arg)
  c = common.base()
  c.name = 'lr_sweep'
  c.model.update(max_len=64, position='learned', activation='gelu', norm='layernorm')
  c.data.update(seq_len=64)
  c.opt.update(warmup_steps=10, schedule='cosine', min_lr_ratio=0.1)
  c.train.update(batch_size=16, steps=100, log_every=20, eval_batches=4, keep_checkpoints=1)
  c.sweep = common.sweep(design='lr', params=(900.0, 6600.0, 2.2e4), tokens=(150 * 16 * 64,),
                         lrs=tuple(2.0 ** k for k in range(-11, -1)),  # 1/2048 .. 1/4.
                         aspect=8, head_dim=8, seeds=(0, 1), evals_per_run=1, workers=2)
  return c
