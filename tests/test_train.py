"""Train step, eval arithmetic, the loop's outputs, and exact resumption."""

import dataclasses
import json
import math
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lm import metrics, train
from lm import objectives
from lm import optimizer as opt_lib
from lm.model import Transformer
from lm.tokenizers import ByteTokenizer
from tests.helpers import tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _setup(c):
  c = train.resolve_vocab(c, 259)
  model = Transformer(c.model)
  tx = opt_lib.unit_lr(c.opt)
  state = jax.jit(lambda r: nn.unbox(train.init_fn(c, model, tx)(r)))(jax.random.key(0))
  return c, model, tx, state


def _batch(c, seed=0):
  return {'tokens': jax.random.randint(jax.random.key(seed),
                                       (c.train.batch_size, c.data.seq_len + 1), 0, 256)}


def overfit_losses(batch_fn, **overrides) -> list[float]:
  """Train loss at each of 60 steps (lr 1e-2) on the one batch batch_fn(config) makes."""
  c, model, tx, state = _setup(tiny(**{'train.steps': 60, 'opt.lr': 1e-2, **overrides}))
  step = jax.jit(train.make_train_step(c, model, tx))
  batch = batch_fn(c)
  losses = []
  for _ in range(60):
    state, m = step(state, batch)
    losses.append(float(m['loss']))
  return losses


def test_cpu_init_compiled_unoptimised_is_within_two_ulps_of_optimised():
  """lm/train.CPU_INIT_OPTIONS trades the initialiser's compile time for at
  most two float32 ULPs (the tests compile everything at that level anyway)."""
  assert train.init_compiler_options('cpu') == train.CPU_INIT_OPTIONS
  assert train.init_compiler_options('gpu') is None and train.init_compiler_options('tpu') is None
  c = train.resolve_vocab(tiny(), 259)
  t = train.build(c, jax.devices()[:1])
  model, tx = Transformer(c.model), opt_lib.unit_lr(c.opt, c.model)
  optimised = jax.jit(lambda r: nn.unbox(train.init_fn(c, model, tx)(r)),
                      compiler_options={'xla_backend_optimization_level': 3})
  key = jax.random.key(c.train.seed)
  with t.context():
    a, b = t.init().params, optimised(key).params
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_max_ulp(np.asarray(x), np.asarray(y), maxulp=2)


def test_overfits_one_batch():
  losses = overfit_losses(_batch)
  assert losses[0] == pytest.approx(math.log(384), rel=0.05)  # Near-uniform at init.
  assert losses[-1] < 0.25 * losses[0], losses


def test_grad_accumulation_matches_full_batch():
  """With a z-loss on: the loss, its NLL part (what the step logs as 'loss', as
  eval does) and the grads agree between 1 and 4 micro-batches."""
  c1, model, tx, state = _setup(tiny())
  c1 = dataclasses.replace(c1, opt=dataclasses.replace(c1.opt, z_loss=1e-2))
  c2 = dataclasses.replace(c1, train=dataclasses.replace(c1.train, grad_accum=4))
  batch, rng = _batch(c1), jax.random.key(1)
  l1, nll1, g1 = jax.jit(train.make_grad_fn(c1, model))(state.params, batch, rng)
  l2, nll2, g2 = jax.jit(train.make_grad_fn(c2, model))(state.params, batch, rng)
  np.testing.assert_allclose([l1, nll1], [l2, nll2], rtol=1e-6)
  _, aux = train.loss_fn(state.params, model, objectives.get(c1), batch,
                         jnp.ones(c1.train.batch_size), rng, 0.0, False)
  np.testing.assert_allclose(nll1, aux['nll_sum'] / aux['tokens'], rtol=1e-5)
  assert l1 - nll1 > 1e-3  # The z-loss term: 1e-2 * (log Z)^2, log Z ~ log 384.
  # Tolerance relative to the largest gradient: some (the key bias) are exactly
  # zero in exact arithmetic, so only float noise would be compared there.
  scale = max(float(jnp.abs(a).max()) for a in jax.tree_util.tree_leaves(g1))
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g1), jax.tree_util.tree_leaves(g2)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * scale,
                               err_msg=jax.tree_util.keystr(path))


def test_grad_accumulation_weights_micro_batches_by_their_targets():
  """Seq2seq rows with 8, 1, 8 and 1 target tokens: strided micro-batches hold
  16 and 2, and averaging their means (as accumulation did) weighted the short
  ones' tokens 8x (gradients 136% apart)."""
  c1 = train.resolve_vocab(tiny(**{'model.family': 'encoder_decoder', 'data.source': 'file',
                                   'data.path': 'pairs.jsonl', 'data.text_key': 'input',
                                   'data.target_key': 'target', 'data.seq_len': 8,
                                   'train.batch_size': 4}), 259)
  model = Transformer(c1.model)
  tx = opt_lib.unit_lr(c1.opt)
  params = jax.jit(lambda r: nn.unbox(train.init_fn(c1, model, tx)(r)))(jax.random.key(0)).params
  rng = np.random.default_rng(0)
  weights = (np.arange(8)[None] < np.array([8, 1, 8, 1])[:, None]).astype(np.float32)
  batch = {'enc_inputs': rng.integers(0, 256, (4, 8)).astype(np.int32),
           'enc_valid': np.ones((4, 8), bool), 'weights': weights,
           'dec_inputs': rng.integers(0, 256, (4, 8)).astype(np.int32),
           'targets': rng.integers(0, 256, (4, 8)).astype(np.int32)}
  c2 = dataclasses.replace(c1, train=dataclasses.replace(c1.train, grad_accum=2))
  l1, nll1, g1 = jax.jit(train.make_grad_fn(c1, model))(params, batch, jax.random.key(1))
  l2, nll2, g2 = jax.jit(train.make_grad_fn(c2, model))(params, batch, jax.random.key(1))
  np.testing.assert_allclose([l1, nll1], [l2, nll2], rtol=1e-6)
  diff = optax.tree.norm(jax.tree_util.tree_map(lambda a, b: a - b, g1, g2))
  assert diff < 1e-5 * optax.tree.norm(g1), diff


def test_bits_per_byte_arithmetic():
  s = objectives.OBJECTIVES['lm'].summarize({'nll_sum': 100 * math.log(2), 'tokens': 40.0, 'bytes': 50.0})
  assert s['bits_per_byte'] == pytest.approx(2.0)
  assert s['loss'] == pytest.approx(100 * math.log(2) / 40)
  assert s['perplexity'] == pytest.approx(math.exp(s['loss']))


def test_uniform_model_scores_log2_vocab_bits_per_byte():
  """Zero params give uniform logits: loss ln V; bpb counts bytes, not EOS."""
  c, model, _, state = _setup(tiny())
  zeros = jax.tree_util.tree_map(jnp.zeros_like, state.params)
  tokens = np.full((4, c.data.seq_len + 1), ord('a'), np.int32)
  tokens[0, 5] = ByteTokenizer().eos_id  # Zero bytes: excluded from the byte count.
  weights = np.array([1, 1, 1, 0], np.float32)  # A padding row counts for nothing.
  out = jax.jit(train.make_eval_step(c, model, ByteTokenizer().byte_lengths()))(
      zeros, {'tokens': tokens}, weights)
  s = objectives.OBJECTIVES['lm'].summarize({k: float(v) for k, v in out.items()})
  n_targets = 3 * c.data.seq_len
  assert s['tokens'] == n_targets and s['bytes'] == n_targets - 1
  assert s["loss"] == pytest.approx(math.log(384), rel=1e-6)  # 259 padded to 384.
  assert s["bits_per_byte"] == pytest.approx(math.log2(384) * n_targets / (n_targets - 1))


def test_train_and_evaluate_writes_metrics(tmp_path, corpus_dir):
  c = tiny(corpus_dir)
  out = train.train_and_evaluate(c, str(tmp_path), log=lambda *_: None)
  rows = metrics.read(str(tmp_path), 'train')
  assert [r['step'] for r in rows] == [1, 2, 3, 4, 5, 6]
  for key in ('loss', 'grad_norm', 'lr', 'tokens', 'flops', 'step_time', 'tokens_per_s', 'mfu'):
    assert key in rows[-1], key
  assert rows[-1]['tokens'] == 6 * 8 * 16
  assert rows[-1]['loss'] < rows[0]['loss']
  evals = metrics.read(str(tmp_path), 'eval')
  assert [r['step'] for r in evals] == [3, 6]
  assert out['bits_per_byte'] == evals[-1]['bits_per_byte'] > 0
  setup = metrics.read(str(tmp_path), 'setup')[0]
  assert setup['devices'] == 8 and setup['params_total'] == out['params']
  assert json.load(open(tmp_path / 'config.json'))['model']["vocab_size"] == 384
  assert os.listdir(tmp_path / 'tb')
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['3', '6']
  # Step time, tokens/s and MFU are the train steps': compiling (step 1's row),
  # evaluating and checkpointing (step 4's, after step 3's) are left out, and
  # the 'wall' breakdown counts them. Accounted, not timed: the rows' step
  # times add up to the train and data parts, not to the compile part on top.
  w, steps = out['wall'], [0] + [r['step'] for r in rows]
  spent = sum(r['step_time'] * (s - p) for r, s, p in zip(rows, steps[1:], steps))
  assert spent <= 1.1 * (w['train'] + w['data']) + 0.1, (spent, w)


def test_wall_time_counts_queued_steps_as_train_not_eval(tmp_path, corpus_dir, monkeypatch):
  """The loop dispatches up to log_every steps ahead of the device; an
  evaluation waits for them, and that wait is train time. Each step here
  takes >= 0.4 s on the device (a sleeping callback), asynchronously."""
  import time
  real_build = train.build

  @jax.jit
  def slow(state):
    def sleep(step):
      time.sleep(0.4)
      return step
    return state.replace(step=jax.pure_callback(
        sleep, jax.ShapeDtypeStruct((), jnp.int32), state.step))

  def build(c, *args, **kwargs):
    t = real_build(c, *args, **kwargs)
    step = t.train_step
    t.train_step = lambda state, batch, sched: (lambda s, m: (slow(s), m))(
        *step(state, batch, sched))
    return t

  monkeypatch.setattr(train, 'build', build)
  c = tiny(corpus_dir, **{'train.steps': 8, 'train.log_every': 8, 'train.eval_every': 4,
                          'train.checkpoint_every': 8})
  wall = train.train_and_evaluate(c, str(tmp_path), log=lambda *_: None)['wall']
  assert wall['train'] >= 0.9 * 8 * 0.4, wall  # The steps' sleeps (old code: 2.2 s).
  assert wall['eval'] < 4 * 0.4, wall  # Steps 1-4 were still queued at the first eval.


def test_a_resumed_run_s_wall_time_counts_every_process(tmp_path, corpus_dir):
  """'wall' is the run's time over all its processes: each checkpoint writes
  a cumulative 'wall' row, and a resumed process adds its own to that row's."""
  c = tiny(corpus_dir, **{'train.steps': 6, 'train.checkpoint_every': 2,
                          'train.eval_every': 6})
  first = train.train_and_evaluate(c, str(tmp_path), stop_at=4, log=lambda *_: None)
  rows = metrics.read(str(tmp_path), 'wall')
  assert [r['step'] for r in rows] == [2, 4] and first['wall_resumed'] == 0
  assert all(rows[1][p] <= first['wall'][p] + 1e-9 for p in train.WALL_PARTS)
  second = train.train_and_evaluate(c, str(tmp_path), log=lambda *_: None)
  np.testing.assert_allclose(second['wall_resumed'],
                             sum(rows[1][p] for p in train.WALL_PARTS), rtol=1e-9)
  assert second['wall']['setup'] > rows[1]['setup'] > 0  # Both processes' setups.
  assert second['wall']['compile'] > rows[1]['compile'] > 0
  after = metrics.read(str(tmp_path), 'wall')
  assert [r['step'] for r in after] == [2, 4, 6]
  assert all(after[2][p] >= after[1][p] for p in train.WALL_PARTS)


def test_tensorboard_events_are_written_without_importing_torch(tmp_path):
  """tensorboardX imports torch when it is installed (3.7 s per training
  process here); lm/metrics.py keeps it out, and the events still read back."""
  script = (
      'import struct, sys\n'
      'from lm import metrics\n'
      f'w = metrics.Writer({str(tmp_path)!r}, enabled=True)\n'
      "w.write(7, 'train', {'loss': 1.5, 'name': 'x'})\n"
      'w.close()\n'
      "assert 'torch' not in sys.modules, 'torch was imported'\n"
      'import glob\n'
      'from tensorboardX.proto import event_pb2\n'
      f"[path] = glob.glob({str(tmp_path / 'tb' / '*tfevents*')!r})\n"
      "data, values = open(path, 'rb').read(), []\n"
      'while data:\n'  # TFRecord: length, its CRC, the record, its CRC.
      "  n = struct.unpack('<Q', data[:8])[0]\n"
      '  e = event_pb2.Event.FromString(data[12:12 + n])\n'
      '  values += [(e.step, v.tag, v.simple_value) for v in e.summary.value]\n'
      '  data = data[16 + n:]\n'
      'print(values)\n')
  r = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                     cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert r.returncode == 0, r.stderr
  assert r.stdout.strip() == "[(7, 'train/loss', 1.5)]"


def test_a_restarted_writer_has_tensorboard_drop_the_killed_process_s_events(tmp_path):
  """metrics.jsonl is truncated to the checkpoint a resumed run continues
  from; TensorBoard is told the same (a session starting at that step, whose
  kept rows are written again), also for a restart from scratch, and a
  second writer in the same second leaves the first one's file whole."""
  import glob
  import struct

  from tensorboardX.proto import event_pb2

  from lm import workdir

  def events(path):
    data, out = open(path, 'rb').read(), []
    while data:  # TFRecord: length, its CRC, the record, its CRC.
      n = struct.unpack('<Q', data[:8])[0]
      out.append(event_pb2.Event.FromString(data[12:12 + n]))
      data = data[16 + n:]
    starts = [e.step for e in out if e.session_log.status == event_pb2.SessionLog.START]
    return starts, [(e.step, v.tag) for e in out for v in e.summary.value]

  wd = str(tmp_path)
  killed = metrics.Writer(wd, enabled=True)
  for step in range(1, 6):  # A checkpoint at 3 (with an eval); killed after 5.
    killed.write(step, 'train', {'loss': float(step)})
    if step == 3:
      killed.write(step, 'eval', {'loss': 9.0})
  killed.close()
  workdir.truncate_metrics(wd, 3)
  resumed = metrics.Writer(wd, enabled=True, start=3)
  resumed.write(4, 'train', {'loss': 40.0})
  workdir.truncate_metrics(wd, 2)
  resumed.restart_at(2)  # A rollback to step 2.
  resumed.close()
  files = sorted(glob.glob(str(tmp_path / 'tb' / '*tfevents*')))
  assert len(files) == 3
  first, second, third = (events(f) for f in files)
  assert first[0] == [0] and [s for s, _ in first[1]] == [1, 2, 3, 3, 4, 5]
  assert second == ([3], [(3, 'train/loss'), (3, 'eval/loss'), (4, 'train/loss')])
  assert third == ([2], [(2, 'train/loss')])


def test_branch_checkpoints_outlive_interruptions(tmp_path, corpus_dir):
  """train.extra_checkpoints (a WSD stable run's branch points) survive
  keep_checkpoints however often the run is interrupted after them (two stops
  deleted step 2, and its branch could never train)."""
  c = tiny(corpus_dir, **{'train.extra_checkpoints': (2,), 'train.keep_checkpoints': 1,
                          'train.checkpoint_every': 2, 'train.eval_every': 6})
  for stop in (3, 4, None):
    train.train_and_evaluate(c, str(tmp_path), stop_at=stop, log=lambda *_: None)
  assert sorted(os.listdir(tmp_path / 'checkpoints'), key=int) == ['2', '6']


def _losses(workdir):
  return {r['step']: r['loss'] for r in metrics.read(workdir, 'train')}


def test_resume_is_bitwise_identical(tmp_path, corpus_dir):
  c = tiny(corpus_dir, **{'model.resid_dropout': 0.1, 'model.attn_dropout': 0.1})
  whole, split = str(tmp_path / 'whole'), str(tmp_path / 'split')
  train.train_and_evaluate(c, whole, log=lambda *_: None)
  train.train_and_evaluate(c, split, stop_at=3, log=lambda *_: None)
  assert max(_losses(split)) == 3
  msgs = []
  train.train_and_evaluate(c, split, log=msgs.append)
  assert msgs == [f'resumed from step 3 in {split}']
  assert _losses(whole) == _losses(split)  # Exact float equality, every step.


def test_resume_refuses_a_changed_corpus(tmp_path, corpus_dir):
  """A file added to a dir corpus would change the text and the split under a
  resumed run: refused before the data are prepared, the run left as it was.
  A touch that changes no text is not a change."""
  import shutil
  corpus = tmp_path / 'corpus'
  shutil.copytree(corpus_dir, corpus)
  c = tiny(corpus)
  run = tmp_path / 'run'
  train.train_and_evaluate(c, str(run), stop_at=3, log=lambda *_: None)
  record = json.loads((run / 'corpus.json').read_text())
  assert record['file_count'] == 41 and len(record['content_sha256']) == 64
  before = {p: p.read_bytes() for p in run.rglob('*') if p.is_file()}
  (corpus / 'new.py').write_text('def g(x):\n    return x\n' * 50)
  with pytest.raises(train.CheckpointError,
                     match=r'corpus is not the text .* \(then \d+\+\d+ files.*now .*new --workdir'):
    train.train_and_evaluate(c, str(run))
  assert {p: p.read_bytes() for p in run.rglob('*') if p.is_file()} == before
  (corpus / 'new.py').unlink()
  os.utime(corpus / 'mod_03.py')
  msgs = []
  train.train_and_evaluate(c, str(run), log=msgs.append)
  assert msgs == [f'resumed from step 3 in {run}']


def test_foreign_and_corrupt_checkpoints_are_refused_and_kept(tmp_path, corpus_dir):
  c = tiny(corpus_dir)
  foreign = tmp_path / 'foreign'
  (foreign / 'checkpoints').mkdir(parents=True)
  (foreign / 'checkpoints' / 'model.pt').write_text('not ours')
  with pytest.raises(train.CheckpointError, match='not a checkpoint directory'):
    train.train_and_evaluate(c, str(foreign))
  assert (foreign / 'checkpoints' / 'model.pt').read_text() == 'not ours'

  run = tmp_path / 'run'
  train.train_and_evaluate(c, str(run), stop_at=3, log=lambda *_: None)
  other = tiny(corpus_dir, **{'model.d_model': 64})
  with pytest.raises(train.CheckpointError, match=r'model.d_model: 32 != 64'):
    train.train_and_evaluate(other, str(run))
  # The data a run trains on is fixed too: another split, order or batch size
  # would change it mid-run (resumes accepted them and rewrote config.json).
  stored = (run / 'config.json').read_text()
  for field, value in (('data.val_fraction', 0.5), ('data.shuffle_seed', 7),
                       ('train.batch_size', 16)):
    with pytest.raises(train.CheckpointError, match=field.replace('.', r'\.')):
      train.train_and_evaluate(tiny(corpus_dir, **{field: value}), str(run))
  assert (run / 'config.json').read_text() == stored
  # A schedule shorter than where the run is: its "final" eval would be an
  # earlier step of the longer one.
  with pytest.raises(train.CheckpointError, match='checkpoint at step 3, past train.steps=2'):
    train.train_and_evaluate(tiny(corpus_dir, **{'train.steps': 2}), str(run))
  record = (run / 'tokenizer.json').read_text()
  (run / 'tokenizer.json').write_text('{"name": "by')
  with pytest.raises(train.CheckpointError, match='tokenizer.json, the record .* unreadable'):
    train.train_and_evaluate(c, str(run))
  (run / 'tokenizer.json').write_text(record)
  assert (run / 'config.json').read_text() == stored

  damaged = run / 'checkpoints' / '3' / 'state'
  for p in damaged.rglob('*'):
    if p.is_file():
      p.write_bytes(b'garbage')
  before = {p: p.read_bytes() for p in (run / 'checkpoints').rglob('*') if p.is_file()}
  with pytest.raises(train.CheckpointError, match='could not be restored.*left untouched'):
    train.train_and_evaluate(tiny(corpus_dir, **{'opt.lr': 1e-4}), str(run))  # A free change.
  after = {p: p.read_bytes() for p in (run / 'checkpoints').rglob('*') if p.is_file()}
  assert before == after
  assert (run / 'config.json').read_text() == stored  # Not rewritten by the failed resume.


def test_bfloat16_tracks_float32(tmp_path, corpus_dir):
  """The bf16 policy (bf16 matmuls; float32 master weights, softmax, norms and
  loss) ends a 40-step run on text within 2% of the float32 eval loss."""
  out = {}
  for dtype in ('float32', 'bfloat16'):
    c = tiny(corpus_dir, **{'train.steps': 40, 'train.eval_every': 40,
                            'train.checkpoint_every': 40, 'model.dtype': dtype})
    out[dtype] = train.train_and_evaluate(c, str(tmp_path / dtype), log=lambda *_: None)
  f32, bf16 = out['float32']['loss'], out['bfloat16']['loss']
  assert f32 < 0.8 * math.log(259)  # It learned something.
  assert abs(bf16 - f32) / f32 < 0.02, (f32, bf16)


def test_a_rollback_keeps_the_setup_row_of_the_process_that_resumed_there(tmp_path):
  """Resuming at a checkpoint drops the setup row there (the new process
  writes its own); a rollback to it keeps it (nothing writes it again)."""
  from lm import workdir
  rows = [(0, 'setup'), (1, 'train'), (2, 'train'), (2, 'setup'), (3, 'train'), (4, 'train')]
  path = tmp_path / 'metrics.jsonl'

  def kinds():
    return [(json.loads(x)['step'], json.loads(x)['kind']) for x in open(path)]
  path.write_text(''.join(json.dumps({'step': s, 'kind': k}) + '\n' for s, k in rows))
  assert workdir.truncate_metrics(str(tmp_path), 2, resuming=False) == 2
  assert kinds() == rows[:4]
  assert workdir.truncate_metrics(str(tmp_path), 2) == 1
  assert kinds() == rows[:3]
