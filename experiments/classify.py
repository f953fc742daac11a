"""Labels and probabilities for new texts from a trained sequence classifier.

  python -m experiments.classify --workdir=runs/cls --text="what a film" --text="dull"
  python -m experiments.classify --workdir=runs/cls --file=new.txt       # one text per line
  python -m experiments.classify --workdir=runs/cls --file=test.jsonl    # or .csv: + accuracy

A .csv/.jsonl file is read with the run's data.text_key (and data.label_key
when its rows have labels, which then also prints the accuracy, on stderr so
that stdout holds only the predictions); any other
file holds one text per line (\\n escapes). Prints, per text, the predicted
label and every label's probability; --json writes them as JSON lines.
"""

import json
import os
import sys

from absl import app, flags, logging

_WORKDIR = flags.DEFINE_string('workdir', None, 'Classifier run directory or checkpoints/<step>.')
_TEXT = flags.DEFINE_multi_string('text', [], 'A text to classify (repeat for several).')
_FILE = flags.DEFINE_string('file', '', 'Texts: one per line (blank lines skipped), or a .csv/.jsonl file.')
_JSON = flags.DEFINE_bool('json', False, 'One JSON object per text instead of a table.')
flags.mark_flags_as_required(['workdir'])


def _read(path: str, c) -> tuple[list[str], list[str] | None]:
  """(texts, gold labels or None)."""
  from lm import classify, cli
  from lm.config import ConfigError
  ext = os.path.splitext(path)[1].lower()
  if ext in ('.csv', '.jsonl', '.json'):
    return classify.read_texts(path, c.data.text_key, c.data.label_key)
  if ext in ('.tsv', '.tab'):  # Read as lines, its header and labels would be texts.
    raise ConfigError(f'--file={path}: tab-separated tables are not read; give a .csv or '
                      '.jsonl file (or a text file of one text per line)')
  texts = [t for t in cli.read_lines(path, 'file') if t.strip()]  # As --text=' ' is refused.
  if not texts:
    raise ConfigError(f'--file={path} holds no text (only blank lines): one text per line')
  return texts, None


def main(argv):
  del argv
  from lm import checkpoint, classify, cli, host
  from lm.config import ConfigError
  from lm.objectives import classify as objective
  host.keep_freed_memory()  # Before JAX starts its CPU client: lm/host.py.
  logging.set_verbosity(logging.WARNING)
  try:
    for i, t in enumerate(_TEXT.value):
      cli.check_text(t, 'text')
      if not t.strip():  # As generate refuses an empty prompt (a file's empty lines are skipped).
        raise ConfigError(f'--text number {i + 1} is empty: give some text to classify')
    c = checkpoint.load_config(_WORKDIR.value)
    if not c.model.num_classes:
      raise ConfigError(f'{_WORKDIR.value} holds a {c.model.family} language model, not a '
                        'classifier: use experiments.generate (or fill_mask for encoders)')
    texts, gold = list(_TEXT.value), None
    if _FILE.value:
      more, gold = _read(_FILE.value, c)
      texts += more
      gold = ([None] * len(_TEXT.value) + gold) if gold else None
    if not texts:
      raise ConfigError('give --text or --file')
    unknown = sorted({g for g in gold or [] if g is not None} - set(c.data.labels))
    if unknown:
      raise ConfigError(f'{_FILE.value}: labels {unknown[:10]} are not among the run\'s '
                        f'{list(c.data.labels)}')
    tok = checkpoint.load_tokenizer(_WORKDIR.value, c)
    _, params = checkpoint.load_params(_WORKDIR.value)
  except (ConfigError, checkpoint.CheckpointError, classify.LabelError, OSError,
          ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  room = c.data.seq_len - 1 - (c.model.family == 'encoder')  # Text tokens besides EOS (, BOS).
  cut = sum(len(tok.encode(t)) > room for t in texts)
  if cut:  # As the training examples were cut (lm/classify.encode); fill_mask refuses instead.
    print(f'note: {cut} of {len(texts)} texts are longer than the {room} tokens a '
          f'data.seq_len={c.data.seq_len} example holds: each is classified from its first '
          f'{room} tokens, as training cut its examples', file=sys.stderr)
  probs = objective.predict(params, c, tok, texts)
  names = c.data.labels
  for i, (text, p) in enumerate(zip(texts, probs)):
    label = names[int(p.argmax())]
    if _JSON.value:
      print(json.dumps({'text': text, 'label': label,
                        'probabilities': {n: float(x) for n, x in zip(names, p)}}))
    else:
      shown = ' '.join(f'{n}={x:.3f}' for n, x in zip(names, p))
      print(f'{label}\t{shown}\t{text[:60]!r}')
  if gold:
    scored = [(g, names[int(p.argmax())]) for g, p in zip(gold, probs) if g is not None]
    acc = sum(g == pred for g, pred in scored) / len(scored)
    print(f'accuracy {acc:.4f} on {len(scored)} labelled examples', file=sys.stderr)


if __name__ == '__main__':
  from lm import cli
  app.run(main, flags_parser=cli.parse_flags)
