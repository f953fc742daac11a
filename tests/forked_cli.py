"""`python -m <module> <args>` for the tests, without paying the imports each time.

The tests start ~130 CLI processes; each spent 1.4-2.7 s importing jax, flax,
optax, orbax and lm before reading its flags, most of a bad-input case's time.
Here each pytest worker keeps one server process that has imported those
libraries (never touching a device: no backend is created, so its only other
threads are OpenBLAS's, which handle a fork) and forks a child per command. The
child runs the module as `python -m` does (runpy's entry point in a fresh
__main__, sys.argv, cwd, environment, stdin from /dev/null, stdout and stderr
buffered and encoded as a real process's, exit handlers, the exit code), so
the tests still see a whole CLI run from flag parsing to exit.

Commands whose environment differs in what the imports already read (JAX_*,
XLA_*, PYTHON*, ...) or that run elsewhere than the repository root go through
a real subprocess instead, as does everything when LM_TESTS_FORK=0.
What a fork cannot catch: a CLI that uses a module it never imports but the
server preloaded (`import lm`, then `lm.sampling.x`), or flags a preloaded
module defines (grain's, orbax's) that the real CLI would not know; and every
child shares the server's string-hash seed (numpy's global random state is
reseeded). tools/bad_inputs and the README's commands run every CLI as a real
process.

Measured on the 2-core host on 2026-11-29, one run after the other: the suite
(`python -m pytest -q -n 2 tests`) 616 s with real processes, 529 s forked;
the encoder and encoder-decoder CLI test 28.9 -> 13.4 s, the bad-input sample
28.4 -> 16.0 s. A fresh-clone `bash .ci/run`: 595-596 s of tests at 54f9b0b and
6b7346b, 506 s at 99ef600.
"""

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
import types

ROOT = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
# Read by the interpreter or by the imports the server made (JAX's and XLA's
# settings, thread pools, allocators): a command that changes one runs for real.
_IMPORT_TIME = ('JAX_', 'XLA_', 'TF_', 'PYTHON', 'LD_', 'CUDA', 'NVIDIA', 'TPU_', 'OMP_',
                'OPENBLAS', 'MKL_', 'MPL', 'MALLOC', 'LM_KEEP_FREED_MEMORY')
_PRELOAD = ('jax', 'jax.numpy', 'flax.linen', 'optax', 'orbax.checkpoint', 'ml_collections',
            'absl.app', 'absl.flags', 'numpy', 'scipy.optimize', 'matplotlib.pyplot',
            'lm.train', 'lm.sweep', 'lm.report', 'lm.sampling', 'lm.pack', 'lm.classify',
            'lm.harness', 'lm.probes', 'lm.scaling', 'lm.plan', 'lm.tokenizers')

_lock = threading.Lock()
_server: subprocess.Popen | None = None
_server_env: dict[str, str] = {}
_pending = b''  # What the worker read of the server's output past the last line.


def _forkable(env: dict[str, str], cwd: str) -> bool:
  if os.environ.get('LM_TESTS_FORK', '1') == '0' or os.path.realpath(cwd) != ROOT:
    return False
  base = _server_env if _server is not None and _server.poll() is None else os.environ
  for k in set(env) | set(base):
    a, b = env.get(k), base.get(k)
    if a != b and k.startswith(_IMPORT_TIME) and not (k == 'PYTHONPATH' and a == ROOT):
      return False
  return True


def _start() -> subprocess.Popen:
  global _server, _server_env, _pending
  if _server is None or _server.poll() is not None:
    _server_env, _pending = dict(os.environ), b''
    _server = subprocess.Popen([sys.executable, '-m', 'tests.forked_cli'], cwd=ROOT,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0,
                               env=_server_env)
    atexit.register(_server.stdin.close)  # Its loop ends at end of input.
  return _server


def _read(server: subprocess.Popen, timeout: float | None) -> dict | None:
  """The server's next JSON line, or None after `timeout` seconds. Reads the
  pipe itself: a buffered reader could hold the next line where select cannot
  see it (a fast child's exit arriving with its pid)."""
  global _pending
  deadline = None if timeout is None else time.monotonic() + timeout
  while b'\n' not in _pending:
    wait = None if deadline is None else max(0.0, deadline - time.monotonic())
    if not select.select([server.stdout], [], [], wait)[0]:
      return None
    chunk = os.read(server.stdout.fileno(), 4096)
    if not chunk:
      raise RuntimeError('tests/forked_cli.py: the fork server exited')
    _pending += chunk
  line, _pending = _pending.split(b'\n', 1)
  return json.loads(line)


def run(argv: list[str], *, capture_output: bool = False, text: bool = False,
        env: dict[str, str] | None = None, cwd: str | None = None,
        timeout: float | None = None, **kwargs) -> subprocess.CompletedProcess:
  """subprocess.run, forked from the server for `[sys.executable, '-m', module,
  ...]` with capture_output and text when the environment allows."""
  cwd = os.path.abspath(cwd or os.getcwd())
  child_env = dict(os.environ if env is None else env)
  if not (capture_output and text and not kwargs and list(argv[:2]) == [sys.executable, '-m']
          and _forkable(child_env, cwd)):
    return subprocess.run(argv, capture_output=capture_output, text=text, env=env, cwd=cwd,
                          timeout=timeout, **kwargs)
  with _lock, tempfile.TemporaryDirectory() as d:
    server = _start()
    out, err = os.path.join(d, 'stdout'), os.path.join(d, 'stderr')
    for path in (out, err):  # There even if the child is killed before it opens them.
      open(path, 'w').close()
    request = memoryview(json.dumps(dict(module=argv[2], args=list(argv[3:]), env=child_env,
                                         cwd=cwd, stdout=out, stderr=err)).encode() + b'\n')
    while request:  # An unbuffered pipe may take part of it at a time.
      request = request[server.stdin.write(request):]
    pid = None
    try:
      pid = _read(server, None)['pid']
      done = _read(server, timeout)
      if done is None:
        _kill(pid)
        _read(server, None)
    except BaseException:  # Interrupted mid-command: no later call may read its lines.
      _stop(pid)
      raise
    if done is None:
      with open(out, 'rb') as f_out, open(err, 'rb') as f_err:
        raise subprocess.TimeoutExpired(argv, timeout, f_out.read(), f_err.read())
    with open(out) as f_out, open(err) as f_err:  # Decoded as subprocess's text=True does.
      return subprocess.CompletedProcess(argv, done['rc'], f_out.read(), f_err.read())


def _kill(pid: int) -> None:
  try:
    os.kill(pid, signal.SIGKILL)
  except ProcessLookupError:  # It ended meanwhile.
    pass


def _stop(pid: int | None) -> None:
  global _server
  if pid is not None:
    _kill(pid)
  _server.kill()
  _server.wait()
  _server = None


def _child(req: dict) -> None:
  """In the forked child: `python -m module args`, as the interpreter runs it
  (runpy's own entry point for -m, in a fresh __main__); never returns."""
  code = 1
  try:
    os.chdir(req['cwd'])
    os.environ.clear()
    os.environ.update(req['env'])
    for fd, path, mode in ((0, os.devnull, os.O_RDONLY),
                           (1, req['stdout'], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                           (2, req['stderr'], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
      new = os.open(path, mode, 0o644)
      os.dup2(new, fd)
      os.close(new)
    # The server's own stdout and stderr, now on the child's files: the buffering,
    # encoding and error handlers Python gave them at start-up are a real
    # process's (and the handler orbax's import gave the root logger writes there).
    sys.stdin = open(0, closefd=False)
    sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
    if 'numpy' in sys.modules:  # Not the server's global random state in every child.
      sys.modules['numpy'].random.seed()
    sys.path[0] = req['cwd']
    sys.argv = [req['module'], *req['args']]  # runpy puts the module's file first.
    sys.modules['__main__'] = types.ModuleType('__main__')
    import runpy
    runpy._run_module_as_main(req['module'])  # What `python -m` calls.
    code = 0
  except SystemExit as e:  # As the interpreter ends on one.
    if e.code is None or isinstance(e.code, int):
      code = (e.code or 0) & 0xff
    else:
      print(e.code, file=sys.stderr)
  except BaseException:  # As the interpreter reports an uncaught exception.
    sys.excepthook(*sys.exc_info())
  finally:
    try:  # What the interpreter does at exit: join threads, exit handlers, flush.
      threading._shutdown()
      atexit._run_exitfuncs()
      sys.stdout.flush()
      sys.stderr.flush()
    finally:
      os._exit(code)


def _serve() -> None:
  import importlib
  for name in _PRELOAD:
    importlib.import_module(name)
  from jax._src import xla_bridge
  assert not xla_bridge._backends, 'a preloaded module created a JAX backend'
  for line in sys.stdin:
    req = json.loads(line)
    sys.stdout.flush()
    sys.stderr.flush()  # A child inherits these streams: nothing of the server's in them.
    pid = os.fork()
    if pid == 0:
      _child(req)
    print(json.dumps({'pid': pid}), flush=True)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({'rc': os.waitstatus_to_exitcode(status)}), flush=True)


if __name__ == '__main__':
  _serve()
