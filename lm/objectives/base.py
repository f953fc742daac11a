"""The objective interface: a record of plain functions, one per thing that varies.

The trainer, the sweep, the report and the CLIs call these and nothing else
that depends on the objective: adding an objective is one new module that
builds an `Objective` and one entry in lm/objectives/__init__.py's table.

Every batch is a dict of arrays with a leading batch axis B; row weights
(1 = a real row, 0 = padding of the last eval batch) travel beside it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax.numpy as jnp
import numpy as np

from lm import data as data_lib
from lm.config import Config


@dataclasses.dataclass(frozen=True)
class Data:
  """What an objective's data preparation hands the trainer."""
  train: Any  # Random access (a grain source): example i -> dict of arrays.
  evals: list  # (batch dict, row weights) pairs, every eval example once.
  transform: Callable | None = None  # (example, np Generator) -> row: fresh noise each epoch.


def _no_check(c: Config, tokenizer_vocab: int) -> None:
  del c, tokenizer_vocab


def _no_labels(c: Config) -> tuple[Config, Any]:
  return c, None


def _no_extra_ids(c: Config) -> int:
  del c
  return 0


def _text_lengths(c: Config) -> tuple[int, int]:
  del c
  return 0, 0


@dataclasses.dataclass(frozen=True)
class Objective:
  """One training objective.

  name        results.csv's `objective` column and the CLIs' word for it.
  families    the model families it trains.
  headline    the summarize() key that sweeps, reports and progress bars show
              beside the loss (fits always use the loss), and its direction.
  data        (config, tokenizer, loaded, process index, process count) -> Data.
  loss        (apply, batch, row weights, z_loss) -> (mean loss, aux sums);
              `apply(*args, **kwargs)` is the model's apply with params bound.
  count       the aux sum the mean is over (target tokens, or examples):
              gradient accumulation weights micro-batches by it.
  eval_sums   (aux, batch, row weights, bytes per id) -> statistics to sum
              over eval batches (inside jit).
  summarize   summed statistics -> eval metrics (always with 'loss').
  describe    eval metrics -> the one line the train CLI prints.
  row_shapes  config -> {key: (per-row shape, dtype)} of one batch row (AOT
              compilation and benchmarks build batches from it).
  extra_ids   ids the objective needs above the tokenizer's (MASK, sentinels).
  check       (config, tokenizer vocab) -> None; raises ConfigError early.
  load        config -> (config with fields the data decide, loaded data):
              labelled or paired files are read once, before the workdir check.
  lengths     config -> (encoder, decoder) lengths per example for FLOPs;
              (0, 0) where data.seq_len alone decides them.
  fields      config fields that only this objective reads: set away from
              their defaults for another objective they would change nothing,
              so lm/config.validate refuses them (objectives.check_fields).
  """
  name: str
  families: tuple[str, ...]  # model.family values it trains.
  headline: str
  higher_is_better: bool
  data: Callable[..., Data]
  loss: Callable[..., tuple[Any, dict]]
  eval_sums: Callable[..., dict]
  summarize: Callable[[dict], dict]
  describe: Callable[[dict], str]
  row_shapes: Callable[[Config], dict[str, tuple[tuple[int, ...], Any]]]
  extra_ids: Callable[[Config], int] = _no_extra_ids
  check: Callable[[Config, int], None] = _no_check
  load: Callable[[Config], tuple[Config, Any]] = _no_labels
  lengths: Callable[[Config], tuple[int, int]] = _text_lengths
  count: str = 'tokens'
  fields: tuple[str, ...] = ()


# --- Helpers several objectives share ------------------------------------------

def token_summary(sums: dict[str, float]) -> dict[str, float]:
  """Per target token: loss, perplexity and (where counted) accuracy."""
  n = max(sums['tokens'], 1.0)
  loss = sums['nll_sum'] / n
  out = {'loss': loss, 'perplexity': math.exp(min(loss, 700.0)), 'tokens': sums['tokens']}
  if 'correct' in sums:
    out['accuracy'] = sums['correct'] / n
  return out


def token_loss(apply, batch: dict, weights_B, z_loss: float, *args, **kwargs):
  """Mean NLL (+ z-loss) over the batch's weighted `targets` of the model
  apply(*args, **kwargs), and the summed statistics (NLL, tokens, correct
  argmax) that token_eval_sums keeps. The model computes them from its final
  hidden states (lm/model.token_sums: chunked with model.loss_chunk)."""
  s = apply(*args, targets_BL=batch['targets'],
            target_weights_BL=batch['weights'] * weights_B[:, None], z_loss=z_loss, **kwargs)
  n = s['tokens']
  return ((s['nll_sum'] + s['z_sum']) / jnp.maximum(n, 1.0),
          {'nll_sum': s['nll_sum'], 'tokens': n, 'correct': s['correct']})


def token_eval_sums(aux: dict, batch: dict, weights_B, bytes_V) -> dict:
  del batch, weights_B, bytes_V
  return {k: aux[k] for k in ('nll_sum', 'tokens', 'correct')}


def stack_rows(rows: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


EVAL_NOISE_SEED = 0  # The eval rows' corruption noise (data.shuffle_seed's default).


def corrupted_windows(c: Config, tokenizer, transform: Callable, pidx: int, pcount: int
                      ) -> Data:
  """Windows of seq_len text tokens, corrupted by `transform` (masked LM, span
  corruption): a fresh draw each epoch in training; eval windows are the first
  of the validation split, each with noise fixed by its index alone, not by
  data.shuffle_seed: seed replicates (and a pack's members, which share one
  eval set) score the same eval rows."""
  L, B = c.data.seq_len, c.train.batch_size
  train, val = data_lib.token_splits(c.data, tokenizer)
  data_lib.check_windows(train, L, 'train', B, extra=0)
  data_lib.check_windows(val, L, 'validation', 1, extra=0)
  windows = data_lib.Windows(val, L)
  rows = [transform(windows[i], np.random.default_rng([EVAL_NOISE_SEED, i]))
          for i in range(min(len(windows), B * c.train.eval_batches))]
  return Data(data_lib.Windows(train, L),
              data_lib.eval_rows(stack_rows(rows), B, pidx, pcount), transform)
