"""python -m experiments.train --config=configs/finetune_lm.py \
    --config.init_from=runs/tiny --config.data.path=~/my_texts --workdir=runs/ft

Continues a pre-trained language model (configs/tiny.py's architecture) on a
directory of your own text files: 5% of the files (by a hash of the path) are
held out for evaluation. Optimizer state starts fresh at step 0 with a 10x
lower peak learning rate than pre-training. For another architecture, copy the
pre-training config's model section here (init_from refuses a mismatch and
lists the differing fields).
"""

from configs import tiny


def get_config(arg=None):
  c = tiny.get_config(arg)
  c.name = 'finetune_lm'
  c.init_from = ''  # Required: the pre-training workdir or <workdir>/checkpoints/<step>.
  c.data.update(source='dir', path='', val_fraction=0.05)
  c.opt.update(lr=3e-4, warmup_steps=10, schedule='cosine', min_lr_ratio=0.0)
  c.train.update(steps=200, eval_every=50, checkpoint_every=100, require_init_from=True)
  return c
