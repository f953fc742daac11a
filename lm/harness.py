"""EleutherAI's lm-evaluation-harness on lm's decoder models.

`HarnessLM` implements the harness's model interface (lm_eval.api.model.
TemplateLM: loglikelihood, loglikelihood_rolling, generate_until) on a
checkpoint's params, so any harness task runs on any lm decoder:

  loglikelihood          log p(continuation | context) and whether greedy
                         decoding would produce the continuation; batched
                         rows of at most window + 1 tokens (the window: the
                         trained length), contexts truncated from the left.
  loglikelihood_rolling  the total log-likelihood of a text in disjoint
                         windows of max_len (the harness's own windowing,
                         lm_eval.utils.get_rolling_token_windows).
  generate_until         greedy (or sampled: do_sample, temperature, top_k,
                         top_p, repetition_penalty; other generation_kwargs
                         are refused) KV-cached decoding (lm/sampling.py),
                         cut at the first `until`.

Tokenisation follows the harness's TemplateLM (the context's trailing spaces
move to the continuation; an empty context is conditioned on EOS; where a BPE
merge across the boundary leaves the continuation no token, and the harness's
hf model fails an assertion, the continuation is encoded alone), so the
numbers equal those of the harness's own Hugging Face model on an exported
checkpoint (tests/test_harness.py). Tasks are YAML files (the harness's
format); with no network, point them at local JSONL with `dataset_path: json`
and `dataset_kwargs: {data_files: ...}` (tests/tasks/ has two).
Encoder and encoder-decoder models are refused by name: the harness's
seq2seq interface is not implemented here.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lm import sampling, tokenizers
from lm.config import ModelConfig
from lm.data import documents
from lm.model import Transformer

Array = jax.Array


@functools.partial(jax.jit, static_argnames=('m',))
def _row_logprobs(params, m: ModelConfig, tokens_BL1: Array, seg_BL: Array | None,
                  pos_BL: Array | None) -> tuple[Array, Array]:
  """Log-probability of each next token and whether it is the argmax: B x L."""
  logits_BLV = Transformer(m).apply({'params': params}, tokens_BL1[:, :-1],
                                    segment_ids_BL=seg_BL, pos_BL=pos_BL)
  logp_BLV = jax.nn.log_softmax(logits_BLV, axis=-1)
  tgt_BL = tokens_BL1[:, 1:]
  lp_BL = jnp.take_along_axis(logp_BLV, tgt_BL[..., None], axis=-1)[..., 0]
  return lp_BL, jnp.argmax(logits_BLV, -1) == tgt_BL


def continuation_logprobs(params, m: ModelConfig, pairs: list[tuple[list[int], list[int]]],
                          batch_size: int = 16, window: int = 0, doc_eos: int | None = None
                          ) -> list[tuple[float, bool]]:
  """(sum of log p(continuation tokens), all greedy) per (context, continuation)
  token pair; each row is the last max_len + 1 tokens of context + continuation.
  A continuation longer than max_len is scored in the windows of
  lm.sampling.score: windows of max_len + 1 tokens overlapping by half, so
  every token sees at least max_len / 2 tokens before it. `window` (<=
  max_len; 0: max_len) replaces max_len, e.g. the length the model trained at.
  `doc_eos` (lm.sampling.doc_eos_of): each row is split into documents at its
  EOS tokens as training windows were, so text after a context's EOS neither
  attends to it nor counts it as a position."""
  L = min(window or m.max_len, m.max_len)
  parts, owner = [], []
  for k, (ctx, cont) in enumerate(pairs):
    if len(cont) <= L:
      parts.append((ctx, cont))
      owner.append(k)
      continue
    seq = list(ctx)[-L:] + list(cont)
    for lo, done, hi in sampling.score_windows(min(len(ctx), L), len(seq), L):
      parts.append((seq[lo:done], seq[done:hi]))
      owner.append(k)
  sums = [0.0] * len(pairs)
  greedy = [True] * len(pairs)
  for k, (ll, g) in zip(owner, _score_rows(params, m, parts, batch_size, L, doc_eos)):
    sums[k] += ll
    greedy[k] = greedy[k] and g
  return list(zip(sums, greedy))


def _score_rows(params, m: ModelConfig, pairs: list[tuple[list[int], list[int]]],
                batch_size: int, L: int, doc_eos: int | None) -> list[tuple[float, bool]]:
  out = []
  # Rows per batch: batch_size, or the next power of two above a smaller request count.
  n_rows = min(batch_size, 1 << max(len(pairs) - 1, 0).bit_length())
  for i in range(0, len(pairs), batch_size):
    chunk = pairs[i:i + batch_size]
    seqs = []
    for ctx, cont in chunk:
      if not cont or not ctx:
        raise ValueError('scoring needs a non-empty continuation after at least one '
                         'context token (e.g. EOS)')
      seqs.append((list(ctx) + list(cont))[-(L + 1):])
    # Rows padded to a power of two (at most L + 1): few compiled shapes, and
    # short requests (canaries, choices) do not pay for B x max_len x V logits.
    width = min(L + 1, max(8, 1 << (max(map(len, seqs)) - 1).bit_length()))
    rows = np.zeros((n_rows, width), np.int32)
    spans = []
    for r, ((ctx, cont), seq) in enumerate(zip(chunk, seqs)):
      rows[r, :len(seq)] = seq
      spans.append((len(seq) - len(cont) - 1, len(seq) - 1))  # Positions predicting cont.
    seg, pos = documents(rows[:, :-1], doc_eos) if doc_eos is not None else (None, None)
    lp, greedy = (np.asarray(a) for a in _row_logprobs(params, m, jnp.asarray(rows), seg, pos))
    for r, (a, b) in enumerate(spans):
      out.append((float(lp[r, a:b].sum()), bool(greedy[r, a:b].all())))
  return out


def _harness():
  try:
    from lm_eval.api.model import TemplateLM
  except ImportError as e:  # pragma: no cover - it is in requirements.txt.
    raise ImportError('lm-evaluation-harness is not installed: pip install -r '
                      'requirements.txt (package lm-eval)') from e
  return TemplateLM


def make_lm(params, m: ModelConfig, tokenizer, batch_size: int = 16, window: int = 0,
            doc_eos: int | None = None):
  """A HarnessLM (a lm_eval TemplateLM) for a decoder's params and tokenizer;
  `window` is its context length (0: model.max_len; pass data.seq_len, the
  length it trained at, so learned positions beyond it are never used);
  `doc_eos` as in continuation_logprobs (the harness starts contexts with EOS)."""
  if m.family != 'decoder' or m.num_classes:
    raise ValueError(f'model.family={m.family!r}'
                     + (f', num_classes={m.num_classes}' if m.num_classes else '')
                     + ': the harness adapter evaluates decoder-only language models')
  TemplateLM = _harness()

  class HarnessLM(TemplateLM):
    """lm's decoder behind the harness's model interface."""

    def __init__(self):
      super().__init__()
      self.params, self.m, self.tok, self.batch_size = params, m, tokenizer, batch_size
      self.window = min(window or m.max_len, m.max_len)

    @property
    def eot_token_id(self) -> int:
      return int(self.tok.eos_id)

    @property
    def max_length(self) -> int:
      return self.window

    def tok_encode(self, string: str, add_special_tokens=None, **kw) -> list[int]:
      del add_special_tokens, kw  # lm's tokenizers add no BOS.
      return [int(t) for t in self.tok.encode(string)]

    def tok_decode(self, ids) -> str:
      return self.tok.decode(list(ids))

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
      """The harness's split (encode the whole, cut off the context's tokens),
      except where a merge across the boundary (BPE: `print(` + `'`) leaves the
      continuation no token, where the harness's hf model fails an assertion:
      then the continuation is encoded on its own after the context's tokens."""
      ctx, cont = super()._encode_pair(context, continuation)
      if not cont:
        spaces = context[len(context.rstrip()):]  # Moved to the continuation, as above.
        cont = self.tok_encode(spaces + continuation)
      return ctx, cont

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kw):
      del disable_tqdm, kw
      pairs = [(ctx, cont) for _, ctx, cont in requests]
      results = continuation_logprobs(self.params, self.m, pairs, self.batch_size, self.window,
                                      doc_eos)
      for (key, _, _), res in zip(requests, results):
        if key is not None:
          self.cache_hook.add_partial('loglikelihood', key, res)
      return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
      from lm_eval import utils
      out = []
      for (text,) in (r.args for r in requests):
        windows = [utils.make_disjoint_window(w) for w in utils.get_rolling_token_windows(
            token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
            max_seq_len=self.max_length, context_len=1)]
        lls = continuation_logprobs(self.params, self.m, windows, self.batch_size, self.window,
                                    doc_eos)
        total = sum(ll for ll, _ in lls)
        self.cache_hook.add_partial('loglikelihood_rolling', (text,), total)
        out.append(total)
      return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
      out = []
      for req in requests:
        context, gen0 = req.args
        gen = dict(gen0 or {})
        until = gen.pop('until', None) or [self.tok_decode([self.eot_token_id])]
        until = [until] if isinstance(until, str) else list(until)
        n = int(gen.pop('max_gen_toks', 64))
        n = max(1, min(n, self.max_length - 1))
        temperature = float(gen.pop('temperature', 0.0))
        greedy = not gen.pop('do_sample', False) or temperature == 0.0
        top_k, top_p = gen.pop('top_k', None), float(gen.pop('top_p', 1.0))
        penalty = float(gen.pop('repetition_penalty', 1.0))
        if gen:  # Dropped silently, a task would be scored under other settings than it asks.
          raise ValueError(_unsupported(gen))
        # The window's last tokens, at least one (a 1-token window: -(1 - 1) was 0,
        # which kept the whole context).
        prompt = (self.tok_encode(context)[-max(self.max_length - n, 1):]
                  or [self.eot_token_id])
        s = sampling.SamplingConfig(max_new_tokens=n, greedy=greedy,
                                    temperature=temperature if not greedy else 1.0,
                                    top_k=None if top_k is None else int(top_k), top_p=top_p,
                                    repetition_penalty=penalty)
        sampling.validate(s)
        ids = sampling.generate(self.params, self.m, [prompt], s, eos_id=self.eot_token_id,
                                  num_ids=self.tok.vocab_size, doc_eos=doc_eos)[0][0]
        text = tokenizers.continuation(self.tok, prompt, ids)  # Its leading space kept.
        cut = min([text.find(u) for u in until if u and u in text], default=len(text))
        out.append(text[:cut])
        self.cache_hook.add_partial('generate_until', (context, gen0), text[:cut])
      return out

  return HarnessLM()


@functools.lru_cache(maxsize=8)
def task_manager(include_path: str, tasks: tuple[str, ...]):
  """The harness's task index. Indexing its ~15,000 built-in tasks takes ~6 s,
  so when every task is in include_path only that directory is indexed; the
  result is cached per process (evaluations during training reuse it). Every
  use of the harness comes through here, first: datasets and the hub go
  offline (datasets reads that when imported)."""
  os.environ.setdefault('HF_DATASETS_OFFLINE', '1')
  os.environ.setdefault('HF_HUB_OFFLINE', '1')
  from lm_eval.tasks import TaskManager
  if include_path:
    local = TaskManager(include_path=include_path, include_defaults=False)
    if all(t in local.all_tasks for t in tasks):
      return local
  return TaskManager(include_path=include_path or None)


def unparsable_yaml(include_path: str) -> list[str]:
  """'<file> is not valid YAML (line N)' for each task YAML under include_path
  that does not parse: the harness skips such a file silently, so its task
  was then 'not a harness task'. Tags such as !function parse as anything."""
  import yaml

  class Loader(yaml.SafeLoader):
    pass
  Loader.add_multi_constructor('', lambda *_: None)
  out = []
  for root, _, files in sorted(os.walk(include_path)):
    for name in sorted(f for f in files if f.endswith(('.yaml', '.yml'))):
      path = os.path.join(root, name)
      try:
        with open(path, encoding='utf-8') as f:
          yaml.load(f, Loader=Loader)
      except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        mark = getattr(e, 'problem_mark', None)
        out.append(f'{path} is not valid YAML' + (f' (line {mark.line + 1})' if mark else ''))
  return out


GENERATION_KWARGS = ('until', 'max_gen_toks', 'do_sample', 'temperature', 'top_k', 'top_p',
                     'repetition_penalty')  # What generate_until honours.


def _unsupported(gen: dict) -> str:
  return (f'generation_kwargs {sorted(set(gen) - set(GENERATION_KWARGS))} are not supported '
          f'({", ".join(GENERATION_KWARGS)} are)')


def check_task_data(tasks, include_path: str, what: str) -> None:
  """Loads each task's documents now, offline, so a task whose data is neither
  cached nor local, or whose generation settings generate_until cannot honour,
  fails in one line before a model is loaded or trained (training had died at
  its first evaluation with the harness's traceback)."""
  from lm.config import ConfigError
  if not tasks:
    return
  tm = task_manager(include_path, tuple(tasks))
  for task in tasks:
    logging.disable(logging.CRITICAL)  # datasets logs a bad file's error on its own lines.
    try:
      with contextlib.redirect_stderr(io.StringIO()):
        built = tm.load([task])  # Builds the task, which reads its documents.
    except Exception as e:  # datasets and the harness raise many types for missing data.
      why = ' '.join(str(e).split())[:200]
      raise ConfigError(f'{what}: the data of task {task!r} cannot be loaded offline '
                        f'({type(e).__name__}: {why}); for a hub dataset, cache it first '
                        '(network access at evaluation time is off); for a local task YAML, '
                        'check that its data files exist (relative paths are read from the '
                        'current directory) and parse') from None
    finally:
      logging.disable(logging.NOTSET)
    for name, t in built.get('tasks', {}).items():
      gen = getattr(getattr(t, 'config', None), 'generation_kwargs', None) or {}
      if set(gen) - set(GENERATION_KWARGS):
        raise ConfigError(f'{what}: task {name!r}: {_unsupported(gen)}')


def run_tasks(lm_obj, tasks: list[str], include_path: str = '', limit: int | None = None,
              seed: int = 0) -> dict[str, dict[str, float]]:
  """{task: {metric: value}} from lm_eval.simple_evaluate, offline."""
  tm = task_manager(include_path, tuple(tasks))  # Offline before lm_eval imports datasets.
  import lm_eval
  with contextlib.redirect_stderr(io.StringIO()):  # The harness's progress bars.
    res = lm_eval.simple_evaluate(model=lm_obj, tasks=list(tasks), task_manager=tm,
                                  limit=limit, random_seed=seed, numpy_random_seed=seed,
                                  torch_random_seed=seed, fewshot_random_seed=seed,
                                  log_samples=False, bootstrap_iters=0, verbosity='ERROR')
  out: dict[str, dict[str, float]] = {}
  for task, metrics in res['results'].items():
    out[task] = {k.replace(',none', '').replace(',', '/'): float(v)  # metric[/filter]
                 for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not k.startswith(('alias', 'sample_len'))
                 and '_stderr' not in k}
  return out


def summary(scores: dict[str, dict[str, Any]]) -> str:
  rows = [(t, k, f'{v:.4f}') for t, ms in scores.items() for k, v in ms.items()]
  w = [max([len(r[i]) for r in rows] + [len(h)]) for i, h in enumerate(('task', 'metric', 'value'))]
  lines = ['  '.join(h.ljust(w[i]) for i, h in enumerate(('task', 'metric', 'value')))]
  lines += ['  '.join(c.ljust(w[i]) for i, c in enumerate(r)) for r in rows]
  return '\n'.join(lines)
