"""Train-step throughput and MFU against this machine's measured matmul peak.

python -m tools.bench_train [--configs=tiny,small,medium] [--steps=10] [--dtype=float32]
                            [--mesh=DATA,FSDP,TENSOR] [--batch=N]

On accelerators: --configs=gpt2_small --dtype=bfloat16 --mesh=-1,1,1 (all
devices data-parallel) or --mesh=1,-1,1 (FSDP); MFU is then against the
measured bf16 matmul peak (the table in lm/flops.py gives the data-sheet one).

Measures, in one run: for each config, the peak FLOP/s of large square
matmuls (the best of several sizes, measured right before and right after
the config so both numbers see the same machine state), the median step time of the
jitted train step (AdamW included), tokens/s, achieved FLOP/s under the
`exact` convention (lm/flops.py; cross-checked against XLA's cost analysis
in the xla/exact column) and MFU = achieved / measured peak. Shared 2-core
machines are noisy: run it twice before trusting a difference under ~10%.

Measured on this project's 2-core CPU machine (AMD EPYC, 2 cores, fp32),
2026-11-22, `python -m tools.bench_train`, two consecutive runs:

  config  step_ms  tokens/s  GFLOP/step  GFLOP/s  peak GFLOP/s   MFU   target
  tiny      122.6     33410       12.88    105.1         417.4  25.2%      -
  small     626.8      6534       90.19    143.9         417.4  34.5%    35%
  medium   2804.0      1461      518.6     185.0         414.6  44.6%    45%
  tiny      184.2     22240       12.88     69.95        396.6  17.6%      -
  small     664.5      6164       90.19    135.7         406.7  33.4%    35%
  medium   3245.0      1262      518.6     159.8         383.9  41.6%    45%

The same host gave 716-790 ms (small) and 3.1-3.7 s (medium) per step before
the heads-major attention (lm/model.py); step times drift by ~10% between
runs here; both targets are missed narrowly in the runs above.

Where the time goes (medium, by ablation in one process, alternating steps):
removing the attention core (both attention matmuls and the softmax) saves
~0.65 s of ~2.9 s although it is 24 of 519 GFLOP: XLA:CPU runs the batched
(B x K) matmuls with a 64-wide contraction at ~10% of the peak. The dense
matmuls run at ~60% of it. GELU, the norms and AdamW cost under 5% each;
other GELU formulations, a where-mask instead of an additive causal bias and
query blocks of 32-256 were all within noise.
"""

from __future__ import annotations

import dataclasses
import statistics
import time

from absl import app, flags

_CONFIGS = flags.DEFINE_string('configs', 'tiny,small,medium', 'Comma-separated names.')
_STEPS = flags.DEFINE_integer('steps', 10, 'Timed steps per config (after 2 warm-up steps).')
_DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'Compute dtype.')
_SCAN = flags.DEFINE_bool('scan_layers', False, 'nn.scan over layers.')
_MESH = flags.DEFINE_string('mesh', '', 'data,fsdp,tensor sizes (-1: the rest); empty: 1 device.')
_BATCH = flags.DEFINE_integer('batch', 0, 'Global batch override (0: the config\'s).')

# name: (d_model, layers, heads, seq_len, batch); vocab 512, learned positions, GELU.
CONFIGS = {
    'tiny': (128, 2, 4, 128, 32),
    'small': (256, 4, 4, 256, 16),
    'medium': (512, 6, 8, 512, 8),
    'gpt2_small': (768, 12, 12, 1024, 8),
}


def measure_peak(dtype: str, seconds: float = 2.0) -> tuple[float, int]:
  """Best FLOP/s of chained n x n matmuls over a few n."""
  import jax
  import jax.numpy as jnp
  best, best_n = 0.0, 0
  for n in (512, 1024, 2048):
    a = jnp.full((n, n), 1e-3, dtype)
    f = jax.jit(lambda x, a=a: x @ a @ a @ a @ a)
    x = f(a).block_until_ready()
    t_end = time.perf_counter() + seconds / 3
    while time.perf_counter() < t_end:
      t0 = time.perf_counter()
      x = f(x).block_until_ready()
      fl = 4 * 2 * n ** 3 / (time.perf_counter() - t0)
      if fl > best:
        best, best_n = fl, n
  return best, best_n


def bench(name: str, dtype: str, steps: int, scan: bool, mesh_arg: str = '',
          batch: int = 0) -> dict:
  import flax.linen as nn
  import jax

  from lm import flops, optimizer, train
  from lm import sharding as shard_lib
  from lm.config import MeshConfig, ModelConfig, OptimizerConfig
  from tests.helpers import tiny
  d, layers, heads, L, B = CONFIGS[name]
  B = batch or B
  m = ModelConfig(vocab_size=512, d_model=d, num_layers=layers, num_heads=heads, max_len=L,
                  position='learned', activation='gelu', dtype=dtype, scan_layers=scan)
  c = tiny()
  c = dataclasses.replace(c, model=m, data=dataclasses.replace(c.data, seq_len=L),
                          train=dataclasses.replace(c.train, batch_size=B, steps=1000),
                          opt=OptimizerConfig(warmup_steps=10))
  model = train.Transformer(m)
  tx = optimizer.make(c.opt, c.train.steps)
  sizes = [int(x) for x in mesh_arg.split(',')] if mesh_arg else [1, 1, 1]
  devices = jax.devices() if mesh_arg else jax.devices()[:1]
  c = dataclasses.replace(c, mesh=MeshConfig(*sizes))
  mesh = shard_lib.make_mesh(c.mesh, devices)
  shard_lib.check_batch(c, mesh)
  with jax.set_mesh(mesh), nn.logical_axis_rules(list(c.rules)):
    _, shardings = train.state_shardings(c, model, tx, mesh)
    state = train.init_state(c, model, tx, shardings)
    batch_sh = shard_lib.batch_sharding(mesh, c.rules)
    step = jax.jit(train.make_train_step(c, model, tx), in_shardings=(shardings, batch_sh),
                   out_shardings=(shardings, None), donate_argnums=(0,))
    batch = jax.device_put(jax.random.randint(jax.random.key(1), (B, L + 1), 0, 512), batch_sh)
    compiled = step.lower(state, batch).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  xla_flops = float(cost.get('flops', 0.0))
  step = compiled
  for _ in range(2):
    state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t0)
  dt = statistics.median(times)
  fl = flops.train_flops_per_token(m, L, 'exact') * B * L
  return {'config': name, 'devices': mesh.size, 'params': flops.param_counts(m)['total'],
          'tokens/step': B * L,
          'step_ms': dt * 1e3, 'tokens/s': B * L / dt, 'GFLOP/step': fl / 1e9,
          'xla/exact': xla_flops * mesh.size / fl, 'GFLOP/s': fl / dt / 1e9}  # XLA: per device.


def main(argv):
  del argv
  from lm import host
  host.keep_freed_memory()  # Before JAX starts its CPU client: lm/host.py.
  import jax
  dev = jax.devices()[0]
  print(f'device: {dev.device_kind} ({dev.platform}) x{jax.device_count()}, '
        f'dtype {_DTYPE.value}, scan_layers={_SCAN.value}\n')
  cols = ['config', 'devices', 'params', 'tokens/step', 'step_ms', 'tokens/s', 'GFLOP/step',
          'xla/exact', 'GFLOP/s', 'peak GFLOP/s', 'MFU']
  print('| ' + ' | '.join(cols) + ' |')
  print('|' + '---|' * len(cols))
  for name in _CONFIGS.value.split(','):
    before, _ = measure_peak(_DTYPE.value)
    r = bench(name, _DTYPE.value, _STEPS.value, _SCAN.value, _MESH.value, _BATCH.value)
    # The peak is the best the machine showed around this config: one window
    # on a shared machine can read 25% low and would inflate MFU.
    peak = max(before, measure_peak(_DTYPE.value)[0])
    r['peak GFLOP/s'] = peak / 1e9
    r['MFU'] = f'{100 * r["GFLOP/s"] * 1e9 / (peak * r["devices"]):.1f}%'
    print('| ' + ' | '.join(f'{r[k]:.4g}' if isinstance(r[k], float) else str(r[k])
                            for k in cols) + ' |', flush=True)


if __name__ == '__main__':
  app.run(main)
