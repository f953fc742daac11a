"""What keeps a run directory consistent across preemption, crashes and a
second process: a lock, atomic writes, preemption signals, and recovery from
checkpoint writes that never finished.

- `lock(workdir)`: one training or sweep process per directory. The lock file
  names its holder (host, pid, start time); a second process refuses at once,
  and a lock whose pid is dead on this host is taken over with a warning.
- `Preemption`: SIGTERM (TPU VMs, spot GPUs, Slurm) and SIGINT set a flag that
  the training loop reads after each step; it checkpoints and raises
  `Preempted`, and the CLIs exit with PREEMPTED_EXIT so a scheduler can tell
  "rerun me" from failure.
- `clean_incomplete(ckpt_dir)`: orbax writes a step into `<step>.orbax-
  checkpoint-tmp-*` and renames it when complete; a kill in between leaves the
  temporary directory, which is reported and removed so the run continues from
  the last complete step (or starts afresh).
- `write_atomic(path, text)`: temp file + rename, so a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
import signal
import socket
import tempfile
import threading

PREEMPTED_EXIT = 75  # EX_TEMPFAIL (sysexits.h): interrupted, rerun to continue.
LOCK_NAME = '.lock'


class LockError(RuntimeError):
  """Another live process holds the workdir."""


class Preempted(Exception):
  """The loop stopped for a signal after writing a checkpoint at `step`."""

  def __init__(self, step: int, signame: str, workdir: str):
    super().__init__(f'{signame} at step {step}: checkpoint written in {workdir}; rerun the '
                     'same command to continue')
    self.step, self.signame = step, signame


class NotWritable(RuntimeError):
  """A directory the run must write to is not writable (or not a directory)."""


def reason(e: BaseException) -> str:
  """An exception's message for a one-line error: an OSError's strerror ('Is a
  directory'), else its first line."""
  if isinstance(e, OSError) and e.strerror:
    return e.strerror
  if isinstance(e, (KeyError, RecursionError)):  # Their message alone is a bare key.
    return f'{type(e).__name__}: {e}'
  return (str(e).splitlines() or [type(e).__name__])[0]


def inside_checkpoints(path: str) -> str | None:
  """The run directory whose checkpoints/ holds `path` (any depth), else None:
  writing there would leave the run's checkpoint directory unreadable. A run
  is a config.json beside a checkpoints/ with step directories (a project's
  own checkpoints/ folder of runs is not one)."""
  p = os.path.abspath(path)
  while os.path.dirname(p) != p:
    if os.path.basename(p) == 'checkpoints' and os.path.exists(
        os.path.join(os.path.dirname(p), 'config.json')) and any(
            e.isdigit() for e in _entries(p)):
      return os.path.dirname(p)
    p = os.path.dirname(p)
  return None


def _entries(path: str) -> list[str]:
  try:
    return os.listdir(path)
  except OSError:
    return []


def check_writable(path: str, what: str, files: tuple[str, ...] = ()) -> None:
  """Raises NotWritable, naming `what` and `path`, unless `path` is (or can be
  created as) a writable directory. Checked before anything is prepared, so a
  read-only workdir or cache fails in one line instead of an OSError mid-run.
  `files`: names (or '.suffix'es) of files written there later, which an
  existing directory of that name would stop only then. A path inside a run's
  checkpoints/ is refused: the run could not resume beside a foreign entry."""
  run = inside_checkpoints(path)
  if run:
    raise NotWritable(f'{what} {path!r} lies inside the checkpoints of the run {run}; it was '
                      'left untouched: choose another path')
  try:
    entries = sorted(os.listdir(path)) if files and os.path.isdir(path) else []
  except OSError:  # Unreadable: the probe below says whether it can be written.
    entries = []
  for e in entries:
    if os.path.isdir(os.path.join(path, e)) and any(
        e == f or (f.startswith('.') and e.endswith(f)) for f in files):
      raise NotWritable(f'{os.path.join(path, e)} is a directory, but a file of that name '
                        f'is written to {what}; it was left untouched: move it away')
  if not path:  # abspath('') is the current directory, which makedirs('') is not.
    raise NotWritable(f'{what} is empty: give a directory')
  probe = os.path.abspath(path)
  while not os.path.exists(probe):  # The nearest existing ancestor must take a mkdir.
    probe = os.path.dirname(probe)
  if not os.path.isdir(probe):
    raise NotWritable(f'{what} {path!r} cannot be a directory: {probe!r} is a file; '
                      'choose another path')
  try:  # Try it (permission bits say nothing to root or of read-only mounts).
    fd, tmp = tempfile.mkstemp(prefix='.lm_probe', dir=probe)
    os.close(fd)
    os.remove(tmp)
  except OSError as e:
    raise NotWritable(f'{what} {path!r} is not writable (creating a file in {probe!r} '
                      f'failed: {e.strerror}); choose a writable path') from None


SCRATCH_MARK = '.lm_scratch'


def fresh_scratch(path: str, flag: str, names: frozenset[str] = frozenset()) -> None:
  """Empties `path` for a tool that replaces its scratch directory
  (tools.fault_inject, tools.bad_inputs), or raises NotWritable if it holds
  anything that tool did not make: a mistyped --workdir=. or a run directory
  would otherwise be deleted. Its mark says it made it; so do entries all
  among `names` (what the tool writes there: a directory from before the mark)."""
  if not path:
    raise NotWritable(f'--{flag} is empty: give a scratch directory')
  if os.path.lexists(path) and not os.path.isdir(path):
    raise NotWritable(f'--{flag}={path} is a file, not a scratch directory; choose a new path')
  if (os.path.isdir(path) and not set(os.listdir(path)) <= names
      and not os.path.exists(os.path.join(path, SCRATCH_MARK))):
    raise NotWritable(f'--{flag}={path} holds files this tool did not make (no {SCRATCH_MARK}); '
                      'it is replaced on every run, so choose a new or empty directory')
  check_writable(path, f'--{flag}')
  shutil.rmtree(path, ignore_errors=True)
  os.makedirs(path)
  with open(os.path.join(path, SCRATCH_MARK), 'w') as f:
    f.write('A tool\'s scratch directory: replaced by its next run.\n')


class DiskFull(RuntimeError):
  """Not enough free space for the next write; everything before it stands."""


def _free_bytes(path: str) -> int:
  return shutil.disk_usage(path).free


def check_space(path: str, need: int, what: str) -> None:
  """Raises DiskFull unless the disk of `path` has `need` bytes free, so a full
  disk stops a run between checkpoints in one line, rather than inside
  orbax's writer threads (hundreds of lines of tracebacks)."""
  free = _free_bytes(path)
  if free < need:
    raise DiskFull(f'the disk of {path} has {free / 2**20:.1f} MiB free, and {what} needs '
                   f'about {need / 2**20:.1f} MiB: free some space and rerun the same command '
                   'to continue from the last complete checkpoint')


def disk_full(e: BaseException) -> bool:
  """Whether an exception (or one it was raised from) is a full disk (ENOSPC),
  as Python's OSError or as orbax/TensorStore's RESOURCE_EXHAUSTED text."""
  while e is not None:
    if isinstance(e, OSError) and e.errno == 28 or 'No space left on device' in str(e):
      return True
    e = e.__cause__ or e.__context__
  return False


def exit_disk_full(workdir: str) -> None:
  """One line instead of a traceback per writer thread, then an immediate exit
  (the checkpoint writer's threads would print hundreds of lines while the
  interpreter shuts down). What was written stays consistent: the step being
  saved is an orbax temporary that the rerun removes."""
  import sys
  print(f'error: no space left on the disk of {workdir} (while writing); free some space '
        'and rerun the same command to continue from the last complete checkpoint',
        file=sys.stderr, flush=True)
  os._exit(1)


def tmp_name(path: str) -> str:
  """A temporary name beside `path` that no other writer uses: host, process
  and thread, so hosts sharing a file system (equal pids) and threads of one
  process never write the same temporary file."""
  return f'{path}.tmp-{socket.gethostname()}-{os.getpid()}-{threading.get_ident()}'


def write_atomic(path: str, text: str) -> None:
  """A reader sees the old file or the new one, never half of it; a failed
  write (a full disk) leaves no temporary file behind."""
  tmp = tmp_name(path)
  try:
    with open(tmp, 'w') as f:
      f.write(text)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Exists, owned by someone else.
    return True
  return True


def _read_holder(path: str) -> dict | None:
  """The lock's record; None when there is no lock, {} when it is unreadable."""
  try:
    with open(path) as f:
      holder = json.load(f)
  except FileNotFoundError:
    return None
  except (OSError, ValueError):
    return {}
  return holder if isinstance(holder, dict) else {}


def _stale(holder: dict) -> bool:
  """A lock record whose process is dead on this host (one from another host,
  or unreadable, cannot be judged: it counts as live)."""
  return (holder.get('host') == socket.gethostname() and isinstance(holder.get('pid'), int)
          and not _alive(holder['pid']))


def held(workdir: str) -> bool:
  """Whether another live process (or one on another host) holds `workdir`."""
  holder = _read_holder(os.path.join(workdir, LOCK_NAME))
  return holder is not None and not _stale(holder)


@contextlib.contextmanager
def _flock(path: str, open_flags: int = os.O_RDONLY):
  """Waits for, then holds, an exclusive flock on `path` (released when it is
  closed, or when the process dies)."""
  import fcntl
  fd = os.open(path, open_flags, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX)
    yield
  finally:
    os.close(fd)  # Releases the flock.


def _takeover_guard(workdir: str):
  """An exclusive flock on the directory: two processes judging one stale
  lock take turns, so only one removes it (and never a fresh one)."""
  return _flock(workdir)


def tables_lock(workdir: str):
  """Waits for, then holds, an exclusive flock on <workdir>/.tables.lock while
  a sweep's result tables or report are read and rewritten. Each writer reads
  the runs' records under it, so the last to write has read the latest: a
  collect or report started during a sweep can no longer replace the sweep's
  newer tables with its older snapshot (writes are atomic, but last wins)."""
  return _flock(os.path.join(workdir, '.tables.lock'), os.O_RDWR | os.O_CREAT)


@contextlib.contextmanager
def lock(workdir: str, what: str = 'training', log=print):
  """Holds <workdir>/.lock for the duration; see the module docstring.

  The record is written to a private file and hard-linked into place, so the
  lock appears whole or not at all (link fails if .lock exists). A stale lock
  (its pid dead on this host) is removed under a flock, after reading it again,
  so of several processes taking it over one wins; release removes .lock only
  while it is still this holder's."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK_NAME)
  me = {'host': socket.gethostname(), 'pid': os.getpid(), 'what': what,
        'started': datetime.datetime.now().isoformat(timespec='seconds'),
        'token': os.urandom(8).hex()}
  mine = f'{path}.{me["token"]}'
  with open(mine, 'w') as f:
    json.dump(me, f)
  try:
    while True:
      try:
        os.link(mine, path)
        break
      except FileExistsError:
        holder = _read_holder(path)
      except OSError:  # No hard links here (some FUSE mounts): create it exclusively.
        try:
          with os.fdopen(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644), 'w') as f:
            json.dump(me, f)
          break
        except FileExistsError:
          holder = _read_holder(path)
      if holder is None:  # Released this instant: try again.
        continue
      if not _stale(holder):
        raise LockError(
            f'{workdir} is in use by {holder.get("what", "another process")} (host '
            f'{holder.get("host", "?")}, pid {holder.get("pid", "?")}, started '
            f'{holder.get("started", "?")}); wait for it to finish, or delete {path} if '
            'that process is gone')
      with _takeover_guard(workdir):
        if _read_holder(path) == holder:  # Still the dead one: nobody took it meanwhile.
          os.remove(path)
          log(f'warning: taking over the stale lock of {workdir} (pid {holder["pid"]} on '
              f'{holder["host"]}, started {holder.get("started")}, is not running)')
  finally:
    os.remove(mine)
  _HELD[path] = me['token']
  try:
    yield
  finally:
    _HELD.pop(path, None)
    if (_read_holder(path) or {}).get('token') == me['token']:
      with contextlib.suppress(FileNotFoundError):
        os.remove(path)


_HELD: dict[str, str] = {}  # The lock files this process holds: path -> token.


def _exit_now(message: str) -> None:
  """Ends the process at once, as a SIGKILL would (which every write here
  survives: atomic files, orbax's temporary steps), but with PREEMPTED_EXIT, a
  message and its locks released. Raising from a signal handler instead is
  unsafe: the exception can land in a garbage-collection callback or an
  import, which swallow it."""
  import sys
  for path, token in list(_HELD.items()):
    if (_read_holder(path) or {}).get('token') == token:
      with contextlib.suppress(OSError):
        os.remove(path)
  with contextlib.suppress(Exception):  # What was printed before stays printed.
    sys.stdout.flush()
  os.write(2, (message + '\n').encode())
  os._exit(PREEMPTED_EXIT)


def exit_preempted(message: str) -> None:
  """How a CLI ends after `Preempted` (its checkpoint written): exit 75 at
  once. Python's own exit would spend ~0.6 s finalizing with the default
  signal handlers back, and a second signal then ended it with 143 or 130,
  which a requeue-on-75 wrapper reads as failure. With several JAX processes
  it exits the usual way: skipping jax.distributed's shutdown, process 0 (the
  coordination service) would make the others abort with 134."""
  import sys
  jax = sys.modules.get('jax')
  if jax is not None and jax.process_count() > 1:
    print(message, file=sys.stderr)
    sys.exit(PREEMPTED_EXIT)
  _exit_now(message)


def _stopped_outside_loop(signum, frame) -> None:
  del frame
  _exit_now(f'stopped by {signal.Signals(signum).name} outside the training loop (nothing '
            'was being trained): rerun the same command to continue')


def exit_on_signals() -> None:
  """For a CLI's first lines: a SIGTERM or SIGINT outside the training loop
  (imports, data preparation, compilation, the final report) exits with
  PREEMPTED_EXIT, its locks released, where it would die by the signal (-15,
  lock left behind) or print a KeyboardInterrupt traceback. The loop's own
  `Preemption` handler takes over while it trains, and gives these back."""
  if threading.current_thread() is threading.main_thread():
    for s in (signal.SIGTERM, signal.SIGINT):
      signal.signal(s, _stopped_outside_loop)


class Preemption:
  """Context manager: SIGTERM/SIGINT set `.signame` instead of killing the
  process (a second one ends it at once, exit 75, without the checkpoint).
  Inert outside the main thread."""

  def __init__(self, local: bool = True):
    self.signame: str | None = None
    self._old: dict = {}
    self.local = local  # False: SIGTERM is jax.distributed's notifier's; SIGINT stops at once.

  def _handler(self, signum, frame):
    del frame
    if self.signame is not None:  # Asked twice: stop now, without the checkpoint.
      _exit_now(f'stopped by a second {signal.Signals(signum).name} during training, '
                'before its checkpoint: rerun the same command to continue from the last one')
    self.signame = signal.Signals(signum).name

  def _stop_now(self, signum, frame):
    del frame
    _exit_now(f'stopped by {signal.Signals(signum).name} during training with several '
              'processes, without a checkpoint (SIGTERM to any process saves one step on all): '
              'rerun the same command to continue from the last one')

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for s in ((signal.SIGTERM, signal.SIGINT) if self.local else (signal.SIGINT,)):
        self._old[s] = signal.signal(s, self._handler if self.local else self._stop_now)
    return self

  def __exit__(self, *exc):
    for s, h in self._old.items():
      signal.signal(s, h)
    self._old = {}


def clean_incomplete(ckpt_dir: str, log=print) -> list[str]:
  """Removes checkpoint steps whose write never finished; returns their names."""
  if not os.path.isdir(ckpt_dir):
    return []
  gone = sorted(e for e in os.listdir(ckpt_dir) if 'tmp' in e and not e.isdigit())
  for e in gone:
    shutil.rmtree(os.path.join(ckpt_dir, e), ignore_errors=True)
  if gone:
    left = sorted((e for e in os.listdir(ckpt_dir) if e.isdigit()), key=int)
    log(f'warning: removed incomplete checkpoint writes {gone} in {ckpt_dir} (a process '
        'was killed while saving); continuing from '
        + (f'step {left[-1]}' if left else 'scratch'))
  return gone


def truncate_metrics(workdir: str, step: int, resuming: bool = True) -> int:
  """Drops metrics.jsonl rows after `step` (written after the checkpoint that a
  resumed run continues from), so no step appears twice; returns how many. A
  torn last line (a kill mid-write) goes too; a damaged row before it raises
  MetricsError when resuming (lm/train checks that before anything is written).
  Resuming, the setup row at `step` goes too (the process writes its own); a
  rollback (resuming=False) keeps it: it is the rolling-back process's."""
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return 0
  from lm import metrics  # Here: CLIs import this module before JAX.
  lines = metrics.read_lines(path)
  keep = []
  for x, row in metrics.parse(path, lines, damaged_ok=step == 0):
    # The resumed run writes its own setup row at `step`.
    if row.get('step', 0) < step or (row.get('step') == step and not (
        resuming and row.get('kind') == 'setup')):
      keep.append(x)
  if len(keep) != len(lines):
    write_atomic(path, ''.join(keep))
  return len(lines) - len(keep)
