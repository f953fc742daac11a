"""Will it fit? Per-device memory of a config's train step, compiled ahead of
time on fake CPU devices, without running a step.

python -m tools.memory --config=configs/llama3_8b.py --devices=64 \\
    --config.mesh.fsdp=64 [--accelerator=h100]

Makes --devices fake CPU devices, builds the trainer on the config's mesh,
lowers and compiles the real train step on abstract (shape-only) state and
batch, and prints per device: parameters and optimizer state (from their
shardings), an analytic activation estimate (tools/shardings.py), and XLA's
buffer assignment of the compiled step (arguments, temporaries: gradients,
saved activations and workspace; outputs aliased to the donated state). The
XLA figures are XLA:CPU's: GPU and TPU compilers fuse and schedule
differently, so treat them as an estimate within tens of percent, and the
analytic parts (parameters, optimizer) as exact. Ends with whether the step
fits the named accelerator's memory.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

from lm import cli

# Memory per device in bytes: the data sheets' GB read as 1e9 bytes. Most are GiB
# (an H100 80GB reports 81,559 MiB, 85.5e9 bytes), so this errs ~7% cautious, which
# leaves the few percent the runtime takes.
ACCELERATORS = {
    'h100': ('NVIDIA H100 80GB', 80e9), 'h200': ('NVIDIA H200', 141e9),
    'a100': ('NVIDIA A100 80GB', 80e9), 'a100_40': ('NVIDIA A100 40GB', 40e9),
    'v4': ('TPU v4', 32e9), 'v5e': ('TPU v5e', 16e9), 'v5p': ('TPU v5p', 95e9),
    'v6e': ('TPU v6e', 32e9),
}

# Up to 8192 (a large pod slice): XLA makes each fake device up front, ~4 ms apiece
# on this project's 2-core machine (4096: 16 s), so a mistyped 10**6 ran for hours.
_DEVICES = flags.DEFINE_integer('devices', 8, 'Fake CPU devices to compile for (1-8192).',
                                lower_bound=1, upper_bound=8192)
_ACCEL = flags.DEFINE_enum('accelerator', 'h100', list(ACCELERATORS),
                           'Whose memory to compare against.')


def _count(n: int) -> str:
  """A parameter count as 8.03B, 124.4M, 52.0K or 120."""
  for unit, size in (('B', 1e9), ('M', 1e6), ('K', 1e3)):
    if n >= size:
      return f'{n / size:.{2 if unit == "B" else 1}f}{unit}'
  return str(n)


def estimate(c, out=sys.stdout) -> dict[str, float]:
  """Per-device bytes of the train step of config `c` on all visible devices."""
  import jax

  from lm import train
  from tools import shardings as shardings_tool
  c = train.resolve(c)[0]  # As a run resolves it (a classifier's labels from its data).
  t = train.build(c)
  abstract, shs = t.abstract, t.shardings

  with t.context():
    state = jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shs)
    compiled = t.train_step.lower(state, t.abstract_batch(), t.sched).compile()
  mem = compiled.memory_analysis()
  r = {'parameters': shardings_tool.total(abstract.params, shs.params),
       'optimizer state': shardings_tool.total(abstract.opt_state, shs.opt_state),
       'activations (estimate)': shardings_tool.activation_bytes(c, t.mesh),
       'xla arguments': mem.argument_size_in_bytes,
       'xla temporaries': mem.temp_size_in_bytes,
       'xla outputs (not aliased)': mem.output_size_in_bytes - mem.alias_size_in_bytes}
  r['xla total'] = r['xla arguments'] + r['xla temporaries'] + r['xla outputs (not aliased)']
  m = c.model
  print(f'{c.name}: {_count(sum(a.size for a in jax.tree_util.tree_leaves(abstract.params)))} '
        f'parameters, batch {c.train.batch_size} x {c.data.seq_len} '
        f'(grad_accum {c.train.grad_accum}), dtype {m.dtype}, remat {m.remat}, attention '
        f'{m.attention}, loss_chunk {m.loss_chunk}', file=out)
  print(f'mesh {dict(t.mesh.shape)} on {t.mesh.size} fake CPU devices; per device:', file=out)
  for k, v in r.items():
    print(f'  {k:28s}{shardings_tool.human_bytes(v)}', file=out)
  return r


def main(argv):
  del argv
  from lm import config as config_lib
  # The fake devices must exist before JAX starts: nothing so far imported it (the
  # flags are parsed, so --devices N and --devices=N both count).
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '')
                             + f' --xla_force_host_platform_device_count={_DEVICES.value}')
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  try:
    c = config_lib.from_configdict(flags.FLAGS.config)
    r = estimate(c)
  except config_lib.ConfigError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  name, cap = ACCELERATORS[_ACCEL.value]
  need = r['xla total']
  verdict = 'fits' if need <= 0.95 * cap else 'does NOT fit'
  print(f'{verdict} on {name} ({cap / 1e9:.0f} GB): {need / 1e9:.3g} GB per device, '
        f'{percent(need / cap)} of its memory (compiled by XLA:CPU; keep ~5% for the runtime)')


def percent(share: float) -> str:
  """'0.31%', '45%', '720%', '1,350%': two significant digits below 10%, whole
  percents above (the 'g' format had printed 720% as 7.2e+02%)."""
  return f'{100 * share:.2g}%' if share < 0.1 else f'{100 * share:,.0f}%'


if __name__ == '__main__':
  cli.define_config('Config file.')
  flags.mark_flags_as_required(['config'])
  app.run(main, flags_parser=cli.parse_flags)
