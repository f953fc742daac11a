"""tests/jax_time.py, the plugin that splits the suite's time: JAX still sends
the events it listens for, and its line comes out."""

import collections
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
from jax._src import monitoring

from tests import jax_time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_jax_time_hears_tracing_lowering_and_compiling(tmp_path):
  heard = collections.Counter()
  monitoring.register_event_duration_secs_listener(lambda name, secs, **_: heard.update([name]))
  fresh = float(time.time_ns() % 1000)  # A program no cache holds: it compiles.
  assert float(jax.jit(lambda x: x * 3 + fresh)(jnp.ones(2))[0]) == 3 + fresh
  assert set(jax_time.EVENTS) <= set(heard), sorted(heard)
  (tmp_path / 'test_one.py').write_text(
      'import jax.numpy as jnp\n\ndef test_one():\n  assert float(jnp.ones(3).sum()) == 3\n')
  env = {k: v for k, v in os.environ.items() if not k.startswith('JAX_COMPILATION_CACHE')}
  r = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'tests.jax_time', '-p',
                      'no:cacheprovider', str(tmp_path / 'test_one.py')], cwd=ROOT,
                     env=dict(env, PYTHONPATH=ROOT), capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stdout + r.stderr
  assert '[jax_time] 1 process(es), ' in r.stdout and 'backend compile' in r.stdout, r.stdout
