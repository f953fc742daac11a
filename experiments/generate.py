"""Samples from, or scores text with, a trained run.

  python -m experiments.generate --workdir=runs/tiny --prompt="def fibonacci(" \
      --max_new_tokens=100 --temperature=0.7 --top_k=50 --repetition_penalty=1.3 \
      --num_return_sequences=3
  python -m experiments.generate --workdir=runs/tiny --prompts_file=prompts.txt --greedy
  python -m experiments.generate --workdir=runs/tiny --score="import os"
  python -m experiments.generate --workdir=runs/tiny --prompt="import " --score="os"  # p(os | import )
  # Encoder-decoder: infill the spans marked <extra_id_N> (span corruption's
  # sentinels), or score a target given an input:
  python -m experiments.generate --workdir=runs/t5_tiny --prompt="import <extra_id_0>" --greedy
  python -m experiments.generate --workdir=runs/t5_tiny --prompt="import os" --score="<extra_id_0>"

--workdir may also name one checkpoint, <workdir>/checkpoints/<step>.
Encoders (masked LM) fill masks instead: experiments.fill_mask; classifiers
predict labels: experiments.classify.
"""

import math
import sys

from absl import app, flags, logging

from lm import checkpoint, cli, host, objectives, probes, sampling, tokenizers

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
_SEED = flags.DEFINE_integer('seed', 0, 'Sampling seed (the same seed and prompts in the same order: the same samples).')
_DOC_START = flags.DEFINE_bool('doc_start', True,
                               'Put EOS before the prompt, as before every training document.')
flags.mark_flags_as_required(['workdir'])
_SAMPLING_FLAGS = ('max_new_tokens', 'greedy', 'temperature', 'top_k', 'top_p',
                   'repetition_penalty', 'num_return_sequences', 'seed')


def main(argv):
  del argv
  host.keep_freed_memory()  # Before JAX starts its CPU client: lm/host.py.
  logging.set_verbosity(logging.WARNING)  # Orbax logs every file it reads at INFO.
  try:
    for t in _PROMPT.value:
      cli.check_text(t, 'prompt')
    if _SCORE.value is not None:
      cli.check_text(_SCORE.value, 'score')
      ignored = cli.ignored_flags(_SAMPLING_FLAGS, 'sampling')  # Scoring samples nothing.
      if ignored:
        raise sampling.SamplingError(f'--score scores the given text; {ignored}, or --score')
    c = checkpoint.load_config(_WORKDIR.value)
    if c.model.num_classes:
      raise sampling.SamplingError(
          f'{_WORKDIR.value} holds a sequence classifier ({c.model.num_classes} classes), '
          'which neither generates nor scores text: use python -m experiments.classify')
    if c.model.family == 'encoder':
      raise sampling.SamplingError(
          f'{_WORKDIR.value} holds an encoder (masked LM), which has no left-to-right '
          'likelihood to sample or score from: use python -m experiments.fill_mask')
    seq2seq = c.model.family == 'encoder_decoder'
    ignored = seq2seq and cli.ignored_flags(('doc_start',), 'a decoder (an encoder-decoder '
                                            'ends its input with EOS and starts at BOS)')
    if ignored:
      raise sampling.SamplingError(ignored)
    sentinels = objectives.get(c).extra_ids(c) - 1 if seq2seq else 0  # <extra_id_N>, N below.
    if seq2seq and _SCORE.value is not None and (len(_PROMPT.value) != 1
                                                  or _PROMPTS_FILE.value):
      raise sampling.SamplingError(
          '--score with an encoder-decoder scores the target given one --prompt (the '
          'encoder input); give exactly one --prompt' + (
              ' and no --prompts_file' if _PROMPTS_FILE.value else ''))
    if not seq2seq and _SCORE.value is not None and (len(_PROMPT.value) > 1
                                                      or _PROMPTS_FILE.value):
      raise sampling.SamplingError('--score with a decoder scores the text given at most one '
                                   '--prompt (its context); --prompts_file does not apply')
    if (not seq2seq and _SCORE.value is not None and not _PROMPT.value
        and not _DOC_START.value):
      raise sampling.SamplingError(
          '--nodoc_start with --score and no --prompt: the first token is scored after a '
          'document start (EOS) either way, as nothing else precedes it; give --prompt as its '
          'context, or drop --nodoc_start')
    tok = checkpoint.load_tokenizer(_WORKDIR.value, c)
    prefix = [tok.eos_id] if _DOC_START.value else []
    s = sampling.SamplingConfig(
        max_new_tokens=_MAX_NEW.value, greedy=_GREEDY.value, temperature=_TEMP.value,
        top_k=_TOP_K.value, top_p=_TOP_P.value, repetition_penalty=_REP.value,
        num_return_sequences=_NUM.value, seed=_SEED.value)
    if _SCORE.value is None or seq2seq:  # Prompts: to continue, or the input scored from.
      texts = list(_PROMPT.value)
      if _PROMPTS_FILE.value:
        texts += cli.read_lines(_PROMPTS_FILE.value, 'prompts_file')
      if not texts:
        raise sampling.SamplingError('give --prompt, --prompts_file or --score')
      for i, t in enumerate(texts):
        if not t:
          raise sampling.SamplingError(f'prompt {i} is empty: give some text to continue')
      enc_inputs = None
      if seq2seq:  # The prompt is the encoder's input; <extra_id_N> marks a span.
        enc_inputs = [sampling.encode_with_sentinels(t, tok, c.model.vocab_size, sentinels)
                      + [tok.eos_id] for t in texts]
        prompts = [[tok.bos_id] for _ in texts]
      else:
        prompts = [prefix + list(tok.encode(t)) for t in texts]
      if _SCORE.value is None:
        sampling.validate(s)
        sampling.check_prompts(prompts, c.model, s.max_new_tokens)
        longest = max(len(p) for p in prompts) + s.max_new_tokens
        if not seq2seq and c.model.position == 'learned' and longest > c.data.seq_len:
          print(f'note: {longest} tokens reach past data.seq_len={c.data.seq_len}: its learned '
                'positions there were never trained', file=sys.stderr)
    _, params = checkpoint.load_params(_WORKDIR.value)
  except (sampling.SamplingError, checkpoint.CheckpointError, OSError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)

  if _SCORE.value is not None:
    try:
      if seq2seq:  # log p(target | input); the target may hold sentinels.
        ids = sampling.encode_with_sentinels(_SCORE.value, tok, c.model.vocab_size,
                                             sentinels) + [tok.eos_id]
        enc = sampling.encode_with_sentinels(_PROMPT.value[0], tok, c.model.vocab_size,
                                             sentinels)
        out = sampling.score_seq2seq(params, c.model, enc + [tok.eos_id], ids, tok.bos_id)
      else:  # log p(text | --prompt), or from a document start without one.
        ids = list(tok.encode(_SCORE.value))
        context = prefix + (list(tok.encode(_PROMPT.value[0])) if _PROMPT.value else [])
        out = sampling.score(params, c.model, ids, context or [tok.eos_id],
                             **probes.scoring(c, tok))  # As tools.eval scores.
    except sampling.SamplingError as e:
      print(f'error: {e}', file=sys.stderr)
      sys.exit(2)
    for i, lp in zip(ids, out['logprobs']):
      shown = ('<eos>' if seq2seq and i == tok.eos_id else repr(tok.decode([i]))
               if i < tok.vocab_size else f'<extra_id_{c.model.vocab_size - 1 - i}>')
      print(f'{shown:>16} {lp:9.4f}')
    blen = tok.byte_lengths()  # Text bytes only: sentinels and EOS have none.
    nbytes = (sum(int(blen[i]) for i in ids if i < len(blen)) if seq2seq
              else len(_SCORE.value.encode('utf-8')))
    bpb = (f'{out["nll"] / math.log(2) / nbytes:.4f}' if nbytes else
           'n/a (no text bytes: only sentinels and EOS)')
    print(f'tokens {out["tokens"]}  nll {out["nll"]:.4f} nats  perplexity '
          f'{out["perplexity"]:.4f}  bits per byte {bpb}'
          + (f'  (given the prompt {_PROMPT.value[0]!r})' if _PROMPT.value else ''))
    return

  try:
    outs = sampling.generate(params, c.model, prompts, s, tok.eos_id, enc_inputs,
                            num_ids=tok.vocab_size, sentinels=sentinels,
                            doc_eos=sampling.doc_eos_of(c, tok.eos_id))
  except sampling.SamplingError as e:  # E.g. an encoder input longer than max_len.
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  for i, (text, seqs) in enumerate(zip(texts, outs)):
    for j, seq in enumerate(seqs):
      print(f'=== prompt {i}, sample {j} ===')
      if enc_inputs is None:
        print(text + tokenizers.continuation(tok, prompts[i][len(prefix):], seq))
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
  app.run(main, flags_parser=cli.parse_flags)
