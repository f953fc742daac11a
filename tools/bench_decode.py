"""Decode throughput with and without the KV cache.

python -m tools.bench_decode [--models=small,medium] [--batches=1,8] [--new_tokens=256]
                             [--scan_layers]

For each config (the shapes of tools/bench_train.py) and batch size: a
32-token prompt, then --new_tokens tokens by greedy decoding (no early EOS).
`cached` times lm.sampling.generate end to end (prefill + the jitted
while_loop), after a warm-up call that compiles it. `uncached` re-runs the
forward pass over the whole fixed window (prompt + new tokens) for every new
token, as decoding without a cache does (tests/test_sampling.py's reference);
each step costs the same, so it is timed over --uncached_steps steps and
reported per token.

Measured on this project's 2-core CPU machine, fp32, 2026-11-22, one run each,
with lm/host.py keeping freed host memory (KV cache layers x B x K x S x Dh):

  python -m tools.bench_decode            (layers unrolled, the default)
  config  batch  cached tok/s  uncached tok/s  speedup
  small       1        1172.0            94.7    12.4x
  small       8        2836.2           121.2    23.4x
  medium      1         267.7            22.9    11.7x
  medium      8         547.1            22.8    24.0x

  python -m tools.bench_decode --scan_layers
  small       1         921.4           110.7     8.3x
  small       8        1619.5           103.7    15.6x
  medium      1         168.2            22.5     7.5x
  medium      8         410.9            26.4    15.6x

(With --nokeep_freed_memory, the same session: 1098.1, 2315.3, 250.8 and 526.2
cached tok/s unrolled; decoding allocates little, so it gains less than
training.)

The cache wins by 7.5-24x at 256 new tokens. With nn.scan the decode loop
re-stacks the whole layers x B x S cache every token (the scan's outputs), so
unrolled layers decode ~1.3-1.75x faster at batch 8 (medium: 547 vs 411 tok/s).
Batch 8 is only 2-2.4x batch 1 in tokens/s: XLA:CPU runs 8-row matmuls far
below its peak. No GPU was lent to this task, so there are no accelerator
figures; the tool runs unchanged on one.
"""

from __future__ import annotations

import functools
import time

from absl import app, flags

from tools.bench_train import _KEEP, _SCAN, CONFIGS, check_names  # Shares its flags.

_MODELS = flags.DEFINE_string('models', 'small,medium', 'Config names from tools.bench_train.')
_BATCHES = flags.DEFINE_string('batches', '1,8', 'Comma-separated batch sizes.')
_NEW = flags.DEFINE_integer('new_tokens', 256, 'Tokens generated per sequence.',
                            lower_bound=1, upper_bound=1 << 16)
_PROMPT = flags.DEFINE_integer('prompt_len', 32, 'Prompt tokens.', lower_bound=1,
                               upper_bound=1 << 16)
_UNCACHED_STEPS = flags.DEFINE_integer('uncached_steps', 16, 'Timed uncached steps.',
                                       lower_bound=1)
flags.register_validator(  # Checked with the flags, before any model is built.
    'batches', lambda v: all(x.strip().isdigit() and int(x) > 0 for x in v.split(',')),
    'must be comma-separated positive integers, e.g. 1,8')


def bench(name: str, batch: int, new: int, prompt_len: int, uncached_steps: int,
          scan_layers: bool = False) -> dict:
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import numpy as np

  from lm import sampling
  from lm.config import ModelConfig
  from lm.model import Transformer

  d, layers, heads = CONFIGS[name][:3]
  m = ModelConfig(vocab_size=512, d_model=d, num_layers=layers, num_heads=heads,
                  max_len=prompt_len + new, scan_layers=scan_layers)
  params = jax.jit(lambda r: nn.unbox(Transformer(m).init(r, jnp.zeros((1, 8), jnp.int32))))(
      jax.random.key(0))['params']
  rng = np.random.default_rng(0)
  prompts = [rng.integers(0, 256, prompt_len).tolist() for _ in range(batch)]
  s = sampling.SamplingConfig(max_new_tokens=new, greedy=True)
  sampling.generate(params, m, prompts, s, eos_id=-1)  # Compile.
  t0 = time.perf_counter()
  out = sampling.generate(params, m, prompts, s, eos_id=-1)
  cached = time.perf_counter() - t0
  assert all(len(o[0]) == new for o in out)

  window = np.zeros((batch, prompt_len + new), np.int32)
  window[:, :prompt_len] = prompts

  @functools.partial(jax.jit, static_argnames=('n',))
  def full_logits(window_BS, n: int):  # Every position again; read at slot n - 1.
    return Transformer(m).apply({'params': params}, window_BS)[:, n - 1]

  full_logits(window, prompt_len).block_until_ready()
  t0 = time.perf_counter()
  for _ in range(uncached_steps):  # The per-token work without a cache.
    full_logits(window, prompt_len).block_until_ready()
  per_step = (time.perf_counter() - t0) / uncached_steps
  return {'config': name, 'batch': batch, 'cached': batch * new / cached,
          'uncached': batch / per_step}


def main(argv):
  del argv
  from lm import host
  check_names('models', _MODELS.value)
  if _KEEP.value:
    host.keep_freed_memory()  # Before JAX starts its CPU client: lm/host.py.
  rows = [bench(n, int(b), _NEW.value, _PROMPT.value, _UNCACHED_STEPS.value, _SCAN.value)
          for n in _MODELS.value.split(',') for b in _BATCHES.value.split(',')]
  print(f'{"config":<8}{"batch":>6}{"cached tok/s":>14}{"uncached tok/s":>16}{"speedup":>9}')
  for r in rows:
    print(f'{r["config"]:<8}{r["batch"]:>6}{r["cached"]:>14.1f}{r["uncached"]:>16.1f}'
          f'{r["cached"] / r["uncached"]:>8.1f}x')


if __name__ == '__main__':
  from lm import cli
  app.run(main, flags_parser=cli.parse_flags)
