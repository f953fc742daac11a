"""Every config field with its value, default, kind and one-line meaning.

python -m tools.config --config=configs/tiny.py [--config.model.d_model=256 ...]

The meanings are the comments beside the fields in lm/config.py (the one place
each field is defined); kinds come from lm/config.FIELD_KINDS (arch: changes
the parameters or the function; head: a task head; fixed: a run cannot
continue with another value; free: anything else). `*` marks values that
differ from the default. A sweep config's `sweep` section is listed too.
"""

from __future__ import annotations

import sys

import ml_collections
from absl import app, flags

from lm import cli
from lm import config as config_lib


def table(cd: ml_collections.ConfigDict) -> str:
  """The validated config as a text table, one field per line."""
  d = cd.to_dict()
  sweep = d.pop('sweep', None)
  values = config_lib.to_dict(config_lib.from_configdict(d))
  if sweep is not None:
    values['sweep'] = config_lib.dataclasses.asdict(config_lib.sweep_config(sweep))
  rows = [('field', 'value', 'default', 'kind', 'meaning')]
  for path, (default, meaning) in config_lib.field_help().items():
    section, _, field = path.rpartition('.')
    if section and section not in values:
      continue
    value = values[section][field] if section else values[field]
    mark = '*' if config_lib._norm(value) != config_lib._norm(default) else ' '
    kind = config_lib.field_kind(path) if section not in ('', 'sweep') else '-'
    rows.append((path, f'{mark}{value!r}', repr(default), kind, meaning))
  rules = config_lib._rules(values['rules'])
  preset = [k for k, v in config_lib.RULE_PRESETS.items() if v == rules]
  rows.append(('rules', f'{" " if rules == config_lib.DEFAULT_RULES else "*"}'
               + (f'preset {preset[0]}' if preset else repr(rules)), 'preset fsdp_tp', '-',
               'Logical axis -> mesh axes (lm/config.RULE_PRESETS).'))
  widths = [min(max(len(r[i]) for r in rows), 40) for i in range(4)]
  return '\n'.join('  '.join(x.ljust(w) for x, w in zip(r[:4], widths)) + '  ' + r[4]
                   for r in rows)


def main(argv):
  del argv
  try:
    print(table(flags.FLAGS.config))
  except config_lib.ConfigError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  cli.define_config('Config file (configs/*.py[:arg]).')
  flags.mark_flags_as_required(['config'])
  app.run(main, flags_parser=cli.parse_flags)
