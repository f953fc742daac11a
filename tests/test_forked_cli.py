"""tests/forked_cli.run answers as subprocess.run does for `python -m` CLIs."""

import os
import subprocess
import sys

import pytest

from tests import forked_cli

# LM_TESTS_FORK=0 runs the CLIs as real processes: nothing forks to compare.
pytestmark = pytest.mark.skipif(os.environ.get('LM_TESTS_FORK', '1') == '0',
                                reason='LM_TESTS_FORK=0: the tests run no forked CLI')


@pytest.mark.parametrize('args', [
    ['tools.config', '--config=configs/tiny.py', '--config.train.steps=7'],  # Prints, exit 0.
    ['tools.config', '--config=configs/nope.py'],  # One line on stderr, exit 2.
    ['tools.fit', '--results=/nonexistent.csv'],
    ['no_such_module_here'],  # Python's own failure: exit 1.
    ['tests.cli_probe'], ['tests.cli_probe', '3'], ['tests.cli_probe', str(2 ** 40)],
])
def test_a_forked_cli_exits_and_prints_as_a_real_process(args):
  argv = [sys.executable, '-m', *args]
  assert forked_cli._forkable(dict(os.environ), os.getcwd())  # Not the fallback.
  real = subprocess.run(argv, capture_output=True, text=True)
  forked = forked_cli.run(argv, capture_output=True, text=True)
  assert forked.returncode == real.returncode, (forked, real)
  assert forked.stdout == real.stdout
  assert forked.stderr == real.stderr


def test_output_that_is_not_utf8_fails_to_decode_as_for_a_real_process():
  argv = [sys.executable, '-m', 'tests.cli_probe', 'bytes']
  for run in (subprocess.run, forked_cli.run):
    with pytest.raises(UnicodeDecodeError):
      run(argv, capture_output=True, text=True)


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


def test_a_command_interrupted_midway_leaves_no_lines_for_the_next(monkeypatch):
  """Ctrl-C while waiting for a child: the next command must read its own exit,
  not the interrupted one's (the server and the child are stopped)."""
  probe = [sys.executable, '-m', 'tests.cli_probe']
  real, calls = forked_cli._read, []

  def interrupted(server, timeout):
    calls.append(timeout)
    if len(calls) == 2:
      raise KeyboardInterrupt
    return real(server, timeout)

  monkeypatch.setattr(forked_cli, '_read', interrupted)
  with pytest.raises(KeyboardInterrupt):
    forked_cli.run(probe + ['5'], capture_output=True, text=True)
  monkeypatch.setattr(forked_cli, '_read', real)
  r = forked_cli.run(probe + ['7'], capture_output=True, text=True)
  assert r.returncode == 7 and "['7']" in r.stdout, r
