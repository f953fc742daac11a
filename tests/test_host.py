"""lm.host: the CPU allocator setting that stops per-step page faults."""

import subprocess
import sys

import pytest

from lm import host

# A jitted function whose 256 MB temporary (tanh(x @ x.T)) is allocated on every
# call; prints the minor page faults of the third call.
_PROBE = '''
import resource, sys
from lm import host
if sys.argv[1] == "keep":
  assert host.keep_freed_memory(force=True)
import jax, jax.numpy as jnp
x = jnp.ones((8192, 256), jnp.float32)
f = jax.jit(lambda x: jnp.tanh(jnp.tanh(x @ x.T) @ x).sum())
f(x).block_until_ready(); f(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
f(x).block_until_ready()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
'''


def _faults(mode: str) -> int:
  out = subprocess.run([sys.executable, '-c', _PROBE, mode], check=True,
                       capture_output=True, text=True)
  return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc mallopt')
def test_keep_freed_memory_stops_page_faults_on_repeated_calls():
  default, kept = _faults('default'), _faults('keep')
  # 256 MB is 65,536 pages of 4 KiB: by default each call maps them afresh.
  assert default > 30000, default
  assert kept < default / 20, (kept, default)


def test_cpu_only_follows_jax_platforms(monkeypatch):
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  assert host.cpu_only()
  monkeypatch.setenv('JAX_PLATFORMS', 'cuda,cpu')
  assert not host.cpu_only()
  assert not host.keep_freed_memory()  # Not applied where an accelerator runs.
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  monkeypatch.setenv('LM_KEEP_FREED_MEMORY', '0')
  assert not host.keep_freed_memory(force=True)  # The opt-out wins.


def test_cpu_only_sees_installed_accelerator_plugins(monkeypatch):
  monkeypatch.delenv('JAX_PLATFORMS', raising=False)
  assert host.cpu_only()  # This environment has CPU-only jax.
  monkeypatch.setattr(host.importlib.metadata, 'entry_points',
                      lambda group: ['xla_cuda12'] if group == 'jax_plugins' else [])
  assert not host.cpu_only()
