"""Tokenizers round-trip text exactly; byte lengths support bits per byte."""

import os

import pytest

from lm.config import ConfigError

from lm.tokenizers import ByteTokenizer, SentencePieceTokenizer, get_tokenizer
from tools import train_tokenizer

TEXTS = ['def f(x):\n\treturn x  # two  spaces\n', 'naïve café → ∑ 😀', '', '  lead and trail  ',
         'line1\r\nline2', '0123456789' * 3,
         '\u2581already\u2581marked \u2581\u2581']  # SentencePiece's own space mark, as text.


def test_byte_round_trip_and_specials():
  tok = ByteTokenizer()
  for t in TEXTS:
    ids = tok.encode(t)
    assert ids.max(initial=0) < 256
    assert tok.decode(ids) == t
    assert tok.byte_lengths()[ids].sum() == len(t.encode('utf-8'))
  assert tok.decode([tok.bos_id, 104, 105, tok.eos_id, tok.pad_id]) == 'hi'
  assert tok.vocab_size == 259


@pytest.fixture(scope='module')
def sp_model(tmp_path_factory, corpus_dir):
  texts = [p.read_text() for p in sorted(corpus_dir.glob('*.py'))]
  return train_tokenizer.train(texts, str(tmp_path_factory.mktemp('sp') / 'sp'), 400, 'bpe')


def test_sentencepiece_round_trip(sp_model):
  tok = SentencePieceTokenizer(sp_model)
  assert 300 < tok.vocab_size <= 400
  lengths = tok.byte_lengths()
  for t in TEXTS:
    ids = tok.encode(t)
    assert tok.decode(ids) == t, repr(t)
    assert lengths[ids].sum() == len(t.encode('utf-8')), repr(t)
  # A corpus line compresses to fewer tokens than bytes.
  line = 'def f3_4(x):\n    return x * 4 + delta\n'
  assert len(tok.encode(line)) < len(line) / 2


def test_sentencepiece_unigram_trains(tmp_path, corpus_dir):
  texts = [p.read_text() for p in sorted(corpus_dir.glob('*.py'))]
  tok = SentencePieceTokenizer(train_tokenizer.train(texts, str(tmp_path / 'u'), 360))
  assert all(tok.decode(tok.encode(t)) == t for t in TEXTS)


def test_missing_sentencepiece_file(tmp_path):
  with pytest.raises(ConfigError, match='tokenizer_path'):
    SentencePieceTokenizer(str(tmp_path / 'nope.model'))


def test_sentencepiece_specials_absent(tmp_path, corpus_dir):
  """SentencePiece marks an absent special as -1: no EOS is refused (it would
  wrap to 65535 in the uint16 cache); no BOS or PAD falls back to EOS."""
  import sentencepiece as spm
  text = tmp_path / 'c.txt'
  text.write_text(''.join(p.read_text() for p in sorted(corpus_dir.glob('*.py'))))
  exact = dict(normalization_rule_name='identity', add_dummy_prefix=False,
               remove_extra_whitespaces=False, byte_fallback=True)
  for name, extra in (('noeos', {'eos_id': -1}), ('nobos', {'bos_id': -1, **exact}),
                      ('nfkc', {}), ('dummy', {**exact, 'add_dummy_prefix': True}),
                      ('nobytes', {**exact, 'byte_fallback': False})):
    spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(tmp_path / name),
                                   vocab_size=300, hard_vocab_limit=False, minloglevel=2,
                                   **extra)
  with pytest.raises(ConfigError, match=r'noeos.model.*no end-of-text token \(eos_id=-1\)'):
    SentencePieceTokenizer(str(tmp_path / 'noeos.model'))
  # SentencePiece's default normalisation rewrites the text (bits per byte would
  # count the rewritten bytes: 8 of 25 lost on '    return  x * 3   +  y\n').
  with pytest.raises(ConfigError, match=r'nfkc.model.*normalization_rule_name=nmt_nfkc, '
                                        r'add_dummy_prefix=true, remove_extra_whitespaces=true'):
    SentencePieceTokenizer(str(tmp_path / 'nfkc.model'))
  with pytest.raises(ConfigError, match=r'dummy.model.*\(add_dummy_prefix=true\)'):
    SentencePieceTokenizer(str(tmp_path / 'dummy.model'))
  # Without byte pieces, text outside the pieces is <unk>: 0 bytes, decoded as
  # U+2047 ('x = 中文' counted 3 of its 10 bytes).
  with pytest.raises(ConfigError, match=r'nobytes.model.*no byte pieces \(byte_fallback=false\)'):
    SentencePieceTokenizer(str(tmp_path / 'nobytes.model'))
  tok = SentencePieceTokenizer(str(tmp_path / 'nobos.model'))  # pad_id is -1 by default too.
  assert tok.sp.bos_id() == tok.sp.pad_id() == -1
  assert tok.bos_id == tok.pad_id == tok.eos_id == tok.sp.eos_id() >= 0


def _train_hf(texts, path, style='byte_level', vocab=400):
  """A tokenizer.json trained with the `tokenizers` library: byte-level BPE as
  GPT-2's, or a SentencePiece-style (U+2581) BPE."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  if style == 'byte_level':
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
  else:
    tok = Tokenizer(models.BPE(unk_token='<unk>'))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme='never')
    tok.decoder = decoders.Metaspace(prepend_scheme='never')
    alphabet = []
  tok.train_from_iterator(texts, trainers.BpeTrainer(
      vocab_size=vocab, special_tokens=['<|endoftext|>', '<unk>'], initial_alphabet=alphabet))
  path.parent.mkdir(parents=True, exist_ok=True)
  tok.save(str(path))
  return str(path)


@pytest.fixture(scope='module')
def hf_bpe(tmp_path_factory, corpus_dir):
  texts = [p.read_text() for p in sorted(corpus_dir.glob('*.py'))]
  return _train_hf(texts, tmp_path_factory.mktemp('hf') / 'tokenizer.json')


def test_hf_byte_level_bpe_round_trip(hf_bpe):
  tok = get_tokenizer('hf', hf_bpe)
  assert tok.eos_id == tok.bos_id == tok.pad_id == tok.tok.token_to_id('<|endoftext|>')
  assert 300 < tok.vocab_size <= 400 and tok.name.startswith('hf-')
  lengths = tok.byte_lengths()
  for t in TEXTS:  # Byte-level: any text, emoji included, round-trips.
    ids = tok.encode(t)
    assert tok.decode(ids) == t, repr(t)
    assert lengths[ids].sum() == len(t.encode('utf-8')), repr(t)
  assert lengths[tok.eos_id] == 0
  assert tok.decode([tok.eos_id, *tok.encode('hi')]) == 'hi'
  # A special token's text inside a document is text, not the special id.
  t = 'the end marker <|endoftext|> is written here'
  ids = tok.encode(t)
  assert tok.eos_id not in ids and tok.decode(ids) == t
  assert lengths[ids].sum() == len(t.encode('utf-8'))
  line = 'def f3_4(x):\n    return x * 4 + delta\n'
  assert len(tok.encode(line)) < len(line) / 2


def test_hf_sentencepiece_style_byte_lengths(tmp_path, corpus_dir):
  texts = [p.read_text() for p in sorted(corpus_dir.glob('*.py'))]
  tok = get_tokenizer('hf', _train_hf(texts, tmp_path / 'tokenizer.json', 'metaspace'))
  lengths = tok.byte_lengths()
  for line in texts[3].splitlines()[:5]:  # Corpus lines: every character is known.
    ids = tok.encode(line)
    assert tok.decode(ids) == line
    assert lengths[ids].sum() == len(line.encode('utf-8')), line


def _llama2_layout(path):
  """Rewrites a metaspace tokenizer.json into Llama 2's and Mistral's layout:
  a normaliser that prepends U+2581 and replaces spaces, and a decoder that
  strips the space of the first U+2581 again."""
  from tokenizers import Tokenizer, decoders, normalizers
  t = Tokenizer.from_file(path)
  t.normalizer = normalizers.Sequence([normalizers.Prepend('\u2581'),
                                       normalizers.Replace(' ', '\u2581')])
  t.pre_tokenizer = None
  t.decoder = decoders.Sequence([decoders.Replace('\u2581', ' '), decoders.ByteFallback(),
                                 decoders.Fuse(), decoders.Strip(' ', 1, 0)])
  t.save(path)
  return path


def test_a_continuation_is_decoded_with_its_context(tmp_path, corpus_dir):
  """generate, the train sample and the harness show the text generated ids
  add after the prompt: decoded alone, Llama 2's layout drops its leading space."""
  from lm.tokenizers import continuation
  texts = [p.read_text() for p in sorted(corpus_dir.glob('*.py'))]
  tok = get_tokenizer('hf', _llama2_layout(_train_hf(texts, tmp_path / 'tokenizer.json',
                                                     'metaspace')))
  prompt, full = 'def', 'def f(x): return x'
  ids, ctx = list(tok.encode(full)), list(tok.encode(prompt))
  assert ids[:len(ctx)] == ctx and tok.decode(ids) == full
  assert prompt + tok.decode(ids[len(ctx):]) == 'deff(x): return x'  # The bug this avoids.
  assert prompt + continuation(tok, ctx, ids[len(ctx):]) == full
  assert continuation(ByteTokenizer(), list(b'a '), list(' €'.encode('utf-8'))) == ' €'


def test_hf_special_ids_from_tokenizer_config(hf_bpe, tmp_path):
  import json
  import shutil
  shutil.copy(hf_bpe, tmp_path / 'tokenizer.json')
  (tmp_path / 'tokenizer_config.json').write_text(json.dumps(
      {'eos_token': {'content': '<unk>'}, 'pad_token': '<|endoftext|>'}))
  tok = get_tokenizer('hf', str(tmp_path / 'tokenizer.json'))
  assert tok.eos_id == tok.tok.token_to_id('<unk>')
  assert tok.pad_id == tok.bos_id == tok.tok.token_to_id('<|endoftext|>')
  # Same tokenizer.json, other special ids: another name, so another token cache
  # (whose documents end in the new EOS) and a refused resume.
  plain = get_tokenizer('hf', hf_bpe)
  assert tok.name.split('-')[1] == plain.name.split('-')[1] and tok.name != plain.name
  with pytest.raises(ConfigError, match='tokenizer.json'):
    get_tokenizer('hf', str(tmp_path / 'nope.json'))
  # A vocabulary without any end-of-text token, and no tokenizer_config naming one.
  from tokenizers import Tokenizer, models
  bare = tmp_path / 'bare' / 'tokenizer.json'
  bare.parent.mkdir()
  Tokenizer(models.BPE(vocab={'a': 0, 'b': 1}, merges=[])).save(str(bare))
  with pytest.raises(ConfigError, match='bare/tokenizer.json.*no end-of-text token'):
    get_tokenizer('hf', str(bare))


def test_hf_tokenizer_files_settings_and_a_broken_side_config(hf_bpe, tmp_path):
  """Truncation or padding saved in a tokenizer.json would cut every document
  or add pad 'documents': dropped at load. A tokenizer_config.json that is not
  a JSON object fails in one line naming it."""
  import shutil

  import numpy as np
  from tokenizers import Tokenizer
  t = Tokenizer.from_file(hf_bpe)
  t.enable_truncation(max_length=4)
  t.enable_padding(length=64)
  t.save(str(tmp_path / 'tokenizer.json'))
  text = 'def foo(x):\n    return x + 1\n' * 5
  whole = get_tokenizer('hf', hf_bpe).encode(text)
  tok = get_tokenizer('hf', str(tmp_path / 'tokenizer.json'))
  np.testing.assert_array_equal(tok.encode(text), whole)
  assert tok.decode(tok.encode(text)) == text and len(whole) > 4
  for i, bad in enumerate(['{"eos_token": "<|endoftext|>",', '["eos_token"]']):
    d = tmp_path / f'side{i}'
    d.mkdir()
    shutil.copy(hf_bpe, d / 'tokenizer.json')
    (d / 'tokenizer_config.json').write_text(bad)
    with pytest.raises(ConfigError, match=f'side{i}/tokenizer_config.json .*fix or remove'):
      get_tokenizer('hf', str(d / 'tokenizer.json'))
  (d / 'tokenizer_config.json').write_bytes(b'{"eos_token": "\xff"}')
  with pytest.raises(ConfigError, match='is not a JSON file'):
    get_tokenizer('hf', str(d / 'tokenizer.json'))


def test_training_with_an_hf_tokenizer(hf_bpe, corpus_dir, tmp_path, monkeypatch):
  """The data pipeline, the vocabulary padding and bits per byte with BPE ids;
  the tokenizer is recorded by absolute path and compared by content."""
  import dataclasses
  import json
  import shutil

  from lm import checkpoint, train
  from tests.helpers import tiny
  path = str(tmp_path / 'tok' / 'tokenizer.json')
  os.makedirs(os.path.dirname(path))
  shutil.copy(hf_bpe, path)
  monkeypatch.chdir(tmp_path)  # A relative path, as the README's examples give.
  c = tiny(corpus_dir, **{'data.tokenizer': 'hf', 'data.tokenizer_path': 'tok/tokenizer.json',
                          'train.steps': 3, 'train.eval_every': 3})
  run = str(tmp_path / 'run')
  out = train.train_and_evaluate(c, run, log=lambda *a: None)
  with open(os.path.join(run, 'config.json')) as f:
    assert json.load(f)['data']['tokenizer_path'] == path  # Usable from any directory.
  # Fine-tuning from it: the same tokenizer under another path is accepted.
  elsewhere = str(tmp_path / 'copy.json')
  shutil.copy(path, elsewhere)
  ft = dataclasses.replace(out['config'], init_from=run,
                           data=dataclasses.replace(c.data, tokenizer_path=elsewhere))
  train.check_init_from(ft, get_tokenizer('hf', elsewhere))
  n = get_tokenizer('hf', hf_bpe).vocab_size
  assert out['config'].model.vocab_size == -(-n // 128) * 128  # Padded to a multiple of 128.
  assert out['bytes'] > 2 * out['tokens']  # BPE ids stand for several bytes each.
  assert abs(out['bits_per_byte'] - out['loss'] * out['tokens'] / out['bytes'] / 0.6931472) < 1e-4
  assert checkpoint.load_tokenizer(run, out['config']).name == get_tokenizer('hf', path).name
  # The file retrained in place (same path, other pieces): loading the run and
  # resuming it refuse, and nothing of the run changes (it was used silently).
  texts = [p.read_text() for p in sorted(corpus_dir.glob('*.py'))]
  _train_hf(texts[::-1], tmp_path / 'tok' / 'tokenizer.json', vocab=350)
  before = open(os.path.join(run, 'config.json')).read()
  with pytest.raises(checkpoint.CheckpointError, match='is not the one .* was trained with'):
    checkpoint.load_tokenizer(run, out['config'])
  same_path = dataclasses.replace(ft, data=c.data)  # The path it trained with, new pieces.
  with pytest.raises(checkpoint.CheckpointError, match="the tokenizer's content: hf-"):
    train.check_init_from(same_path, get_tokenizer('hf', path))
  longer = tiny(corpus_dir, **{'data.tokenizer': 'hf', 'data.tokenizer_path': path,
                               'train.steps': 5, 'train.eval_every': 5})
  with pytest.raises(checkpoint.CheckpointError, match='is not the one'):
    train.train_and_evaluate(longer, run, log=lambda *a: None)
  assert open(os.path.join(run, 'config.json')).read() == before
