"""Metrics to JSONL (safe to tail) and TensorBoard, from process 0 only."""

from __future__ import annotations

import itertools
import json
import math
import os
import sys
import threading
from typing import Any

import jax

from lm import workdir as workdir_lib
from lm.config import ConfigError


class MetricsError(ConfigError):
  """A metrics.jsonl damaged other than by a kill mid-write (one-line error)."""


class Writer:
  """Appends one JSON object per line and mirrors scalars to TensorBoard.

  A run (re)started at step `start` has TensorBoard drop the earlier events
  from it on (tensorboardX's purge_step) and mirror what metrics.jsonl keeps,
  as lm/workdir.truncate_metrics drops those rows from metrics.jsonl: a killed
  process's steps past its last checkpoint would otherwise show twice."""

  def __init__(self, workdir: str, enabled: bool | None = None, start: int = 0):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self._tb_dir = os.path.join(workdir, 'tb')
    self._tb = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      self.restart_at(start)

  def restart_at(self, step: int) -> None:
    """TensorBoard drops every event at or after `step` written so far (a
    killed process's, a rolled-back stretch's): a new events file whose session
    starts at `step`; the rows metrics.jsonl keeps at `step` (its eval, say)
    are written to it again. Call it after lm/workdir.truncate_metrics."""
    if not self.enabled:
      return
    if self._tb is not None:
      self._tb.close()
    # Events files are named by the second they were opened in and opened with
    # 'wb': a suffix keeps a second writer in the same second (a quick resume
    # or rollback) from truncating the first one's file.
    self._tb = _summary_writer()(self._tb_dir, purge_step=step,
                                 filename_suffix=f'.{os.getpid()}.{next(_FILES):04d}')
    for row in read(os.path.dirname(self.path)):
      if row['step'] == step:
        self._scalars(row)
    self._tb.flush()

  def write(self, step: int, kind: str, values: dict[str, Any]) -> None:
    if not self.enabled:
      return
    row = {'step': int(step), 'kind': kind}
    row.update({k: _plain(v) for k, v in values.items()})
    with open(self.path, 'a') as f:
      f.write(json.dumps(row) + '\n')
    self._scalars(row)
    self._tb.flush()

  def _scalars(self, row: dict[str, Any]) -> None:
    for k, v in row.items():
      if isinstance(v, (int, float)) and k not in ('step', 'kind'):
        self._tb.add_scalar(f'{row["kind"]}/{k}', v, row['step'])

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


_IMPORT_LOCK = threading.Lock()
_FILES = itertools.count()


def _summary_writer() -> type:
  """tensorboardX's SummaryWriter, imported without torch.

  tensorboardX imports torch whenever it is installed, only to accept torch
  tensors; we pass floats. Where torch is installed (the test environment,
  many researchers' machines) that import cost every training process 3.7 s on
  2 cores. A None entry in sys.modules makes `import torch` fail for the
  duration of tensorboardX's import, and tensorboardX falls back to numpy."""
  with _IMPORT_LOCK:  # Writers made in two threads at once: one import, one restore.
    if 'tensorboardX' in sys.modules or 'torch' in sys.modules:
      from tensorboardX import SummaryWriter
      return SummaryWriter
    sys.modules['torch'] = None  # type: ignore[assignment]
    try:
      from tensorboardX import SummaryWriter
    finally:
      del sys.modules['torch']
    return SummaryWriter


def _plain(v: Any) -> Any:
  if hasattr(v, 'item'):
    v = v.item()
  if isinstance(v, float) and not math.isfinite(v):
    return str(v)
  return v


def number(v: Any) -> float:
  """A metric value as a float: the non-finite ones _plain wrote as strings
  ('nan', 'inf', '-inf') back to floats; anything else not a number is nan."""
  if isinstance(v, (int, float)) and not isinstance(v, bool):
    return float(v)
  return float(v) if v in ('nan', 'inf', '-inf') else float('nan')


def parse(path: str, lines: list[str], damaged_ok: bool = False
          ) -> list[tuple[str, dict[str, Any]]]:
  """(line, row) for the non-blank lines of a metrics.jsonl. A torn last line
  (a kill mid-write) is skipped; a damaged row before it raises MetricsError
  unless `damaged_ok` (a fresh start, which drops every row anyway)."""
  out = []
  for i, line in enumerate(lines):
    try:
      out.append((line, json.loads(line)))
    except ValueError:
      if i == len(lines) - 1 or damaged_ok:
        continue
      raise MetricsError(f'{path}:{i + 1} is not a JSON row (a damaged file); restore it, '
                         'or delete the run directory to train it again') from None
  return out


def read_lines(path: str) -> list[str]:
  """The non-blank lines of a metrics.jsonl; one that cannot be read as UTF-8
  text (a directory, stray bytes) is a MetricsError naming it."""
  try:
    with open(path, encoding='utf-8') as f:
      return [line for line in f if line.strip()]
  except (OSError, UnicodeDecodeError) as e:
    raise MetricsError(f'{path} cannot be read ({workdir_lib.reason(e)}); restore it, or delete '
                       'the run directory to train it again') from None


def read(workdir: str, kind: str | None = None) -> list[dict[str, Any]]:
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  lines = read_lines(path)
  return [r for _, r in parse(path, lines) if kind is None or r['kind'] == kind]
