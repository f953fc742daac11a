"""tests/forked_cli.run answers as subprocess.run does for `python -m` CLIs."""

import os
import subprocess
import sys

import pytest

from tests import forked_cli


@pytest.mark.parametrize('args', [
    ['tools.config', '--config=configs/tiny.py', '--config.train.steps=7'],  # Prints, exit 0.
    ['tools.config', '--config=configs/nope.py'],  # One line on stderr, exit 2.
    ['tools.fit', '--results=/nonexistent.csv'],
    ['no_such_module_here'],  # Python's own failure: exit 1.
])
def test_a_forked_cli_exits_and_prints_as_a_real_process(args):
  argv = [sys.executable, '-m', *args]
  assert forked_cli._forkable(dict(os.environ), os.getcwd())  # Not the fallback.
  real = subprocess.run(argv, capture_output=True, text=True)
  forked = forked_cli.run(argv, capture_output=True, text=True)
  assert forked.returncode == real.returncode, (forked, real)
  assert forked.stdout == real.stdout
  if real.returncode != 1:  # Python words a missing module its own way.
    assert forked.stderr == real.stderr


def test_environment_rules_and_timeouts():
  env = dict(os.environ)
  assert forked_cli._forkable(dict(env, LM_CACHE='/elsewhere'), forked_cli.ROOT)
  assert forked_cli._forkable(dict(env, PYTHONPATH=forked_cli.ROOT), forked_cli.ROOT)
  # Read by the imports the server already did: a real process.
  assert not forked_cli._forkable(dict(env, JAX_ENABLE_X64='1'), forked_cli.ROOT)
  assert not forked_cli._forkable(dict(env, XLA_FLAGS=''), forked_cli.ROOT)
  assert not forked_cli._forkable(env, '/tmp')
  with pytest.raises(subprocess.TimeoutExpired):
    forked_cli.run([sys.executable, '-m', 'tools.config', '--config=configs/tiny.py'],
                   capture_output=True, text=True, timeout=1e-3)
  # The server goes on after a killed child.
  r = forked_cli.run([sys.executable, '-m', 'tools.config', '--config=configs/nope.py'],
                     capture_output=True, text=True)
  assert r.returncode == 2 and r.stderr.startswith('error: ')
  assert forked_cli._server.poll() is None


def test_an_exit_that_arrives_with_the_pid_is_not_waited_for(monkeypatch):
  """A fast child's exit can reach the pipe before the worker reads its pid:
  the next read must find it there, not wait for the timeout (a buffered
  reader held it out of select's sight)."""
  import time
  nope = [sys.executable, '-m', 'tools.config', '--config=configs/nope.py']
  assert forked_cli.run(nope, capture_output=True, text=True).returncode == 2  # Started.
  real, calls = forked_cli._read, []

  def late(server, timeout):
    if not calls:
      time.sleep(1.0)  # The child (~0.05 s) has ended: both lines are in the pipe.
    calls.append(timeout)
    return real(server, timeout)

  monkeypatch.setattr(forked_cli, '_read', late)
  t0 = time.monotonic()
  r = forked_cli.run(nope, capture_output=True, text=True, timeout=30)
  assert r.returncode == 2 and time.monotonic() - t0 < 10 and calls == [None, 30]
