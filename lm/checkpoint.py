"""Checkpoints: the training state (saved only when finite, restored exactly,
foreign or mismatched runs refused), and a run's params for sampling,
fine-tuning and export.

A run directory (workdir) holds config.json and checkpoints/<step>/{state,data};
a path may name the workdir (latest step) or one step directory.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import threading
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from lm import config as config_lib
from lm import data as data_lib
from lm import sharding as shard_lib
from lm import workdir as workdir_lib
from lm.config import Config, ModelConfig
from lm.model import Transformer, init_inputs


# Orbax splits each replicated array among its replicas when it saves
# ("replica-parallel"), one device slice per replica. That pays for large
# arrays on real accelerators; for a small model's arrays each slice is a
# dispatched op that costs more than the bytes it saves (with 8 devices, ~90%
# of a tiny run's save time: 7,260 slices for 15 saves in the sweep test).
# Arrays under 1 MiB per slice are saved whole, by one replica. (Orbax logs a
# warning when a handler is replaced: CLIs print nothing but their errors.)
_absl_log = logging.getLogger('absl')
_level = _absl_log.level
_absl_log.setLevel(logging.ERROR)
ocp.type_handlers.register_type_handler(
    jax.Array, ocp.type_handlers.ArrayHandler(min_slice_bytes_for_replica_parallel=2 ** 20),
    override=True)
_absl_log.setLevel(_level)


class CheckpointError(RuntimeError):
  """A workdir's checkpoints are corrupt, missing or belong to another run."""


def _step_numbers(ckpt: str) -> list[int]:
  """The finished steps in a checkpoints/ directory (orbax's temporary names
  are not numbers), in order."""
  return sorted(int(e) for e in os.listdir(ckpt) if e.isdigit())


def find(path: str) -> tuple[str, str]:
  """(config.json path, step directory) for a workdir or a step directory."""
  path = os.path.abspath(path)
  if os.path.isdir(os.path.join(path, 'checkpoints')):
    ckpt = os.path.join(path, 'checkpoints')
    steps = _step_numbers(ckpt)
    if not steps:
      raise CheckpointError(f'{ckpt} holds no finished checkpoint (no step directories)')
    return os.path.join(path, 'config.json'), os.path.join(ckpt, str(steps[-1]))
  parent = os.path.dirname(path)
  if os.path.basename(path).isdigit() and os.path.basename(parent) == 'checkpoints':
    if os.path.isdir(parent) and not os.path.isdir(path):
      steps = _step_numbers(parent)
      raise CheckpointError(f'{path} does not exist; {parent} holds steps '
                            f'{", ".join(map(str, steps)) or "none"}')
    return os.path.join(os.path.dirname(parent), 'config.json'), path
  raise CheckpointError(
      f'{path} is neither a run directory (with checkpoints/ and config.json) nor a '
      'step directory (<workdir>/checkpoints/<step>)')


def read_config(cfg_path: str) -> Config:
  """A run's config.json as a Config; a damaged one (truncated, not a config of
  this codebase, unreadable) is a CheckpointError naming the file."""
  try:
    with open(cfg_path, encoding='utf-8') as f:
      d = json.load(f)
    if not isinstance(d, dict):
      raise CheckpointError(f'{cfg_path} holds a JSON {type(d).__name__}, not a run config '
                            '(an object of sections); it was left untouched')
    if 'model_type' in d and 'model' not in d:
      raise CheckpointError(f'{cfg_path} is a Hugging Face config (model_type '
                            f'{d["model_type"]!r}), not a run of this codebase (tools.hf import '
                            'makes one of it); it was left untouched')
    return config_lib.from_configdict(d, recorded=True)
  except (OSError, ValueError, TypeError, AttributeError, KeyError, RecursionError) as e:
    # ConfigError is a ValueError; the others: JSON of another shape than a config's.
    raise CheckpointError(f'{cfg_path} is not a readable run config of this codebase '
                          f'({workdir_lib.reason(e)}); it was left untouched') from None


def load_config(path: str) -> Config:
  cfg_path, _ = find(path)
  if not os.path.exists(cfg_path):
    raise CheckpointError(f'no config.json at {cfg_path}: {path} was not written by '
                          'experiments.train or tools.hf')
  return read_config(cfg_path)


def abstract_params(m: ModelConfig) -> Any:
  inputs = init_inputs(m, min(8, m.max_len))
  boxed = jax.eval_shape(lambda: Transformer(m).init(jax.random.key(0), **inputs)['params'])
  return shard_lib.strip_boxes(boxed)


def load_params(path: str, m: ModelConfig | None = None) -> tuple[Config, Any]:
  """(the run's config, its params on the default device) from a workdir or step."""
  c = load_config(path)
  m = m or c.model
  _, step_dir = find(path)
  dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree_util.tree_map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=dev), abstract_params(m))
  _quiet_failed_reads(failed=False)
  try:
    with ocp.PyTreeCheckpointer() as ckptr:
      out = ckptr.restore(os.path.join(step_dir, 'state'), args=ocp.args.PyTreeRestore(
          item={'params': target},
          restore_args={'params': ocp.checkpoint_utils.construct_restore_args(target)},
          partial_restore=True))
  except Exception as e:  # Orbax raises many types for a damaged directory.
    _quiet_failed_reads(failed=True)
    why = str(e).splitlines()[0].split(' See full TensorStore details')[0]
    raise CheckpointError(f'params in {step_dir} could not be restored '
                          f'({type(e).__name__}: {why[:300]})') from None
  return c, out['params']


def arch_diff(a: ModelConfig, b: ModelConfig) -> list[str]:
  """The architecture fields (lm/config.FIELD_KINDS 'arch') in which two models
  differ: their parameter trees or functions differ. Task heads may differ."""
  base = config_lib.from_configdict({})
  return config_lib.kind_diff(dataclasses.replace(base, model=a),
                              dataclasses.replace(base, model=b), (config_lib.ARCH,))


TOKENIZER_FILE = 'tokenizer.json'  # Beside config.json: which tokenizer file the run used.


def write_config(workdir: str, c: Config, tok) -> None:
  """config.json, and tokenizer.json naming the tokenizer by its content
  (tokenizers' name: 'sp-<sha256 prefix>'), so a tokenizer file replaced
  after training (same path, other pieces) is caught, not used silently."""
  workdir_lib.write_atomic(os.path.join(workdir, 'config.json'),
                           json.dumps(config_lib.to_dict(c), indent=2))
  workdir_lib.write_atomic(os.path.join(workdir, TOKENIZER_FILE), json.dumps(
      {'tokenizer': c.data.tokenizer, 'path': c.data.tokenizer_path, 'name': tok.name}))


def tokenizer_record(run_dir: str) -> dict | None:
  """What write_config recorded of the run's tokenizer (None for a run from
  before the record)."""
  path = os.path.join(run_dir, TOKENIZER_FILE)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      rec = json.load(f)
    why = '' if isinstance(rec, dict) else 'not a JSON object'
  except (OSError, ValueError) as e:
    why = str(e)
  if why:
    raise CheckpointError(f'{path}, the record of the tokenizer the run was trained with, '
                          f'is unreadable ({why}); delete it to skip the tokenizer check (a '
                          'resumed run writes it again)')
  return rec


def check_tokenizer(run_dir: str, tok) -> None:
  """A CheckpointError if the run recorded another tokenizer than `tok`."""
  rec = tokenizer_record(run_dir)
  if rec is None:  # Nothing to compare.
    return
  if rec.get('name') != tok.name:
    raise CheckpointError(
        f'the tokenizer at {rec.get("path") or rec.get("tokenizer")} is not the one {run_dir} '
        f'was trained with (then {rec.get("name")}, now {tok.name}): restore that file '
        '(or retrain); its token ids would not match the model')


def write_corpus(workdir: str, record: dict | None) -> None:
  """corpus.json: the provenance of the text the run trains on (file counts,
  bytes, content hash; lm/data.corpus_record), for check_corpus on resume."""
  if record is not None:
    workdir_lib.write_atomic(os.path.join(workdir, data_lib.CORPUS_FILE),
                             json.dumps(record, indent=1))


def check_corpus(run_dir: str, record: dict | None) -> None:
  """A CheckpointError if the run recorded another corpus than `record`: a
  file added, removed or edited since it started would change the text and
  the split under a resumed run (its data position would point elsewhere)."""
  path = os.path.join(run_dir, data_lib.CORPUS_FILE)
  if record is None or not os.path.exists(path):  # Nothing to compare.
    return
  try:
    with open(path) as f:
      rec = json.load(f)
    old = rec['content_sha256']
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise CheckpointError(f'{path}, the record of the corpus the run was trained on, is '
                          f'unreadable ({e}); delete it to skip the corpus check') from None
  if old != record['content_sha256']:
    def say(r):
      return (f'{r.get("train_files")}+{r.get("validation_files")} files, '
              f'{r.get("total_bytes")} bytes, sha256 {str(r.get("content_sha256"))[:12]}')
    raise CheckpointError(
        f'the corpus is not the text {run_dir} was trained on (then {say(rec)}; now '
        f'{say(record)}): restore its files, or train into a new --workdir')


def load_tokenizer(path: str, c: Config, fits: bool = True):
  """The tokenizer of the run at `path` (a workdir or step), checked against
  the one it was trained with and (`fits`) the model's embedding: ids past it
  would crash generation or score NaN (a model imported without its tokenizer)."""
  from lm import tokenizers
  tok = tokenizers.get_tokenizer(c.data.tokenizer, c.data.tokenizer_path)
  check_tokenizer(os.path.dirname(find(path)[0]), tok)
  if fits and tok.vocab_size > c.model.vocab_size:
    raise CheckpointError(
        f'{path}: its tokenizer ({c.data.tokenizer_path or c.data.tokenizer}) has '
        f'{tok.vocab_size} ids, more than the model\'s vocab_size {c.model.vocab_size}; '
        'import the model with its tokenizer file (python -m tools.hf import)')
  return tok


def save_params(workdir: str, c: Config, params: Any, step: int = 0) -> str:
  """Writes config.json and a params-only checkpoint that `load_params` reads."""
  from lm import tokenizers
  tok = tokenizers.get_tokenizer(c.data.tokenizer, c.data.tokenizer_path)  # Fails first.
  os.makedirs(workdir, exist_ok=True)
  write_config(workdir, c, tok)
  mngr = ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), 'checkpoints'),
                               options=ocp.CheckpointManagerOptions(create=True),
                               item_names=('state',))
  mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave({'params': params})))
  mngr.wait_until_finished()
  mngr.close()
  return os.path.join(workdir, 'checkpoints', str(step))


def merge(init: Any, loaded: Any) -> tuple[Any, list[str], list[str]]:
  """Top-level params from `loaded` where the shapes match, else from `init`.

  Returns (params, names taken from loaded, names kept fresh): a classifier
  started from a language model keeps its new `cls_head` fresh."""
  out, taken, fresh = {}, [], []
  shapes = lambda t: jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), t)
  for k, v in init.items():
    if k in loaded and shapes(loaded[k]) == shapes(v):
      out[k] = loaded[k]
      taken.append(k)
    else:
      out[k] = v
      fresh.append(k)
  return out, taken, fresh


# --- Training checkpoints: the state and the data iterator --------------------

def checkpoint_manager(workdir: str, c: Config, spare: int = 0) -> ocp.CheckpointManager:
  """Keeps the latest train.keep_checkpoints (+ `spare`: lm/pack.py keeps one
  more until every member has committed a step, then trims), and always the
  steps in train.extra_checkpoints (WSD branch points: a stable run interrupted
  more often than it keeps checkpoints must not delete the step a branch starts from)."""
  n = c.train.keep_checkpoints + spare
  keep = {'max_to_keep': n}
  if c.train.extra_checkpoints:
    pp = ocp.checkpoint_managers.preservation_policy
    keep = {'preservation_policy': pp.AnyPreservationPolicy([
        pp.LatestN(n), pp.CustomSteps(list(c.train.extra_checkpoints))])}
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), 'checkpoints'),
      options=ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=True, **keep),
      item_names=('state', 'data'))


def check_workdir(workdir: str, c: Config) -> bool:
  """True if the workdir holds this run's checkpoints; errors for foreign ones.

  A run continues only with the same architecture, task head and data
  (lm/config.FIELD_KINDS: arch, head, fixed); free fields may change."""
  ckpt = os.path.join(workdir, 'checkpoints')
  cfg_path = os.path.join(workdir, 'config.json')
  if os.path.exists(os.path.join(workdir, 'plan.json')):  # A run beside a sweep's runs/.
    raise CheckpointError(f'--workdir={workdir} is a sweep directory (it holds plan.json); '
                          'it was left untouched: train a run into its own directory')
  def recorded() -> Config:
    try:
      return read_config(cfg_path)  # Truncated JSON, a field we no longer accept, not ours.
    except CheckpointError as e:
      raise CheckpointError(f'{e}: choose another --workdir') from None

  if not os.path.isdir(ckpt) or not os.listdir(ckpt):
    if os.path.lexists(cfg_path):  # E.g. a Hugging Face export: its config.json is not ours.
      recorded()
    return False
  bad = [e for e in os.listdir(ckpt) if not e.isdigit() and 'tmp' not in e]
  if bad or not os.path.exists(cfg_path):
    raise CheckpointError(
        f'{ckpt} is not a checkpoint directory of this codebase (unexpected entries '
        f'{sorted(bad)[:5]} or no config.json beside it); it was left untouched: '
        'choose another --workdir')
  old = recorded()
  steps = _step_numbers(ckpt)
  last = os.path.join(ckpt, str(steps[-1])) if steps else ''
  if last and os.path.isdir(os.path.join(last, 'state')) and not os.path.isdir(
      os.path.join(last, 'data')):  # save_params: no optimizer state or data position.
    raise CheckpointError(
        f'{workdir} holds parameters only (step {steps[-1]}, as tools.hf import writes), '
        'not a training state to resume; it was left untouched: start a run from them with '
        f'--config.init_from={workdir} and another --workdir')
  diffs = config_lib.kind_diff(old, c, (config_lib.ARCH, config_lib.HEAD, config_lib.FIXED))
  if diffs:
    raise CheckpointError(
        f'{workdir} holds a run with a different architecture or data; it was left '
        'untouched: choose another --workdir. Differing fields (run != config): '
        + '; '.join(diffs))
  # Free fields that still change the optimizer state's tree (lm/optimizer.make):
  # the restore would fail as if the checkpoint were damaged.
  moved = [f'opt.grad_clip: {old.opt.grad_clip} != {c.opt.grad_clip} (clipping on or off)'
           ] if (old.opt.grad_clip > 0) != (c.opt.grad_clip > 0) else []
  if old.opt.freeze_backbone != c.opt.freeze_backbone:
    moved.append(f'opt.freeze_backbone: {old.opt.freeze_backbone} != {c.opt.freeze_backbone}')
  if moved:
    raise CheckpointError(
        f'{workdir} holds a run whose optimizer state has another structure; it was left '
        'untouched: keep these as they were (opt.grad_clip may change between positive '
        'values), or choose another --workdir. Differing fields (run != config): '
        + '; '.join(moved))
  # Only temporary directories (a kill during the first save): a fresh start.
  return bool(steps)


def check_not_past_end(workdir: str, latest: int | None, steps: int) -> None:
  """A CheckpointError if the run already went past train.steps: its "final"
  numbers would be an earlier evaluation of a longer schedule."""
  if latest is not None and latest > steps:
    raise CheckpointError(
        f'{workdir} holds a checkpoint at step {latest}, past train.steps={steps}: a run '
        f'cannot end before where it already is; it was left untouched: set train.steps '
        f'to at least {latest}, or choose another --workdir')


def check_resumable(workdir: str, tok, steps: int) -> None:
  """A resumed run's checks that need no checkpoint manager, so they come
  before the data are prepared: the tokenizer it recorded, and no finished
  step past train.steps (the loop checks the latest again under its lock)."""
  check_tokenizer(workdir, tok)
  done = _step_numbers(os.path.join(workdir, 'checkpoints'))
  check_not_past_end(workdir, done[-1] if done else None, steps)


_QUIET = []


def _quiet_failed_reads(failed: bool) -> None:
  """When orbax fails to read a damaged step, its other reads of it fail too,
  in TensorStore's threads and in futures nobody awaits: each prints a
  traceback with the TensorStore spec (up to thousands of lines around the
  one-line error, mostly at exit), or, calling back into orbax's closed event
  loop, 'Event loop is closed'. Before a restore: hooks that drop exactly
  those two errors. After a failed one (`failed`): also asyncio's log of
  never-retrieved futures and the never-awaited-coroutine warnings."""
  import logging
  import sys
  import warnings
  if failed:
    logging.getLogger('asyncio').setLevel(logging.CRITICAL)
    warnings.filterwarnings('ignore', message='coroutine .* was never awaited',
                            category=RuntimeWarning)
  if _QUIET:
    return
  _QUIET.append(True)

  def noise(e: BaseException | None) -> bool:
    return ((isinstance(e, RuntimeError) and str(e) == 'Event loop is closed')
            or str(e).startswith('Encountered error while reading array index'))

  hook, thread_hook, unraisable = sys.excepthook, threading.excepthook, sys.unraisablehook
  sys.excepthook = lambda t, e, tb: None if noise(e) else hook(t, e, tb)
  threading.excepthook = lambda a: None if noise(a.exc_value) else thread_hook(a)
  sys.unraisablehook = lambda u: None if noise(u.exc_value) else unraisable(u)


def restore(mngr: ocp.CheckpointManager, abstract: Any, shardings, data_iter,
            step: int | None = None):
  """The state and data position of `step` (default: the latest)."""
  step = mngr.latest_step() if step is None else step
  target = jax.tree_util.tree_map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
  import grain  # Here, not at the top: generation and export never read a data iterator.
  position = _position_of_other_count(mngr, step)
  items = {'state': ocp.args.StandardRestore(target)}
  if position is None:
    items['data'] = grain.checkpoint.CheckpointRestore(data_iter)
  _quiet_failed_reads(failed=False)
  try:
    out = mngr.restore(step, args=ocp.args.Composite(**items))
    if position is not None:
      data_iter.set_state(position)
    _check_position(data_iter.get_state())
  except Exception as e:  # Orbax raises many types for a damaged directory.
    _quiet_failed_reads(failed=True)
    why = str(e).splitlines()[0].split(' See full TensorStore details')[0]
    raise CheckpointError(
        f'checkpoint step {step} in {mngr.directory} could not be restored '
        f'({type(e).__name__}: {why[:300]}); it was left untouched: '
        'choose another --workdir or remove the damaged step') from None
  # Orbax hands PRNG keys back as their raw uint32 data: typed again, the
  # restored state has the fresh state's types (one compiled step for both,
  # and a resumed pack member stacks with fresh ones).
  is_key = lambda x: jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)  # noqa: E731
  return jax.tree_util.tree_map(
      lambda a, x: jax.random.wrap_key_data(x) if is_key(a) and not is_key(x) else x,
      abstract, out['state'])


def _check_position(state: Any) -> None:
  """A data position grain took without a word but would fail on at the first
  batch (a float or negative `next_index`: a hand-edited or damaged file)."""
  n = state.get('next_index', 0) if isinstance(state, dict) else 0
  if isinstance(n, bool) or not isinstance(n, int) or n < 0:
    raise ValueError(f'data position next_index={n!r} is not a count of batches')


def _position_of_other_count(mngr: ocp.CheckpointManager, step: int) -> dict | None:
  """The data position of a step written by another process count (None: by
  this one, which grain restores itself).

  Grain saves each process's iterator position in process_I-of-P.json. Each
  process reads its block of every global batch of one global order
  (lm/data.batched), so after s steps every process's position is s batches
  (`next_index`), whatever P: the same position resumes on any process
  count with the same global batches, row for row, and the run continues as
  it would have (dropout included; up to float summation order). Positions
  that disagree (another pipeline) are refused; a missing or unreadable file
  is a damaged step."""
  data_dir = os.path.join(str(mngr.directory), str(step), 'data')
  files = {f: m.group(1) for f in (os.listdir(data_dir) if os.path.isdir(data_dir) else [])
           if (m := re.fullmatch(r'process_\d+-of-(\d+)\.json', f))}
  if not files or str(jax.process_count()) in files.values():
    return None
  positions = []
  for f in sorted(files):
    try:
      with open(os.path.join(data_dir, f)) as fh:
        positions.append(json.load(fh))
    except (OSError, ValueError):
      positions.append(None)
  n = ', '.join(sorted(set(files.values()), key=int))
  count = max(int(v) for v in files.values())
  if None in positions or len(positions) != count:
    raise CheckpointError(
        f'checkpoint step {step} in {mngr.directory} is damaged: a data position file in '
        f'{data_dir} is missing or unreadable ({sum(p is not None for p in positions)} of {count} readable); '
        'remove the damaged step to resume from an earlier one, or choose another --workdir')
  if not (all(isinstance(p, dict) and set(p) == {'next_index'} for p in positions)
          and len({p['next_index'] for p in positions}) == 1
          and len(set(files.values())) == 1):
    raise CheckpointError(
        f'checkpoint step {step} in {mngr.directory} was written by {n} process(es) whose '
        f'data positions ({data_dir}) are not one global position, and this run has '
        f'{jax.process_count()}: resume it with {n} process(es) (the checkpoint is intact '
        'and was left untouched)')
  return positions[0]


class Diverged(Exception):
  """A non-finite loss or parameters at `step` under train.on_nonfinite=rollback:
  the loop restores the last good checkpoint instead of halting."""

  def __init__(self, step: int, why: str):
    super().__init__(f'{why} at step {step}')
    self.step, self.why = step, why


def halt(workdir: str, step: int, loss: float, last_good: int | None, why: str,
         skipping: bool = False) -> None:
  """Records a divergence in <workdir>/nonfinite.json and stops the run."""
  if jax.process_index() == 0:
    workdir_lib.write_atomic(os.path.join(workdir, 'nonfinite.json'), json.dumps(
        {'step': step, 'loss': str(loss), 'why': why, 'last_good_checkpoint': last_good}))
  kept = (f'the last good checkpoint (step {last_good}) is kept' if last_good is not None
          else 'no checkpoint was finite yet')
  advice = ('lower opt.lr or raise train.max_skips' if skipping else
            'lower opt.lr or try train.on_nonfinite=skip')
  raise FloatingPointError(f'{why} at step {step}; {kept} in {workdir} (details in '
                           f'nonfinite.json; {advice})')


@jax.jit
def _finite(params, loss) -> jax.Array:
  leaves = [jnp.isfinite(x).all() for x in jax.tree_util.tree_leaves(params)]
  return jnp.stack([jnp.isfinite(loss), *leaves]).all()


def save(c: Config, mngr, step: int, state: Any, m: dict, data_iter, workdir: str) -> None:
  """Checkpoints only finite parameters (and, unless skipping, a finite loss)."""
  loss = m['loss'] if c.train.on_nonfinite != 'skip' else jnp.zeros(())
  if not bool(_finite(state.params, loss)):
    mngr.wait_until_finished()
    if c.train.on_nonfinite == 'rollback':
      raise Diverged(step, 'non-finite loss or parameters')
    halt(workdir, step, float(m['loss']), mngr.latest_step(),
         'non-finite loss or parameters')
  need = sum(x.nbytes for x in jax.tree_util.tree_leaves(state)) // jax.process_count()
  workdir_lib.check_space(workdir, need + 2**20, f'the checkpoint of step {step}')  # A host's.
  import grain
  mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                          data=grain.checkpoint.CheckpointSave(data_iter)))
