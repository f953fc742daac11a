"""Training objectives: one module each (lm/objectives/<name>.py), one table.

`get(config)` picks the run's objective: `train.objective` if set, else
classify when data.label_key is set, seq2seq when data.target_key is set, and
otherwise the family's pre-training objective (decoder: lm, encoder: mlm,
encoder_decoder: span). The interface is lm/objectives/base.py's `Objective`.
"""

from __future__ import annotations

from lm.config import Config, ConfigError, value_and_default
from lm.objectives import classify, lm, mlm, seq2seq, span
from lm.objectives.base import Data, Objective

OBJECTIVES: dict[str, Objective] = {o.name: o for o in (
    lm.OBJECTIVE, mlm.OBJECTIVE, span.OBJECTIVE, seq2seq.OBJECTIVE, classify.OBJECTIVE)}
PRETRAINING = {'decoder': 'lm', 'encoder': 'mlm', 'encoder_decoder': 'span'}

__all__ = ['Data', 'Objective', 'OBJECTIVES', 'check_fields', 'get', 'name_of']


def name_of(c: Config) -> str:
  implied = 'classify' if c.data.label_key else 'seq2seq' if c.data.target_key else ''
  name = c.train.objective or implied or PRETRAINING[c.model.family]
  if c.train.objective and implied and c.train.objective != implied:
    raise ConfigError(f'config.train.objective={name!r} conflicts with the data: '
                      f'data.{"label_key" if implied == "classify" else "target_key"} '
                      f'is set, which means {implied!r}')
  for need, key in (('classify', 'label_key'), ('seq2seq', 'target_key')):
    if name == need and not getattr(c.data, key):
      raise ConfigError(f'config.train.objective={name!r} needs data.{key} (and '
                        "data.source 'file' or 'tfds')")
  return name


def check_fields(c: Config) -> None:
  """Refuses a field that only other objectives read (Objective.fields), set
  away from its default: it would change nothing, as a sweep refuses the
  fields its design does not read."""
  name = name_of(c)
  mine = OBJECTIVES[name].fields if name in OBJECTIVES else ()  # Unknown: get() says so.
  for o in OBJECTIVES.values():
    for field in o.fields:
      value, default = value_and_default(c, field)
      if field not in mine and value != default:
        readers = ', '.join(x.name for x in OBJECTIVES.values() if field in x.fields)
        raise ConfigError(f'config.{field}={value!r} is read only by the {readers} objective, '
                          f'and this run trains {name}: leave it at its default {default!r}')


def get(c: Config) -> Objective:
  """The run's objective; a ConfigError if it does not train this family."""
  name = name_of(c)
  if name not in OBJECTIVES:
    raise ConfigError(f'config.train.objective={name!r} is invalid: one of '
                      f'{", ".join(OBJECTIVES)} (or empty: from the data and family)')
  o = OBJECTIVES[name]
  if c.model.family not in o.families:
    raise ConfigError(f'objective {name!r} trains model.family in {o.families}, not '
                      f'{c.model.family!r}')
  return o
