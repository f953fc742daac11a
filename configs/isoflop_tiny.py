"""python -m experiments.sweep --config=configs/isoflop_tiny.py --workdir=runs/isoflop

The main job: a small IsoFLOP sweep (3 budgets x 5 sizes) of tiny byte-level
models on the default corpus in two local worker processes (sweep.workers: on
2 CPU cores, two single-threaded processes train ~1.4x faster than one using
both), then fits and a report. Budgets are in FLOPs under sweep.convention.
"""

from configs import common


def get_config(arg=None):
  common.no_arg(arg)
  c = common.base()
  c.name = 'isoflop_tiny'
  # Unrolled layers: 1.17-1.31x faster steps than nn.scan at these shapes (d_model
  # 16-48, one CPU thread; `python -m tools.bench_train --layers_ab`).
  c.model.update(max_len=64, position='learned', activation='gelu', norm='layernorm',
                 scan_layers=False)
  c.data.update(seq_len=64)
  c.opt.update(lr=3e-3, warmup_steps=20, schedule='cosine', min_lr_ratio=0.1)
  c.train.update(batch_size=64, steps=100, log_every=20, eval_batches=4, keep_checkpoints=1)
  c.sweep = common.sweep(design='isoflop', convention='exact', budgets=(1.5e11, 4e11, 1e12),
                         sizes=5, tokens_per_param=150.0, aspect=8, head_dim=8,
                         evals_per_run=5, bootstrap=1000, workers=2)
  return c
