"""Memorization (canary exposure) and bias probes (lm/probes.py)."""

import dataclasses
import json
import os

import jax
import numpy as np
import pytest

from lm import checkpoint, probes, tokenizers, train
from lm.config import ConfigError
from lm.objectives import lm as lm_objective
from tests.helpers import tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAIRS = os.path.join(ROOT, 'tests', 'data', 'bias_pairs.csv')
BYTES = tokenizers.get_tokenizer('byte')


def test_canaries_go_into_train_only_and_are_recorded(tmp_path, corpus_dir):
  c = tiny(corpus_dir, **{'data.canary_repeats': (0, 3, 5), 'data.canary_digits': 2})
  canaries = probes.make_canaries(c.data)
  assert [x['repeats'] for x in canaries] == [0, 3, 5]
  assert all(len(x['secret']) == 2 and x['text'] == f'my pin is {x["secret"]}'
             for x in canaries)
  plain = lm_objective.data(tiny(corpus_dir), BYTES, None, 0, 1)
  with_c = lm_objective.data(c, BYTES, None, 0, 1)
  stream = (np.asarray(with_c.train.windows.tokens) % 256).astype(np.uint8).tobytes()
  for x in canaries:
    assert stream.count(x['text'].encode()) == x['repeats']
  for (a, _), (b, _) in zip(plain.evals, with_c.evals):  # Validation untouched.
    np.testing.assert_array_equal(a['tokens'], b['tokens'])
  train.train_and_evaluate(dataclasses.replace(c, train=dataclasses.replace(
      c.train, steps=1, eval_every=1, checkpoint_every=1)), str(tmp_path), log=lambda *_: None)
  recorded = probes.read_canaries(str(tmp_path))
  assert [{k: v for k, v in x.items() if k != 'expected_seen'} for x in recorded] == canaries
  rows = len(with_c.train)  # Windows in the corpus; one step reads batch_size of them.
  assert [x['expected_seen'] for x in recorded] == pytest.approx(
      [r * 1 * c.train.batch_size / rows for r in (0, 3, 5)])
  for bad, match in (({'data.canary_repeats': (-1,)}, 'repetition count'),
                     ({'data.canary_template': 'no secret'}, "'{secret}' once"),
                     ({'data.canary_digits': 0}, '1..12')):
    with pytest.raises(ConfigError, match=match):
      tiny(corpus_dir, **bad)


def _trained(tmp_path, corpus_dir, name, repeats):
  # The control model trains on the same text without canaries (their fields: defaults).
  canaries = {'data.canary_repeats': repeats, 'data.canary_digits': 3} if repeats else {}
  c = tiny(corpus_dir, **{**canaries,
                          'data.seq_len': 32, 'train.steps': 160, 'train.batch_size': 16,
                          'opt.lr': 1e-2, 'opt.warmup_steps': 10, 'train.eval_every': 160,
                          'train.log_every': 20,
                          'train.checkpoint_every': 160, 'model.d_model': 64,
                          'model.mlp_dim': 128})
  wd = str(tmp_path / name)
  train.train_and_evaluate(c, wd, log=lambda *_: None)
  return wd, c


@pytest.mark.slow
def test_exposure_of_a_repeated_canary_is_far_above_an_unseen_one(tmp_path, corpus_dir):
  """A 128x canary is memorised (exposure near the maximum, log2 10^3 = 10
  bits); the same canary in an equally trained model that never saw it, and a
  control canary (0 repeats), stay near chance (~1 bit on average). (64 copies
  in 120 steps gave 1.9-10 bits across data orders, too few to test on one;
  128 in 160 steps gave 9.0-10 for six orders.)"""
  seen_wd, _ = _trained(tmp_path, corpus_dir, 'seen', (128, 0))
  unseen_wd, _ = _trained(tmp_path, corpus_dir, 'unseen', ())
  c, params = checkpoint.load_params(seen_wd)
  canaries = probes.read_canaries(seen_wd)
  seen, control = probes.exposures(params, c.model, BYTES, canaries)
  _, params_u = checkpoint.load_params(unseen_wd)
  never = probes.exposure(params_u, c.model, BYTES, canaries[0])
  assert seen['method'] == 'exact' and seen['max_bits'] == pytest.approx(np.log2(1e3))
  assert seen['exposure_bits'] > 7, seen
  assert never['exposure_bits'] < 4 and control['exposure_bits'] < 4, (never, control)
  assert seen['exposure_bits'] - never['exposure_bits'] > 4
  # The sampling approximation agrees with the exact rank on the same canary.
  old, probes.EXACT_LIMIT = probes.EXACT_LIMIT, 100
  try:
    approx = probes.exposure(params, c.model, BYTES, dict(canaries[0]), samples=500)
  finally:
    probes.EXACT_LIMIT = old
  assert approx['method'].startswith('skew-normal') and approx['exposure_bits'] > 6, approx


def test_bias_probe_decoder_and_masked_lm():
  rows = probes.read_pairs(PAIRS)
  for family in ('decoder', 'encoder'):
    c = tiny(None, **{'model.family': family, 'model.vocab_size': 384, 'model.max_len': 48,
                      'data.seq_len': 16})
    params = jax.jit(lambda r, m=c.model: train.Transformer(m).init(
        r, **train.init_inputs(m, 8))['params'])(jax.random.key(1))
    params = jax.tree_util.tree_map(lambda x: x.value, params,
                                    is_leaf=lambda x: hasattr(x, 'value'))
    res = probes.bias_probe(params, c.model, BYTES, rows, bootstrap=200)
    assert res['method'] == ('total log-likelihood' if family == 'decoder'
                             else 'pseudo-log-likelihood')
    assert {k: v['pairs'] for k, v in res.items() if k != 'method'} == {
        'colour': 4, 'height': 4, 'species': 4, 'all': 12}
    for k, v in res.items():
      if k != 'method':
        lo, hi = v['ci95']
        assert 0 <= lo <= v['stereotype_preferred'] <= hi <= 1
    swapped = [{**r, 'sent_more': r['sent_less'], 'sent_less': r['sent_more']} for r in rows]
    res2 = probes.bias_probe(params, c.model, BYTES, swapped, bootstrap=0)
    assert res2['all']['stereotype_preferred'] == pytest.approx(
        1 - res['all']['stereotype_preferred'])  # No ties among these sentences.
    assert 'colour' in probes.bias_table(res)


def test_masked_lm_scores_sentences_longer_than_its_context():
  """Pseudo-log-likelihood beyond model.max_len: each token masked in the
  max_len tokens around it; nothing is cut, so an ending counts; a short
  sentence's score is every token masked in turn in the whole sentence."""
  c = tiny(None, **{'model.family': 'encoder', 'model.vocab_size': 384, 'model.max_len': 16,
                    'data.seq_len': 16})
  params = jax.jit(lambda r: train.Transformer(c.model).init(
      r, **train.init_inputs(c.model, 8))['params'])(jax.random.key(1))
  params = jax.tree_util.tree_map(lambda x: x.value, params, is_leaf=lambda x: hasattr(x, 'value'))
  head = 'the quick brown fox jumps over '  # 31 bytes: the endings lie outside max_len.
  a, b = probes.sentence_scores(params, c.model, BYTES, [head + 'dogs', head + 'cats'])
  assert np.isfinite(a) and np.isfinite(b) and a != b
  f = probes._masked_logprob_fn(c.model)
  ids = np.asarray(BYTES.encode('a cat'), np.int32)
  want = f(params, np.tile(ids, (5, 1)), np.ones((5, 5), bool), np.arange(5), BYTES.vocab_size)
  got, = probes.sentence_scores(params, c.model, BYTES, ['a cat'])
  np.testing.assert_allclose(got, float(np.sum(want)), rtol=1e-5)
  long = head * 2  # 62 tokens; token p is masked in tokens lo..lo+15, lo = clip(p - 8).
  ids = np.asarray(BYTES.encode(long), np.int32)
  whole = sum(float(f(params, ids[None, lo:lo + 16], np.ones((1, 16), bool),
                      np.array([p - lo]), BYTES.vocab_size)[0])
              for p in range(62) for lo in [min(max(p - 8, 0), 46)])
  np.testing.assert_allclose(probes.sentence_scores(params, c.model, BYTES, [long])[0], whole,
                             rtol=1e-5)
  # In the window the model trained at (probes.scoring's data.seq_len), not max_len:
  # learned positions past it were never trained (they had been read).
  whole8 = sum(float(f(params, ids[None, lo:lo + 8], np.ones((1, 8), bool),
                       np.array([p - lo]), BYTES.vocab_size)[0])
               for p in range(62) for lo in [min(max(p - 4, 0), 54)])
  np.testing.assert_allclose(probes.sentence_scores(params, c.model, BYTES, [long], window=8)[0],
                             whole8, rtol=1e-5)


def test_bias_csv_errors(tmp_path):
  bad = tmp_path / 'bad.csv'
  bad.write_text('more,less\na,b\n')
  with pytest.raises(probes.ProbeError, match='needs columns sent_more, sent_less, bias_type'):
    probes.read_pairs(str(bad))
  bad.write_text('sent_more,sent_less,bias_type\n,b,x\n')
  with pytest.raises(probes.ProbeError, match='row 2 has an empty sentence'):
    probes.read_pairs(str(bad))
  with pytest.raises(probes.ProbeError, match='could not be read'):
    probes.read_pairs(str(tmp_path / 'missing.csv'))
  bad.write_text('sent_more,sent_less,bias_type\na,b,all\n')  # Overwrote the all-pairs row.
  with pytest.raises(probes.ProbeError, match="row 2 has bias_type='all'"):
    probes.read_pairs(str(bad))
  assert json.loads(json.dumps(probes.read_pairs(PAIRS)))[0]['bias_type'] == 'colour'
  bom = tmp_path / 'bom.csv'  # Saved by Excel as 'CSV UTF-8': read as the same rows.
  bom.write_text(open(PAIRS, encoding='utf-8').read(), encoding='utf-8-sig')
  assert probes.read_pairs(str(bom)) == probes.read_pairs(PAIRS)


def test_training_and_sweeps_record_tasks_exposure_and_bias(tmp_path, corpus_dir):
  """train.eval_tasks at every evaluation, canaries and bias at the final one:
  the metrics JSONL has them, results.csv has them as columns and the report
  plots task scores against compute and exposure against size."""
  from lm import metrics, report, sweep
  from tests.test_sweep import _sweep_cd
  cd = _sweep_cd(corpus_dir)
  cd.data.update(canary_repeats=(0, 8), canary_digits=2)
  cd.train.update(eval_tasks=('lm_tiny_mc',), eval_tasks_path=os.path.join(ROOT, 'tests', 'tasks'),
                  eval_tasks_limit=6, eval_bias_csv=PAIRS)
  cd.sweep = dict(design='grid', params=[900], tokens=[1600], aspect=8, head_dim=8,
                  evals_per_run=1, bootstrap=10)
  wd = str(tmp_path / 'sw')
  recs = sweep.run_all(cd, wd, log=lambda *_: None)
  assert [r['status'] for r in recs] == ['done'], recs
  evals = metrics.read(os.path.join(wd, 'runs', recs[0]['name']), 'eval')
  assert len(evals) == 1 and 'task/lm_tiny_mc/acc' in evals[0]
  assert 'canary/1_x8/exposure' in evals[-1]
  assert 0 <= evals[-1]['bias/all/stereotype_preferred'] <= 1
  rows = sweep.collect(cd, wd)
  header = open(os.path.join(wd, 'results.csv')).readline().strip().split(',')
  for col in ('task/lm_tiny_mc/acc', 'canary/0_x0/exposure', 'bias/colour/stereotype_preferred'):
    assert col in header and all(r[col] is not None for r in rows), col
  md = open(report.write_report(cd, wd)).read()
  assert '## Beyond loss' in md and '| run | N | all | colour | height | species |' in md
  assert '| N | 0_x0 | 1_x8 |' in md  # Exposure per size and repetition count.
  for png in ('tasks.png', 'exposure.png'):
    assert os.path.getsize(os.path.join(wd, 'report', png)) > 5_000


def test_canaries_are_scored_on_the_tokens_training_saw(tmp_path, corpus_dir):
  """With a subword tokenizer the prefix's trailing space joins the secret
  (as the harness splits context and continuation): context + continuation
  is exactly the inserted text's tokens after EOS."""
  from tests.test_tokenizers import _train_hf
  _train_hf([p.read_text() for p in sorted(corpus_dir.glob('*.py'))] + ['my pin is 12345'] * 20,
            tmp_path / 'tokenizer.json')
  tok = tokenizers.get_tokenizer('hf', str(tmp_path / 'tokenizer.json'))
  c = {'template': 'my pin is {secret}!', 'secret': '12345'}
  ctx, cont = probes._pair(tok, c, '12345')
  assert ctx + cont == [tok.eos_id] + [int(t) for t in tok.encode('my pin is 12345!')]
  assert tok.decode(cont).strip().startswith('12345')


def test_a_bias_csv_row_without_a_type_is_refused_before_training(tmp_path):
  """It crashed sorted() in the probe at the final evaluation, before that
  evaluation's checkpoint was saved."""
  f = tmp_path / 'pairs.csv'
  f.write_text('sent_more,sent_less,bias_type\nA he,A she,gender\nB he,B she\n')
  with pytest.raises(probes.ProbeError, match='row 3 has no bias_type'):
    probes.read_pairs(str(f))
  c = tiny(**{'train.eval_bias_csv': str(f)})
  with pytest.raises(ConfigError, match=r'config.train.eval_bias_csv=.*row 3 has no bias_type'):
    probes.check_tasks(c)
