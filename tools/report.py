"""Fits a finished (or partly finished) sweep and writes figures, a report and fits.json.

python -m tools.report --config=configs/isoflop_tiny.py --workdir=runs/isoflop

Tabulates the runs (results.csv/jsonl, as experiments.sweep --mode=collect),
then reads them and each run's eval curve; writes <workdir>/report/report.md, PNG figures and
fits.json (lm/report.py).
"""

import os
import sys

from absl import app, flags

from lm import cli
from lm import config as config_lib
from lm import report, scaling, sweep, workdir


def main(argv):
  del argv
  try:
    # Tabulate first, so the report reads every run as it is now (runs
    # finished since the last collect were missing from its tables).
    workdir.check_writable(os.path.join(flags.FLAGS.workdir, 'report'), 'the report directory',
                           sweep.REPORT_FILES)
    sweep.collect(flags.FLAGS.config, flags.FLAGS.workdir)
    print(report.write_report(flags.FLAGS.config, flags.FLAGS.workdir, log=print))
  except (scaling.FitError, config_lib.ConfigError, workdir.NotWritable) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  cli.define_config('The sweep config.')
  flags.DEFINE_string('workdir', None, 'The sweep directory.')
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(main, flags_parser=cli.parse_flags)
