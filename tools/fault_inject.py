"""Kills a training run at random moments and checks that it still ends exactly right.

python -m tools.fault_inject --kills=20 [--nosigterm] [--seed=0] [--workdir=/tmp/faults] [--pack]

Trains a tiny model (the built-in corpus, or --data_dir) with a checkpoint
every 2 steps, so kills land in checkpoint writes too (the first one
included). Each injection starts `experiments.train`, waits a random time
after it starts stepping, and sends SIGKILL (and, unless --nosigterm, first one
SIGTERM, which must checkpoint and exit with workdir.PREEMPTED_EXIT). Then the
same command runs to the end, and its losses at every step must equal, bit
for bit, those of an uninterrupted run; the workdir must be resumable after
every kill. Prints one line per injection and a summary; exits 1 on any mismatch.

--pack kills a sweep instead (`experiments.sweep`, one worker): six runs of
one shape (two seeds x 30, 45 and 60 steps by default) trained as one pack (lm/pack.py),
checkpointing every 2 steps with keep_checkpoints=1, so kills also land
between two members' commits of one step; every member's losses must equal
those of an uninterrupted sweep. Measured 2026-11-28 on 2 CPU cores:
`21 injections: losses bit-identical to an uninterrupted run at every step`
(see the closing lines of tests/test_pack.py for the case it guards).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

from absl import app, flags

PREEMPTED_EXIT = 75  # lm/workdir.PREEMPTED_EXIT, without importing JAX here.

CONFIG = '''
from configs import common


def get_config(arg=None):
  c = common.base()
  c.model.update(d_model=32, num_layers=2, num_heads=4, max_len=32, mlp_dim=64,
                 resid_dropout=0.1)
  c.data.update(seq_len=16, val_fraction=0.2{data})
  c.opt.update(lr=1e-2, warmup_steps=2)
  c.train.update(batch_size=8, steps={steps}, log_every=1, eval_every=10, eval_batches=1,
                 checkpoint_every=2, keep_checkpoints=2, progress=False)
  return c
'''


PACK_CONFIG = '''
from configs import common


def get_config(arg=None):
  c = common.base()
  c.model.update(max_len=32, resid_dropout=0.1)
  c.data.update(seq_len=16, val_fraction=0.2{data})
  c.opt.update(lr=1e-2, warmup_steps=2)
  c.train.update(batch_size=8, log_every=1, eval_batches=1, checkpoint_every=2,
                 keep_checkpoints=1, progress=False)
  c.sweep = common.sweep(design='grid', params=(2e4,), tokens={tokens},
                         seeds=(0, 1), pack=6, workers=1, evals_per_run=1)
  return c
'''


def write_config(path: str, steps: int, data_dir: str = '', pack: bool = False) -> str:
  """A run of `steps` steps, or (pack) the sweep of one pack whose runs train
  steps/2, 3 steps/4 and `steps` steps (batches of 8 x 16 tokens)."""
  data = f", source='dir', path={data_dir!r}" if data_dir else ''
  tokens = tuple(float(steps * f * 128) for f in (0.5, 0.75, 1))
  with open(path, 'w') as f:
    f.write(PACK_CONFIG.format(data=data, tokens=tokens) if pack else
            CONFIG.format(steps=steps, data=data))
  return path


def environment(cache_dir: str, base: dict | None = None) -> dict:
  """The child processes' environment: this checkout importable, and JAX's
  persistent compilation cache shared, so each restart skips recompiling."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(base or os.environ)
  # One CPU device (the tests' 8 fake ones only slow each restart down).
  env['XLA_FLAGS'] = ' '.join(f for f in env.get('XLA_FLAGS', '').split()
                              if 'force_host_platform_device_count' not in f)
  return dict(env, PYTHONPATH=root, JAX_COMPILATION_CACHE_DIR=cache_dir,
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')


def _cmd(config: str, workdir: str, pack: bool = False) -> list[str]:
  if pack:
    return [sys.executable, '-m', 'experiments.sweep', f'--config={config}',
            f'--workdir={workdir}', '--report=false']
  return [sys.executable, '-m', 'experiments.train', f'--config={config}',
          f'--workdir={workdir}', '--sample_tokens=0']


def _metrics_files(workdir: str, pack: bool) -> dict[str, str]:
  """Run name ('' for a single run) -> its metrics.jsonl."""
  if not pack:
    return {'': os.path.join(workdir, 'metrics.jsonl')}
  runs = os.path.join(workdir, 'runs')
  names = sorted(os.listdir(runs)) if os.path.isdir(runs) else []
  return {n: os.path.join(runs, n, 'metrics.jsonl') for n in names}


def losses(workdir: str, pack: bool = False) -> dict:
  """step -> train loss (pack: (run, step) -> loss, every run of the sweep)."""
  out = {}
  for name, path in _metrics_files(workdir, pack).items():
    with open(path) as f:
      for line in f:
        r = json.loads(line)
        if r['kind'] == 'train':
          key = (name, r['step']) if pack else r['step']
          assert key not in out, f'step {r["step"]} logged twice in {path}'
          out[key] = r['loss']
  return out


def _steps_logged(workdir: str, pack: bool = False) -> int:
  n = 0
  for path in _metrics_files(workdir, pack).values():
    try:
      with open(path) as f:
        n += sum('"kind": "train"' in line for line in f)
    except FileNotFoundError:
      pass
  return n


def inject(config: str, workdir: str, reference: str, kills: int, seed: int = 0,
           sigterm: bool = False, log=print, env=None, pack: bool = False) -> list[str]:
  """Runs the injections; returns a list of problems (empty: all good)."""
  rng = random.Random(seed)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = env or environment(os.path.join(os.path.dirname(os.path.abspath(workdir)), 'jax_cache'))
  problems = []
  if not _steps_logged(reference, pack):
    r = subprocess.run(_cmd(config, reference, pack), cwd=root, env=env, capture_output=True,
                       text=True)
    if r.returncode:
      return [f'reference run failed: {r.stderr[-500:]}']
  want = losses(reference, pack)
  for i in range(kills + int(sigterm)):
    term = sigterm and i == 0
    p = subprocess.Popen(_cmd(config, workdir, pack), cwd=root, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    before = _steps_logged(workdir, pack)
    while p.poll() is None and _steps_logged(workdir, pack) <= before:
      time.sleep(0.005)  # Until this process steps (startup is most of its life).
    time.sleep(rng.uniform(0.0, 0.15))
    p.send_signal(signal.SIGTERM if term else signal.SIGKILL)
    rc = p.wait()
    err = p.stderr.read()
    what = 'SIGTERM' if term else 'SIGKILL'
    log(f'injection {i + 1}: {what} after {_steps_logged(workdir, pack)} logged steps, exit {rc}')
    if term and rc not in (PREEMPTED_EXIT, 0):
      problems.append(f'SIGTERM: exit {rc}, expected {PREEMPTED_EXIT}: {err[-300:]}')
    if term and rc == PREEMPTED_EXIT and 'stopped by SIGTERM at step' not in err:
      problems.append(f'SIGTERM: no clear message: {err[-300:]}')
  r = subprocess.run(_cmd(config, workdir, pack), cwd=root, env=env, capture_output=True,
                     text=True)
  if r.returncode:
    return problems + [f'the final rerun failed (exit {r.returncode}): {r.stderr[-500:]}']
  try:
    got = losses(workdir, pack)
  except AssertionError as e:
    return problems + [str(e)]
  if got != want:
    bad = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
    problems.append(f'losses differ at steps {bad[:10]} (of {len(want)})')
  return problems


def main(argv):
  del argv
  from lm import workdir as workdir_lib  # No JAX: the injected processes import it.
  f = flags.FLAGS
  if f.kills + f.sigterm < 1:
    print(f'error: --kills={f.kills} with --nosigterm injects nothing: give --kills >= 1 or '
          '--sigterm', file=sys.stderr)
    sys.exit(2)
  if f.data_dir and not os.path.isdir(f.data_dir):  # Before the reference run trains.
    print(f'error: --data_dir={f.data_dir} is not a directory of text files', file=sys.stderr)
    sys.exit(2)
  try:
    workdir_lib.fresh_scratch(f.workdir, 'workdir',
                              frozenset({'cfg.py', 'run', 'reference', 'jax_cache'}))
  except workdir_lib.NotWritable as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  config = write_config(os.path.join(f.workdir, 'cfg.py'), f.steps, f.data_dir, f.pack)
  problems = inject(config, os.path.join(f.workdir, 'run'), os.path.join(f.workdir, 'reference'),
                    f.kills, f.seed, f.sigterm, pack=f.pack)
  if problems and problems[0].startswith('reference run failed'):  # Nothing was injected.
    print(f'error: the uninterrupted {problems[0]}', file=sys.stderr)
    sys.exit(1)
  n = flags.FLAGS.kills + int(flags.FLAGS.sigterm)
  print(f'{n} injections: ' + ('losses bit-identical to an uninterrupted run at every step'
                              if not problems else '; '.join(problems)))
  sys.exit(1 if problems else 0)


if __name__ == '__main__':
  # Flags only when run as a program, so tests can import this module.
  flags.DEFINE_integer('kills', 20, 'SIGKILL injections.', lower_bound=0)
  flags.DEFINE_bool('sigterm', True, 'Also one SIGTERM (must checkpoint, exit 75).')
  flags.DEFINE_integer('seed', 0, 'Seed of the kill times.')
  # --pack's shortest runs train steps/2: at least one checkpoint (every 2) to resume from.
  flags.DEFINE_integer('steps', 60, 'Training steps of the run (>= 4).', lower_bound=4)
  flags.DEFINE_string('workdir', '/tmp/lm_faults', 'Scratch directory (replaced; one it '
                      'made, or a new or empty one).')
  flags.DEFINE_string('data_dir', '', 'Text files to train on (default: stdlib).')
  flags.DEFINE_bool('pack', False, 'Kill a sweep of one pack of six runs instead of a run.')
  from lm import cli
  app.run(main, flags_parser=cli.parse_flags)
