"""Defaults shared by every config: one place where each value is set."""

import ml_collections

from lm import config as config_lib


def base() -> ml_collections.ConfigDict:
  """Every field with its default, as a ConfigDict (typos are rejected later)."""
  c = ml_collections.ConfigDict()
  for name, cls in config_lib.SECTIONS.items():
    c[name] = ml_collections.ConfigDict(
        {f.name: f.default for f in config_lib.dataclasses.fields(cls)})
  # A tuple, so the command line can set it: a preset, --config.rules="('dp',)",
  # or a whole table (lm/config.RULE_PRESETS).
  c.rules = config_lib.DEFAULT_RULES
  c.name = 'run'
  c.init_from = ''  # Fine-tuning: a workdir or checkpoints/<step> directory.
  return c


def sweep(**values) -> ml_collections.ConfigDict:
  """A sweep section: every SweepConfig field with its default, then `values`.

  List-valued fields are tuples, so the command line can override them:
  --config.sweep.budgets='(1e11, 1e12)'."""
  out = ml_collections.ConfigDict(
      {f.name: f.default for f in config_lib.dataclasses.fields(config_lib.SweepConfig)})
  for k, v in values.items():
    out[k] = tuple(v) if isinstance(v, list) else v
  return out


def no_arg(arg: str | None) -> None:
  """Refuses --config=FILE:ARG for a config without arguments (it was ignored)."""
  if arg:
    raise ValueError(f'this config takes no argument after ":" (got {arg!r}); '
                     'configs/ladder.py takes some, e.g. :size=m')


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """'size=s,lr=1e-3' -> ConfigDict, with types taken from the defaults."""
  out = ml_collections.ConfigDict(defaults)
  seen = set()
  for kv in (arg or '').split(','):
    if not kv:
      continue
    if '=' not in kv:
      raise ValueError(f'config argument {kv!r} must be key=value')
    k, v = kv.split('=', 1)
    if k not in defaults:
      raise ValueError(f'unknown config argument {k!r}; valid: {sorted(defaults)}')
    if k in seen:  # The last had won, silently.
      raise ValueError(f'config argument {k!r} is given twice; give it once')
    seen.add(k)
    out[k] = type(defaults[k])(v)
  return out
