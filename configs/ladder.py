"""python -m experiments.train --config=configs/ladder.py:size=s --workdir=runs/ladder_s

A named size ladder of Llama-style models (RoPE, RMSNorm, SwiGLU, no biases)
with head_dim 64 and d_model / num_layers fixed near 64 where the depth allows.
Non-embedding parameters (6N convention) are in the table below; print them
with `python -m tools.count --config=configs/ladder.py:size=s` (or
lm.flops.param_counts).
"""

from configs import common

# name: (d_model, num_layers, num_heads)
SIZES = {
    'xxs': (128, 2, 2),
    'xs': (192, 3, 3),
    's': (256, 4, 4),
    'm': (384, 6, 6),
    'l': (512, 8, 8),
    'xl': (768, 12, 12),
    'xxl': (1024, 16, 16),
}


def get_config(arg=None):
  a = common.parse_arg(arg, size='s', seq_len=256)
  if a.size not in SIZES:
    raise ValueError(f'size={a.size!r} is not in the ladder; valid: {list(SIZES)}')
  d, n_layers, heads = SIZES[a.size]
  c = common.base()
  c.name = f'ladder_{a.size}'
  c.model.update(d_model=d, num_layers=n_layers, num_heads=heads, max_len=a.seq_len,
                 position='rope', norm='rmsnorm', activation='swiglu',
                 mlp_dim=int(8 * d / 3 + 63) // 64 * 64, use_bias=False,
                 tie_embeddings=False)
  c.data.update(seq_len=a.seq_len)
  c.opt.update(lr=3e-3 * (256 / d) ** 0.5, warmup_steps=100, schedule='wsd',
               cooldown_fraction=0.2, cooldown_shape='1-sqrt')
  c.train.update(batch_size=32, steps=2000, eval_every=250, checkpoint_every=500)
  return c
