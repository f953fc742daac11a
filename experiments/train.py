"""Trains a model: python -m experiments.train --config=configs/tiny.py --workdir=runs/tiny"""

import sys

from lm import workdir

workdir.exit_on_signals()  # Before the slow imports: a signal now exits 75, not -15.

import jax  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from lm import config as config_lib  # noqa: E402
from lm import classify, cli, host, sharding, train  # noqa: E402

_CONFIG = cli.define_config('Config file (configs/*.py[:arg]).')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory: checkpoints, metrics, config.')
_SAMPLE = flags.DEFINE_integer('sample_tokens', 200, 'Tokens to sample at the end (0: none).',
                               lower_bound=0)
_COORD = flags.DEFINE_string('coordinator_address', '', 'Multi-host: HOST:PORT of process 0.')
_NPROC = flags.DEFINE_integer('num_processes', 0, 'Multi-host: number of processes.')
_PID = flags.DEFINE_integer('process_id', -1, 'Multi-host: this process (0-based).')
_AUTO = flags.DEFINE_bool('auto_distributed', False,
                          'Multi-host from the environment (TPU VM, SLURM, Open MPI).')
_TIMEOUT = flags.DEFINE_integer('distributed_timeout', 300,
                                'Seconds to wait for all processes to register.',
                                lower_bound=1)
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  host.keep_freed_memory()  # Before JAX starts its CPU client: lm/host.py.
  logging.set_verbosity(logging.WARNING)  # Orbax logs every file it writes at INFO.
  try:
    cfg = config_lib.from_configdict(_CONFIG.value)
    sharding.init_distributed(_COORD.value, _NPROC.value, _PID.value, _AUTO.value,
                              _TIMEOUT.value)
    out = train.train_and_evaluate(cfg, _WORKDIR.value)
  except (config_lib.ConfigError, train.CheckpointError, classify.LabelError,
          workdir.LockError, workdir.NotWritable) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  except workdir.Preempted as e:  # Checkpointed: rerunning the command continues.
    workdir.exit_preempted(f'stopped by {e}')
  except (FloatingPointError, workdir.DiskFull) as e:  # Halted; earlier checkpoints stand.
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  except Exception as e:
    if workdir.disk_full(e):
      workdir.exit_disk_full(_WORKDIR.value)
    raise
  if jax.process_index() != 0:
    return
  print(f'final validation: {out["objective"].describe(out)}')
  if out['preempted']:  # In the last step: the run is whole; no sample in the grace period.
    print(f'{out["preempted"]} during the last step: the run finished and is checkpointed',
          file=sys.stderr)
    return
  m = out['config'].model
  if (_SAMPLE.value and out['objective'].name == 'lm' and jax.process_count() == 1
      and m.max_len > 5):  # The sample's prompt is 5 tokens.
    from lm import sampling, tokenizers  # Params span hosts with more than one process.
    tok = out['tokenizer']
    n = min(_SAMPLE.value, m.max_len - 5)
    s = sampling.SamplingConfig(max_new_tokens=n, temperature=0.8, top_k=50)
    new = sampling.generate(out['state'].params, m, [[tok.eos_id, *tok.encode('def ')]],
                            s, tok.eos_id, num_ids=tok.vocab_size,
                            doc_eos=sampling.doc_eos_of(out['config'], tok.eos_id))[0][0]
    print('sample:\ndef ' + tokenizers.continuation(tok, tok.encode('def '), new))


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
