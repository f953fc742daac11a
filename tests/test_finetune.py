"""Fine-tuning from a checkpoint: language modelling and sequence classification."""

import dataclasses
import json
import random
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from lm import checkpoint, classify, train
from lm.config import ConfigError, DataConfig
from lm.tokenizers import ByteTokenizer
from tests import forked_cli
from tests.helpers import tiny

A_WORDS = ['alpha', 'beta', 'gamma', 'kappa']
B_WORDS = ['delta', 'omega', 'sigma', 'theta']


def _labelled(path, n, seed, fmt='jsonl'):
  """A learnable task: the words of a text come from its class's vocabulary."""
  rng = random.Random(seed)
  rows = []
  for _ in range(n):
    lab = rng.choice(['a', 'b'])
    words = A_WORDS if lab == 'a' else B_WORDS
    rows.append({'text': ' '.join(rng.choice(words) for _ in range(rng.randint(2, 5))),
                 'label': lab})
  if fmt == 'jsonl':
    path.write_text(''.join(json.dumps(r) + '\n' for r in rows))
  else:
    path.write_text('text,label\n' + ''.join(f'{r["text"]},{r["label"]}\n' for r in rows))
  return path


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory, corpus_dir):
  wd = tmp_path_factory.mktemp('pre')
  train.train_and_evaluate(tiny(corpus_dir), str(wd), log=lambda *a: None)
  return wd


def test_lm_finetune_starts_from_pretrained_params(pretrained, tmp_path):
  other = tmp_path / 'mine'
  other.mkdir()
  for i in range(12):
    (other / f'n{i}.txt').write_text(f'my own notes number {i}: ' + 'lorem ipsum ' * 60)
  c = tiny(other, **{'opt.lr': 1e-3})
  c = dataclasses.replace(c, init_from=str(pretrained))
  _, want = checkpoint.load_params(str(pretrained))
  logs = []
  out = train.train_and_evaluate(c, str(tmp_path / 'ft0'), stop_at=0, log=logs.append)
  assert int(out['state'].step) == 0  # Fresh optimizer, step 0.
  for a, b in zip(jax.tree_util.tree_leaves(out['state'].params), jax.tree_util.tree_leaves(want)):
    np.testing.assert_array_equal(a, b)
  assert any('initialised' in line for line in logs)
  assert all(float(np.abs(x).sum()) == 0 for x in
             jax.tree_util.tree_leaves(out['state'].opt_state) if x.ndim)
  out = train.train_and_evaluate(c, str(tmp_path / 'ft'), log=lambda *a: None)
  assert out['step'] == 6 and np.isfinite(out['loss'])


def test_init_from_another_architecture_is_refused(pretrained, tmp_path, corpus_dir):
  c = tiny(corpus_dir, **{'model.d_model': 64, 'model.num_layers': 3})
  c = dataclasses.replace(c, init_from=str(pretrained))
  with pytest.raises(train.CheckpointError,
                     match=r'(?s)model.d_model: 32 != 64.*model.num_layers: 2 != 3'):
    train.train_and_evaluate(c, str(tmp_path / 'x'))
  c = dataclasses.replace(c, init_from=str(tmp_path / 'nowhere'))
  with pytest.raises(train.CheckpointError, match='neither a run directory'):
    train.train_and_evaluate(c, str(tmp_path / 'y'))



def test_a_damaged_init_from_fails_before_anything_compiles(pretrained, tmp_path, corpus_dir,
                                                            monkeypatch):
  """The source's params are read before the step compiles and before the
  workdir gets a checkpoint directory (they were read after both)."""
  import glob
  import shutil
  src = tmp_path / 'damaged'
  shutil.copytree(pretrained, src)
  for f in glob.glob(str(src / 'checkpoints' / '*' / 'state' / 'ocdbt.process_0' / 'd' / '*')):
    with open(f, 'wb') as fh:
      fh.write(b'garbage')
  monkeypatch.setattr(train, 'build', lambda *a, **k: pytest.fail('compiled first'))
  c = dataclasses.replace(tiny(corpus_dir), init_from=str(src))
  with pytest.raises(train.CheckpointError, match=r'^params in .*damaged.* could not be restored'):
    train.train_and_evaluate(c, str(tmp_path / 'ft'))
  assert not (tmp_path / 'ft' / 'checkpoints').exists()


def _classifier(tmp_path, **kw):
  train_f = _labelled(tmp_path / 'train.jsonl', 400, 0)
  eval_f = _labelled(tmp_path / 'eval.csv', 64, 1, fmt='csv')
  over = {'data.source': 'file', 'data.path': str(train_f), 'data.eval_path': str(eval_f),
          'data.label_key': 'label', 'data.seq_len': 32, 'train.batch_size': 16,
          'train.steps': 40, 'train.eval_every': 40, 'train.checkpoint_every': 40,
          'opt.lr': 3e-3, 'opt.warmup_steps': 4, 'model.pool': 'mean'}
  over.update(kw)
  return tiny(**over)


def test_count_and_memory_tools_resolve_a_classifier_and_a_seq2seq_run_as_training_does(
    tmp_path, corpus_dir):
  """tools.count, tools.memory and tools.shardings resolve a config as a run
  does (train.resolve: a classifier's labels from its data) and count FLOPs
  as its setup row records them (train.flops_per_token: a frozen backbone, a
  seq2seq objective's encoder and decoder lengths). memory and shardings had
  built a plain language model for a classifier and crashed in its loss; count
  had left out the head and counted T5 at data.seq_len on both sides."""
  import io

  from lm import flops
  from tools import count, memory
  from tools import shardings as tool_sh
  cls = _classifier(tmp_path, **{'opt.freeze_backbone': True})
  rc = train.resolve(cls)[0]
  assert rc.model.num_classes == 2
  n = flops.param_counts(rc.model)['total']
  assert n > flops.param_counts(train.resolve_vocab(cls, 259).model)['total']  # The head.
  out = io.StringIO()
  r = memory.estimate(cls, out)
  assert r['parameters'] >= 4 * n and 'parameters, batch 16 x 32' in out.getvalue()
  tool_sh.report(cls, out=io.StringIO())
  assert f'| {n:,} |' in count.table(rc, [rc.model])
  t5 = tiny(corpus_dir, **{'model.family': 'encoder_decoder', 'train.objective': 'span'})
  rt5 = train.resolve(t5)[0]
  for c in (rc, rt5):
    want = train.flops_per_token(c)  # What the run's setup row records (train.step_cost).
    assert want != flops.all_conventions(c.model, c.data.seq_len)  # The counts count missed.
    assert '| ' + ' | '.join(f'{want[k]:.4g}' for k in flops.CONVENTIONS) + ' |' in (
        count.table(c, [c.model])), count.table(c, [c.model])


def test_classifier_learns_a_learnable_task(tmp_path):
  out = train.train_and_evaluate(_classifier(tmp_path), str(tmp_path / 'cls'),
                                 log=lambda *a: None)
  assert out['config'].model.num_classes == 2 and out['config'].data.labels == ('a', 'b')
  assert out['examples'] == 64
  assert out['accuracy'] >= 0.9, out  # Chance is ~0.5.
  # Prediction on new text through the CLI: labels, probabilities, accuracy.
  _labelled(tmp_path / 'new.jsonl', 40, seed=9)
  r = forked_cli.run([sys.executable, '-m', 'experiments.classify',
                      f'--workdir={tmp_path / "cls"}', f'--file={tmp_path / "new.jsonl"}',
                      f'--text={" ".join(A_WORDS[:3])}'], capture_output=True, text=True,
                     timeout=300)
  assert r.returncode == 0, r.stderr
  lines = r.stdout.strip().splitlines()
  assert len(lines) == 41 and lines[0].startswith('a\ta=')
  p = [float(x.split('=')[1]) for x in lines[0].split('\t')[1].split()]
  assert abs(sum(p) - 1) < 1e-5 and p[0] > 0.5
  assert float(r.stderr.split()[1]) >= 0.9 and 'on 40 labelled examples' in r.stderr
  assert 'note:' not in r.stderr  # Every text fits in an example.
  r = forked_cli.run([sys.executable, '-m', 'experiments.classify', f'--workdir={tmp_path / "cls"}',
                      f'--text={" ".join(A_WORDS * 40)}', '--text=good'], capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 0 and r.stderr.startswith('note: 1 of 2 texts are longer than'), r.stderr
  r = forked_cli.run([sys.executable, '-m', 'experiments.generate',
                      f'--workdir={tmp_path / "cls"}', '--prompt=x'], capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 2 and 'use python -m experiments.classify' in r.stderr
  (tmp_path / 'latin1.txt').write_bytes(b'caf\xe9 good\n')
  r = forked_cli.run([sys.executable, '-m', 'experiments.classify', f'--workdir={tmp_path / "cls"}',
                      f'--file={tmp_path / "latin1.txt"}'], capture_output=True, text=True,
                     timeout=300)
  assert r.returncode == 2 and 'latin1.txt is not UTF-8' in r.stderr, r.stderr
  assert 'Traceback' not in r.stderr
  # Blank lines are skipped, as --text=' ' is refused; a .tsv's header and labels are
  # not texts (one line each, classified, before).
  (tmp_path / 'ws.txt').write_text('   \n\t\n' + ' '.join(A_WORDS[:3]) + '\n')
  (tmp_path / 'new.tsv').write_text('text\tlabel\ngood nice\ta\n')
  (tmp_path / 'blank.txt').write_text(' \n')
  r = forked_cli.run([sys.executable, '-m', 'experiments.classify', f'--workdir={tmp_path / "cls"}',
                      f'--file={tmp_path / "ws.txt"}'], capture_output=True, text=True,
                     timeout=300)
  assert r.returncode == 0 and len(r.stdout.strip().splitlines()) == 1, (r.stdout, r.stderr)
  for f, err in (('new.tsv', 'tab-separated tables are not read; give a .csv or .jsonl'),
                 ('blank.txt', 'holds no text (only blank lines)')):
    r = forked_cli.run([sys.executable, '-m', 'experiments.classify',
                        f'--workdir={tmp_path / "cls"}', f'--file={tmp_path / f}'],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.startswith('error: --file=') and f in r.stderr, r
    assert err in r.stderr, r.stderr
    assert r.stderr.count('\n') == 1 and not r.stdout, r.stderr


def test_frozen_backbone_from_an_lm_trains_only_the_head(pretrained, tmp_path):
  c = _classifier(tmp_path, **{'opt.freeze_backbone': True, 'train.steps': 8,
                               'train.eval_every': 8, 'train.checkpoint_every': 8,
                               'model.pool': 'last'})
  c = dataclasses.replace(c, init_from=str(pretrained))
  logs = []
  out = train.train_and_evaluate(c, str(tmp_path / 'frozen'), log=logs.append)
  assert any("new: ['cls_head']" in line for line in logs), logs
  _, lm = checkpoint.load_params(str(pretrained))
  got = out['state'].params
  for k in lm:
    if k in got:
      for a, b in zip(jax.tree_util.tree_leaves(got[k]), jax.tree_util.tree_leaves(lm[k])):
        np.testing.assert_array_equal(a, b)
  assert 'cls_head' in got and 'cls_head' not in lm
  r = _cli(f'--workdir={tmp_path / "frozen"}', '--prompt=x')
  assert r.returncode == 2 and 'holds a sequence classifier' in r.stderr
  # A longer run resumes from the checkpoint (the frozen parameters' masked
  # optimizer state used to make restore raise).
  c2 = dataclasses.replace(c, train=dataclasses.replace(c.train, steps=12))
  logs = []
  out2 = train.train_and_evaluate(c2, str(tmp_path / 'frozen'), log=logs.append)
  assert any('resum' in line.lower() and '8' in line for line in logs), logs
  assert int(out2['state'].step) == 12
  for a, b in zip(jax.tree_util.tree_leaves(out2['state'].params['blocks']),
                  jax.tree_util.tree_leaves(got['blocks'])):
    np.testing.assert_array_equal(a, b)  # The backbone stays frozen across the resume.
  # Its labelled file edited since (a label fixed): the data position would
  # point into other rows; refused in one line, nothing written (it resumed).
  train_f = tmp_path / 'train.jsonl'
  rows = train_f.read_text().splitlines()
  train_f.write_text('\n'.join(rows[:-1]) + '\n')
  before = (tmp_path / 'frozen' / 'metrics.jsonl').read_text()
  c3 = dataclasses.replace(c, train=dataclasses.replace(c.train, steps=16))
  with pytest.raises(checkpoint.CheckpointError, match=r'the corpus is not the text .*frozen '
                     r'was trained on \(then 1\+1 files, \d+ bytes'):
    train.train_and_evaluate(c3, str(tmp_path / 'frozen'), log=lambda *a: None)
  assert (tmp_path / 'frozen' / 'metrics.jsonl').read_text() == before


def test_frozen_backbone_differentiates_only_the_head(tmp_path):
  """Head grads equal the full gradient's; the backbone's are zeros, and the
  compiled step does a fraction of the full step's work (no backbone backward)."""
  c = _classifier(tmp_path, **{'opt.freeze_backbone': True, 'train.grad_accum': 2})
  c = dataclasses.replace(c, model=dataclasses.replace(c.model, num_classes=2, vocab_size=384))
  full = dataclasses.replace(c, opt=dataclasses.replace(c.opt, freeze_backbone=False))
  model = train.Transformer(c.model)
  B, L = 4, 32
  batch = {'tokens': jax.random.randint(jax.random.key(1), (B, L), 0, 256),
           'valid': jax.numpy.arange(L)[None, :] < jax.numpy.array([[32], [20], [9], [3]]),
           'labels': jax.numpy.array([0, 1, 1, 0])}
  params = nn.unbox(model.init(jax.random.key(0), batch['tokens'],
                               valid_BL=batch['valid'])['params'])
  rng = jax.random.key(2)
  loss_f, _, g_f = train.make_grad_fn(c, model)(params, batch, rng)
  loss_full, _, g_full = train.make_grad_fn(full, model)(params, batch, rng)
  np.testing.assert_allclose(loss_f, loss_full, rtol=1e-6)
  for k in params:
    for a, b in zip(jax.tree_util.tree_leaves(g_f[k]), jax.tree_util.tree_leaves(g_full[k])):
      if k == 'cls_head':
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
      else:
        assert not np.any(a) and np.any(b), k
  cost = [jax.jit(train.make_grad_fn(x, model)).lower(params, batch, rng).compile()
          .cost_analysis() for x in (c, full)]
  cost = [x[0] if isinstance(x, list) else x for x in cost]
  assert cost[0]['flops'] < 0.5 * cost[1]['flops'], cost  # Forward ~1/3 of fwd + bwd.


def test_a_classifier_from_a_classifier_keeps_each_class_its_own_head_row():
  """init_from a classifier took its head by shape alone: labels bad/good on a
  head trained for neg/pos, or the same labels in another order, mixed classes."""
  from lm import train
  head = {'kernel': np.arange(6.0).reshape(3, 2), 'bias': np.array([10.0, 20.0])}
  loaded = {'embed': 1, 'cls_head': head}
  same, why = train._classes_of(loaded, ('neg', 'pos'), ('neg', 'pos'))
  assert same is loaded and why == ''
  swapped, why = train._classes_of(loaded, ('neg', 'pos'), ('pos', 'neg'))
  np.testing.assert_array_equal(swapped['cls_head']['kernel'], head['kernel'][:, ::-1])
  np.testing.assert_array_equal(swapped['cls_head']['bias'], [20.0, 10.0])
  assert 'reordered' in why and swapped['embed'] == 1
  other, why = train._classes_of(loaded, ('neg', 'pos'), ('bad', 'good'))
  assert 'cls_head' not in other and other['embed'] == 1 and 'cls_head fresh' in why
  lm_only, why = train._classes_of({'embed': 1}, (), ('bad', 'good'))
  assert lm_only == {'embed': 1} and why == ''
  lm_from_cls, why = train._classes_of(loaded, ('neg', 'pos'), ())  # An LM fine-tune.
  assert lm_from_cls == {'embed': 1} and "cls_head left out: this run has no classes" in why


def test_label_files_errors(tmp_path):
  bad = tmp_path / 'bad.jsonl'
  bad.write_text('{"text": "hi", "label": "a"}\n{"text": "there"}\n')
  with pytest.raises(classify.LabelError, match=r"bad.jsonl:2: missing field 'label'"):
    classify.read_file(str(bad), 'text', 'label')
  csv_f = tmp_path / 'x.csv'
  csv_f.write_text('sentence,label\nhello,a\n')
  with pytest.raises(classify.LabelError, match=r"x.csv:2: missing field 'text'"):
    classify.read_file(str(csv_f), 'text', 'label')
  extra = tmp_path / 'extra.csv'  # An unquoted comma: a field past the header's.
  extra.write_text('text,label\nhello,a\n"two\nlines",b\nhi, there,a\n')
  for read in (classify.read_file, classify.read_texts):
    with pytest.raises(classify.LabelError,
                       match=r'extra.csv:5: 3 fields, but the header names 2 \(text, label\)'):
      read(str(extra), 'text', 'label')
  with pytest.raises(ConfigError, match=r"'.*' is a directory, not a file: give a .csv"):
    classify.read_file(str(tmp_path), 'text', 'label')
  bom = tmp_path / 'bom.csv'  # Excel's "CSV UTF-8" starts with a byte order mark.
  bom.write_bytes('\ufefftext,label\nhello,a\n'.encode('utf-8'))
  assert classify.read_file(str(bom), 'text', 'label') == [('hello', 'a')]
  assert classify.read_texts(str(bom), 'text', 'label') == (['hello'], ['a'])
  latin = tmp_path / 'latin.csv'  # A spreadsheet saved as Latin-1: named, with its line.
  latin.write_bytes('text,label\nhello,a\ncaf\xe9,b\n'.encode('latin-1'))
  with pytest.raises(classify.LabelError, match=r'latin.csv:3: not UTF-8 text \(byte 0xe9'):
    classify.read_file(str(latin), 'text', 'label')
  part = tmp_path / 'part.csv'
  part.write_text('text,label\nhello,a\nthere,\n')
  with pytest.raises(classify.LabelError, match=r"part.csv:3: no 'label', where 1 of 2 rows"):
    classify.read_texts(str(part), 'text', 'label')
  part.write_text('text,label\nhello,\n,\n')
  with pytest.raises(classify.LabelError, match=r"part.csv:3: missing field 'text' .*; "
                     r"every example needs 'text'$"):
    classify.read_texts(str(part), 'text', 'label')
  typed = tmp_path / 'typed.jsonl'  # JSON numbers are names; lists and true were str()'d.
  typed.write_text('{"text": "hi", "label": 1}\n{"text": 2.5, "label": 0}\n')
  assert classify.read_file(str(typed), 'text', 'label') == [('hi', '1'), ('2.5', '0')]
  for row, what in (('{"text": ["good", "nice"], "label": 1}', r'\["good", "nice"\] \(a list\)'),
                    ('{"text": "hi", "label": true}', r'true \(a bool\)'),
                    ('{"text": {"a": "b"}, "label": 1}', r'\{"a": "b"\} \(a dict\)')):
    typed.write_text('{"text": "ok", "label": 0}\n' + row + '\n')
    for read in (classify.read_file, classify.read_texts):
      with pytest.raises(classify.LabelError, match=r"typed.jsonl:2: field '\w+' is " + what
                         + r'; give a string \(or a number\)$'):
        read(str(typed), 'text', 'label')
  with pytest.raises(ConfigError, match=r'data.labels=\(0, 1\) .* class names are strings'):
    tiny(**{'data.labels': (0, 1)})
  with pytest.raises(ConfigError, match=r"list each class once \(\['a'\] repeat\)"):
    tiny(**{'data.labels': ('a', 'b', 'a')})
  with pytest.raises(classify.LabelError, match=r"labels \['c'\] are not in the label set "
                     r"\['a', 'b'\] \(the first, 'c', at example 1: 'two'\)"):
    classify.encode([('one', 'a'), ('two', 'c')], ('a', 'b'), ByteTokenizer(), 8, 'eval split')
  tr = _labelled(tmp_path / 't.jsonl', 50, 0)
  ev = tmp_path / 'e.jsonl'
  ev.write_text('{"text": "alpha", "label": "zzz"}\n')
  c = tiny(**{'data.source': 'file', 'data.path': str(tr), 'data.eval_path': str(ev),
              'data.label_key': 'label'})
  with pytest.raises(classify.LabelError, match="zzz"):
    train.train_and_evaluate(c, str(tmp_path / 'wd'))
  assert not (tmp_path / 'wd').exists()  # Failed before anything was written.


def test_encode_truncates_and_ends_with_eos():
  out = classify.encode([('abcdef', 'b'), ('x', 'a')], ('a', 'b'), ByteTokenizer(), 4, 'x')
  assert out['tokens'][0].tolist() == [97, 98, 99, 257]
  assert out['valid'][1].tolist() == [True, True, False, False]
  assert out['labels'].tolist() == [1, 0]


def test_tfds_classification_dataset_with_mock_data(tmp_path):
  d = DataConfig(source='tfds', tfds_name='imdb_reviews', label_key='label',
                 val_split='test', cache_dir=str(tmp_path))
  with tfds.testing.mock_data(num_examples=6):
    train_pairs, eval_pairs, names = classify.load(d, str(tmp_path))
  assert names == ('neg', 'pos') and len(train_pairs) == 6 and len(eval_pairs) == 6
  assert all(lab in names for _, lab in train_pairs + eval_pairs)
  # data.labels orders the dataset's own names; it is not a renaming of class ids
  # (('pos', 'neg') had named every 'pos' review 'neg').
  with tfds.testing.mock_data(num_examples=6):
    again, _, _ = classify.load(d, str(tmp_path))
    swapped, _, names2 = classify.load(dataclasses.replace(d, labels=('pos', 'neg')),
                                       str(tmp_path))
  assert names2 == ('pos', 'neg') and swapped == again and len({lab for _, lab in again}) == 2
  with tfds.testing.mock_data(num_examples=2):
    with pytest.raises(ConfigError, match="'sentence' is not a feature"):
      classify.load(DataConfig(source='tfds', tfds_name='imdb_reviews', label_key='label',
                               text_key='sentence', cache_dir=str(tmp_path)), str(tmp_path))


def _register_test_pairs() -> None:
  """Registers a local TFDS dataset, lm_test_pairs, with only train and test splits
  and features of every kind a catalog dataset has (mock_data makes any split and
  feature); once per process, though this module may be imported under two names."""
  try:
    class LmTestPairs(tfds.core.GeneratorBasedBuilder):  # noqa: F841 (registers itself)
      VERSION = tfds.core.Version('1.0.0')
      pkg_dir_path = tfds.core.Path(__file__).parent  # Not a package's module: say where.

      def _info(self):
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
            'text': tfds.features.Text(), 'summary': tfds.features.Text(), 'score': np.float32,
            'label': tfds.features.ClassLabel(names=['neg', 'pos']),
            'answers': tfds.features.Sequence(tfds.features.Text())}))

      def _split_generators(self, dl_manager):
        return {'train': self._generate_examples(8), 'test': self._generate_examples(4)}

      def _generate_examples(self, n):
        for i in range(n):
          yield i, {'text': f'input {i}', 'summary': f'out {i}', 'score': i / 7 + 0.5,
                    'label': i % 2, 'answers': [f'a{i}', f'b{i}']}
  except ValueError as e:  # tests.test_finetune and test_finetune: one registry.
    if 'already registered' not in str(e):
      raise


def test_tfds_features_and_splits_are_checked_before_reading(tmp_path):
  """A list of strings or a float score was read as its Python spelling or cut
  to int classes, a missing split was a ValueError traceback (classification
  and seq2seq), and data.eval_path was ignored for a TFDS source."""
  from lm import data as data_lib
  _register_test_pairs()
  base = DataConfig(source='tfds', tfds_name='lm_test_pairs', val_split='test',
                    cache_dir=str(tmp_path))
  tr, ev, names = classify.load(dataclasses.replace(base, label_key='label'), str(tmp_path))
  assert names == ('neg', 'pos') and len(tr) == 8 and len(ev) == 4 and ('input 1', 'pos') in tr
  tr, _, _ = classify.load(dataclasses.replace(base, target_key='summary'), str(tmp_path))
  assert ('input 0', 'out 0') in tr
  for over, match in (
      (dict(label_key='score'), r"config.data.label_key='score': feature 'score' of "
       r'lm_test_pairs is a Tensor of float32 with shape \(\); it needs one class per example'),
      (dict(target_key='answers'), r"config.data.target_key='answers': .* a Sequence of "
       r'object with shape \(None,\); it needs one text per example'),
      (dict(text_key='label', label_key='label'), r"text_key='label': .* ClassLabel of int64"),
      (dict(label_key='label', val_split='validation'),
       r"split 'validation' not in lm_test_pairs; available: train, test"),
      (dict(target_key='summary', val_split='validation'), r"split 'validation' not in")):
    with pytest.raises(ConfigError, match=match):
      classify.load(dataclasses.replace(base, **over), str(tmp_path))
  builder = data_lib.catalog_dataset('lm_test_pairs', str(tmp_path))
  with pytest.raises(ConfigError, match=r"text_key='answers': .* one text per example"):
    data_lib.tokenize_split(builder, 'train', 'answers', ByteTokenizer(), str(tmp_path))
  assert len(data_lib.tokenize_split(builder, 'train', 'text', ByteTokenizer(), str(tmp_path)))
  with pytest.raises(ConfigError, match=r"config.data.eval_path='e.jsonl' is invalid: read "
                     r"with data.source='file' only; a tfds source validates on data.val_split$"):
    tiny(**{'data.source': 'tfds', 'data.tfds_name': 'lm_test_pairs', 'data.eval_path': 'e.jsonl'})


def _cli(*args):
  return forked_cli.run([sys.executable, '-m', 'experiments.generate', *args],
                        capture_output=True, text=True, timeout=300)


def test_generate_cli_samples_scores_and_refuses_bad_input(pretrained, tmp_path):
  prompts = tmp_path / 'p.txt'
  prompts.write_text('def f(x):\\n    return\nimport\n\n    \n')  # A blank line; an indent.
  r = _cli(f'--workdir={pretrained}', '--prompt=def fibonacci(', f'--prompts_file={prompts}',
           '--max_new_tokens=8', '--temperature=0.7', '--top_k=50', '--top_p=0.9',
           '--repetition_penalty=1.3', '--num_return_sequences=2')
  assert r.returncode == 0, r.stderr
  for i in range(4):
    for j in range(2):
      assert f'=== prompt {i}, sample {j} ===' in r.stdout
  assert '=== prompt 4,' not in r.stdout
  assert 'def f(x):\n    return' in r.stdout
  r = _cli(f'--workdir={pretrained}', '--score=def f(x):')
  assert r.returncode == 0 and 'perplexity' in r.stdout and 'bits per byte' in r.stdout
  nll = float(r.stdout.split('nll ')[1].split()[0])
  # With a --prompt the text is scored given it (the prompt was ignored).
  r = _cli(f'--workdir={pretrained}', '--prompt=def f(x):\n    ', '--score=return x')
  assert r.returncode == 0 and "given the prompt 'def f(x):" in r.stdout, r.stderr
  r2 = _cli(f'--workdir={pretrained}', '--score=return x')
  given = float(r.stdout.split('nll ')[1].split()[0])
  assert given != float(r2.stdout.split('nll ')[1].split()[0])
  assert nll > 0
  # Without a --prompt, --nodoc_start changed nothing (the first token still
  # follows EOS): refused, as the other flags scoring does not read.
  r = _cli(f'--workdir={pretrained}', '--score=return x', '--nodoc_start')
  assert r.returncode == 2 and r.stderr.startswith('error: --nodoc_start with --score and no '
                                                   '--prompt'), r.stderr
  r = _cli(f'--workdir={pretrained}', '--prompt=def f(x):\n    ', '--score=return x',
           '--nodoc_start')  # With a prompt it drops the EOS before it.
  assert r.returncode == 0 and float(r.stdout.split('nll ')[1].split()[0]) != given, r.stderr
  r = _cli(f'--workdir={pretrained}', '--prompt=x', '--temperature=-1')
  assert r.returncode == 2 and 'temperature=-1.0 is invalid' in r.stderr
