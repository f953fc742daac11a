"""Parameter and FLOP counts for a config, or for a ladder of sizes.

python -m tools.count --config=configs/gpt2_small.py
python -m tools.count --config=configs/isoflop_tiny.py --ladder=1e4,1e5,1e6 [--aspect=8 --head_dim=8]
python -m tools.count --config=configs/gpt2_small.py --ladder=1e6,1e7  # Shaped as GPT-2 small.
"""

import dataclasses
import sys

from absl import app, flags

from lm import config as config_lib
from lm import cli, flops, plan, sweep, train



def _define_flags() -> None:
  """Flags exist only when this runs as a program, so tests can import it."""
  cli.define_config('A run or sweep config.')
  flags.DEFINE_string('ladder', '', 'Comma-separated target non-embedding sizes.')
  flags.DEFINE_integer('aspect', 0, 'With --ladder: d_model / layers (0: the sweep config\'s, '
                       'else the model\'s).', lower_bound=0)
  flags.DEFINE_integer('head_dim', 0, 'With --ladder: head dimension (0: the sweep config\'s, '
                       'else the model\'s).', lower_bound=0)
  flags.mark_flags_as_required(['config'])


def table(c: config_lib.Config, models) -> str:
  """One row per model, counted as a run of config `c` with that model records
  them (train.flops_per_token: the objective's lengths, a frozen backbone)."""
  cols = ['layers', 'd_model', 'heads', 'total', 'non_embedding', 'embedding', 'head',
          *[f'{c}/tok' for c in flops.CONVENTIONS]]
  lines = ['| ' + ' | '.join(cols) + ' |', '|' + '---|' * len(cols)]
  for m in models:
    p = flops.param_counts(m)
    f = train.flops_per_token(dataclasses.replace(c, model=m))
    vals = [m.num_layers, m.d_model, m.num_heads, p['total'], p['non_embedding'],
            p['embedding'] + p['position'], p['head'], *[f'{f[c]:.4g}' for c in flops.CONVENTIONS]]
    lines.append('| ' + ' | '.join(f'{v:,}' if isinstance(v, int) else str(v) for v in vals) + ' |')
  return '\n'.join(lines)


def main(argv):
  del argv
  F = flags.FLAGS
  try:
    # A run config has no sweep section (and needs none without --ladder).
    run_cd, s = sweep.split(F.config) if 'sweep' in F.config else (F.config, None)
    # Resolved as a run is (the vocabulary; a classifier's labels, from its data).
    c = train.resolve(config_lib.from_configdict(run_cd))[0]
    models = [c.model]
    shaping = [f'--{k}={F[k].value}' for k in ('aspect', 'head_dim') if F[k].value]
    if shaping and not F.ladder:
      raise config_lib.ConfigError(f'{shaping[0]} shapes the rungs of --ladder, which is not '
                                   'given; without it the config\'s own model is counted')
    if F.ladder:
      # Without a sweep section, ladder models are shaped like the config's own.
      m = c.model
      aspect = F.aspect or (s.aspect if s else m.d_model // m.num_layers)
      hd = F.head_dim or (s.head_dim if s else m.head_dim or m.d_model // m.num_heads)
      if aspect <= 0 or hd <= 0 or aspect % hd:  # As plan.rungs needs, named as given here.
        raise config_lib.ConfigError(f'--aspect={aspect} and --head_dim={hd}: both must be > 0, '
                                     'and the aspect (d_model / layers) a multiple of the head '
                                     'dim so that every rung has whole heads')
      try:
        targets = [float(x) for x in F.ladder.split(',')]
      except ValueError:
        raise config_lib.ConfigError(f'--ladder={F.ladder!r}: give comma-separated sizes, '
                                     'e.g. 1e4,1e5,1e6') from None
      if not all(t > 0 and t < float('inf') for t in targets):
        raise config_lib.ConfigError(f'--ladder={F.ladder!r}: sizes must be positive numbers')
      models = plan.ladder(targets, c.model, aspect, hd)
    print(f'seq_len {c.data.seq_len}, vocab {c.model.vocab_size}; FLOPs are training FLOPs '
          'per token under each convention (lm/flops.py)\n')
    print(table(c, models))
  except config_lib.ConfigError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  _define_flags()
  app.run(main, flags_parser=cli.parse_flags)
