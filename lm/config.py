"""Validated, frozen run configuration: the ConfigDict stops here."""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
from typing import Any

import ml_collections

FAMILIES = ('decoder', 'encoder', 'encoder_decoder')
POOLS = ('last', 'first', 'mean')
POSITIONS = ('learned', 'rope', 'sinusoidal', 'none')
NORMS = ('layernorm', 'rmsnorm')
ACTIVATIONS = ('gelu', 'swiglu', 'relu2')
DTYPES = ('float32', 'bfloat16')
REMAT = ('none', 'full', 'save_dots', 'dots_saveable', 'save_proj', 'offload')
ATTENTION = ('auto', 'xla', 'dot_product', 'pallas', 'chunked')
PARAMETRIZATIONS = ('sp', 'mup')
SCHEDULES = ('cosine', 'linear', 'constant', 'inverse_sqrt', 'wsd')
COOLDOWN_SHAPES = ('linear', '1-sqrt')
SOURCES = ('stdlib', 'dir', 'tfds', 'file')
TOKENIZERS = ('byte', 'sentencepiece', 'hf')
_TOKENIZER_FILES = {'sentencepiece': 'a SentencePiece .model file',
                    'hf': 'a Hugging Face tokenizer.json file'}
WD_EXCLUDE = ('norm', 'bias', 'embedding')
MESH_AXES = ('data', 'fsdp', 'tensor')
NONFINITE = ('halt', 'skip', 'rollback')
# FLOP conventions (lm/flops.py defines them; listed here so config needs no flops import).
CONVENTIONS = ('6N', '6N_with_head', 'kaplan', 'chinchilla', 'exact')


class ConfigError(ValueError):
  """A config value is invalid; the message names the field, value and fix."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  family: str = 'decoder'  # decoder (causal LM), encoder (masked LM) or encoder_decoder.
  vocab_size: int = 0  # 0: the tokenizer's size plus the objective's extra ids (mlm's MASK, span's sentinels) rounded up to a multiple of 128.
  d_model: int = 128  # Width of the residual stream.
  num_layers: int = 2  # Transformer blocks (encoder-decoder: the encoder's).
  num_decoder_layers: int = 0  # Encoder-decoder: 0 means num_layers.
  num_heads: int = 4  # Attention (query) heads.
  num_kv_heads: int = 0  # 0 means num_heads (plain multi-head attention).
  head_dim: int = 0  # 0 means d_model // num_heads.
  mlp_dim: int = 0  # 0 means 4 * d_model.
  max_len: int = 128  # Longest sequence: size of the learned position table (and the KV cache).
  position: str = 'learned'  # Positions: learned | rope | sinusoidal | none.
  rope_theta: float = 10_000.0  # RoPE base frequency.
  norm: str = 'layernorm'  # layernorm | rmsnorm (pre-norm blocks and a final norm).
  norm_eps: float = 1e-5  # Epsilon of every norm.
  use_bias: bool = True  # Biases in the attention and MLP projections (and LayerNorm).
  qk_norm: bool = False  # Normalise queries and keys per head before the dot product.
  activation: str = 'gelu'  # MLP: gelu | swiglu (gated) | relu2 (squared ReLU).
  tie_embeddings: bool = True  # Output head shares the input embedding matrix.
  embed_dropout: float = 0.0  # Dropout on the embeddings (training only).
  attn_dropout: float = 0.0  # Dropout on the attention weights (training only; xla or auto attention only).
  resid_dropout: float = 0.0  # Dropout on each residual branch (training only).
  param_dtype: str = 'float32'  # Storage dtype of the parameters.
  dtype: str = 'float32'  # Compute dtype of matmuls; logits and softmax stay float32.
  scan_layers: bool = True  # nn.scan over layers (one compiled layer; params stacked).
  remat: str = 'none'  # Recompute in backward: none | full | save_dots | dots_saveable | save_proj | offload (lm/model.py).
  init_std: float = 0.02  # Std of the normal initialiser of weight matrices.
  attn_block: int = 128  # Query/key block length of the xla and chunked paths (0: one
  # block; the chunked path then uses 512). The pallas kernel picks its own (lm/model.py).
  loss_chunk: int = 0  # > 0: the LM loss makes logits this many positions at a time (memory).
  attention: str = 'auto'  # auto | xla | dot_product (cuDNN on GPU) | pallas | chunked (lm/model.py).
  attn_max_docs: int = 0  # > 0: dot_product on H100+ runs document masks of windows with <= this many documents in cuDNN's packed kernel (0: a dense mask; tools/bench_train.py).
  num_classes: int = 0  # > 0: a sequence classifier with this many classes.
  pool: str = 'last'  # Classifier pooling: last (valid token), first or mean.
  mlm_transform: bool = False  # Encoder: BERT's dense + GELU + norm before the LM head.
  parametrization: str = 'sp'  # sp | mup: maximal update parametrization (lm/model.py, lm/optimizer.py).
  base_width: int = 0  # mup: the d_model where mup equals sp (hyperparameters tuned there); 0: d_model.
  depth_base: int = 0  # > 0: residual branches x (depth_base/layers)^depth_alpha, LR to match (CompleteP).
  depth_alpha: float = 1.0  # Depth exponent: 1 (CompleteP) or 0.5 (depth-muP).

  @property
  def decoder_layers(self) -> int:
    return self.num_decoder_layers or self.num_layers

  @property
  def kv_heads(self) -> int:
    return self.num_kv_heads or self.num_heads

  @property
  def dh(self) -> int:
    return self.head_dim or self.d_model // self.num_heads

  @property
  def ff_dim(self) -> int:
    return self.mlp_dim or 4 * self.d_model

  @property
  def width_mult(self) -> float:
    """mup: d_model / base_width (1 at the base width); sp: 1."""
    if self.parametrization != 'mup':
      return 1.0
    return self.d_model / (self.base_width or self.d_model)

  def canonical(self) -> 'ModelConfig':
    """The same model with every 0-means-default field spelled out (0 KV heads
    and num_kv_heads = num_heads are one architecture), and the fields that
    cannot matter set to one value (base_width in sp, depth_alpha without
    depth_base). In mup, head_dim 0 stays 0: it says how the base model's
    head dimension is found (lm/model.attn_multiplier)."""
    mup = self.parametrization == 'mup'
    return dataclasses.replace(
        self, num_decoder_layers=self.decoder_layers, num_kv_heads=self.kv_heads,
        head_dim=self.head_dim if mup else self.dh, mlp_dim=self.ff_dim,
        base_width=self.base_width if mup and self.base_width
        else self.d_model,
        depth_alpha=self.depth_alpha if self.depth_base else 1.0)


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  lr: float = 3e-3  # Peak learning rate (AdamW).
  min_lr_ratio: float = 0.1  # Final learning rate as a fraction of the peak (cosine, linear, wsd's cooldown end).
  warmup_steps: int = 50  # Linear warmup from 0 to the peak.
  schedule: str = 'cosine'  # After warmup: cosine | linear | constant | inverse_sqrt | wsd.
  cooldown_fraction: float = 0.2  # wsd: share of the steps spent cooling down.
  cooldown_shape: str = '1-sqrt'  # wsd cooldown: linear | 1-sqrt.
  b1: float = 0.9  # Adam's first-moment decay.
  b2: float = 0.95  # Adam's second-moment decay.
  eps: float = 1e-8  # Adam's epsilon.
  weight_decay: float = 0.1  # Decoupled weight decay (times the learning rate).
  wd_exclude: tuple[str, ...] = WD_EXCLUDE  # No weight decay on: norm, bias, embedding.
  grad_clip: float = 1.0  # Clip the global gradient norm to this (0: off).
  z_loss: float = 0.0  # Weight of the z-loss (log Z)^2 on the logits (0: off); the train
  # metrics log it as z_loss, apart from loss (the NLL, as eval reports it).
  freeze_backbone: bool = False  # Classifier fine-tuning: train only the head.


@dataclasses.dataclass(frozen=True)
class DataConfig:
  source: str = 'stdlib'  # stdlib (the built-in corpus) | dir | tfds | file (CSV/JSONL).
  path: str = ''  # source='dir': a directory or glob; source='file': the .csv/.jsonl file.
  tfds_name: str = ''  # Catalog name for source='tfds', e.g. 'tiny_shakespeare'.
  text_key: str = 'text'  # Feature or column holding the text.
  label_key: str = ''  # Set: labelled examples for a classifier (source file or tfds).
  labels: tuple[str, ...] = ()  # Class names; () = the sorted labels of the train split.
  eval_path: str = ''  # source='file': eval file; '' = hold out val_fraction of rows.
  train_split: str = 'train'  # Split to train on.
  val_split: str = 'validation'  # Split to evaluate on.
  val_fraction: float = 0.05  # Held out for validation: files (source stdlib/dir), rows (file without eval_path).
  cache_dir: str = ''  # '' means $LM_CACHE or ~/.cache/lm.
  tokenizer: str = 'byte'  # byte | sentencepiece (a .model) | hf (a tokenizer.json).
  tokenizer_path: str = ''  # The tokenizer file (sentencepiece, hf); recorded absolute.
  document_mask: bool = True  # Causal LM: attention and positions stay within each packed document.
  seq_len: int = 128  # Tokens per training sequence (encoder-decoder: span corruption's text window, or the input length).
  shuffle_seed: int = 0  # Seed of the data order (and of training corruption noise).
  target_key: str = ''  # Set: (input, target) pairs for an encoder-decoder (seq2seq).
  target_len: int = 0  # Seq2seq target length; 0 means seq_len.
  mlm_rate: float = 0.15  # Masked LM: fraction of positions selected for prediction.
  mlm_mask_frac: float = 0.8  # Masked LM: share of the selected positions replaced by MASK.
  mlm_random_frac: float = 0.1  # Masked LM: share replaced by a random token (the rest stay).
  noise_density: float = 0.15  # Span corruption: fraction of tokens inside masked spans.
  mean_span: float = 3.0  # Span corruption: mean span length in tokens.
  canary_repeats: tuple[int, ...] = ()  # Memorization probe: a canary per entry, inserted that many times into train (0: a control) (lm/probes.py).
  canary_template: str = 'my pin is {secret}'  # Canary text; {secret} becomes canary_digits random digits.
  canary_digits: int = 5  # Digits of each secret: 10^digits candidates (exposure's space).
  canary_seed: int = 0  # Seed of the secrets and of where they are inserted.


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  batch_size: int = 32  # Global batch, in sequences.
  grad_accum: int = 1  # Micro-batches per step (divides batch_size).
  steps: int = 500  # Optimizer steps; the schedule ends here.
  seed: int = 0  # Seed of the initialisation and dropout.
  log_every: int = 10  # Steps between train-metric rows.
  eval_every: int = 100  # Steps between evaluations (and always at the end).
  eval_batches: int = 8  # Batches per evaluation (the first windows of the split; labelled data, classify and seq2seq pairs, always scores the whole eval split).
  checkpoint_every: int = 250  # Steps between checkpoints (and always at the end).
  keep_checkpoints: int = 3  # Checkpoints kept on disk (oldest deleted).
  extra_checkpoints: tuple[int, ...] = ()  # Steps also saved (WSD branch points).
  peak_flops: float = 0.0  # Per device; 0 means look up the device kind.
  flops_convention: str = 'exact'  # FLOP convention of the logged FLOPs and MFU (lm/flops.py).
  progress: bool = True  # Show a progress bar.
  objective: str = ''  # lm/objectives table; '' = from data.label_key/target_key and the family.
  require_init_from: bool = False  # Fine-tuning configs: refuse to train from scratch.
  on_nonfinite: str = 'halt'  # NaN/inf loss: halt (keep the last finite checkpoint) | skip | rollback.
  max_skips: int = 10  # on_nonfinite=skip: halt after more than this many skipped steps in a row.
  max_rollbacks: int = 3  # on_nonfinite=rollback: halt after this many rollbacks in one process.
  eval_tasks: tuple[str, ...] = ()  # lm-evaluation-harness tasks scored at every evaluation (lm/harness.py).
  eval_tasks_path: str = ''  # Directory of extra task YAML files (e.g. tests/tasks).
  eval_tasks_limit: int = 0  # > 0: at most this many documents per task and evaluation.
  eval_bias_csv: str = ''  # CrowS-Pairs-format CSV: the bias probe at the final evaluation (lm/probes.py).


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Axis sizes within a slice (ICI); -1 = the rest. dcn_* split an axis across
  slices (multi-slice TPU, or hosts over the data-centre network)."""
  data: int = -1  # Data-parallel devices (-1: the rest).
  fsdp: int = 1  # FSDP devices: parameters sharded along embed (-1: the rest).
  tensor: int = 1  # Tensor-parallel devices: heads, MLP and vocab (-1: the rest).
  dcn_data: int = 1  # Slices (or hosts) along data, over the data-centre network.
  dcn_fsdp: int = 1  # Slices along fsdp.
  dcn_tensor: int = 1  # Slices along tensor.


@dataclasses.dataclass(frozen=True)
class Config:
  model: ModelConfig
  opt: OptimizerConfig
  data: DataConfig
  train: TrainConfig
  mesh: MeshConfig
  rules: tuple[tuple[str, Any], ...]
  name: str = 'run'  # Run name (metrics, sweeps).
  init_from: str = ''  # Fine-tune: a workdir or step directory to take params from.


# What a field is to a run's checkpoints; the resume check (lm/train.py), the
# architecture diff of init_from (lm/checkpoint.py), the sweep planner
# (lm/plan.py) and Hugging Face export (tools/hf.py) read this one table.
#   arch   changes the parameter tree or the function it computes: checkpoints
#          with another value do not load, HF export must map it or refuse.
#   head   a task head's architecture: fine-tuning may add or replace it.
#   fixed  not architecture, but a run cannot continue with another value.
#   free   anything else: may change on resume or when fine-tuning.
ARCH, HEAD, FIXED, FREE = 'arch', 'head', 'fixed', 'free'
FIELD_KINDS: dict[str, str] = {
    **{f'model.{k}': ARCH for k in (
        'family', 'vocab_size', 'd_model', 'num_layers', 'num_decoder_layers', 'num_heads',
        'num_kv_heads', 'head_dim', 'mlp_dim', 'max_len', 'position', 'rope_theta', 'norm',
        'norm_eps', 'use_bias', 'qk_norm', 'activation', 'tie_embeddings', 'param_dtype',
        'scan_layers', 'parametrization', 'base_width', 'depth_base', 'depth_alpha')},
    **{f'model.{k}': HEAD for k in ('num_classes', 'pool', 'mlm_transform')},
    **{f'model.{k}': FREE for k in ('embed_dropout', 'attn_dropout', 'resid_dropout',
                                    'dtype', 'remat', 'init_std', 'attn_block',
                                    'attention', 'attn_max_docs', 'loss_chunk')},
    **{f'data.{k}': FIXED for k in ('source', 'path', 'tfds_name', 'text_key', 'label_key',
                                    'labels', 'eval_path', 'train_split', 'val_split',
                                    'val_fraction', 'shuffle_seed',
                                    'target_key', 'tokenizer', 'seq_len',
                                    'target_len', 'canary_repeats', 'canary_template',
                                    'canary_digits', 'canary_seed')},
    'train.batch_size': FIXED, 'train.objective': FIXED,
    # data.tokenizer_path is free: the file is compared by its content
    # (lm/checkpoint.check_tokenizer), wherever it lies.
}


def field_kind(path: str) -> str:
  """'section.field' -> arch | head | fixed | free (unlisted fields are free)."""
  return FIELD_KINDS.get(path, FREE)


def kind_diff(a: Config, b: Config, kinds: tuple[str, ...]) -> list[str]:
  """'section.field: a != b' for the fields of these kinds in which two configs
  differ. Models compare canonically (mlp_dim 0 and 4 x d_model are one model),
  and max_len only matters to learned positions."""
  out = []
  ma, mb = a.model.canonical(), b.model.canonical()
  for path, kind in FIELD_KINDS.items():
    if kind not in kinds:
      continue
    section, field = path.split('.')
    if path == 'model.max_len' and 'learned' not in (ma.position, mb.position):
      continue
    if path == 'model.rope_theta' and 'rope' not in (ma.position, mb.position):
      continue
    va, vb = (getattr(m if section == 'model' else getattr(x, section), field)
              for x, m in ((a, ma), (b, mb)))
    if _norm(va) != _norm(vb):
      out.append(f'{path}: {va!r} != {vb!r}')
  return out


def field_help() -> dict[str, tuple[Any, str]]:
  """'section.field' -> (default, the one-line meaning written beside it above)."""
  import inspect
  import re
  out = {}
  for section, cls in {**SECTIONS, 'sweep': SweepConfig, '': Config}.items():
    # A meaning may go on in comment lines right below its field.
    notes = {k: ' '.join([first, *re.findall(r'^  #\s*(.+)$', more, re.M)])
             for k, first, more in re.findall(
                 r'^  (\w+): [^=\n]+= [^#\n]*#\s*(.+)$\n((?:  #.*\n)*)',
                 inspect.getsource(cls), re.M)}
    for f in dataclasses.fields(cls):
      if f.default is not dataclasses.MISSING:  # Config's sections and rules have none.
        out[f'{section}.{f.name}' if section else f.name] = (f.default, notes.get(f.name, ''))
  return out


SWEEP_DESIGNS = ('isoflop', 'grid', 'wsd', 'transfer', 'lr')
START_GRIDS = ('full', 'coarse')
EXECUTORS = ('local', 'slurm', 'ray')


@dataclasses.dataclass(frozen=True)
class SweepConfig:
  """A sweep config's `sweep` section (lm/sweep.py, lm/plan.py, tools/report.py)."""
  design: str = 'isoflop'  # isoflop (per budget, `sizes` ladder models), grid (N x D), wsd, transfer (widths x lrs), lr (sizes x lrs).
  convention: str = 'exact'  # FLOP convention that defines C (lm/flops.py).
  budgets: tuple[float, ...] = ()  # isoflop: compute budgets in FLOPs.
  sizes: int = 5  # isoflop: consecutive ladder models per budget (>= 3).
  tokens_per_param: float = 20.0  # isoflop: D/N at the expected optimum (centres the sizes).
  min_steps: int = 20  # isoflop: refuse a run shorter than this.
  params: tuple[float, ...] = ()  # grid/wsd/lr: target non-embedding parameter counts.
  tokens: tuple[float, ...] = ()  # grid/wsd/lr/transfer: training tokens per run.
  aspect: int = 32  # Ladder: d_model = aspect x layers.
  head_dim: int = 16  # Ladder: heads = d_model / head_dim.
  cooldown_fraction: float = 0.2  # wsd: each branch's cooldown share of its steps.
  seeds: tuple[int, ...] = (0,)  # Replicates of every run (train.seed and data order).
  lrs: tuple[float, ...] = ()  # Learning rates of every run: optional for isoflop/grid/wsd, the grid (3+) of lr and transfer.
  widths: tuple[int, ...] = ()  # transfer: d_model values (layers and heads from the base config).
  parametrizations: tuple[str, ...] = PARAMETRIZATIONS  # transfer: each width and LR in these.
  evals_per_run: int = 6  # Evaluations over a run (the envelope method reads them).
  bootstrap: int = 1000  # Bootstrap resamples for the fits' intervals.
  grid: str = 'full'  # Approach 3's start grid: full (4500 starts) or coarse (162).
  pack: int = 1  # Train up to this many runs of one shape (seeds, LRs, one size across budgets) in one vmapped step (lm/pack.py); 1: off.
  executor: str = 'local'  # local (this machine; `workers` processes) | slurm (one submitit job per run or pack) | ray (one Ray task each).
  slurm_partition: str = ''  # executor=slurm: the partition ('' = the cluster's default).
  slurm_minutes: int = 60  # executor=slurm: each job's time limit.
  job_gpus: int = 0  # executor=slurm|ray: GPUs per job.
  job_cpus: int = 2  # executor=slurm|ray: CPUs per job.
  workers: int = 1  # Local worker processes sharing the runs, one CPU thread each (experiments/sweep.py).
  size_ratio: float = 0.0  # isoflop: > 1 spaces the sizes by this ratio on a finer ladder (lm/plan.py); 0: consecutive rungs.


# The sweep fields only some designs read (lm/sweep.make_plan). The ladder's
# aspect and head_dim are not here: tools.count --ladder reads them for any design.
DESIGN_FIELDS = {'budgets': ('isoflop',), 'sizes': ('isoflop',), 'tokens_per_param': ('isoflop',),
                 'min_steps': ('isoflop',), 'size_ratio': ('isoflop',),
                 'params': ('grid', 'wsd', 'lr'), 'tokens': ('grid', 'wsd', 'transfer', 'lr'),
                 'cooldown_fraction': ('wsd',), 'widths': ('transfer',),
                 'parametrizations': ('transfer',)}
# The job resources only a cluster executor asks for (lm/sweep.submit).
EXECUTOR_FIELDS = {'slurm_partition': ('slurm',), 'slurm_minutes': ('slurm',),
                   'job_gpus': ('slurm', 'ray'), 'job_cpus': ('slurm', 'ray')}


def sweep_config(d: dict[str, Any]) -> SweepConfig:
  """Validates a `sweep` section (a dict or ConfigDict) into a SweepConfig."""
  s = _build(SweepConfig, 'sweep', dict(d))
  _choice('sweep.design', s.design, SWEEP_DESIGNS)
  _choice('sweep.convention', s.convention, CONVENTIONS)
  _choice('sweep.grid', s.grid, START_GRIDS)
  _choice('sweep.executor', s.executor, EXECUTORS)
  for f in ('budgets', 'params', 'tokens', 'lrs', 'widths'):
    for v in getattr(s, f):
      if not (isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
              and math.isfinite(v)):
        raise _err(f'sweep.{f}', getattr(s, f), f'every entry must be a positive number, '
                   f'not {v!r}')
  for f in ('budgets', 'params', 'tokens', 'lrs', 'widths', 'seeds', 'parametrizations'):
    v = getattr(s, f)
    if len(set(v)) < len(v):
      raise _err(f'sweep.{f}', v, 'list each value once (a repeat would train the same runs '
                 'twice and count them twice)')
  need = {'isoflop': ('budgets',), 'grid': ('params', 'tokens'), 'wsd': ('params', 'tokens'),
          'transfer': ('widths', 'lrs', 'tokens'), 'lr': ('params', 'tokens', 'lrs')}
  for f in need[s.design]:
    if not getattr(s, f):
      raise _err(f'sweep.{f}', getattr(s, f), f'design {s.design!r} needs at least one '
                 'value, e.g. --config.sweep.' + f + "='(1e5, 1e6)'")
  for f, designs in DESIGN_FIELDS.items():  # Set for another design, it would change nothing.
    if s.design not in designs and getattr(s, f) != getattr(SweepConfig, f):
      raise _err(f'sweep.{f}', getattr(s, f), f'design {s.design!r} does not read it (only '
                 f'{", ".join(designs)} do{"es" * (len(designs) == 1)}): leave it at its default '
                 f'{getattr(SweepConfig, f)!r}, or choose such a design')
  for f, executors in EXECUTOR_FIELDS.items():
    if s.executor not in executors and getattr(s, f) != getattr(SweepConfig, f):
      raise _err(f'sweep.{f}', getattr(s, f), f'sweep.executor={s.executor!r} does not read '
                 f'it (only {" and ".join(executors)} do{"es" * (len(executors) == 1)}): leave '
                 f'it at its default {getattr(SweepConfig, f)!r}, or choose such an executor')
  if s.design == 'transfer':
    if len(s.widths) < 2 or len(s.lrs) < 3 or len(s.tokens) != 1:
      raise _err('sweep.widths', s.widths, 'a transfer sweep needs at least 2 widths, 3 '
                 f'learning rates (sweep.lrs={s.lrs}) and one sweep.tokens value '
                 f'(sweep.tokens={s.tokens})')
    if any(not isinstance(w, int) or isinstance(w, bool) for w in s.widths):
      raise _err('sweep.widths', s.widths, 'widths are integers (d_model values)')
    if not s.parametrizations:
      raise _err('sweep.parametrizations', s.parametrizations, 'a transfer sweep needs at '
                 f'least one of {", ".join(PARAMETRIZATIONS)}')
    for p in s.parametrizations:
      _choice('sweep.parametrizations', p, PARAMETRIZATIONS)
  if s.design == 'lr' and (len(s.lrs) < 3 or len(s.tokens) not in (1, len(s.params))):
    raise _err('sweep.lrs', s.lrs, 'a learning-rate sweep needs at least 3 learning rates and '
               f'one sweep.tokens value or one per size (sweep.tokens={s.tokens}, '
               f'sweep.params={s.params})')
  if s.design == 'isoflop' and s.sizes < 3:
    raise _err('sweep.sizes', s.sizes, 'an IsoFLOP profile needs at least 3 sizes '
               '(5 recommended) to bracket its minimum')
  if not s.seeds:
    raise _err('sweep.seeds', s.seeds, 'list at least one seed')
  if not _counts(s.seeds, 0) or max(s.seeds) >= 2 ** 32:
    raise _err('sweep.seeds', s.seeds, 'seeds are integers in [0, 2**32), e.g. (0, 1, 2)')
  if s.size_ratio and not s.size_ratio > 1.05:
    raise _err('sweep.size_ratio', s.size_ratio, 'must be 0 (consecutive ladder rungs) or '
               'above 1.05, e.g. 1.5')
  for f in ('tokens_per_param', 'aspect', 'head_dim', 'min_steps', 'evals_per_run', 'workers', 'pack', 'slurm_minutes', 'job_cpus'):
    _positive(f'sweep.{f}', getattr(s, f))
  if not 0.0 < s.cooldown_fraction <= 1.0:
    raise _err('sweep.cooldown_fraction', s.cooldown_fraction, 'must be in (0, 1]')
  if s.bootstrap < 0:
    raise _err('sweep.bootstrap', s.bootstrap, 'must be >= 0 (0: estimates without intervals)')
  if s.job_gpus < 0:
    raise _err('sweep.job_gpus', s.job_gpus, 'must be >= 0')
  return s


# Logical axis -> mesh axes. The batch is always split over data x fsdp.
# A mesh axis of size 1 is a no-op, so fsdp_tp serves every mesh; the others
# keep parameters replicated along the axes they leave out. Activations'
# `embed` never takes `fsdp`: flax gives each mesh axis to the first logical
# axis that asks, and `batch` asks first.
_BATCH = (('batch', ('data', 'fsdp')), ('length', None), ('head_dim', None),
          ('layers', None))
RULE_PRESETS = {
    # Pure data parallel: parameters and optimizer state replicated.
    'dp': _BATCH + (('embed', None), ('heads', None), ('kv', None), ('mlp', None),
                    ('vocab', None)),
    # ZeRO-3 style: params and optimizer state sharded over fsdp along embed;
    # XLA all-gathers each layer's weights when it is used.
    'fsdp': _BATCH + (('embed', 'fsdp'), ('heads', None), ('kv', None), ('mlp', None),
                      ('vocab', None)),
    # Megatron style: attention heads, MLP hidden units and vocab over tensor.
    'tp': _BATCH + (('embed', None), ('heads', 'tensor'), ('kv', 'tensor'),
                    ('mlp', 'tensor'), ('vocab', 'tensor')),
    'fsdp_tp': _BATCH + (('embed', 'fsdp'), ('heads', 'tensor'), ('kv', 'tensor'),
                         ('mlp', 'tensor'), ('vocab', 'tensor')),
}
DEFAULT_RULES = RULE_PRESETS['fsdp_tp']


def _err(field: str, value: Any, valid: str) -> ConfigError:
  return ConfigError(f'config.{field}={value!r} is invalid: {valid}')


def _build(cls, section: str, d: dict[str, Any]):
  fields = {f.name: f for f in dataclasses.fields(cls)}
  for k in d:
    if k not in fields:
      close = difflib.get_close_matches(k, fields, n=1)
      hint = f' (did you mean {close[0]!r}?)' if close else ''
      raise ConfigError(
          f'config.{section}.{k} is not a known field{hint}; '
          f'valid fields: {", ".join(sorted(fields))}')
  kw = {}
  for k, v in d.items():
    default = fields[k].default
    if isinstance(default, tuple):
      if not isinstance(v, (list, tuple)):
        raise _err(f'{section}.{k}', v, 'expected a tuple, e.g. (1, 2)')
      v = tuple(v)
    elif isinstance(default, bool) and not isinstance(v, bool):
      raise _err(f'{section}.{k}', v, 'expected True or False')
    elif isinstance(default, float):
      if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise _err(f'{section}.{k}', v, 'expected a finite number')
      v = float(v)
    elif isinstance(default, int) and not isinstance(default, bool):
      if isinstance(v, float) and v.is_integer():
        v = int(v)
      if not isinstance(v, int) or isinstance(v, bool):
        raise _err(f'{section}.{k}', v, 'expected an integer')
    kw[k] = v
  return cls(**kw)


def _counts(values: tuple, low: int) -> bool:
  """Whether every entry is an integer (not a bool) >= low."""
  return all(isinstance(v, int) and not isinstance(v, bool) and v >= low for v in values)


def _choice(field: str, value: str, options: tuple[str, ...]) -> None:
  if value not in options:
    raise _err(field, value, f'must be one of {", ".join(options)}')


def _positive(field: str, value: float) -> None:
  if not value > 0:
    raise _err(field, value, 'must be > 0')


def _rate(field: str, value: float) -> None:
  if not 0.0 <= value < 1.0:
    raise _err(field, value, 'must be in [0, 1)')


def validate_model(m: ModelConfig) -> None:
  _choice('model.family', m.family, FAMILIES)
  for f in ('d_model', 'num_layers', 'num_heads', 'max_len'):
    _positive(f'model.{f}', getattr(m, f))
  for f in ('vocab_size', 'num_kv_heads', 'head_dim', 'mlp_dim', 'attn_block', 'loss_chunk',
            'attn_max_docs',
            'num_classes', 'num_decoder_layers'):
    if getattr(m, f) < 0:
      raise _err(f'model.{f}', getattr(m, f), 'must be >= 0 (0 = default)')
  if m.head_dim == 0 and m.d_model % m.num_heads:
    raise _err('model.d_model', m.d_model,
               f'must be divisible by model.num_heads={m.num_heads}')
  if m.mlm_transform and m.family != 'encoder':
    raise _err('model.mlm_transform', True, "BERT's masked-LM head transform needs "
               "model.family='encoder'")
  if m.num_heads % m.kv_heads:
    raise _err('model.num_kv_heads', m.num_kv_heads,
               f'must divide model.num_heads={m.num_heads}')
  if m.position == 'rope' and m.dh % 2:
    raise _err('model.head_dim', m.dh, 'RoPE needs an even head dimension')
  _choice('model.position', m.position, POSITIONS)
  _choice('model.norm', m.norm, NORMS)
  _choice('model.activation', m.activation, ACTIVATIONS)
  _choice('model.param_dtype', m.param_dtype, DTYPES)
  _choice('model.dtype', m.dtype, DTYPES)
  _choice('model.remat', m.remat, REMAT)
  _choice('model.attention', m.attention, ATTENTION)
  if m.attn_dropout > 0 and m.attention not in ('auto', 'xla'):  # It ran xla instead.
    raise _err('model.attention', m.attention, f'attention dropout '
               f'(model.attn_dropout={m.attn_dropout}) exists only on the xla path: set '
               "model.attention='xla' or 'auto', or model.attn_dropout=0")
  _choice('model.pool', m.pool, POOLS)
  for f in ('embed_dropout', 'attn_dropout', 'resid_dropout'):
    _rate(f'model.{f}', getattr(m, f))
  _positive('model.init_std', m.init_std)
  _positive('model.norm_eps', m.norm_eps)
  _positive('model.rope_theta', m.rope_theta)
  _choice('model.parametrization', m.parametrization, PARAMETRIZATIONS)
  for f in ('base_width', 'depth_base'):
    if getattr(m, f) < 0:
      raise _err(f'model.{f}', getattr(m, f), 'must be >= 0 (0 = off / d_model)')
  if not 0.0 < m.depth_alpha <= 1.0:
    raise _err('model.depth_alpha', m.depth_alpha, 'must be in (0, 1] (1: CompleteP, '
               '0.5: depth-muP)')


def validate(c: Config, recorded: bool = False) -> None:
  """Checks every rule that can fail before compilation: each section on its
  own, then the rules that tie sections together. `recorded`: a trained run's
  config.json, read by a tool; rules that only guard a new run's settings (a
  wsd cooldown inside the warmup, logical axes the model lacks) were added after
  some runs were made, and do not make those runs unreadable."""
  validate_model(c.model)
  _validate_opt(c.opt, c.train, recorded)
  _validate_data(c.data, c.model, recorded)
  _validate_task(c)
  _validate_train(c)
  _validate_mesh(c, recorded)
  _validate_unread(c)
  from lm import objectives  # Imports this module: here, not at the top.
  objectives.check_fields(c)


def _read_only_if(c: Config) -> list[tuple[str, bool, str]]:
  """(field, whether this config reads it, the condition under which it does)
  for the fields that only some configurations read. Fields only another
  objective reads are listed by the objectives (Objective.fields)."""
  m, d, t = c.model, c.data, c.train
  canaries = bool(d.canary_repeats)
  return [
      ('model.num_decoder_layers', m.family == 'encoder_decoder',
       "model.family='encoder_decoder' (a decoder stack)"),
      ('model.rope_theta', m.position == 'rope', "model.position='rope'"),
      ('model.attn_max_docs', m.attention in ('dot_product', 'auto'),
       "model.attention='dot_product' (or 'auto', which is dot_product on GPUs)"),
      ('data.target_len', bool(d.target_key), '(input, target) pairs (data.target_key; span '
       "corruption's targets follow data.seq_len, noise_density and mean_span)"),
      ('data.tfds_name', d.source == 'tfds', "data.source='tfds'"),
      ('data.text_key', d.source in ('file', 'tfds'), "data.source='file' or 'tfds'"),
      ('data.tokenizer_path', d.tokenizer != 'byte', "data.tokenizer='sentencepiece' or 'hf'"),
      ('data.canary_template', canaries, 'data.canary_repeats (the canaries to insert)'),
      ('data.canary_digits', canaries, 'data.canary_repeats (the canaries to insert)'),
      ('data.canary_seed', canaries, 'data.canary_repeats (the canaries to insert)'),
      ('train.max_skips', t.on_nonfinite == 'skip', "train.on_nonfinite='skip'"),
      ('train.max_rollbacks', t.on_nonfinite == 'rollback', "train.on_nonfinite='rollback'"),
      ('train.eval_tasks_path', bool(t.eval_tasks), 'train.eval_tasks'),
      ('train.eval_tasks_limit', bool(t.eval_tasks), 'train.eval_tasks'),
  ]


def value_and_default(c: Config, field: str) -> tuple[Any, Any]:
  """'section.key' -> (this config's value, the field's default)."""
  section, key = field.split('.')
  return getattr(getattr(c, section), key), getattr(SECTIONS[section](), key)


def _validate_unread(c: Config) -> None:
  """A field this config does not read, set away from its default, changed
  nothing, silently: refused, naming what would make it count."""
  for field, read, condition in _read_only_if(c):
    value, default = value_and_default(c, field)
    if not read and value != default:
      raise _err(field, value, f'read only with {condition}, so it changes nothing here; '
                 f'leave it at its default {default!r}')


def _validate_opt(o: OptimizerConfig, t: TrainConfig, recorded: bool = False) -> None:
  _positive('opt.lr', o.lr)
  _positive('train.steps', t.steps)  # Before the warmup check names warmup for it.
  if o.warmup_steps < 0:
    raise _err('opt.warmup_steps', o.warmup_steps, 'must be >= 0')
  if o.warmup_steps > t.steps:
    raise _err('opt.warmup_steps', o.warmup_steps,
               f'warmup must not be longer than train.steps={t.steps}')
  _choice('opt.schedule', o.schedule, SCHEDULES)
  _choice('opt.cooldown_shape', o.cooldown_shape, COOLDOWN_SHAPES)
  if not 0.0 < o.cooldown_fraction <= 1.0:
    raise _err('opt.cooldown_fraction', o.cooldown_fraction, 'must be in (0, 1]')
  # wsd's cooldown starts at a step of its own (lm/optimizer.schedule): a warmup
  # past it cut the cooldown short, or ended the run at its peak rate, silently.
  # (A warmup as long as a cosine run is a ramp over the whole run: allowed.)
  cool_from = t.steps - max(round(o.cooldown_fraction * t.steps), 1)
  if o.schedule == 'wsd' and o.warmup_steps > cool_from and not recorded:
    raise _err('opt.warmup_steps', o.warmup_steps,
               f'the wsd cooldown (opt.cooldown_fraction={o.cooldown_fraction:g} of '
               f'train.steps={t.steps}) would start at step {cool_from}, inside the warmup: '
               f'use at most {max(cool_from, 0)} warmup steps, or a lower cooldown fraction')
  if not 0.0 <= o.min_lr_ratio <= 1.0:
    raise _err('opt.min_lr_ratio', o.min_lr_ratio, 'must be in [0, 1]')
  for f in ('b1', 'b2'):
    if not 0.0 <= getattr(o, f) < 1.0:
      raise _err(f'opt.{f}', getattr(o, f), 'must be in [0, 1)')
  _positive('opt.eps', o.eps)
  if o.weight_decay < 0 or o.grad_clip < 0 or o.z_loss < 0:
    raise ConfigError('config.opt.weight_decay, grad_clip and z_loss must be >= 0 '
                      f'(got {o.weight_decay}, {o.grad_clip}, {o.z_loss})')
  for x in o.wd_exclude:
    _choice('opt.wd_exclude', x, WD_EXCLUDE)


def _validate_data(d: DataConfig, m: ModelConfig, recorded: bool = False) -> None:
  _choice('data.source', d.source, SOURCES)
  _choice('data.tokenizer', d.tokenizer, TOKENIZERS)
  _positive('data.seq_len', d.seq_len)
  if not 0.0 < d.val_fraction < 1.0:
    raise _err('data.val_fraction', d.val_fraction, 'must be in (0, 1)')
  if not all(isinstance(x, str) for x in d.labels):
    raise _err('data.labels', d.labels, "class names are strings as they appear in the "
               "data, e.g. ('neg', 'pos') or ('0', '1')")
  if len(set(d.labels)) != len(d.labels):
    dup = sorted({x for x in d.labels if d.labels.count(x) > 1})
    raise _err('data.labels', d.labels, f'list each class once ({dup} repeat)')
  if d.source in ('stdlib', 'dir'):  # Split by file hash into exactly these two.
    for f, want in (('train_split', 'train'), ('val_split', 'validation')):
      if getattr(d, f) != want:
        raise _err(f'data.{f}', getattr(d, f), f"a {d.source} corpus has the splits 'train' "
                   "and 'validation' (data.val_fraction sets their sizes)")
  if d.source == 'dir' and not d.path:
    raise _err('data.path', d.path, "set a directory or glob for data.source='dir'")
  if d.source == 'tfds' and d.train_split == d.val_split and not recorded:
    raise _err('data.val_split', d.val_split, 'it is data.train_split too, so validation '
               "would score the training data; name another split or a slice (e.g. "
               "train_split='train[:95%]', val_split='train[95%:]')")
  if d.source == 'tfds' and not d.tfds_name:
    raise _err('data.tfds_name', d.tfds_name,
               "set a TFDS catalog name (e.g. 'tiny_shakespeare') for data.source='tfds'")
  if d.source == 'file' and not (d.path and (d.label_key or d.target_key)):
    raise _err('data.path', d.path, "data.source='file' needs data.path (a .csv or "
               '.jsonl file) and data.label_key (classification) or data.target_key '
               '(sequence to sequence)')
  if d.eval_path and d.source != 'file':
    raise _err('data.eval_path', d.eval_path, "read with data.source='file' only; "
               f"a {d.source} source validates on data.val_split"
               + (' (its share: data.val_fraction)' if d.source in ('stdlib', 'dir') else ''))
  if (d.label_key or d.target_key) and d.source not in ('file', 'tfds'):
    raise _err('data.source', d.source, "labelled or paired data (data.label_key or "
               "data.target_key set) comes from data.source='file' or 'tfds'")
  if d.target_key and (m.family != 'encoder_decoder' or d.label_key):
    raise _err('data.target_key', d.target_key, 'sequence-to-sequence pairs need '
               "model.family='encoder_decoder' and no data.label_key")
  if d.target_len < 0:
    raise _err('data.target_len', d.target_len, 'must be >= 0 (0 = seq_len)')
  for f in ('mlm_rate', 'noise_density'):
    if not 0.0 < getattr(d, f) < 1.0:
      raise _err(f'data.{f}', getattr(d, f), 'must be in (0, 1)')
  for f in ('mlm_mask_frac', 'mlm_random_frac'):
    if not 0.0 <= getattr(d, f) <= 1.0:
      raise _err(f'data.{f}', getattr(d, f), 'must be in [0, 1]')
  if d.mlm_mask_frac + d.mlm_random_frac > 1.0:
    raise ConfigError(f'config.data.mlm_mask_frac + mlm_random_frac = '
                      f'{d.mlm_mask_frac + d.mlm_random_frac} must be <= 1')
  if not d.mean_span >= 1.0:
    raise _err('data.mean_span', d.mean_span, 'must be >= 1 (tokens per span)')
  if not _counts(d.canary_repeats, 0):
    raise _err('data.canary_repeats', d.canary_repeats, 'each entry is a repetition count '
               '>= 0, e.g. (0, 1, 4, 16, 64)')
  if d.canary_template.count('{secret}') != 1:
    raise _err('data.canary_template', d.canary_template, "must contain '{secret}' once")
  if not 1 <= d.canary_digits <= 12:
    raise _err('data.canary_digits', d.canary_digits, 'must be in 1..12')


def _validate_task(c: Config) -> None:
  """Labelled data, task heads and the model family agree."""
  m, o, d = c.model, c.opt, c.data
  if m.family == 'encoder_decoder' and d.label_key:
    raise _err('data.label_key', d.label_key, "classification fine-tuning serves "
               "model.family='decoder' or 'encoder'")
  if m.family != 'decoder' and m.pool == 'last' and d.label_key:
    raise _err('model.pool', m.pool, f"family {m.family} classifies from the 'first' "
               "token or the 'mean'")
  if m.family == 'decoder' and m.pool == 'first' and d.label_key:  # Causal: it sees itself.
    raise _err('model.pool', m.pool, "a causal decoder's first token sees only itself; "
               "classify from the 'last' token or the 'mean'")
  if o.freeze_backbone and not d.label_key:
    raise _err('opt.freeze_backbone', True, 'only classifier fine-tuning (data.label_key '
               'set) has a head to train alone')
  if m.num_classes and not d.label_key:
    raise _err('model.num_classes', m.num_classes, 'a classifier needs labelled data: '
               'set data.label_key (and data.source file or tfds)')
  if d.tokenizer in _TOKENIZER_FILES and not d.tokenizer_path:
    raise _err('data.tokenizer_path', d.tokenizer_path,
               f'set the path of {_TOKENIZER_FILES[d.tokenizer]}')
  if d.canary_repeats and (m.family != 'decoder' or d.label_key):
    raise _err('data.canary_repeats', d.canary_repeats, 'canaries go into a causal '
               "language model's training text (model.family='decoder', no data.label_key)")
  if m.position in ('learned', 'sinusoidal'):  # A table of max_len rows: no row past it.
    table = f'the {m.position} position table model.max_len={m.max_len}'
    if d.seq_len > m.max_len:
      raise _err('data.seq_len', d.seq_len, f'longer than {table}')
    if m.family == 'encoder_decoder' and d.target_len > m.max_len:
      raise _err('data.target_len', d.target_len, f'longer than {table}')


def _validate_train(c: Config) -> None:
  t = c.train
  for f in ('batch_size', 'grad_accum', 'steps', 'log_every', 'eval_every',
            'eval_batches', 'checkpoint_every', 'keep_checkpoints'):
    _positive(f'train.{f}', getattr(t, f))
  if t.batch_size % t.grad_accum:
    raise _err('train.batch_size', t.batch_size,
               f'must be divisible by train.grad_accum={t.grad_accum}')
  if t.require_init_from and not c.init_from:
    raise _err('init_from', c.init_from, 'this config fine-tunes a pre-trained model: set '
               '--config.init_from to its run directory (or <workdir>/checkpoints/<step>)')
  for f, seed in (('train.seed', t.seed), ('data.shuffle_seed', c.data.shuffle_seed),
                  ('data.canary_seed', c.data.canary_seed)):
    if not 0 <= seed < 2 ** 32:  # numpy refuses negative seeds; JAX keys keep 32 bits,
      raise _err(f, seed, 'must be in [0, 2**32)')  # so 2**32 + s would repeat s.
  _choice('train.on_nonfinite', t.on_nonfinite, NONFINITE)
  _positive('train.max_skips', t.max_skips)
  _positive('train.max_rollbacks', t.max_rollbacks)
  if not _counts(t.extra_checkpoints, 1):
    raise _err('train.extra_checkpoints', t.extra_checkpoints, 'each entry is a step >= 1, '
               'e.g. (800, 1600)')
  if t.peak_flops < 0:
    raise _err('train.peak_flops', t.peak_flops, 'must be >= 0 (0 = look up)')
  _choice('train.flops_convention', t.flops_convention, CONVENTIONS)
  if t.eval_tasks_limit < 0:
    raise _err('train.eval_tasks_limit', t.eval_tasks_limit, 'must be >= 0 (0 = every document)')
  if t.eval_tasks_path and not os.path.isdir(t.eval_tasks_path):
    raise _err('train.eval_tasks_path', t.eval_tasks_path, 'is not a directory of task YAML '
               'files')
  if not all(isinstance(x, str) for x in t.eval_tasks):
    raise _err('train.eval_tasks', t.eval_tasks, "task names are strings, e.g. "
               "('lambada_openai', 'hellaswag')")
  if t.eval_bias_csv and not os.path.isfile(t.eval_bias_csv):
    raise _err('train.eval_bias_csv', t.eval_bias_csv, 'is not a file (a CrowS-Pairs-format '
               'CSV: sent_more, sent_less, bias_type)')
  if (t.eval_tasks or t.eval_bias_csv) and (c.model.family == 'encoder_decoder'
                                            or c.model.num_classes):
    raise _err('train.eval_tasks' if t.eval_tasks else 'train.eval_bias_csv',
               t.eval_tasks or t.eval_bias_csv, 'task and bias evaluation need a decoder '
               '(tasks) or a decoder or encoder language model (bias)')
  if t.eval_tasks and c.model.family != 'decoder':
    raise _err('train.eval_tasks', t.eval_tasks, "harness tasks need model.family='decoder'")


def _validate_mesh(c: Config, recorded: bool = False) -> None:
  for ax in MESH_AXES:
    v = getattr(c.mesh, ax)
    if v == 0 or v < -1:
      raise _err(f'mesh.{ax}', v, 'must be a positive size or -1 (the rest)')
    _positive(f'mesh.dcn_{ax}', getattr(c.mesh, f'dcn_{ax}'))
  if sum(getattr(c.mesh, ax) == -1 for ax in MESH_AXES) > 1:
    raise ConfigError(f'config.mesh={c.mesh}: at most one axis may be -1')
  logical = [n for n, _ in DEFAULT_RULES]  # Every logical axis the model names.
  for name, axes in c.rules:
    if name not in logical and not recorded:  # A typo: its parameters replicated, silently.
      raise _err('rules', (name, axes), f'logical axes are {", ".join(logical)}')
    listed = axes if isinstance(axes, tuple) else (axes,)
    for a in listed:
      if a is not None and a not in MESH_AXES:
        raise _err('rules', (name, axes), f'mesh axes must be in {MESH_AXES}')
    if len(set(listed)) != len(listed):
      raise _err('rules', (name, axes), 'a mesh axis may split a logical axis once')


def _rules(raw) -> tuple[tuple[str, Any], ...]:
  """config.rules: a table of (logical axis, mesh axes) pairs, or one preset
  name of RULE_PRESETS (on the command line: --config.rules="('dp',)")."""
  if not isinstance(raw, (str, list, tuple)):
    raise _err('rules', raw, f'a preset ({", ".join(RULE_PRESETS)}) or a table of '
               '(logical axis, mesh axes) pairs')
  if isinstance(raw, str) or (len(raw) == 1 and isinstance(raw[0], str)):
    name = raw if isinstance(raw, str) else raw[0]
    if name not in RULE_PRESETS:
      raise _err('rules', name, f'a preset ({", ".join(RULE_PRESETS)}) or a table of '
                 '(logical axis, mesh axes) pairs')
    return RULE_PRESETS[name]
  out = []
  for item in raw:
    if not isinstance(item, (list, tuple)) or len(item) != 2:
      raise _err('rules', item, 'each entry a (logical axis, mesh axes) pair, or the '
                 f'whole field one preset ({", ".join(RULE_PRESETS)})')
    name, axes = item
    out.append((name, tuple(axes) if isinstance(axes, (list, tuple)) else axes))
  return tuple(out)


SECTIONS = {'model': ModelConfig, 'opt': OptimizerConfig, 'data': DataConfig,
            'train': TrainConfig, 'mesh': MeshConfig}


def from_configdict(cd: ml_collections.ConfigDict | dict, recorded: bool = False) -> Config:
  """Validates a ConfigDict once and freezes it into dataclasses (`recorded`:
  a trained run's config.json; see validate)."""
  d = cd.to_dict() if isinstance(cd, ml_collections.ConfigDict) else dict(cd)
  known = set(SECTIONS) | {'rules', 'name', 'init_from'}
  for k in d:
    if k not in known:
      close = difflib.get_close_matches(k, known, n=1)
      hint = f' (did you mean {close[0]!r}?)' if close else ''
      raise ConfigError(f'config.{k} is not a known section{hint}; '
                        f'valid: {", ".join(sorted(known))}')
  for s in SECTIONS:
    if not isinstance(d.get(s, {}), (dict, ml_collections.ConfigDict)):
      raise ConfigError(f'config.{s} is {d[s]!r}, not a section of fields (e.g. '
                        f'config.{s}.{dataclasses.fields(SECTIONS[s])[0].name})')
  parts = {s: _build(cls, s, dict(d.get(s, {}))) for s, cls in SECTIONS.items()}
  tp = parts['data'].tokenizer_path
  if tp and '://' not in tp:  # Recorded absolute, so a run's tools work from any directory.
    parts['data'] = dataclasses.replace(parts['data'],
                                        tokenizer_path=os.path.abspath(os.path.expanduser(tp)))
  c = Config(**parts, rules=_rules(d.get('rules', DEFAULT_RULES)),
             name=str(d.get('name', 'run')), init_from=str(d.get('init_from', '')))
  validate(c, recorded)
  return c


def to_dict(c: Config) -> dict[str, Any]:
  return dataclasses.asdict(c)


def diff(a: dict[str, Any], b: dict[str, Any], prefix: str = '') -> list[str]:
  """Fields (dotted) whose values differ between two nested dicts."""
  out = []
  for k in sorted(set(a) | set(b)):
    va, vb = a.get(k), b.get(k)
    if isinstance(va, dict) and isinstance(vb, dict):
      out += diff(va, vb, f'{prefix}{k}.')
    elif _norm(va) != _norm(vb):
      out.append(f'{prefix}{k}: {va!r} != {vb!r}')
  return out


def _norm(v):
  if isinstance(v, (list, tuple)):
    return tuple(_norm(x) for x in v)
  if isinstance(v, float) and math.isnan(v):
    return 'nan'
  return v
