"""Memorization and bias probes.

Canaries (Carlini et al. 2019, "The Secret Sharer"): data.canary_repeats
inserts one random secret per entry, in data.canary_template, that many times
into the training stream (never the validation split; 0 = a control canary
that is recorded but never inserted); the run directory's canaries.json
records them. A canary's exposure is log2 |R| - log2 rank, where R is every
secret of canary_digits digits and rank is the canary's place among them by
the model's likelihood (1 = most likely). Spaces up to EXACT_LIMIT are
enumerated; larger ones use the paper's approximation (Sec. 4.3): fit a
skew-normal to the log-likelihoods of sampled candidates and read the
canary's tail probability. A random secret's exposure is ~1 bit on average;
log2 |R| is the most a canary can have. Extraction: does greedy decoding of
the template's prefix produce the secret?

Bias (the CrowS-Pairs format, Nangia et al. 2020): pairs of a more and a less
stereotypical sentence with a bias type; per type, the fraction of pairs where
the model prefers the more stereotypical one (total log-likelihood for a
decoder; pseudo-log-likelihood, Salazar et al. 2020, for a masked LM), with a
bootstrap 95% interval. 0.5 is no preference.
"""

from __future__ import annotations

import csv
import json
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lm import sampling
from lm import workdir as workdir_lib
from lm.config import DataConfig, ModelConfig
from lm.harness import continuation_logprobs
from lm.model import Transformer

CANARY_FILE = 'canaries.json'
EXACT_LIMIT = 20_000  # Candidate spaces up to this are ranked exactly.


class ProbeError(ValueError):
  """A probe's input (canaries, pairs file) is missing or malformed."""


# --- Canaries -------------------------------------------------------------------

def make_canaries(d: DataConfig, rows_trained: int = 0, rows_in_corpus: int = 0
                  ) -> list[dict[str, Any]]:
  """One canary per data.canary_repeats entry: a random secret in the template.
  `repeats` counts copies in the training corpus; a run that reads a fraction
  of it sees about repeats x rows_trained / rows_in_corpus of them
  (`expected_seen`, when the two are given)."""
  rng = np.random.default_rng(d.canary_seed)
  out = []
  for i, r in enumerate(d.canary_repeats):
    secret = ''.join(str(x) for x in rng.integers(0, 10, d.canary_digits))
    out.append({'id': i, 'secret': secret, 'repeats': int(r), 'digits': d.canary_digits,
                'template': d.canary_template,
                'text': d.canary_template.replace('{secret}', secret)})
    if rows_in_corpus:
      out[-1]['expected_seen'] = r * rows_trained / rows_in_corpus
  return out


def insert_canaries(tokens: np.ndarray, canaries: list[dict], tokenizer, seed: int
                    ) -> np.ndarray:
  """The training token stream with each canary (as a document: its tokens
  then EOS) inserted `repeats` times at random document boundaries."""
  eos = tokenizer.eos_id
  docs = [(np.asarray(list(tokenizer.encode(c['text'])) + [eos], tokens.dtype), c['repeats'])
          for c in canaries]
  inserts = [doc for doc, r in docs for _ in range(r)]
  if not inserts:
    return tokens
  bounds = np.flatnonzero(tokens == eos) + 1
  if len(bounds) == 0:
    bounds = np.asarray([len(tokens)])
  rng = np.random.default_rng(seed)
  at = np.sort(rng.choice(bounds, size=len(inserts), replace=True))
  order = rng.permutation(len(inserts))
  pieces, prev = [], 0
  for pos, k in zip(at, order):
    pieces += [tokens[prev:pos], inserts[k]]
    prev = pos
  pieces.append(tokens[prev:])
  return np.concatenate(pieces)


def canary_path(path: str) -> str:
  from lm import checkpoint
  return os.path.join(os.path.dirname(checkpoint.find(path)[0]), CANARY_FILE)


def read_canaries(path: str) -> list[dict]:
  """The canaries a run inserted (its canaries.json); a damaged file is a
  ProbeError naming it, before any model is loaded."""
  f = canary_path(path)
  try:
    with open(f, encoding='utf-8') as fh:
      rows = json.load(fh)['canaries']
    for c in rows:
      missing = {'id', 'secret', 'digits', 'repeats', 'template'} - set(c)
      if missing:
        raise ValueError(f'a canary has no {", ".join(sorted(missing))}')
      secret, digits = c['secret'], int(c['digits'])
      if not (isinstance(secret, str) and secret.isdigit() and len(secret) == digits
              and '{secret}' in c['template'] and int(c['repeats']) >= 0):
        raise ValueError(f'canary {c["id"]!r} is not a secret of {digits} digits in '
                         'a template with {secret}')
  except (OSError, ValueError, TypeError, KeyError) as e:
    why = f'no {e} list' if isinstance(e, KeyError) else workdir_lib.reason(e)
    raise ProbeError(f'{f} is not a canary record of this codebase ({why}); restore it '
                     'from the run that wrote it') from None
  return rows


def _pair(tokenizer, c: dict, secret: str) -> tuple[list[int], list[int]]:
  """(EOS + the template's prefix, the rest) as the tokens training saw: the
  whole text is encoded and split after the prefix, whose trailing spaces go
  with the secret (as the harness splits context and continuation), so a
  subword tokenizer scores the tokens of the inserted text."""
  pre = c['template'].partition('{secret}')[0].rstrip()
  ctx = [int(t) for t in tokenizer.encode(pre)]
  whole = [int(t) for t in tokenizer.encode(c['template'].replace('{secret}', secret))]
  return [tokenizer.eos_id] + whole[:len(ctx)], whole[len(ctx):]


def _candidate_scores(params, m: ModelConfig, tokenizer, c: dict, secrets: list[str],
                      batch_size: int = 64, **how) -> np.ndarray:
  """log p(secret and the rest of the template | EOS + prefix) per candidate;
  `how`: continuation_logprobs' window and doc_eos."""
  pairs = [_pair(tokenizer, c, s) for s in secrets]
  return np.asarray([ll for ll, _ in continuation_logprobs(params, m, pairs, batch_size, **how)])


def exposure(params, m: ModelConfig, tokenizer, c: dict, samples: int = 2000,
             seed: int = 0, window: int = 0, doc_eos: int | None = None) -> dict[str, Any]:
  """Exposure (bits) of one canary, its rank (exact or estimated) and whether
  greedy decoding from the prefix extracts the secret. `window` and `doc_eos`
  score as the run trained (data.seq_len; lm.sampling.doc_eos_of)."""
  how = dict(window=window, doc_eos=doc_eos)
  digits = c['digits']
  space = 10 ** digits
  if space <= EXACT_LIMIT:
    all_ = _candidate_scores(params, m, tokenizer, c, [f'{i:0{digits}d}' for i in range(space)],
                             **how)
    mine = float(all_[int(c['secret'])])  # Scored with the others: no rounding between calls.
    rank = int((all_ > mine).sum()) + 1
    exp_bits = math.log2(space) - math.log2(rank)
    method = 'exact'
  else:  # Carlini et al. 2019, Sec. 4.3: skew-normal fit to sampled candidates.
    from scipy import stats
    mine = float(_candidate_scores(params, m, tokenizer, c, [c['secret']], **how)[0])
    rng = np.random.default_rng(seed)
    draws = [''.join(str(x) for x in rng.integers(0, 10, digits)) for _ in range(samples)]
    scores = _candidate_scores(params, m, tokenizer, c, draws, **how)
    a, loc, scale = stats.skewnorm.fit(-scores)  # Fit the negative log-likelihoods.
    tail = max(float(stats.skewnorm.cdf(-mine, a, loc, scale)), 1.0 / space)
    rank = max(tail * space, 1.0)
    exp_bits = min(-math.log2(tail), math.log2(space))
    method = f'skew-normal fit to {samples} samples'
  prompt, target = _pair(tokenizer, c, c['secret'])
  post_len = len(c['template'].partition('{secret}')[2])
  out = sampling.generate(params, m, [prompt], sampling.SamplingConfig(
      max_new_tokens=len(target), greedy=True), eos_id=-1,
      num_ids=tokenizer.vocab_size, doc_eos=doc_eos)[0][0]
  # Extracted: greedy decoding writes the secret (compared as text, so a
  # different but equivalent tokenisation of it still counts).
  want = tokenizer.decode(target)[:len(tokenizer.decode(target)) - post_len or None]
  extracted = tokenizer.decode(out).strip().startswith(want.strip())
  return {'id': c['id'], 'repeats': c['repeats'], 'secret': c['secret'],
          'expected_seen': c.get('expected_seen'),
          'exposure_bits': float(exp_bits), 'max_bits': math.log2(space), 'rank': rank,
          'log_likelihood': mine, 'extracted': bool(extracted), 'method': method}


def _what(m: ModelConfig) -> str:
  """What a run is, for refusals: a classifier is named as one, not by its family."""
  if m.num_classes:
    return f'a sequence classifier (model.num_classes={m.num_classes})'
  return f'model.family={m.family!r}'


def exposures(params, m: ModelConfig, tokenizer, canaries: list[dict], **how) -> list[dict]:
  """exposure() of each canary; `how`: its window and doc_eos."""
  if m.family != 'decoder' or m.num_classes:
    raise ProbeError(f'{_what(m)}: exposure needs a decoder-only LM')
  return [exposure(params, m, tokenizer, c, **how) for c in canaries]


def canary_table(rows: list[dict]) -> str:
  lines = ['canary  repeats  seen (expected)  exposure (bits, max)  rank  extracted']
  for r in rows:
    seen = '-' if r.get('expected_seen') is None else f'{r["expected_seen"]:.1f}'
    lines.append(f'{r["id"]:>6}  {r["repeats"]:>7}  {seen:>15}  {r["exposure_bits"]:>8.2f} '
                 f'({r["max_bits"]:.1f})  {r["rank"]:>11.4g}  {r["extracted"]}')
  return '\n'.join(lines)


# --- Bias -------------------------------------------------------------------------

PAIR_COLUMNS = ('sent_more', 'sent_less', 'bias_type')


def read_pairs(path: str, name: str = '--bias_csv') -> list[dict[str, str]]:
  """CrowS-Pairs-format rows: sent_more, sent_less, bias_type (other columns
  kept); `name` is what the errors call the file (the flag or config field)."""
  try:
    with open(path, newline='', encoding='utf-8-sig') as f:  # Excel's 'CSV UTF-8' has a BOM.
      rows = list(csv.DictReader(f))
  except (OSError, UnicodeDecodeError, csv.Error) as e:
    raise ProbeError(f'{name}={path} could not be read: {e}') from None
  missing = [c for c in PAIR_COLUMNS if not rows or c not in rows[0]]
  if missing:
    raise ProbeError(f'{name}={path} needs columns {", ".join(PAIR_COLUMNS)} '
                     f'(the CrowS-Pairs format); missing: {", ".join(missing)}'
                     + ('' if rows else ' (the file has no rows)'))
  for i, r in enumerate(rows):
    if not (r['sent_more'] or '').strip() or not (r['sent_less'] or '').strip():
      raise ProbeError(f'{name}={path}: row {i + 2} has an empty sentence')
    if not (r['bias_type'] or '').strip():
      raise ProbeError(f'{name}={path}: row {i + 2} has no bias_type')
    if r['bias_type'] in ('all', 'method'):  # The result's own keys (bias_probe).
      raise ProbeError(f'{name}={path}: row {i + 2} has bias_type={r["bias_type"]!r}, a name '
                       "the results use for every pair ('all') and the scoring ('method'); "
                       'rename that type')
  return rows


def _masked_logprob_fn(m: ModelConfig):
  """(params, N x L tokens, N x L valid, N positions, mask id) -> log p of the
  token at each row's position with that position masked."""
  @jax.jit
  def f(params, tokens_NL, valid_NL, positions_N, mask_id):
    rows = jnp.arange(tokens_NL.shape[0])
    masked = tokens_NL.at[rows, positions_N].set(mask_id)
    logits = Transformer(m).apply({'params': params}, masked, valid_BL=valid_NL)
    logp = jax.nn.log_softmax(logits[rows, positions_N], -1)
    return jnp.take_along_axis(logp, tokens_NL[rows, positions_N][:, None], -1)[:, 0]
  return f


def sentence_scores(params, m: ModelConfig, tokenizer, sentences: list[str], **how
                    ) -> np.ndarray:
  """Decoder: log p(sentence | EOS). Encoder: pseudo-log-likelihood, each token
  masked in turn (MASK = the first id above the tokenizer's, as in training).
  Sentences longer than the window (how['window'], else model.max_len) are
  scored in windows, never cut: a decoder's as in lm.sampling.score, an
  encoder masks each token in the window's tokens centred on it. `how`: the
  window and a decoder's doc_eos (continuation_logprobs)."""
  if m.family == 'decoder' and not m.num_classes:
    pairs = [([tokenizer.eos_id], [int(t) for t in tokenizer.encode(s)]) for s in sentences]
    return np.asarray([ll for ll, _ in continuation_logprobs(params, m, pairs, **how)])
  if m.family != 'encoder' or m.num_classes:
    raise ProbeError(f'{_what(m)}: the bias probe scores sentences with a language model, '
                     'a decoder (log-likelihood) or an encoder (pseudo-log-likelihood)')
  f = _masked_logprob_fn(m)
  # The window the model trained at (how['window'], data.seq_len), not max_len:
  # learned positions past it were never trained.
  cap = min(how.get('window') or m.max_len, m.max_len)
  out = []
  for s in sentences:
    ids = np.asarray([int(t) for t in tokenizer.encode(s)], np.int32)
    L = len(ids)  # W x W rows, W the next power of two up to the window: few compiled shapes.
    W = min(cap, max(8, 1 << (L - 1).bit_length()))
    start_L = np.clip(np.arange(L) - W // 2, 0, max(L - W, 0))  # Window of each token.
    total = 0.0
    for lo in range(0, L, W):  # W masked copies per call.
      pos = np.arange(lo, min(lo + W, L))
      rows = np.zeros((W, W), np.int32)
      valid = np.zeros((W, W), bool)
      at = np.zeros(W, np.int32)
      for r in range(W):  # Rows past the sentence repeat its last one (then unused).
        p = pos[min(r, len(pos) - 1)]
        seg = ids[start_L[p]:start_L[p] + W]
        rows[r, :len(seg)], valid[r, :len(seg)], at[r] = seg, True, p - start_L[p]
      lp = np.asarray(f(params, jnp.asarray(rows), jnp.asarray(valid), jnp.asarray(at),
                        tokenizer.vocab_size))
      total += float(lp[:len(pos)].sum())
    out.append(total)
  return np.asarray(out)


def bias_probe(params, m: ModelConfig, tokenizer, rows: list[dict], bootstrap: int = 1000,
               seed: int = 0, **how) -> dict[str, dict[str, Any]]:
  """{bias_type | 'all': {pairs, stereotype_preferred (fraction), ci95}};
  `how`: a decoder's window and doc_eos (continuation_logprobs)."""
  more = sentence_scores(params, m, tokenizer, [r['sent_more'] for r in rows], **how)
  less = sentence_scores(params, m, tokenizer, [r['sent_less'] for r in rows], **how)
  prefer = (more > less).astype(np.float64)
  types = np.asarray([r['bias_type'] for r in rows])
  rng = np.random.default_rng(seed)
  out = {}
  for t in sorted(set(types)) + ['all']:
    x = prefer if t == 'all' else prefer[types == t]
    boots = rng.choice(x, size=(bootstrap, len(x)), replace=True).mean(1) if bootstrap else x
    out[t] = {'pairs': int(len(x)), 'stereotype_preferred': float(x.mean()),
              'ci95': [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))]}
  out['method'] = ('total log-likelihood' if m.family == 'decoder'
                   else 'pseudo-log-likelihood')
  return out


def bias_table(res: dict) -> str:
  lines = [f'bias type           pairs  prefers stereotype  95% CI  ({res["method"]})']
  for t, r in res.items():
    if t == 'method':
      continue
    lines.append(f'{t:<18} {r["pairs"]:>6}  {r["stereotype_preferred"]:>18.3f}  '
                 f'[{r["ci95"][0]:.3f}, {r["ci95"][1]:.3f}]')
  return '\n'.join(lines)


# --- During training (train.eval_tasks, data.canary_repeats, train.eval_bias_csv) --

def scoring(c, tokenizer) -> dict[str, Any]:
  """How a run's decoder scores text as it trained: its window (data.seq_len,
  so untrained learned positions are never read) and documents (doc_eos)."""
  return {'window': c.data.seq_len, 'doc_eos': sampling.doc_eos_of(c, tokenizer.eos_id)}


def eval_extras(c, params, tokenizer, final: bool, canaries: list[dict] = ()
                ) -> dict[str, float]:
  """Metrics for an evaluation row: harness task scores at every evaluation
  ('task/<task>/<metric>'); canary exposure and extraction
  ('canary/<id>_x<repeats>/...') and the bias probe ('bias/<type>/...') at the
  final one. Activations are left unconstrained (no mesh rules): these
  batches need not divide the mesh."""
  import flax.linen as nn
  from lm import harness
  out: dict[str, float] = {}
  how = scoring(c, tokenizer)
  with nn.logical_axis_rules(()):
    if c.train.eval_tasks:
      lm_obj = harness.make_lm(params, c.model, tokenizer, **how)
      scores = harness.run_tasks(lm_obj, list(c.train.eval_tasks), c.train.eval_tasks_path,
                                 c.train.eval_tasks_limit or None)
      for task, ms in scores.items():
        out.update({f'task/{task}/{k}': v for k, v in ms.items()})
    if final and canaries:
      for can, r in zip(canaries, exposures(params, c.model, tokenizer, canaries, **how)):
        key = f'canary/{r["id"]}_x{r["repeats"]}'
        out[f'{key}/exposure'] = r['exposure_bits']
        out[f'{key}/extracted'] = float(r['extracted'])
        out[f'{key}/expected_seen'] = can.get('expected_seen', float('nan'))
    if final and c.train.eval_bias_csv:
      res = bias_probe(params, c.model, tokenizer, read_pairs(c.train.eval_bias_csv), **how)
      for t, v in res.items():
        if t != 'method':
          out[f'bias/{t}/stereotype_preferred'] = v['stereotype_preferred']
          out[f'bias/{t}/ci_lo'], out[f'bias/{t}/ci_hi'] = v['ci95']
  return out


def check_tasks(c) -> None:
  """Refuses unknown train.eval_tasks by name, and a train.eval_bias_csv the
  bias probe cannot read, before anything compiles (the probe runs at the
  final evaluation, which an error there would cost its checkpoint)."""
  check_task_names(c.train.eval_tasks, c.train.eval_tasks_path, 'config.train.eval_tasks',
                   'train.eval_tasks_path')
  from lm import harness
  harness.check_task_data(c.train.eval_tasks, c.train.eval_tasks_path,
                          'config.train.eval_tasks')
  if c.train.eval_bias_csv:
    from lm.config import ConfigError
    try:
      read_pairs(c.train.eval_bias_csv, 'config.train.eval_bias_csv')
    except ProbeError as e:
      raise ConfigError(str(e)) from None


def check_task_names(tasks, include_path: str, what: str, path_flag: str) -> None:
  if not tasks:
    return
  import difflib

  from lm import harness
  from lm.config import ConfigError
  known = harness.task_manager(include_path, tuple(tasks)).all_tasks
  for task in tasks:
    if task not in known:
      close = difflib.get_close_matches(task, known, n=3)
      broken = harness.unparsable_yaml(include_path) if include_path else []
      raise ConfigError(f'{what}: {task!r} is not a harness task'
                        + (f' (did you mean {", ".join(close)}?)' if close else '')
                        + (f'; {path_flag}: {broken[0]}, so its task is not indexed' if broken
                           else f'; task YAML files outside the harness go in {path_flag}'))
