"""Evaluation beyond loss, on a trained run: harness tasks, canary exposure, bias.

python -m tools.eval --workdir=runs/tiny --tasks=lm_tiny_mc,lm_tiny_lastword \
    --include_path=tests/tasks            # lm-evaluation-harness tasks (lm/harness.py)
python -m tools.eval --workdir=runs/canary --canaries   # exposure of the run's canaries
python -m tools.eval --workdir=runs/tiny --bias_csv=tests/data/bias_pairs.csv  # lm/probes.py

Prints a table per part and writes everything as one JSON (--out; default
<workdir>/eval/step_<step>.json). --workdir may name a run or one of its
checkpoints/<step> directories. Task files are the harness's YAML; with no
network, their `dataset_path: json` points at local JSONL (tests/tasks/).
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags, logging

from lm import checkpoint, cli, harness, probes, workdir
from lm import config as config_lib

_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory or checkpoints/<step>.')
_TASKS = flags.DEFINE_list('tasks', [], 'Harness task names (comma-separated).')
_INCLUDE = flags.DEFINE_string('include_path', '', 'Directory of extra task YAML files.')
_LIMIT = flags.DEFINE_integer('limit', None, 'At most this many documents per task.',
                               lower_bound=1)
_BATCH = flags.DEFINE_integer('batch_size', 16, 'Rows per likelihood batch.', lower_bound=1)
_CANARIES = flags.DEFINE_bool('canaries', False, "Exposure and extraction of the run's canaries.")
_BIAS = flags.DEFINE_string('bias_csv', '', 'CrowS-Pairs-format CSV: the bias probe.')
_OUT = flags.DEFINE_string('out', '', 'JSON output (default <workdir>/eval/step_<step>.json).')
flags.mark_flags_as_required(['workdir'])


def evaluate(path: str, tasks: list[str], include_path: str = '', limit: int | None = None,
             canaries: bool = False, bias_csv: str = '', batch_size: int = 16) -> dict:
  """Everything asked for, as one dict (the JSON tools.eval writes)."""
  c = checkpoint.load_config(path)
  if not (tasks or canaries or bias_csv):
    raise config_lib.ConfigError('nothing to evaluate: give --tasks, --canaries or --bias_csv')
  if bias_csv and not os.path.isfile(bias_csv):
    raise config_lib.ConfigError(f'--bias_csv={bias_csv} is not a file')
  if include_path and not os.path.isdir(include_path):
    raise config_lib.ConfigError(f'--include_path={include_path} is not a directory')
  if canaries and not os.path.isfile(probes.canary_path(path)):
    raise config_lib.ConfigError(f'{path} has no {probes.CANARY_FILE}: the run inserted no '
                                 'canaries (set data.canary_repeats when training)')
  probes.check_task_names(tasks, include_path, '--tasks', '--include_path')
  harness.check_task_data(tasks, include_path, '--tasks')
  inserted = probes.read_canaries(path) if canaries else []  # Before the model is loaded.
  tok = checkpoint.load_tokenizer(path, c)
  c, params = checkpoint.load_params(path)
  _, step_dir = checkpoint.find(path)
  out: dict = {'workdir': os.path.abspath(path), 'step': int(os.path.basename(step_dir))}
  if tasks:
    lm_obj = harness.make_lm(params, c.model, tok, batch_size, **probes.scoring(c, tok))
    out['tasks'] = harness.run_tasks(lm_obj, tasks, include_path, limit)
  if canaries:
    out['canaries'] = probes.exposures(params, c.model, tok, inserted,
                                       **probes.scoring(c, tok))
  if bias_csv:
    out['bias'] = probes.bias_probe(params, c.model, tok, probes.read_pairs(bias_csv),
                                    **probes.scoring(c, tok))
  return out


def check_out(out: str, label: str = '') -> None:
  """--out (or the default eval/step_<N>.json, `label` naming it) is a new
  .json file or an earlier output of this tool, never a directory or another
  file (a run's config.json, say) that it would replace."""
  if not out:
    return
  label = label or f'--out={out}'
  if not out.endswith('.json'):
    raise config_lib.ConfigError(f'{label} must name a .json file')
  if os.path.isdir(out):
    raise config_lib.ConfigError(f'{label} is a directory; name a .json file')
  if os.path.exists(out):
    try:
      with open(out) as f:
        old = json.load(f)
    except (OSError, ValueError):
      old = None
    if not (isinstance(old, dict) and {'workdir', 'step'} <= set(old)):
      raise config_lib.ConfigError(f'{label} exists and is not an earlier tools.eval '
                                   'output; it was left untouched: choose another --out')


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  try:
    ignored = cli.ignored_flags(('limit', 'batch_size', 'include_path'), 'harness tasks')
    if ignored and not _TASKS.value:  # Canaries and the bias probe take none of them.
      raise config_lib.ConfigError(f'{ignored}, or give --tasks')
    cfg_path, step_dir = checkpoint.find(_WORKDIR.value)
    out = _OUT.value or os.path.join(os.path.dirname(cfg_path), 'eval',
                                     f'step_{os.path.basename(step_dir)}.json')
    check_out(out, '' if _OUT.value else f'the default output {out} (--out: write elsewhere)')
    # Before the evaluation.
    workdir.check_writable(os.path.dirname(os.path.abspath(out)), 'the output directory')
    result = evaluate(_WORKDIR.value, _TASKS.value, _INCLUDE.value, _LIMIT.value,
                      _CANARIES.value, _BIAS.value, _BATCH.value)
  except (config_lib.ConfigError, checkpoint.CheckpointError, probes.ProbeError,
          workdir.NotWritable, ValueError) as e:
    print(f'error: {" ".join(str(e).split())}', file=sys.stderr)
    sys.exit(2)
  if 'tasks' in result:
    print(harness.summary(result['tasks']))
  if 'canaries' in result:
    print(probes.canary_table(result['canaries']))
  if 'bias' in result:
    print(probes.bias_table(result['bias']))
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  workdir.write_atomic(out, json.dumps(result, indent=1) + '\n')
  print(f'wrote {out}')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
