"""lm-evaluation-harness on lm models (lm/harness.py, tools/eval.py): the
adapter's likelihoods equal lm's own scoring path, the shipped local tasks run
offline, and an exported checkpoint through the harness's own Hugging Face
model gives the same accuracies and log-likelihoods."""

import json
import os
import sys

import numpy as np
import pytest

from lm import checkpoint, harness, sampling, tokenizers, train
from tests import forked_cli
from tests.helpers import tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS = os.path.join(ROOT, 'tests', 'tasks')
BYTES = tokenizers.get_tokenizer('byte')


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory, corpus_dir):
  wd = str(tmp_path_factory.mktemp('harness_run'))
  c = tiny(corpus_dir, **{'train.steps': 12, 'data.seq_len': 32, 'model.max_len': 64,
                          'train.eval_every': 12, 'train.checkpoint_every': 12})
  train.train_and_evaluate(c, wd, log=lambda *_: None)
  return wd


def test_adapter_loglikelihoods_equal_lms_score_path(run_dir):
  c, params = checkpoint.load_params(run_dir)
  lm_obj = harness.make_lm(params, c.model, BYTES, batch_size=4)
  from lm_eval.api.instance import Instance
  pairs = [('def f(x):\n    return', ' x'), ('import', ' os'), ('', 'hello'),
           ('a' * 100, ' tail beyond the window')]
  reqs = [Instance('loglikelihood', {}, p, i) for i, p in enumerate(pairs)]
  got = lm_obj.loglikelihood(reqs)
  L = c.model.max_len
  for (ctx, cont), (ll, greedy) in zip(pairs, got):
    ctx_ids = list(BYTES.encode(ctx)) or [BYTES.eos_id]
    cont_ids = list(BYTES.encode(cont))
    ctx_ids = ctx_ids[-(L + 1 - len(cont_ids)):]  # The adapter keeps the last L + 1 tokens.
    want = sampling.score(params, c.model, cont_ids, ctx_ids)
    np.testing.assert_allclose(ll, -want['nll'], rtol=1e-5, atol=1e-4)
    assert isinstance(greedy, bool)
  rolling = lm_obj.loglikelihood_rolling([Instance('loglikelihood_rolling', {}, ('x = 1\n' * 30,), 0)])
  want = sampling.score(params, c.model, list(BYTES.encode('x = 1\n' * 30)), [BYTES.eos_id])
  assert rolling[0] < 0  # The harness's disjoint windows differ from score()'s overlapping ones.
  assert abs(rolling[0] + want['nll']) / want['nll'] < 0.5
  out = lm_obj.generate_until([Instance('generate_until', {}, (
      'def f(x):\n', {'until': ['\n'], 'max_gen_toks': 12}), 0)])
  assert isinstance(out[0], str) and '\n' not in out[0]
  # A task's sampling settings are applied (top_k=1 samples the argmax), not dropped.
  greedy = lm_obj.generate_until([Instance('generate_until', {}, (
      'def f(x):\n', {'until': ['\n'], 'max_gen_toks': 12}), 0)])
  top1 = lm_obj.generate_until([Instance('generate_until', {}, (
      'def f(x):\n', {'until': ['\n'], 'max_gen_toks': 12, 'do_sample': True,
                       'temperature': 5.0, 'top_k': 1}), 0)])
  assert top1 == greedy
  with pytest.raises(ValueError, match=r"\['num_beams'\] are not supported"):
    lm_obj.generate_until([Instance('generate_until', {}, ('x', {'num_beams': 4}), 0)])


def test_generate_until_keeps_a_one_token_window(run_dir, monkeypatch):
  """With a 1-token window the prompt is the context's last token; the slice
  [-(window - new tokens):] was [-0:], the whole context."""
  c, params = checkpoint.load_params(run_dir)
  seen, real = [], sampling.generate

  def spy(params, m, prompts, *args, **kwargs):
    seen.append(prompts[0])
    return real(params, m, prompts, *args, **kwargs)
  monkeypatch.setattr(sampling, 'generate', spy)
  from lm_eval.api.instance import Instance
  for window, want in ((1, 1), (8, 4)):
    harness.make_lm(params, c.model, BYTES, window=window).generate_until([Instance(
        'generate_until', {}, ('x' * 40 + 'y', {'until': ['\n'], 'max_gen_toks': 4}), 0)])
    assert len(seen[-1]) == want and seen[-1][-1] == BYTES.encode('y')[0], (window, seen)


class _Merging:
  """Bytes, but `('` is one token (259), as a BPE merge across a
  context/continuation boundary makes it."""
  eos_id, vocab_size = BYTES.eos_id, BYTES.vocab_size + 1

  def encode(self, s: str) -> list[int]:
    parts = s.split("('")
    out = list(BYTES.encode(parts[0]))
    for p in parts[1:]:
      out += [259] + list(BYTES.encode(p))
    return out

  def decode(self, ids) -> str:
    return ''.join("('" if i == 259 else BYTES.decode([i]) for i in ids)


def test_a_merge_across_the_boundary_still_scores_the_continuation(run_dir):
  """`print(` + `'`: the whole encodes to as many tokens as the context, so the
  harness's split leaves no continuation; it is then encoded on its own."""
  c, params = checkpoint.load_params(run_dir)
  tok = _Merging()
  lm_obj = harness.make_lm(params, c.model, tok, batch_size=4)
  from lm_eval.api.instance import Instance
  assert lm_obj._encode_pair('print(', "'") == (tok.encode('print('), [ord("'")])
  assert lm_obj._encode_pair('print( ', "'") == (tok.encode('print('), tok.encode(" '"))
  assert lm_obj._encode_pair('f(', 'x') == (tok.encode('f('), [ord('x')])  # Unchanged.
  (ll, _), = lm_obj.loglikelihood([Instance('loglikelihood', {}, ('print(', "'"), 0)])
  want = sampling.score(params, c.model, [ord("'")], tok.encode('print('))
  np.testing.assert_allclose(ll, -want['nll'], rtol=1e-5, atol=1e-4)


def test_eval_cli_runs_the_shipped_tasks_offline(run_dir, tmp_path):
  out = tmp_path / 'eval.json'
  p = forked_cli.run(
      [sys.executable, '-m', 'tools.eval', f'--workdir={run_dir}',
       '--tasks=lm_tiny_mc,lm_tiny_lastword', f'--include_path={TASKS}', f'--out={out}',
       f'--bias_csv={os.path.join(ROOT, "tests", "data", "bias_pairs.csv")}'],
      cwd=ROOT, capture_output=True, text=True)
  assert p.returncode == 0, p.stderr[-3000:]
  res = json.loads(out.read_text())
  assert set(res['tasks']) == {'lm_tiny_mc', 'lm_tiny_lastword'}
  assert 0 <= res['tasks']['lm_tiny_mc']['acc'] <= 1
  assert res['tasks']['lm_tiny_lastword']['perplexity'] > 1
  assert res['bias']['all']['pairs'] == 12 and res['step'] == 12
  assert 'lm_tiny_mc' in p.stdout and 'acc' in p.stdout
  bad = forked_cli.run([sys.executable, '-m', 'tools.eval', f'--workdir={run_dir}'],
                       cwd=ROOT, capture_output=True, text=True)
  assert bad.returncode == 2 and bad.stderr.startswith('error: nothing to evaluate')
  assert 'Traceback' not in bad.stderr


@pytest.mark.slow
def test_exported_checkpoint_scores_the_same_in_the_harness_hf_model(tmp_path, corpus_dir):
  """GPT-2 with a BPE tokenizer.json: our adapter on our params and the
  harness's `hf` model on the exported directory agree to 1e-4."""
  import torch
  import transformers
  from lm_eval.models.huggingface import HFLM
  from tests.test_hf import _randomize
  from tests.test_tokenizers import _train_hf
  from tools import hf
  texts = [p.read_text() for p in sorted(corpus_dir.glob('*.py'))]
  _train_hf(texts, tmp_path / 'src' / 'tokenizer.json')
  tok = tokenizers.get_tokenizer('hf', str(tmp_path / 'src' / 'tokenizer.json'))
  cfg = transformers.GPT2Config(vocab_size=tok.vocab_size, n_embd=32, n_layer=2, n_head=4,
                                n_inner=48, n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0,
                                attn_pdrop=0.0, bos_token_id=tok.eos_id,
                                eos_token_id=tok.eos_id)
  _randomize(transformers.GPT2LMHeadModel(cfg), std=0.3).save_pretrained(tmp_path / 'src')
  hf.import_dir(str(tmp_path / 'src'), str(tmp_path / 'run'))
  hf.export(str(tmp_path / 'run'), str(tmp_path / 'hf'))
  c, params = checkpoint.load_params(str(tmp_path / 'run'))
  tok = tokenizers.get_tokenizer(c.data.tokenizer, c.data.tokenizer_path)

  def evaluate(lm_obj):
    import lm_eval
    tasks = ('lm_tiny_mc', 'lm_tiny_lastword')  # Indexed alone: ~15 s less than all tasks.
    res = lm_eval.simple_evaluate(model=lm_obj, tasks=list(tasks),
                                  task_manager=harness.task_manager(TASKS, tasks),
                                  log_samples=True, bootstrap_iters=0)
    lls = {t: [[r[0] for r in s['resps']] for s in samples]
           for t, samples in res['samples'].items()}
    return res['results'], lls

  ours, our_lls = evaluate(harness.make_lm(params, c.model, tok, batch_size=8))
  torch.manual_seed(0)
  theirs, their_lls = evaluate(HFLM(pretrained=str(tmp_path / 'hf'), device='cpu',
                                    batch_size=8, dtype='float32'))
  for task in ('lm_tiny_mc', 'lm_tiny_lastword'):
    for k in ('acc,none', 'acc_norm,none', 'perplexity,none'):
      if k in ours[task]:
        np.testing.assert_allclose(ours[task][k], theirs[task][k], rtol=1e-4, err_msg=k)
    a = np.asarray([[x[0] for x in doc] for doc in our_lls[task]], float)
    b = np.asarray([[x[0] for x in doc] for doc in their_lls[task]], float)
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


def test_long_continuations_are_scored_in_pieces_like_score(run_dir):
  c, params = checkpoint.load_params(run_dir)
  text = list(BYTES.encode('def f(x):\n    return x * 2 + alpha beta gamma\n' * 4))
  assert len(text) > c.model.max_len
  (ll, _), = harness.continuation_logprobs(params, c.model, [([BYTES.eos_id], text)])
  want = sampling.score(params, c.model, text, [BYTES.eos_id])
  np.testing.assert_allclose(ll, -want['nll'], rtol=1e-5)
  # In a narrower window (a run's data.seq_len below model.max_len, as
  # tools.eval and generate --score both pass): the same pieces again.
  W = c.model.max_len // 2
  (ll, _), = harness.continuation_logprobs(params, c.model, [([BYTES.eos_id], text)], window=W)
  want_w = sampling.score(params, c.model, text, [BYTES.eos_id], window=W)
  np.testing.assert_allclose(ll, -want_w['nll'], rtol=1e-5)
  assert abs(want_w['nll'] - want['nll']) > 1e-3  # The window mattered.


def test_a_document_masked_run_is_scored_as_it_trained(run_dir):
  """A run trained with data.document_mask never let text attend to the EOS
  before it: the harness (its contexts start with EOS), the probes and
  sampling.score split rows at EOS the same way (doc_eos), in pieces too."""
  c, params = checkpoint.load_params(run_dir)
  assert c.data.document_mask
  how = dict(window=c.model.max_len, doc_eos=BYTES.eos_id)
  assert sampling.doc_eos_of(c, BYTES.eos_id) == BYTES.eos_id
  for text in (list(BYTES.encode('def f(x):\n    return x')),
               list(BYTES.encode('def f(x):\n    return x * 2 + alpha beta gamma\n' * 4))):
    (ll, _), = harness.continuation_logprobs(params, c.model, [([BYTES.eos_id], text)], **how)
    want = sampling.score(params, c.model, text, [BYTES.eos_id], doc_eos=BYTES.eos_id)
    np.testing.assert_allclose(ll, -want['nll'], rtol=1e-5)
    (old, _), = harness.continuation_logprobs(params, c.model, [([BYTES.eos_id], text)])
    assert abs(old - ll) > 1e-3  # Seeing the EOS changed the score.


def test_a_task_whose_data_cannot_be_loaded_fails_before_evaluating(tmp_path):
  """A local task whose data file is missing (or a hub task not cached, with
  network off): one ConfigError naming the task, before a model is loaded or
  a run trains (training had died at its first evaluation)."""
  from lm.config import ConfigError
  with open(os.path.join(TASKS, 'tiny_mc.yaml')) as f:
    yaml = f.read()
  (tmp_path / 'gone.yaml').write_text(
      yaml.replace('task: lm_tiny_mc', 'task: lm_gone')
      .replace('tests/tasks/tiny_mc.jsonl', str(tmp_path / 'missing.jsonl')))
  harness.check_task_data(['lm_tiny_mc'], TASKS, '--tasks')  # Its data loads.
  with pytest.raises(ConfigError, match=r"--tasks: the data of task 'lm_gone' cannot be "
                                        r'loaded offline \(.*missing.jsonl'):
    harness.check_task_data(['lm_gone'], str(tmp_path), '--tasks')
  # A generate_until task asking for settings generate_until cannot honour
  # (beam search): refused up front too, not dropped while it is scored.
  (tmp_path / 'beams.yaml').write_text(
      'task: lm_beams\ndataset_path: json\ndataset_kwargs:\n  data_files:\n'
      f'    test: {os.path.join(TASKS, "tiny_lastword.jsonl")}\n'
      'test_split: test\noutput_type: generate_until\ndoc_to_text: "{{text}}"\n'
      'doc_to_target: "x"\ngeneration_kwargs:\n  until: ["\\n"]\n  num_beams: 4\n  top_k: 5\n'
      'metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n')
  with pytest.raises(ConfigError, match=r"--tasks: task 'lm_beams': generation_kwargs "
                                        r"\['num_beams'\] are not supported"):
    harness.check_task_data(['lm_beams'], str(tmp_path), '--tasks')
