"""TrainState, sharded init, the train step, evaluation and the training loop."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import grain

from lm import checkpoint as ckpt_lib
from lm import classify
from lm import config as config_lib
from lm import data as data_lib
from lm import flops as flops_lib
from lm import metrics as metrics_lib
from lm import objectives
from lm import optimizer as opt_lib
from lm import sharding as shard_lib
from lm import tokenizers
from lm.config import Config, ConfigError
from lm.model import Transformer, cross_entropy, init_inputs


CheckpointError = ckpt_lib.CheckpointError


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array


# --- Init ---------------------------------------------------------------------

def objective(c: Config) -> str:
  """classify, seq2seq, or the family's pre-training objective: lm, mlm or span."""
  if c.data.label_key:
    return 'classify'
  if c.data.target_key:
    return 'seq2seq'
  return {'decoder': 'lm', 'encoder': 'mlm', 'encoder_decoder': 'span'}[c.model.family]


def resolve_vocab(c: Config, vocab_size: int) -> Config:
  """Fills model.vocab_size from the tokenizer, rounded up to a multiple of 128
  (fast matmuls; shardable over `tensor`), leaving room for MASK and sentinel
  ids (lm/objectives.py); a smaller explicit size is an error."""
  if c.model.vocab_size == 0:
    need = vocab_size
    if c.model.family != 'decoder':
      need += 1  # MASK.
    if objective(c) == 'span':
      need += objectives.span_counts(c.data.seq_len, c.data.noise_density,
                                     c.data.mean_span)[1]
    padded = -(-need // 128) * 128
    return dataclasses.replace(c, model=dataclasses.replace(c.model, vocab_size=padded))
  if c.model.vocab_size < vocab_size:
    raise ConfigError(f'config.model.vocab_size={c.model.vocab_size} is smaller than the '
                      f'tokenizer vocabulary ({vocab_size}); use 0 or >= {vocab_size}')
  return c


def init_fn(c: Config, model: nn.Module, tx: optax.GradientTransformation):
  def init(rng: jax.Array) -> TrainState:
    p_rng, rng = jax.random.split(rng)
    params = model.init(p_rng, **init_inputs(c.model, c.data.seq_len))['params']
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=tx.init(params), rng=rng)
  return init


def state_shardings(c: Config, model: nn.Module, tx, mesh) -> tuple[Any, Any]:
  """(abstract unboxed state, NamedShardings) from the logical axis names."""
  abstract = jax.eval_shape(init_fn(c, model, tx), jax.random.key(0))
  shardings = shard_lib.logical_to_sharding(abstract, mesh, c.rules)
  shard_lib.check_divisible(abstract.params, mesh, c.rules)
  return shard_lib.strip_boxes(abstract), shardings


def init_state(c: Config, model: nn.Module, tx, shardings) -> TrainState:
  """Initialises directly into its shards: the full state never sits on one host."""
  init = init_fn(c, model, tx)
  return jax.jit(lambda r: nn.unbox(init(r)), out_shardings=shardings)(
      jax.random.key(c.train.seed))


# --- Steps --------------------------------------------------------------------

def loss_fn(params, model: nn.Module, batch: Any, weights_B: jax.Array,
            rng: jax.Array, z_loss: float, train: bool):
  """Mean loss (+ z-loss) over weighted rows, and summed statistics.

  Batches by objective: causal LM, tokens_Bx(L+1) (next-token NLL); classifier,
  a dict of tokens, valid and labels (cross-entropy over classes); masked LM,
  inputs, targets and weights (NLL at the selected positions); encoder-decoder,
  enc_inputs, enc_valid, dec_inputs, targets and weights.
  """
  rngs = {'dropout': rng} if train else {}
  apply = functools.partial(model.apply, {'params': params}, train=train, rngs=rngs)
  if model.cfg.num_classes:
    logits_BC = apply(batch['tokens'], valid_BL=batch['valid'])
    labels_B = batch['labels']
    nll, z, n = cross_entropy(logits_BC[:, None], labels_B[:, None], weights_B[:, None],
                              z_loss)
    correct = ((jnp.argmax(logits_BC, -1) == labels_B) * weights_B).sum()
    return (nll + z) / jnp.maximum(n, 1.0), {'nll_sum': nll, 'examples': n,
                                             'correct': correct}
  if model.cfg.family == 'decoder':
    inputs_BL, targets_BL = batch[:, :-1], batch[:, 1:]
    logits_BLV = apply(inputs_BL)
    weights_BL = jnp.broadcast_to(weights_B[:, None], targets_BL.shape)
  else:
    targets_BL = batch['targets']
    weights_BL = batch['weights'] * weights_B[:, None]
    if model.cfg.family == 'encoder':
      logits_BLV = apply(batch['inputs'])
    else:
      logits_BLV = apply(batch['dec_inputs'], enc_tokens_BS=batch['enc_inputs'],
                         enc_valid_BS=batch['enc_valid'])
  nll, z, n = cross_entropy(logits_BLV, targets_BL, weights_BL, z_loss)
  aux = {'nll_sum': nll, 'tokens': n, 'targets': targets_BL}
  if model.cfg.family != 'decoder':
    aux['correct'] = ((jnp.argmax(logits_BLV, -1) == targets_BL) * weights_BL).sum()
  return (nll + z) / jnp.maximum(n, 1.0), aux


def _rows(batch: Any) -> int:
  return jax.tree_util.tree_leaves(batch)[0].shape[0]


def _head_only_grad_fn():
  """value_and_grad of loss_fn w.r.t. the classifier head only; the frozen
  backbone's grads are zeros. The backward pass then stops at the pooled
  features: with grads of every parameter, a frozen backbone still cost a full
  backward (the grad-norm metric kept XLA from pruning it)."""
  def head_loss(head, params, *args):
    return loss_fn({**params, 'cls_head': head}, *args)

  grad_head = jax.value_and_grad(head_loss, has_aux=True)

  def grad_fn(params, *args):
    out, g_head = grad_head(params['cls_head'], params, *args)
    g = {k: jax.tree_util.tree_map(jnp.zeros_like, v) for k, v in params.items()}
    return out, {**g, 'cls_head': g_head}

  return grad_fn


def make_grad_fn(c: Config, model: nn.Module):
  """(params, batch, rng) -> (mean loss, mean grads) over grad_accum micro-batches."""
  A = c.train.grad_accum
  grad_fn = (_head_only_grad_fn() if c.opt.freeze_backbone
             else jax.value_and_grad(loss_fn, has_aux=True))

  def grads(params, batch: Any, rng: jax.Array):
    B = _rows(batch)

    def micro(carry, xs):
      g_acc, loss_acc = carry
      i, mb = xs
      (loss, _), g = grad_fn(params, model, mb, jnp.ones(_rows(mb)),
                             jax.random.fold_in(rng, i), c.opt.z_loss, True)
      g_acc = jax.tree_util.tree_map(lambda a, b: a + b.astype(jnp.float32), g_acc, g)
      return (g_acc, loss_acc + loss), None

    zeros = jax.tree_util.tree_map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    if A == 1:
      (g, loss), _ = micro((zeros, 0.0), (0, batch))
    else:
      # Micro-batches from strided rows keep each device's rows on that device.
      micro_batches = jax.tree_util.tree_map(
          lambda x: x.reshape(B // A, A, *x.shape[1:]).swapaxes(0, 1), batch)
      (g, loss), _ = jax.lax.scan(micro, (zeros, 0.0), (jnp.arange(A), micro_batches))
    return loss / A, jax.tree_util.tree_map(lambda x: x / A, g)

  return grads


def make_train_step(c: Config, model: nn.Module, tx):
  grads = make_grad_fn(c, model)
  lr = opt_lib.schedule(c.opt, c.train.steps)

  def train_step(state: TrainState, batch: Any) -> tuple[TrainState, dict]:
    rng = jax.random.fold_in(state.rng, state.step)  # Same on resume: step is saved.
    loss, g = grads(state.params, batch, rng)
    updates, opt_state = tx.update(g, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {'loss': loss, 'grad_norm': optax.tree.norm(g),
               'param_norm': optax.tree.norm(params), 'lr': lr(state.step)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return train_step


def make_eval_step(model: nn.Module, byte_lengths: np.ndarray):
  bytes_V = jnp.asarray(byte_lengths, jnp.float32)

  def eval_step(params, batch: Any, weights_B: jax.Array) -> dict:
    _, aux = loss_fn(params, model, batch, weights_B, jax.random.key(0), 0.0, False)
    if model.cfg.num_classes:
      return aux
    if model.cfg.family != 'decoder':  # Token accuracy; bits per byte means little here.
      return {k: aux[k] for k in ('nll_sum', 'tokens', 'correct')}
    nbytes = (bytes_V[aux['targets']] * weights_B[:, None]).sum()
    return {'nll_sum': aux['nll_sum'], 'tokens': aux['tokens'], 'bytes': nbytes}

  return eval_step


def summarize_eval(sums: dict[str, float]) -> dict[str, float]:
  """LM: loss (nats/token), perplexity and bits per UTF-8 byte of the evaluated
  text. Classifier: loss (nats/example) and accuracy."""
  if 'examples' in sums:
    n = max(sums['examples'], 1.0)
    return {'loss': sums['nll_sum'] / n, 'accuracy': sums['correct'] / n,
            'examples': sums['examples']}
  if 'correct' in sums:  # Masked LM and encoder-decoder: per target token.
    n = max(sums['tokens'], 1.0)
    loss = sums['nll_sum'] / n
    return {'loss': loss, 'perplexity': math.exp(min(loss, 700.0)),
            'accuracy': sums['correct'] / n, 'tokens': sums['tokens']}
  loss = sums['nll_sum'] / max(sums['tokens'], 1.0)
  return {'loss': loss, 'perplexity': math.exp(min(loss, 700.0)),
          'bits_per_byte': sums['nll_sum'] / math.log(2) / max(sums['bytes'], 1.0),
          'tokens': sums['tokens'], 'bytes': sums['bytes']}


# --- Checkpoints --------------------------------------------------------------

def checkpoint_manager(workdir: str, c: Config) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), 'checkpoints'),
      options=ocp.CheckpointManagerOptions(
          max_to_keep=c.train.keep_checkpoints, create=True,
          enable_async_checkpointing=True),
      item_names=('state', 'data'))


# Fields that must match to continue a run in an existing workdir.
_RESUME_FIXED = ('model', 'data.source', 'data.path', 'data.tfds_name', 'data.tokenizer',
                 'data.tokenizer_path', 'data.seq_len', 'train.batch_size')


def check_workdir(workdir: str, c: Config) -> bool:
  """True if the workdir holds this run's checkpoints; errors for foreign ones."""
  ckpt = os.path.join(workdir, 'checkpoints')
  cfg_path = os.path.join(workdir, 'config.json')
  if not os.path.isdir(ckpt) or not os.listdir(ckpt):
    return False
  bad = [e for e in os.listdir(ckpt) if not e.isdigit() and 'tmp' not in e]
  if bad or not os.path.exists(cfg_path):
    raise CheckpointError(
        f'{ckpt} is not a checkpoint directory of this codebase (unexpected entries '
        f'{sorted(bad)[:5]} or no config.json beside it); it was left untouched: '
        'choose another --workdir')
  with open(cfg_path) as f:
    old = json.load(f)
  new = config_lib.to_dict(c)
  diffs = [d for d in config_lib.diff(old, new)
           if any(d.startswith(k + '.') or d.startswith(k + ':') for k in _RESUME_FIXED)]
  if diffs:
    raise CheckpointError(
        f'{workdir} holds a run with a different architecture or data; it was left '
        'untouched. Differing fields:\n  ' + '\n  '.join(diffs))
  return True


def restore(mngr: ocp.CheckpointManager, abstract: TrainState, shardings, data_iter):
  step = mngr.latest_step()
  target = jax.tree_util.tree_map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
  try:
    out = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target),
        data=grain.checkpoint.CheckpointRestore(data_iter)))
  except Exception as e:  # Orbax raises many types for a damaged directory.
    raise CheckpointError(
        f'checkpoint step {step} in {mngr.directory} could not be restored '
        f'({type(e).__name__}: {str(e).splitlines()[0][:300]}); it was left untouched: '
        'choose another --workdir or remove the damaged step') from None
  return out['state']


# --- Loop ---------------------------------------------------------------------

@dataclasses.dataclass
class Prepared:
  """Everything that can fail cheaply, done before compilation."""
  cfg: Config
  tokenizer: Any
  train_source: Any  # Random access: windows of tokens, or labelled examples.
  eval_data: list  # (batch, row weights) pairs.
  mesh: Any
  transform: Any = None  # (example, rng) -> batch row: the objective's corruption.


def resolve_labels(c: Config) -> tuple[Config, tuple | None]:
  """For a classifier: reads the labelled data and fills data.labels and
  model.num_classes from it. Returns (config, (train pairs, eval pairs) or None)."""
  if c.data.target_key:  # Sequence-to-sequence pairs: no labels to resolve.
    return c, classify.load(c.data, data_lib.cache_root(c.data))[:2]
  if not c.data.label_key:
    return c, None
  train, evals, names = classify.load(c.data, data_lib.cache_root(c.data))
  if c.model.num_classes and c.model.num_classes != len(names):
    raise ConfigError(f'config.model.num_classes={c.model.num_classes} but the data has '
                      f'{len(names)} labels {list(names)}; use 0 (from the data)')
  if len(names) < 2:
    raise ConfigError(f'the labelled data has {len(names)} label(s) {list(names)}; '
                      'a classifier needs at least 2')
  c = dataclasses.replace(
      c, model=dataclasses.replace(c.model, num_classes=len(names)),
      data=dataclasses.replace(c.data, labels=tuple(names)))
  return c, (train, evals)


def check_init_from(c: Config) -> Config:
  """The source run's config, if its params fit this model; else a clear error."""
  src = ckpt_lib.load_config(c.init_from)
  diffs = ckpt_lib.arch_diff(src.model, c.model)
  for f in ('tokenizer', 'tokenizer_path'):
    if getattr(src.data, f) != getattr(c.data, f):
      diffs.append(f'data.{f}: {getattr(src.data, f)!r} != {getattr(c.data, f)!r}')
  if diffs:
    raise CheckpointError(
        f'config.init_from={c.init_from!r} holds a model with another architecture or '
        'tokenizer than this config; differing fields (checkpoint != config):\n  '
        + '\n  '.join(diffs))
  return src


def prepare(c: Config, tok, devices=None, labelled: tuple | None = None) -> Prepared:
  """Mesh checks, then data preparation (cached), then window-count checks."""
  mesh = shard_lib.make_mesh(c.mesh, devices)
  shard_lib.check_batch(c, mesh)
  pidx, pcount = jax.process_index(), jax.process_count()
  B, L = c.train.batch_size, c.data.seq_len
  if labelled is not None:  # Sequence-to-sequence pairs or labelled examples.
    if c.data.target_key:
      enc_len, dec_len = objectives.lengths(c.model, c.data)
      encode = lambda pairs, where: objectives.encode_pairs(pairs, tok, enc_len, dec_len)
    else:
      prefix = (tok.bos_id,) if c.model.family == 'encoder' else ()
      encode = lambda pairs, where: classify.encode(pairs, c.data.labels, tok, L, where,
                                                    prefix)
    train = classify.Rows(encode(labelled[0], 'train split'))
    if len(train) < B:
      raise ConfigError(f'the train split has {len(train)} examples, fewer than '
                        f'train.batch_size={B}')
    return Prepared(c, tok, train, data_lib.eval_rows(
        encode(labelled[1], 'eval split'), B, pidx, pcount), mesh)
  builder, key = data_lib.corpus(c.data)
  cache = data_lib.cache_root(c.data)
  train_tokens = data_lib.tokenize_split(builder, c.data.train_split, key, tok, cache)
  val_tokens = data_lib.tokenize_split(builder, c.data.val_split, key, tok, cache)
  obj = objective(c)
  extra = 1 if obj == 'lm' else 0  # A causal LM's window has the shifted target.
  data_lib.check_windows(train_tokens, L, 'train', B, extra)
  data_lib.check_windows(val_tokens, L, 'validation', 1, extra)
  if obj == 'lm':
    return Prepared(c, tok, data_lib.Windows(train_tokens, L + 1),
                    data_lib.eval_batches(val_tokens, L, B, c.train.eval_batches, pidx,
                                          pcount), mesh)
  if obj == 'mlm':
    transform = functools.partial(objectives.mlm_example, d=c.data, tokenizer=tok)
  else:
    transform = functools.partial(objectives.span_example, d=c.data, m=c.model,
                                  tokenizer=tok)
  # Eval: the first windows of the split, each with noise fixed by its index.
  val = data_lib.Windows(val_tokens, L)
  rows = [transform(val[i], np.random.default_rng([c.data.shuffle_seed, i]))
          for i in range(min(len(val), B * c.train.eval_batches))]
  rows = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
  return Prepared(c, tok, data_lib.Windows(train_tokens, L),
                  data_lib.eval_rows(rows, B, pidx, pcount), mesh, transform)


def train_and_evaluate(c: Config, workdir: str, stop_at: int | None = None,
                       log=print, devices=None) -> dict[str, Any]:
  """Trains (or resumes) a run in `workdir`; returns the final eval metrics.

  `stop_at` ends the loop early after that many steps (to test resumption);
  `devices` restricts the mesh to some devices (default: all).
  """
  tok = tokenizers.get_tokenizer(c.data.tokenizer, c.data.tokenizer_path)
  c = resolve_vocab(c, tok.vocab_size)
  objectives.check(c.model, c.data, tok.vocab_size)
  c, labelled = resolve_labels(c)
  resume = check_workdir(workdir, c)
  src = check_init_from(c) if c.init_from and not resume else None
  p = prepare(c, tok, devices, labelled)
  c, mesh, rules = p.cfg, p.mesh, list(p.cfg.rules)
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      json.dump(config_lib.to_dict(c), f, indent=2)

  model = Transformer(c.model)
  tx = opt_lib.make(c.opt, c.train.steps)
  pidx, pcount = jax.process_index(), jax.process_count()
  local_batch = c.train.batch_size // pcount
  data_iter = iter(data_lib.batched(p.train_source, local_batch, c.data.shuffle_seed,
                                    pidx, pcount, p.transform))
  eval_data = p.eval_data

  tokens_per_step = c.train.batch_size * c.data.seq_len
  conv = flops_lib.all_conventions(c.model, c.data.seq_len, None,
                                   *objectives.lengths(c.model, c.data))
  if c.opt.freeze_backbone:  # Forward only: the backward stops at the head.
    conv = {k: v / 3 for k, v in conv.items()}
  flops_per_step = conv[c.train.flops_convention] * tokens_per_step
  counts = flops_lib.param_counts(c.model)
  dev = jax.devices()[0]
  peak = c.train.peak_flops or flops_lib.peak_flops(dev.device_kind, c.model.dtype, dev.platform)
  peak_total = peak * mesh.size

  writer = metrics_lib.Writer(workdir)
  mngr = checkpoint_manager(workdir, c)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    abstract, shardings = state_shardings(c, model, tx, mesh)
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(abstract.params))
    assert n_params == counts['total'], (n_params, counts)
    batch_sh = jax.tree_util.tree_map(
        lambda x: shard_lib.batch_sharding(mesh, c.rules, ndim=x.ndim), eval_data[0][0])
    rows_sh = shard_lib.batch_sharding(mesh, c.rules, ndim=1)
    if resume:
      state = restore(mngr, abstract, shardings, data_iter)
      log(f'resumed from step {int(state.step)} in {workdir}')
    else:
      state = init_state(c, model, tx, shardings)
    if src is not None:  # Fine-tuning: pre-trained params, fresh optimizer, step 0.
      _, loaded = ckpt_lib.load_params(c.init_from, src.model)
      params, taken, fresh = ckpt_lib.merge(state.params, loaded)
      state = state.replace(params=jax.device_put(params, shardings.params))
      log(f'initialised {taken} from {c.init_from}' + (f'; new: {fresh}' if fresh else ''))
    writer.write(int(state.step), 'setup', {
        'params_total': counts['total'], 'params_non_embedding': counts['non_embedding'],
        **{f'flops_per_token_{k}': v for k, v in conv.items()},
        'devices': mesh.size, 'processes': jax.process_count(), 'mesh': dict(mesh.shape),
        'device_kind': dev.device_kind,
        'peak_flops_per_device': peak})

    train_step = jax.jit(make_train_step(c, model, tx), in_shardings=(shardings, batch_sh),
                         out_shardings=(shardings, None), donate_argnums=(0,))
    eval_step = jax.jit(make_eval_step(model, p.tokenizer.byte_lengths()),
                        in_shardings=(shardings.params, batch_sh, rows_sh))

    def to_global(x_local: Any, sh: Any = batch_sh) -> Any:
      return jax.tree_util.tree_map(jax.make_array_from_process_local_data, sh, x_local)

    def evaluate(step: int) -> dict[str, float]:
      outs = jax.device_get([eval_step(state.params, to_global(b), to_global(w, rows_sh))
                             for b, w in eval_data])
      sums = {k: sum(float(o[k]) for o in outs) for k in outs[0]}
      res = summarize_eval(sums)
      writer.write(step, 'eval', res)
      return res

    start = int(state.step)
    end = c.train.steps if stop_at is None else min(stop_at, c.train.steps)
    bar = None
    if c.train.progress and jax.process_index() == 0:
      from tqdm import tqdm
      bar = tqdm(total=c.train.steps, initial=start, unit='step', dynamic_ncols=True)
    pending, last_eval = None, {}
    t_last, step_last = time.perf_counter(), start

    def report(step: int, m: dict) -> None:
      nonlocal t_last, step_last
      m = {k: float(v) for k, v in jax.device_get(m).items()}
      if not math.isfinite(m['loss']):
        raise FloatingPointError(f'loss is {m["loss"]} at step {step}; the last good '
                                 f'checkpoint in {workdir} is kept')
      now = time.perf_counter()
      dt = (now - t_last) / max(step - step_last, 1)
      t_last, step_last = now, step
      m.update(step_time=dt, tokens_per_s=tokens_per_step / dt,
               tokens=step * tokens_per_step, flops=step * flops_per_step,
               mfu=flops_per_step / dt / peak_total if peak_total else float('nan'))
      writer.write(step, 'train', m)
      if bar is not None:
        bar.set_postfix(loss=f'{m["loss"]:.4f}', tok_s=f'{m["tokens_per_s"]:.3g}')

    for step in range(start, end):
      batch = to_global(next(data_iter))
      state, m = train_step(state, batch)
      if pending is not None:  # Read step N's metrics after dispatching step N+1.
        report(*pending)
        pending = None
      done = step + 1
      if done % c.train.log_every == 0 or done == end:
        pending = (done, m)
      if bar is not None:
        bar.update(1)
      if done % c.train.eval_every == 0 or done == c.train.steps:
        if pending is not None:
          report(*pending)
          pending = None
        last_eval = evaluate(done)
        if bar is not None:
          extra = ('accuracy', 'acc') if 'accuracy' in last_eval else ('bits_per_byte', 'bpb')
          bar.write(f'step {done}: eval loss {last_eval["loss"]:.4f} '
                    f'{extra[1]} {last_eval[extra[0]]:.4f}')
      if (done % c.train.checkpoint_every == 0 or done == end
          or done in c.train.extra_checkpoints):
        mngr.save(done, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=grain.checkpoint.CheckpointSave(data_iter)))
    if pending is not None:
      report(*pending)
    mngr.wait_until_finished()
    if bar is not None:
      bar.close()
  writer.close()
  mngr.close()
  return {'step': end, **last_eval, 'params': counts['total'], 'state': state,
          'config': c, 'tokenizer': p.tokenizer}
