"""Kills a training run at random moments and checks that it still ends exactly right.

python -m tools.fault_inject --kills=20 [--nosigterm] [--seed=0] [--workdir=/tmp/faults]

Trains a tiny model (the built-in corpus, or --data_dir) with a checkpoint
every 2 steps, so kills land in checkpoint writes too (the first one
included). Each injection starts `experiments.train`, waits a random time
after it starts stepping, and sends SIGKILL (and, unless --nosigterm, first one
SIGTERM, which must checkpoint and exit with workdir.PREEMPTED_EXIT). Then the
same command runs to the end, and its losses at every step must equal, bit
for bit, those of an uninterrupted run; the workdir must be resumable after
every kill. Prints one line per injection and a summary; exits 1 on any mismatch.
"""

from __future__ import annotations

import json
import os
import random
import shutil
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


def write_config(path: str, steps: int, data_dir: str = '') -> str:
  data = f", source='dir', path={data_dir!r}" if data_dir else ''
  with open(path, 'w') as f:
    f.write(CONFIG.format(steps=steps, data=data))
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


def _cmd(config: str, workdir: str) -> list[str]:
  return [sys.executable, '-m', 'experiments.train', f'--config={config}',
          f'--workdir={workdir}', '--sample_tokens=0']


def losses(workdir: str) -> dict[int, float]:
  out = {}
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    for line in f:
      r = json.loads(line)
      if r['kind'] == 'train':
        assert r['step'] not in out, f'step {r["step"]} logged twice in {workdir}'
        out[r['step']] = r['loss']
  return out


def _steps_logged(workdir: str) -> int:
  try:
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      return sum('"kind": "train"' in line for line in f)
  except FileNotFoundError:
    return 0


def inject(config: str, workdir: str, reference: str, kills: int, seed: int = 0,
           sigterm: bool = False, log=print, env=None) -> list[str]:
  """Runs the injections; returns a list of problems (empty: all good)."""
  rng = random.Random(seed)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = env or environment(os.path.join(os.path.dirname(os.path.abspath(workdir)), 'jax_cache'))
  problems = []
  if not os.path.exists(os.path.join(reference, 'metrics.jsonl')):
    r = subprocess.run(_cmd(config, reference), cwd=root, env=env, capture_output=True,
                       text=True)
    if r.returncode:
      return [f'reference run failed: {r.stderr[-500:]}']
  want = losses(reference)
  for i in range(kills + int(sigterm)):
    term = sigterm and i == 0
    p = subprocess.Popen(_cmd(config, workdir), cwd=root, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    before = _steps_logged(workdir)
    while p.poll() is None and _steps_logged(workdir) <= before:
      time.sleep(0.005)  # Until this process steps (startup is most of its life).
    time.sleep(rng.uniform(0.0, 0.15))
    p.send_signal(signal.SIGTERM if term else signal.SIGKILL)
    rc = p.wait()
    err = p.stderr.read()
    what = 'SIGTERM' if term else 'SIGKILL'
    log(f'injection {i + 1}: {what} after {_steps_logged(workdir)} logged steps, exit {rc}')
    if term and rc not in (PREEMPTED_EXIT, 0):
      problems.append(f'SIGTERM: exit {rc}, expected {PREEMPTED_EXIT}: {err[-300:]}')
    if term and rc == PREEMPTED_EXIT and 'stopped by SIGTERM at step' not in err:
      problems.append(f'SIGTERM: no clear message: {err[-300:]}')
  r = subprocess.run(_cmd(config, workdir), cwd=root, env=env, capture_output=True,
                     text=True)
  if r.returncode:
    return problems + [f'the final rerun failed (exit {r.returncode}): {r.stderr[-500:]}']
  try:
    got = losses(workdir)
  except AssertionError as e:
    return problems + [str(e)]
  if got != want:
    bad = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
    problems.append(f'losses differ at steps {bad[:10]} (of {len(want)})')
  return problems


def main(argv):
  del argv
  shutil.rmtree(flags.FLAGS.workdir, ignore_errors=True)
  os.makedirs(flags.FLAGS.workdir)
  config = write_config(os.path.join(flags.FLAGS.workdir, 'cfg.py'), flags.FLAGS.steps, flags.FLAGS.data_dir)
  problems = inject(config, os.path.join(flags.FLAGS.workdir, 'run'),
                    os.path.join(flags.FLAGS.workdir, 'reference'), flags.FLAGS.kills, flags.FLAGS.seed,
                    flags.FLAGS.sigterm)
  n = flags.FLAGS.kills + int(flags.FLAGS.sigterm)
  print(f'{n} injections: ' + ('losses bit-identical to an uninterrupted run at every step'
                              if not problems else '; '.join(problems)))
  sys.exit(1 if problems else 0)


if __name__ == '__main__':
  # Flags only when run as a program, so tests can import this module.
  flags.DEFINE_integer('kills', 20, 'SIGKILL injections.')
  flags.DEFINE_bool('sigterm', True, 'Also one SIGTERM (must checkpoint, exit 75).')
  flags.DEFINE_integer('seed', 0, 'Seed of the kill times.')
  flags.DEFINE_integer('steps', 60, 'Training steps of the run.')
  flags.DEFINE_string('workdir', '/tmp/lm_faults', 'Scratch directory (replaced).')
  flags.DEFINE_string('data_dir', '', 'Text files to train on (default: stdlib).')
  app.run(main)
