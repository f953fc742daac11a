"""Host-side batch production: one read per row vs one read per batch (data.batched).

python -m tools.bench_data [--config=configs/isoflop_tiny.py] [--batches=300]

Times how fast one producer thread makes training batches of the config's
shape from its prepared corpus, both ways, in one process: `rows` reads each
window (and, with data.document_mask, computes its document ids) in its own
Python call, as grain's per-row path does; `batch` is data.batched's path for
sources with gather(). Run it pinned to one core with one XLA thread to see
what a sweep worker pays per step (the step itself runs on that core too).

2026-11-26, this project's 2-core machine, the main job's shape (64 rows of 65
tokens with document ids), one core, one XLA thread, the same pipeline as a
one-off script before this tool wrapped it (two runs, nothing else running):

  path   ms/batch
  rows   2.69  2.59
  batch  1.70  1.58

A d_model-16 train step of that shape takes ~25 ms on one core, so reading a
batch row by row was ~10% of it; a pack of K members reads K batches per step.
"""

from __future__ import annotations

import time

from absl import app, flags

from lm import cli

_CONFIG = cli.define_config('Config file.', 'configs/isoflop_tiny.py')
_BATCHES = flags.DEFINE_integer('batches', 300, 'Timed batches per path.', lower_bound=1)


class RowsOnly:
  """A source without gather(): data.batched then reads one row per call."""

  def __init__(self, source):
    self.source = source

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, i: int):
    return self.source[i]


def measure(cd, batches: int) -> dict[str, float]:
  """ms per batch of each path that applies to this (run) ConfigDict's data."""
  import grain

  from lm import config as config_lib
  from lm import data as data_lib
  from lm import train, workdir
  c = config_lib.from_configdict(cd)
  workdir.check_writable(data_lib.cache_root(c.data),  # As the train CLI, before preparing.
                         'the data cache (data.cache_dir, $LM_CACHE or ~/.cache/lm)')
  c, tok, objective, loaded = train.resolve(c)
  data = objective.data(c, tok, loaded, 0, 1)
  fast = data.transform is None and hasattr(data.train, 'gather')
  # One producer thread and a short buffer: the time to make a batch, not to
  # take one that a pool of threads made in advance.
  one = grain.ReadOptions(num_threads=1, prefetch_buffer_size=4)
  out = {}
  for name, src in (('rows', RowsOnly(data.train)), ('batch', data.train))[:2 if fast else 1]:
    it = iter(data_lib.batched(src, c.train.batch_size, 0, 0, 1, data.transform, one))
    next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
      next(it)
    out[name] = (time.perf_counter() - t0) / batches * 1e3
  return out


def main(argv):
  del argv
  import sys

  import ml_collections

  from lm.config import ConfigError
  from lm.workdir import NotWritable
  cd = ml_collections.ConfigDict(_CONFIG.value.to_dict())  # Unlocked copy.
  if 'sweep' in cd:  # A sweep config's runs share its data; a run config has none.
    del cd['sweep']
  try:
    print(f'batch {cd.train.batch_size} x {cd.data.seq_len + 1} tokens, '
          f'document_mask={cd.data.document_mask}\n')
    rows = measure(cd, _BATCHES.value)
  except (ConfigError, NotWritable) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  print('| path | ms/batch |\n|---|---|')
  for name, ms in rows.items():
    print(f'| {name} | {ms:.2f} |')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
