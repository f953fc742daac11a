"""muP's coordinate check: does a few steps of training move every activation
by an amount that does not depend on width?

python -m tools.coord_check --config=configs/tiny.py --out=runs/coord_check \
    [--widths=64,128,256,512,1024] [--steps=5] [--seeds=2] [--lr=0]

For SP and muP (base_width = the smallest width, so both start from one
model), trains each width with lm's own train step (AdamW at a constant LR,
no warmup) on the config's corpus and, after steps 1..T, measures on a fixed
probe batch the RMS over coordinates of x_t - x_0, the change of each
activation since initialisation, per layer type: the token embedding output,
the attention logits (q.k before the softmax, where muP's 1/Dh acts), the
attention and MLP outputs and the residual stream after each block (averaged
over blocks), and the logits. Yang et al. 2022 (Tensor Programs V, Sec. 7 and
Fig. 5) plot such curves against width: under muP they are flat, under SP
they grow. Writes, in --out:

  coord_check.png   rows SP / muP, one panel per layer type, RMS vs width,
                    one line per step;
  coord_check.json  {"sp": {layer: slope}, "mup": {...}, ...}: the log-log
                    slope of RMS against width (least squares over the
                    widths, per step, then averaged over the steps), plus the
                    per-step slopes and the measured RMS values.

A muP that works has every slope near 0 (tests/test_mup.py asserts |slope| <=
0.1) except the attention logits'; SP's logits grow with width (slope clearly
> 0).

What a short check may not test: muP's attention scale. Its 1/Dh (for SP's
1/sqrt(Dh)) is an argument about training long enough for q and k to become
correlated, when q.k grows ~Dh; before that the change of q.k is led by
init x update terms, which grow ~sqrt(Dh). In the test's short check
(tests/test_mup.py: tests/tiny_config.py, widths 32 and 256, 3 steps, batch
4; this project's 2-core machine, 2026-11-29) muP's attention-logit change
falls with width: slope -0.47 as shipped, +0.04 with 1/sqrt(Dh) inside an
otherwise-muP model, +0.54 with the multiplier inverted, every other slope
within 0.04 of 0 in all three. With the README's command (configs/tiny.py,
widths 64-1024, 5 steps, batch 8, seq 64) it is flat: -0.000 (SP +1.741);
with that config's own batch and length, -0.021 (SP +1.788). So the test asserts
only that the attention logits do not grow (slope <= 0.1), which catches a
scale too large, not a missing one; tests/test_mup.py also checks the
multiplier's value.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from lm import cli, data as data_lib, plan, tokenizers, train, workdir
from lm import config as config_lib

LAYERS = ('embedding', 'attn_logits', 'attention', 'mlp', 'residual', 'logits')
PARAMETRIZATIONS = ('sp', 'mup')


def width_config(c: config_lib.Config, width: int, parametrization: str, base: int,
                 lr: float, steps: int, seed: int) -> config_lib.Config:
  """The run config at one width: unrolled layers (so every block's output is
  captured), plain LM batches, constant LR from step 0."""
  m = dataclasses.replace(c.model, d_model=width, mlp_dim=0, parametrization=parametrization,
                          base_width=base, scan_layers=False, remat='none')
  o = dataclasses.replace(c.opt, lr=lr or c.opt.lr, warmup_steps=0, schedule='constant')
  d = dataclasses.replace(c.data, document_mask=False)
  t = dataclasses.replace(c.train, steps=steps, seed=seed, grad_accum=1,
                          on_nonfinite='halt')
  return dataclasses.replace(c, model=m, opt=o, data=d, train=t,
                             mesh=config_lib.MeshConfig(data=1))


def activations(model: nn.Module, params, tokens_BL) -> dict[str, list[np.ndarray]]:
  """Each layer type's activations on the probe batch (a list: one per block)."""
  logits, state = model.apply({'params': params}, tokens_BL, capture_intermediates=True,
                              mutable=['intermediates'])
  inter = state['intermediates']
  blocks = sorted((k for k in inter if k.startswith('block_')), key=lambda k: int(k[6:]))
  return {'embedding': [inter['embed']['__call__'][0]],
          # q.k before the softmax (every query-key pair, masked ones too).
          'attn_logits': [inter[b]['attn']['logits'][0] for b in blocks],
          'attention': [inter[b]['attn']['__call__'][0][0] for b in blocks],
          'mlp': [inter[b]['mlp']['__call__'][0] for b in blocks],
          'residual': [inter[b]['__call__'][0][0] for b in blocks],
          'logits': [logits]}


def measure(c: config_lib.Config, batches: list[np.ndarray]) -> np.ndarray:
  """RMS of x_t - x_0 per layer type and step t = 1..len(batches): L x T."""
  t = train.build(c, devices=jax.devices()[:1])
  state = t.init()
  probe = jnp.asarray(batches[0][:, :-1])
  acts = jax.jit(lambda p: activations(t.model, p, probe))
  x0 = acts(state.params)
  out = np.zeros((len(LAYERS), len(batches)))
  for i, b in enumerate(batches):
    state, _ = t.train_step(state, {'tokens': jnp.asarray(b)}, t.sched)
    xt = acts(state.params)
    for j, name in enumerate(LAYERS):
      out[j, i] = np.mean([float(jnp.sqrt(jnp.mean(jnp.square(
          (a - a0).astype(jnp.float32))))) for a, a0 in zip(xt[name], x0[name])])
  return out


def slopes(widths: list[int], rms_WLT: np.ndarray) -> np.ndarray:
  """Least-squares slope of log RMS against log width: L x T."""
  x = np.log(np.asarray(widths, float))
  y = np.log(np.maximum(rms_WLT, 1e-30))
  xc = x - x.mean()
  return np.einsum('w,wlt->lt', xc, y - y.mean(0)) / (xc @ xc)


def run(c: config_lib.Config, widths: list[int], steps: int, seeds: int, lr: float,
        log=print) -> dict:
  tok = tokenizers.get_tokenizer(c.data.tokenizer, c.data.tokenizer_path)
  c = train.resolve_vocab(c, tok.vocab_size)
  tokens, _ = data_lib.token_splits(c.data, tok)
  L, B = c.data.seq_len, c.train.batch_size
  data_lib.check_windows(tokens, L, 'train', B * steps, extra=1,  # Each window read once.
                         needs=f'{steps} steps of batch {B} read')
  windows = data_lib.Windows(tokens, L + 1)
  batches = [np.stack([windows[s * B + i] for i in range(B)]) for s in range(steps)]
  result = {'widths': widths, 'steps': steps, 'seeds': seeds, 'lr': lr or c.opt.lr,
            'base_width': widths[0], 'layers': list(LAYERS), 'rms': {}, 'slopes_per_step': {}}
  for p in PARAMETRIZATIONS:
    rms = np.zeros((len(widths), len(LAYERS), steps))
    for k, w in enumerate(widths):
      for s in range(seeds):
        rms[k] += measure(width_config(c, w, p, widths[0], lr, steps, s), batches) / seeds
      log(f'[coord_check] {p} width {w}: ' + ', '.join(
          f'{n} {v:.3g}' for n, v in zip(LAYERS, rms[k, :, -1])) + f' (step {steps})')
    per_step = slopes(widths, rms)
    result[p] = {n: float(per_step[j].mean()) for j, n in enumerate(LAYERS)}
    result['rms'][p] = {n: rms[:, j].tolist() for j, n in enumerate(LAYERS)}
    result['slopes_per_step'][p] = {n: per_step[j].tolist() for j, n in enumerate(LAYERS)}
  return result


def plot(result: dict, path: str) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  widths, T = result['widths'], result['steps']
  fig, axes = plt.subplots(2, len(LAYERS), figsize=(3.2 * len(LAYERS), 6), sharex=True)
  for r, p in enumerate(PARAMETRIZATIONS):
    for j, n in enumerate(LAYERS):
      ax = axes[r, j]
      rms = np.asarray(result['rms'][p][n])  # W x T
      for t in range(T):
        ax.plot(widths, rms[:, t], 'o-', ms=3, color=plt.cm.viridis(t / max(T - 1, 1)),
                label=f'step {t + 1}')
      ax.set(xscale='log', yscale='log', title=f'{p.upper()} {n}  (slope {result[p][n]:+.2f})')
      ax.set_xticks(widths, [str(w) for w in widths], minor=False)
      ax.tick_params(labelsize=7)
      if r == 1:
        ax.set_xlabel('width (d_model)')
      if j == 0:
        ax.set_ylabel('RMS of x_t - x_0')
  axes[0, 0].legend(fontsize=7)
  fig.suptitle(f'Coordinate check: lr {result["lr"]:g}, base width {result["base_width"]}, '
               f'{result["seeds"]} seed(s)')
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def parse_widths(text: str, heads: int) -> list[int]:
  try:
    widths = [int(w) for w in text.split(',') if w.strip()]
  except ValueError:
    raise config_lib.ConfigError(f'--widths={text!r}: give integers, e.g. 64,128,256') from None
  if len(widths) < 2 or widths != sorted(set(widths)) or min(widths) <= 0:
    raise config_lib.ConfigError(f'--widths={text!r}: give at least two increasing positive '
                                 'widths, e.g. 64,128,256')
  bad = [w for w in widths if w % heads]
  if bad:
    raise config_lib.ConfigError(f'--widths={text!r}: {bad} not divisible by '
                                 f'model.num_heads={heads}')
  return widths


def main(argv):
  del argv
  F = flags.FLAGS
  try:
    c = config_lib.from_configdict(F.config)
    plan.check_widens(c.model, 'the coordinate check')  # Else muP's attention is untested.
    widths = parse_widths(F.widths, c.model.num_heads)
    if F.steps < 1 or F.seeds < 1 or not 0 <= F.lr < float('inf'):  # NaN too.
      raise config_lib.ConfigError(f'--steps={F.steps}, --seeds={F.seeds}, --lr={F.lr}: '
                                   'steps and seeds must be >= 1, lr finite and >= 0 (0: the '
                                   'config\'s)')
    if c.model.family != 'decoder' or c.model.num_classes:
      raise config_lib.ConfigError(f'model.family={c.model.family!r}: the coordinate check '
                                   'trains a causal LM (a decoder config)')
    workdir.check_writable(F.out, '--out', ('coord_check.png', 'coord_check.json'))
    result = run(c, widths, F.steps, F.seeds, F.lr)
  except (config_lib.ConfigError, workdir.NotWritable) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  os.makedirs(F.out, exist_ok=True)
  plot(result, os.path.join(F.out, 'coord_check.png'))
  workdir.write_atomic(os.path.join(F.out, 'coord_check.json'), json.dumps(result, indent=1))
  rows = [('layer', *PARAMETRIZATIONS)] + [
      (n, *(f'{result[p][n]:+.3f}' for p in PARAMETRIZATIONS)) for n in LAYERS]
  print('log-log slope of the activation change against width:')
  print('\n'.join(f'  {a:<10} {b:>7} {d:>7}' for a, b, d in rows))
  print(f'wrote {F.out}/coord_check.png and coord_check.json')


if __name__ == '__main__':
  cli.define_config('Config file (configs/*.py[:arg]).')
  flags.DEFINE_string('out', None, 'Output directory (PNG and JSON).')
  flags.DEFINE_string('widths', '64,128,256,512,1024', 'd_model values, increasing.')
  flags.DEFINE_integer('steps', 5, 'Training steps measured (1..steps).')
  flags.DEFINE_integer('seeds', 2, 'Initialisation seeds averaged per width.')
  flags.DEFINE_float('lr', 0.0, 'Constant learning rate (0: the config\'s opt.lr).')
  flags.mark_flags_as_required(['config', 'out'])
  app.run(main, flags_parser=cli.parse_flags)
