"""Does a run fit? Per-parameter shardings and per-device memory for a config and mesh.

python -m tools.shardings --config=configs/gpt2_small.py --config.mesh.fsdp=8 [--aot]

Prints each parameter's shape, logical axes, partition spec and bytes per
device, then per-device totals for parameters, optimizer state, gradients
and an activation estimate. --aot lowers and compiles the real train step on
the mesh (`.lower().compile()`) and prints XLA's memory analysis. To try a mesh
bigger than this machine on CPU, fake devices first:
XLA_FLAGS=--xla_force_host_platform_device_count=64 python -m tools.shardings ...
"""

from __future__ import annotations

import math
import sys

import flax.linen as nn
import jax
import numpy as np
from absl import app, flags

from lm import config as config_lib
from lm import cli, train



def human_bytes(n: float) -> str:
  """Bytes in the largest binary unit that keeps the figure >= 1 (a tiny
  model's MiB would all print as 0.000 GiB)."""
  for unit, size in (('GiB', 2**30), ('MiB', 2**20), ('KiB', 2**10)):
    if n >= size:
      return f'{n / size:8.2f} {unit}'
  return f'{n:8.0f} B'


def _per_device(arr, sharding) -> int:
  return math.prod(sharding.shard_shape(arr.shape)) * np.dtype(arr.dtype).itemsize


def total(tree, shs) -> int:
  """Per-device bytes of a pytree of arrays under its shardings."""
  return sum(_per_device(a, s) for a, s in zip(jax.tree_util.tree_leaves(tree),
                                               jax.tree_util.tree_leaves(shs)))


def activation_bytes(c: config_lib.Config, mesh) -> int:
  """Rough per-device activations kept for the backward pass (float32 or bf16).

  Per layer and token: 34 * D bytes of residual/attention/MLP intermediates
  plus 5 * H * L for attention scores/probabilities where the attention path
  materialises them (xla): Korthikanti et al. 2022's estimate (no sequence
  parallelism), in bytes at 16-bit activations, so scaled by bytes_per / 2
  for float32 (it had been taken as a count of values: twice too high);
  remat=full keeps only the layer input. The float32
  logits and their gradient count B x L x V, or B x loss_chunk x V when the
  loss is chunked. Divided over the batch axes (data x fsdp) and, for the
  head- and MLP-sized parts, over tensor.
  """
  from lm import model as model_lib
  m = c.model
  bytes_per = 2 if m.dtype == 'bfloat16' else 4
  B, L = c.train.batch_size // c.train.grad_accum, c.data.seq_len
  dp = mesh.shape['data'] * mesh.shape['fsdp']
  tp = mesh.shape['tensor']
  scores = model_lib.resolve_attention(m.attention, L, m.attn_dropout) == 'xla'
  if m.remat == 'full':
    per_layer = B * L * m.d_model * bytes_per  # Values.
  else:  # Bytes at 16 bits (Korthikanti et al. 2022, Eq. 2 and, with tensor, Eq. 3).
    per_layer = B * L * (10 * m.d_model + 24 * m.d_model / tp
                         + scores * 5 * m.num_heads * L / tp) * bytes_per / 2
  positions = min(m.loss_chunk or L, L)
  logits = B * positions * m.vocab_size * 4 * 2 / tp  # Logits and their gradient, float32.
  return int((m.num_layers * per_layer + logits) / dp)


def report(c: config_lib.Config, aot: bool = False, out=sys.stdout) -> dict[str, float]:
  c = train.resolve(c)[0]  # As a run resolves it (a classifier's labels from its data).
  t = train.build(c)
  mesh, abstract, shardings = t.mesh, t.abstract, t.shardings
  with t.context():
    boxed = jax.eval_shape(train.init_fn(c, t.model, t.tx), jax.random.key(0))
  logical = nn.get_partition_spec(boxed.params)
  print(f'mesh {dict(mesh.shape)} on {mesh.size} {jax.devices()[0].platform} devices; '
        f'rules: {dict(c.rules)}\n', file=out)
  rows = [('parameter', 'shape', 'logical axes', 'partition spec', 'bytes/device')]
  flat = jax.tree_util.tree_leaves_with_path(abstract.params)
  for (path, a), lg, sh in zip(flat, jax.tree_util.tree_leaves(logical),
                               jax.tree_util.tree_leaves(shardings.params)):
    name = '/'.join(str(getattr(k, 'key', k)) for k in path)
    rows.append((name, str(a.shape), str(tuple(lg)), str(tuple(sh.spec)),
                 f'{_per_device(a, sh):,}'))
  widths = [max(len(r[i]) for r in rows) for i in range(5)]
  for r in rows:
    print('  '.join(x.ljust(w) for x, w in zip(r, widths)), file=out)

  totals = {'params': total(abstract.params, shardings.params),
            'optimizer': total(abstract.opt_state, shardings.opt_state)}
  totals['grads'] = totals['params']  # Float32, sharded like the params.
  totals['activations (estimate)'] = activation_bytes(c, mesh)
  totals['total'] = sum(totals.values())
  print('\nper device:', file=out)
  for k, v in totals.items():
    print(f'  {k:24s} {human_bytes(v)}', file=out)
  if aot:  # The train step the trainer runs, on this objective's batch.
    with t.context():
      state = jax.tree_util.tree_map(
          lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
      compiled = t.train_step.lower(state, t.abstract_batch(), t.sched).compile()
    mem = compiled.memory_analysis()
    print('\nXLA memory analysis of the compiled train step (per device):', file=out)
    for k in ('argument_size_in_bytes', 'output_size_in_bytes', 'temp_size_in_bytes',
              'alias_size_in_bytes', 'generated_code_size_in_bytes'):
      v = getattr(mem, k, None)
      if v is not None:
        totals[f'xla_{k}'] = v
        print(f'  {k:32s} {human_bytes(v)}', file=out)
  return totals


def main(argv):
  del argv
  try:
    report(config_lib.from_configdict(flags.FLAGS.config), flags.FLAGS.aot)
  except config_lib.ConfigError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  # Flags only when run as a program, so tests can import this module.
  cli.define_config('Config file.')
  flags.DEFINE_bool('aot', False, 'Compile the train step and print XLA memory stats.')
  flags.mark_flags_as_required(['config'])
  app.run(main, flags_parser=cli.parse_flags)
