"""Trains a SentencePiece tokenizer on a corpus.

python -m tools.train_tokenizer --out=tok/sp4k --vocab_size=4096 [--data_path=DIR] [--model_type=bpe]

The settings make encode/decode round-trip exactly: no normalisation, no
dummy prefix, whitespace kept, and byte fallback for anything unseen.
"""

from __future__ import annotations

import os
import sys
import tempfile

from absl import app, flags, logging

from lm import data as data_lib
from lm import workdir
from lm.config import ConfigError, DataConfig


def train(texts: list[str], out_prefix: str, vocab_size: int, model_type: str = 'unigram',
          max_chars: int = 20_000_000) -> str:
  """Trains on the texts; returns the path of the .model file."""
  import sentencepiece as spm
  if model_type not in ('unigram', 'bpe'):
    raise ValueError(f'model_type={model_type!r}: must be unigram or bpe')
  os.makedirs(os.path.dirname(os.path.abspath(out_prefix)), exist_ok=True)
  with tempfile.NamedTemporaryFile('w', suffix='.txt', delete=False, encoding='utf-8') as f:
    n = 0
    for t in texts:
      if n > max_chars:
        break
      f.write(t.replace('\r', '') + '\n')
      n += len(t)
    path = f.name
  try:
    spm.SentencePieceTrainer.train(
        input=path, model_prefix=out_prefix, vocab_size=vocab_size, model_type=model_type,
        character_coverage=1.0, byte_fallback=True, normalization_rule_name='identity',
        add_dummy_prefix=False, remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True, split_digits=True, max_sentence_length=1 << 16,
        bos_id=1, eos_id=2, pad_id=3, unk_id=0, user_defined_symbols=['\n', '\t'],
        hard_vocab_limit=False, minloglevel=2)  # Small corpora may give fewer pieces.
  finally:
    os.remove(path)
  return out_prefix + '.model'




def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # TFDS's INFO lines about the prepared corpus.
  F = flags.FLAGS
  model = F.out + '.model'
  try:
    parent = os.path.dirname(os.path.abspath(F.out))
    if not os.path.basename(F.out) or os.path.exists(parent) and not os.path.isdir(parent):
      raise ConfigError(f'--out={F.out!r} must be a file prefix in a directory (it writes '
                        'PREFIX.model and PREFIX.vocab), e.g. runs/tok/sp')
    there = [p for p in (model, F.out + '.vocab') if os.path.exists(p)]
    if there and not F.overwrite:
      # Runs trained with it would decode with other pieces (they record its
      # hash and refuse, lm/checkpoint.check_tokenizer, but cannot be repaired).
      raise ConfigError(f'{" and ".join(there)} already exist{"s" * (len(there) == 1)}; left '
                        'untouched: choose another --out, or pass --overwrite if no run uses '
                        'it')
    workdir.check_writable(parent, '--out')  # Before the corpus is prepared.
    d = DataConfig(source='dir' if F.data_path else 'stdlib', path=F.data_path)
    workdir.check_writable(data_lib.cache_root(d),
                           'the data cache (data.cache_dir, $LM_CACHE or ~/.cache/lm)')
    builder, key = data_lib.corpus(d)
    texts = (data_lib._as_str(ex[key]) for ex in builder.as_data_source(split='train'))
    path = train(texts, F.out, F.vocab_size, F.model_type)
    import sentencepiece as spm
    got = spm.SentencePieceProcessor(model_file=path).get_piece_size()
    if got < F.vocab_size:  # hard_vocab_limit=False: a small corpus gives fewer pieces.
      print(f'note: the corpus gave {got} pieces, fewer than --vocab_size={F.vocab_size}',
            file=sys.stderr)
    print(path)
  except (ConfigError, RuntimeError, OSError, workdir.NotWritable) as e:  # SP: RuntimeError.
    why = ' '.join(str(e).split()).replace('config.data.path=', '--data_path=')
    print(f'error: {why}' + (f' (--vocab_size={F.vocab_size} is too small for this corpus: '
                             'raise it)' if 'required_chars' in why else ''), file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  # Flags only when run as a program, so tests can import this module.
  flags.DEFINE_string('out', None, 'Output prefix (writes PREFIX.model and .vocab).')
  flags.DEFINE_integer('vocab_size', 4096, 'Vocabulary size (SentencePiece reads an int32).',
                       lower_bound=8, upper_bound=2 ** 31 - 1)
  flags.DEFINE_bool('overwrite', False, 'Replace an existing PREFIX.model and .vocab.')
  flags.DEFINE_enum('model_type', 'unigram', ['unigram', 'bpe'], 'Algorithm.')
  flags.DEFINE_string('data_path', '', 'Directory or glob; empty: the stdlib corpus.')
  flags.mark_flag_as_required('out')
  from lm import cli
  app.run(main, flags_parser=cli.parse_flags)
