"""Meshes: sharded == single device, golden partition specs, resharding on
restore, clear errors for misfits, and two processes through jax.distributed."""

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest

from lm import metrics, optimizer, train
from lm import sharding as shard_lib
from lm.config import ConfigError
from tests import forked_cli
from tests.helpers import tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MESHES = [(8, 1, 1), (1, 8, 1), (2, 4, 1), (2, 2, 2), (1, 2, 4)]


def _mesh_cfg(mesh, **kw):
  d, f, t = mesh
  return train.resolve_vocab(tiny(**{'mesh.data': d, 'mesh.fsdp': f, 'mesh.tensor': t}, **kw),
                             259)


def _run(c, devices, steps=5, batches=None):
  """Train steps on fixed batches (default: `steps` random LM batches); returns
  losses and the final state. Batches may be dicts (other families)."""
  mesh = shard_lib.make_mesh(c.mesh, devices)
  model = train.Transformer(c.model)
  tx = optimizer.unit_lr(c.opt, c.model)
  if batches is None:
    batches = [{'tokens': b} for b in np.asarray(jax.random.randint(
        jax.random.key(7), (steps, 8, c.data.seq_len + 1), 0, 256))]
  with jax.set_mesh(mesh), nn.logical_axis_rules(list(c.rules)):
    _, shardings = train.state_shardings(c, model, tx, mesh)
    state = train.init_state(c, model, tx, shardings)
    batch_sh = jax.tree_util.tree_map(
        lambda x: shard_lib.batch_sharding(mesh, c.rules, ndim=x.ndim), batches[0])
    step = jax.jit(train.make_train_step(c, model, tx), in_shardings=(shardings, batch_sh),
                   out_shardings=(shardings, None))
    losses = []
    for b in batches:
      state, m = step(state, jax.device_put(b, batch_sh))
      losses.append(float(m['loss']))
  return losses, state


@pytest.fixture(scope='module')
def reference():
  return _run(_mesh_cfg((1, 1, 1)), jax.devices()[:1])[0]


@pytest.mark.parametrize('mesh', MESHES, ids=[str(m) for m in MESHES])
def test_sharded_losses_match_single_device(mesh, reference):
  losses, _ = _run(_mesh_cfg(mesh), jax.devices())
  np.testing.assert_allclose(losses, reference, rtol=1e-5)


# Golden partition specs (fsdp_tp rules) and per-device shard shapes.
GOLDEN = {
    # name: (spec, global shape, shard on (2,2,2), shard on (1,2,4))
    'blocks/attn/key': ((None, 'fsdp', 'tensor', None), (2, 32, 4, 8), (2, 16, 2, 8), (2, 16, 1, 8)),
    'blocks/attn/key_bias': ((None, 'tensor', None), (2, 4, 8), (2, 2, 8), (2, 1, 8)),
    'blocks/attn/out': ((None, 'tensor', None, 'fsdp'), (2, 4, 8, 32), (2, 2, 8, 16), (2, 1, 8, 16)),
    'blocks/attn/out_bias': ((None, 'fsdp'), (2, 32), (2, 16), (2, 16)),
    'blocks/attn/query': ((None, 'fsdp', 'tensor', None), (2, 32, 4, 8), (2, 16, 2, 8), (2, 16, 1, 8)),
    'blocks/attn/query_bias': ((None, 'tensor', None), (2, 4, 8), (2, 2, 8), (2, 1, 8)),
    'blocks/attn/value': ((None, 'fsdp', 'tensor', None), (2, 32, 4, 8), (2, 16, 2, 8), (2, 16, 1, 8)),
    'blocks/attn/value_bias': ((None, 'tensor', None), (2, 4, 8), (2, 2, 8), (2, 1, 8)),
    'blocks/attn_norm/bias': ((None, 'fsdp'), (2, 32), (2, 16), (2, 16)),
    'blocks/attn_norm/scale': ((None, 'fsdp'), (2, 32), (2, 16), (2, 16)),
    'blocks/mlp/down/bias': ((None, 'fsdp'), (2, 32), (2, 16), (2, 16)),
    'blocks/mlp/down/kernel': ((None, 'tensor', 'fsdp'), (2, 64, 32), (2, 32, 16), (2, 16, 16)),
    'blocks/mlp/up/bias': ((None, 'tensor'), (2, 64), (2, 32), (2, 16)),
    'blocks/mlp/up/kernel': ((None, 'fsdp', 'tensor'), (2, 32, 64), (2, 16, 32), (2, 16, 16)),
    'blocks/mlp_norm/bias': ((None, 'fsdp'), (2, 32), (2, 16), (2, 16)),
    'blocks/mlp_norm/scale': ((None, 'fsdp'), (2, 32), (2, 16), (2, 16)),
    'embed/embedding': (('tensor', 'fsdp'), (384, 32), (192, 16), (96, 16)),
    'final_norm/bias': (('fsdp',), (32,), (16,), (16,)),
    'final_norm/scale': (('fsdp',), (32,), (16,), (16,)),
    'pos_embed/embedding': ((None, 'fsdp'), (32, 32), (32, 16), (32, 16)),
}


def _name(path):
  return '/'.join(str(getattr(k, 'key', k)) for k in path)


@pytest.mark.parametrize('mesh,col', [((2, 2, 2), 2), ((1, 2, 4), 3)])
def test_params_are_really_distributed(mesh, col):
  _, state = _run(_mesh_cfg(mesh), jax.devices(), steps=1)
  seen = set()
  for path, arr in jax.tree_util.tree_leaves_with_path(state.params):
    name = _name(path)
    seen.add(name)
    assert name in GOLDEN, f'new parameter {name}: add it to GOLDEN with its spec'
    spec, shape, shard = GOLDEN[name][0], GOLDEN[name][1], GOLDEN[name][col]
    got_spec = tuple(arr.sharding.spec) + (None,) * (len(shape) - len(arr.sharding.spec))
    want_spec = spec + (None,) * (len(shape) - len(spec))
    assert got_spec == want_spec, f'{name}: partition spec {got_spec}, golden {want_spec}'
    assert arr.shape == shape, f'{name}: shape {arr.shape}, golden {shape}'
    assert arr.addressable_shards[0].data.shape == shard, (
        f'{name}: per-device shard {arr.addressable_shards[0].data.shape} on mesh {mesh}, '
        f'golden {shard}')
  assert seen == set(GOLDEN), f'parameters gone: {set(GOLDEN) - seen}'
  # Adam moments are sharded like the params they belong to.
  mu = state.opt_state[1][0].mu['blocks']['mlp']['up']['kernel']
  assert mu.addressable_shards[0].data.shape == GOLDEN['blocks/mlp/up/kernel'][col]


def test_rule_presets_shard_what_they_say():
  from lm.config import RULE_PRESETS
  for preset, want in [('dp', (None, None, None)), ('fsdp', (None, 'fsdp', None)),
                       ('tp', (None, None, 'tensor')), ('fsdp_tp', (None, 'fsdp', 'tensor'))]:
    c = _mesh_cfg((2, 2, 2))
    c = train.dataclasses.replace(c, rules=RULE_PRESETS[preset])
    mesh = shard_lib.make_mesh(c.mesh)
    model, tx = train.Transformer(c.model), optimizer.make(c.opt, 10)
    with jax.set_mesh(mesh), nn.logical_axis_rules(list(c.rules)):
      _, sh = train.state_shardings(c, model, tx, mesh)
    spec = tuple(sh.params['blocks']['mlp']['up']['kernel'].spec)
    assert spec + (None,) * (3 - len(spec)) == want, (preset, spec)


def test_resharding_restore_continues(tmp_path, corpus_dir):
  """Save on (8,1,1), restore on (2,2,2): same losses as staying on (8,1,1)."""
  c8 = tiny(corpus_dir)
  c222 = tiny(corpus_dir, **{'mesh.data': 2, 'mesh.fsdp': 2, 'mesh.tensor': 2})
  same, moved = str(tmp_path / 'same'), str(tmp_path / 'moved')
  train.train_and_evaluate(c8, same, log=lambda *_: None)
  train.train_and_evaluate(c8, moved, stop_at=3, log=lambda *_: None)
  train.train_and_evaluate(c222, moved, log=lambda *_: None)
  a = {r['step']: r['loss'] for r in metrics.read(same, 'train')}
  b = {r['step']: r['loss'] for r in metrics.read(moved, 'train')}
  assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
  np.testing.assert_allclose([b[s] for s in range(1, 7)], [a[s] for s in range(1, 7)], rtol=1e-5)
  assert metrics.read(moved, 'setup')[-1]['mesh'] == {'data': 2, 'fsdp': 2, 'tensor': 2}


def test_dimension_not_divisible_by_mesh_axes():
  c = _mesh_cfg((1, 1, 8))  # 4 heads cannot be split 8 ways over `tensor`.
  mesh = shard_lib.make_mesh(c.mesh)
  model, tx = train.Transformer(c.model), optimizer.make(c.opt, 10)
  with pytest.raises(ConfigError, match=r"blocks.*attn.*key.*dimension 4 sharded over mesh "
                                        r"axes \('tensor',\) of total size 8"):
    with jax.set_mesh(mesh), nn.logical_axis_rules(list(c.rules)):
      train.state_shardings(c, model, tx, mesh)


def test_mesh_errors():
  with pytest.raises(ConfigError, match=r'multiply to 6 but there are 8 devices'):
    shard_lib.make_mesh(tiny(**{'mesh.data': 3, 'mesh.fsdp': 2}).mesh)
  with pytest.raises(ConfigError, match=r'fixed axes multiply to 3, which does not divide'):
    shard_lib.make_mesh(tiny(**{'mesh.fsdp': 3}).mesh)
  with pytest.raises(ConfigError, match='at most one axis may be -1'):
    tiny(**{'mesh.fsdp': -1})
  m = shard_lib.mesh_shape(tiny(**{'mesh.data': -1, 'mesh.dcn_data': 2}).mesh, 8)
  assert m == {'data': 8, 'fsdp': 1, 'tensor': 1}
  # One process's CPU devices are one DCN group: two asked for, in one line.
  with pytest.raises(ConfigError, match=r'do not form 2 DCN groups by process'):
    shard_lib.make_mesh(tiny(**{'mesh.data': -1, 'mesh.dcn_data': 2}).mesh)


def test_the_batch_axes_must_split_across_processes(monkeypatch):
  """With tensor parallelism across hosts the batch would be replicated while
  each process fed its own rows: silently wrong losses (1.4% off on 2
  processes x 4 devices). Refused; data parallelism across them is fine."""
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  across = _mesh_cfg((1, 1, 8), **{'model.num_heads': 8})
  with pytest.raises(ConfigError, match=r"mesh axes \('data', 'fsdp'\) of size 1, which the "
                                        r'2 processes do not divide'):
    shard_lib.check_batch(across, shard_lib.make_mesh(across.mesh))
  within = _mesh_cfg((2, 1, 4))
  shard_lib.check_batch(within, shard_lib.make_mesh(within.mesh))


def test_distributed_flag_errors():
  with pytest.raises(ConfigError, match='need --coordinator_address'):
    shard_lib.init_distributed(num_processes=2, process_id=0)
  with pytest.raises(ConfigError, match=r'0 <= --process_id < num_processes'):
    shard_lib.init_distributed('127.0.0.1:1234', num_processes=2, process_id=2)


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _env(n_devices):
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONUNBUFFERED='1')
  # conftest.py's flags (its faster compiles), with this process's device count.
  kept = [f for f in os.environ['XLA_FLAGS'].split()
          if not f.startswith('--xla_force_host_platform_device_count')]
  env['XLA_FLAGS'] = ' '.join([f'--xla_force_host_platform_device_count={n_devices}', *kept])
  return env


@contextlib.contextmanager
def _two_processes(args: list[str]):
  """Processes 0 and 1 of one run (4 CPU devices each, gloo collectives);
  killed on the way out if still alive."""
  port = _free_port()
  procs = [subprocess.Popen(
      args + [f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2',
              f'--process_id={i}'],
      env=_env(4), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  try:
    yield procs
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()


@pytest.mark.slow
def test_two_processes_match_one(tmp_path, corpus_dir):
  """2 processes x 4 CPU devices (gloo collectives) == 1 process x 8 devices,
  dropout included; the two processes' step-3 checkpoint resumes in one
  process, and the one process's in two, as the same run (each process's data
  position is the global one, lm/checkpoint._position_of_other_count, and each
  global batch the same rows in the same order, lm/data.batched)."""
  cmd = [sys.executable, '-m', 'experiments.train', f'--config=tests/tiny_config.py:{corpus_dir}',
         '--sample_tokens=0', '--config.train.steps=5', '--config.train.eval_every=5',
         '--config.train.checkpoint_every=3', '--config.model.resid_dropout=0.3']
  single = forked_cli.run(cmd + [f'--workdir={tmp_path / "one"}'], env=_env(8), cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
  assert single.returncode == 0, single.stderr[-3000:]
  with _two_processes(cmd + [f'--workdir={tmp_path / "two"}']) as procs:
    outs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  one = {r['step']: r['loss'] for r in metrics.read(str(tmp_path / 'one'), 'train')}
  two = {r['step']: r['loss'] for r in metrics.read(str(tmp_path / 'two'), 'train')}
  assert sorted(one) == sorted(two) == [1, 2, 3, 4, 5]
  np.testing.assert_allclose([two[s] for s in one], [one[s] for s in one], rtol=1e-5)
  setup = metrics.read(str(tmp_path / 'two'), 'setup')[0]
  assert (setup['devices'], setup['processes']) == (8, 2)
  assert os.path.isdir(tmp_path / 'two' / 'checkpoints' / '5')
  json.load(open(tmp_path / 'two' / 'config.json'))
  shutil.copytree(tmp_path / 'two', tmp_path / 'back')  # As if killed before step 5's save.
  shutil.rmtree(tmp_path / 'back' / 'checkpoints' / '5')
  back = forked_cli.run(cmd + [f'--workdir={tmp_path / "back"}'], env=_env(8), cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  assert back.returncode == 0, back.stderr[-3000:]
  shutil.copytree(tmp_path / 'one', tmp_path / 'up')  # And one process's in two.
  shutil.rmtree(tmp_path / 'up' / 'checkpoints' / '5')
  with _two_processes(cmd + [f'--workdir={tmp_path / "up"}']) as procs:
    outs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  for wd in ('back', 'up'):
    resumed = {r['step']: r['loss'] for r in metrics.read(str(tmp_path / wd), 'train')}
    assert sorted(resumed) == [1, 2, 3, 4, 5]
    np.testing.assert_allclose([resumed[s] for s in one], [one[s] for s in one], rtol=1e-5)
  assert sorted(os.listdir(tmp_path / 'up' / 'checkpoints' / '5' / 'data'))[-2:] == [
      'process_0-of-2.json', 'process_1-of-2.json']


def test_sigterm_to_one_of_two_processes_saves_one_step_on_both(tmp_path, corpus_dir):
  """SIGTERM to one process of two: both save the same step and exit 75 (each
  process's own handler had stopped it at its own step, one in the save's
  barrier and the other in the next all-reduce, and they hung for good)."""
  import signal
  import time
  wd = tmp_path / 'run'
  with _two_processes(
      [sys.executable, '-m', 'experiments.train', f'--config=tests/tiny_config.py:{corpus_dir}',
       f'--workdir={wd}', '--sample_tokens=0', '--config.train.steps=100000',
       '--config.train.eval_every=100000', '--config.train.checkpoint_every=100000',
       '--config.train.log_every=5']) as procs:
    deadline = time.time() + 240
    while not (wd / 'metrics.jsonl').exists() or not metrics.read(str(wd), 'train'):
      assert time.time() < deadline and all(p.poll() is None for p in procs)
      time.sleep(0.5)
    procs[1].send_signal(signal.SIGTERM)
    outs = [p.communicate(timeout=120) for p in procs]
  assert [p.returncode for p in procs] == [75, 75], [e[-2000:] for _, e in outs]
  steps = os.listdir(wd / 'checkpoints')
  assert len(steps) == 1 and int(steps[0]) > 0, steps
  for _, err in outs:
    assert f'stopped by a preemption notice at step {steps[0]}' in err, err[-2000:]


def test_missing_process_ends_with_a_clear_message(tmp_path, corpus_dir):
  """A process expecting 2 processes, alone, stops after the timeout and says why."""
  r = forked_cli.run(
      [sys.executable, '-m', 'experiments.train', f'--config=tests/tiny_config.py:{corpus_dir}',
       f'--workdir={tmp_path}', f'--coordinator_address=127.0.0.1:{_free_port()}',
       '--num_processes=2', '--process_id=0', '--distributed_timeout=3'],
      env=_env(4), cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert r.returncode != 0
  assert 'process 0 of 2' in r.stderr and 'waiting up to 3 s' in r.stderr
  assert 'DEADLINE_EXCEEDED' in r.stderr
  assert not os.path.exists(tmp_path / 'checkpoints')


def test_shardings_tool_totals_and_aot(tmp_path):
  import io

  from tools import shardings as tool
  c = tiny(**{'mesh.data': 2, 'mesh.fsdp': 2, 'mesh.tensor': 2})
  out = io.StringIO()
  totals = tool.report(c, aot=True, out=out)
  text = out.getvalue()
  assert "blocks/mlp/up/kernel" in text and "(None, 'fsdp', 'tensor')" in text
  # Per-device params: the golden (2,2,2) shards, float32.
  want = sum(4 * np.prod(g[2]) for g in GOLDEN.values())
  assert totals['params'] == want
  assert totals['optimizer'] >= 2 * want  # Adam's two moments, sharded alike.
  # XLA's arguments are the state (params + optimizer + an int32 step + a
  # uint32[2] RNG key) and this device's share of the int32 batch: tokens
  # (seq_len + 1) and, with document masking, segment ids and positions; and
  # the schedule inputs the cosine schedule reads (lr, warmup_steps,
  # total_steps: 3 x 4 bytes; jit prunes the unused cooldown_fraction).
  row_ints = (c.data.seq_len + 1) + 2 * c.data.seq_len
  batch_bytes = 4 * c.train.batch_size * row_ints // (c.mesh.data * c.mesh.fsdp)
  assert totals['xla_argument_size_in_bytes'] == (
      totals['params'] + totals['optimizer'] + 4 + 8 + batch_bytes + 12)
  assert ' 0.000 ' not in text and ' KiB' in text, text  # A tiny model's bytes are readable.


def test_memory_tool_estimates_the_compiled_step():
  """tools/memory: parameters and optimizer bytes per device follow the FSDP
  shards; XLA's total covers them; the printout names every part."""
  import io

  from tools import memory
  from tools import shardings as tool_sh
  c = tiny(**{'mesh.data': 2, 'mesh.fsdp': 4})
  out = io.StringIO()
  r = memory.estimate(c, out)
  from lm import flops
  n = flops.param_counts(train.resolve_vocab(c, 259).model)['total']
  assert n * 4 / 4 <= r['parameters'] < n * 4 / 2  # Sharded ~4 ways (norms replicated).
  assert r['optimizer state'] >= 2 * r['parameters']
  assert r['xla total'] >= r['parameters'] + r['optimizer state']
  text = out.getvalue()
  for part in ('parameters', 'optimizer state', 'xla temporaries', "mesh {'data': 2"):
    assert part in text, text
  assert f'{n / 1e3:.1f}K parameters' in text and ' 0.00 ' not in text, text  # Readable units.
  assert tool_sh.human_bytes(3 * 2**30) == '    3.00 GiB' and memory._count(8_030_000_000) == '8.03B'
  assert [memory.percent(x) for x in (0.0031, 0.45, 7.2)] == ['0.31%', '45%', '720%']  # Not 7.2e+02%.


def test_memory_cli_compiles_for_the_devices_asked_in_either_flag_form():
  """`--devices 2` (a space, as absl allows) was read as the default 8 by a
  pre-scan of sys.argv for `--devices=`."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  r = forked_cli.run([sys.executable, '-m', 'tools.memory', '--config=configs/tiny.py',
                      '--devices', '2', '--config.train.batch_size=2',
                      '--config.model.d_model=32', '--config.data.seq_len=16'],
                     capture_output=True, text=True, cwd=root, timeout=300,
                     env=dict(os.environ, PYTHONPATH=root, XLA_FLAGS=''))
  assert r.returncode == 0 and 'on 2 fake CPU devices' in r.stdout, (r.stdout, r.stderr)


def test_activation_estimate_is_korthikanti_s_bytes():
  """GPT-2 small, batch 8 x 1024, bf16, xla attention, unchunked loss: per layer
  sbh(34 + 5as/h) bytes (Korthikanti et al. 2022, Eq. 1: 16-bit activations)
  plus the float32 logits and their gradient; float32 doubles the layer part.
  The constants had been taken as counts of values (2x too high in bf16)."""
  import dataclasses
  import types

  from configs import gpt2_small
  from lm import config as config_lib
  from tools import shardings as shardings_tool
  c = config_lib.from_configdict(gpt2_small.get_config())
  m = dataclasses.replace(c.model, vocab_size=50304, attention='xla', loss_chunk=0,
                          dtype='bfloat16', remat='none')
  c = dataclasses.replace(c, model=m, train=dataclasses.replace(c.train, batch_size=8,
                                                                grad_accum=1))
  mesh = types.SimpleNamespace(shape={'data': 1, 'fsdp': 1, 'tensor': 1})
  s, b, h, a, n, V = 1024, 8, 768, 12, 12, 50304
  logits = b * s * V * 4 * 2
  layers = n * s * b * h * (34 + 5 * a * s / h)
  assert c.data.seq_len == s
  assert shardings_tool.activation_bytes(c, mesh) == pytest.approx(layers + logits, rel=1e-9)
  c32 = dataclasses.replace(c, model=dataclasses.replace(m, dtype='float32'))
  assert shardings_tool.activation_bytes(c32, mesh) == pytest.approx(2 * layers + logits,
                                                                     rel=1e-9)
