"""python -m experiments.sweep --config=configs/eval_sweep.py --workdir=runs/eval_sweep

Evaluation beyond loss across model sizes, on the default corpus: a 3-size grid
of tiny byte-level models whose every evaluation also scores two
lm-evaluation-harness tasks (the small local ones in tests/tasks; point
train.eval_tasks and train.eval_tasks_path at real ones), which train with
canaries inserted 0 (a control), 100, 400 and 1600 times into the 30M-token
corpus (each run reads ~4% of it, so it sees them ~0, 4, 16 and 65 times) and
report their exposure, and which end with the bias probe on a CrowS-Pairs-format CSV (a tiny
synthetic one in tests/data; give the real file's path). The report gains
task-score-vs-compute curves, exposure vs size and a bias table.

To leave a probe out, reset its companion fields too (alone they would change
nothing, so they are refused): `--config.data.canary_repeats='()'
--config.data.canary_digits=5` for the canaries, `--config.train.eval_tasks='()'
--config.train.eval_tasks_path=''` for the tasks, `--config.train.eval_bias_csv=''`
for the bias probe.
"""

from configs import common


def get_config(arg=None):
  common.no_arg(arg)
  c = common.base()
  c.name = 'eval_sweep'
  c.model.update(max_len=64, position='learned', activation='gelu', norm='layernorm')
  c.data.update(seq_len=64, canary_repeats=(0, 100, 400, 1600), canary_digits=4)
  c.opt.update(lr=3e-3, warmup_steps=20, schedule='cosine', min_lr_ratio=0.1)
  c.train.update(batch_size=32, steps=100, log_every=20, eval_batches=4, keep_checkpoints=1,
                 eval_tasks=('lm_tiny_mc', 'lm_tiny_lastword'),
                 eval_tasks_path='tests/tasks', eval_bias_csv='tests/data/bias_pairs.csv')
  c.sweep = common.sweep(design='grid', convention='exact', params=(2e4, 1e5, 4e5),
                         tokens=(1.2e6,), aspect=16, head_dim=16, evals_per_run=3,
                         bootstrap=100)
  return c
