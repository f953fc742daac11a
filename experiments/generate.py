"""Samples from, or scores text with, a trained run.

  python -m experiments.generate --workdir=runs/tiny --prompt="def fibonacci(" \
      --max_new_tokens=100 --temperature=0.7 --top_k=50 --repetition_penalty=1.3 \
      --num_return_sequences=3
  python -m experiments.generate --workdir=runs/tiny --prompts_file=prompts.txt --greedy
  python -m experiments.generate --workdir=runs/tiny --score="import os"

--workdir may also name one checkpoint, <workdir>/checkpoints/<step>.
"""

import math
import sys

from absl import app, flags, logging

from lm import checkpoint, host, sampling, tokenizers

_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory or checkpoints/<step>.')
_PROMPT = flags.DEFINE_multi_string('prompt', [], 'A prompt (repeat the flag for a batch).')
_PROMPTS_FILE = flags.DEFINE_string('prompts_file', '', 'One prompt per line (\\n escapes).')
_SCORE = flags.DEFINE_string('score', None, 'Text to score: per-token log-probs, perplexity.')
_MAX_NEW = flags.DEFINE_integer('max_new_tokens', 100, 'Tokens to generate per sequence.')
_GREEDY = flags.DEFINE_bool('greedy', False, 'Argmax decoding (ignores the sampling flags).')
_TEMP = flags.DEFINE_float('temperature', 1.0, 'Softmax temperature (> 0 when sampling).')
_TOP_K = flags.DEFINE_integer('top_k', None, 'Sample among the k most likely (unset: off).')
_TOP_P = flags.DEFINE_float('top_p', 1.0, 'Nucleus sampling mass in (0, 1] (1: off).')
_REP = flags.DEFINE_float('repetition_penalty', 1.0, 'CTRL repetition penalty (1: off).')
_NUM = flags.DEFINE_integer('num_return_sequences', 1, 'Samples per prompt.')
_SEED = flags.DEFINE_integer('seed', 0, 'Sampling seed (same seed, same samples).')
_DOC_START = flags.DEFINE_bool('doc_start', True,
                               'Put EOS before the prompt, as before every training document.')
flags.mark_flags_as_required(['workdir'])


def main(argv):
  del argv
  host.keep_freed_memory()  # Before JAX starts its CPU client: lm/host.py.
  logging.set_verbosity(logging.WARNING)  # Orbax logs every file it reads at INFO.
  try:
    c = checkpoint.load_config(_WORKDIR.value)
    if c.model.num_classes:
      raise sampling.SamplingError(
          f'{_WORKDIR.value} holds a sequence classifier ({c.model.num_classes} classes), '
          'not a language model; generate needs a language-model run')
    if c.model.family == 'encoder':
      raise sampling.SamplingError(
          f'{_WORKDIR.value} holds an encoder (masked LM), which does not generate left '
          'to right: use python -m experiments.fill_mask')
    if c.model.family == 'encoder_decoder' and _SCORE.value is not None:
      raise sampling.SamplingError('--score needs a decoder-only language model')
    tok = tokenizers.get_tokenizer(c.data.tokenizer, c.data.tokenizer_path)
    prefix = [tok.eos_id] if _DOC_START.value else []
    s = sampling.SamplingConfig(
        max_new_tokens=_MAX_NEW.value, greedy=_GREEDY.value, temperature=_TEMP.value,
        top_k=_TOP_K.value, top_p=_TOP_P.value, repetition_penalty=_REP.value,
        num_return_sequences=_NUM.value, seed=_SEED.value)
    if _SCORE.value is None:
      sampling.validate(s)
      texts = list(_PROMPT.value)
      if _PROMPTS_FILE.value:
        with open(_PROMPTS_FILE.value, encoding='utf-8') as f:
          texts += [line.rstrip('\n').replace('\\n', '\n') for line in f if line.strip()]
      if not texts:
        raise sampling.SamplingError('give --prompt, --prompts_file or --score')
      for i, t in enumerate(texts):
        if not t:
          raise sampling.SamplingError(f'prompt {i} is empty: give some text to continue')
      enc_inputs = None
      if c.model.family == 'encoder_decoder':  # The prompt is the encoder's input.
        enc_inputs = [list(tok.encode(t)) + [tok.eos_id] for t in texts]
        prompts = [[tok.bos_id] for _ in texts]
      else:
        prompts = [prefix + list(tok.encode(t)) for t in texts]
      sampling.check_prompts(prompts, c.model, s.max_new_tokens)
    _, params = checkpoint.load_params(_WORKDIR.value)
  except (sampling.SamplingError, checkpoint.CheckpointError, OSError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)

  if _SCORE.value is not None:
    ids = list(tok.encode(_SCORE.value))
    try:
      out = sampling.score(params, c.model, ids, prefix or [tok.eos_id])
    except sampling.SamplingError as e:
      print(f'error: {e}', file=sys.stderr)
      sys.exit(2)
    for i, lp in zip(ids, out['logprobs']):
      print(f'{tok.decode([i])!r:>12} {lp:9.4f}')
    nbytes = len(_SCORE.value.encode('utf-8'))
    print(f'tokens {out["tokens"]}  nll {out["nll"]:.4f} nats  perplexity '
          f'{out["perplexity"]:.4f}  bits per byte {out["nll"] / math.log(2) / nbytes:.4f}')
    return

  outs = sampling.generate(params, c.model, prompts, s, tok.eos_id, enc_inputs)
  for i, (text, seqs) in enumerate(zip(texts, outs)):
    for j, seq in enumerate(seqs):
      print(f'=== prompt {i}, sample {j} ===')
      if enc_inputs is None:
        print(text + tok.decode(seq))
      else:  # Sentinels (ids above the tokenizer's) are shown as <extra_id_N>.
        parts, run = [], []
        for t in seq + [None]:
          if t is not None and t < tok.vocab_size:
            run.append(t)
            continue
          parts.append(tok.decode(run))
          run = []
          if t is not None:
            parts.append(f'<extra_id_{c.model.vocab_size - 1 - t}>')
        print(''.join(parts))


if __name__ == '__main__':
  app.run(main)
