"""Both tokenizers round-trip text exactly; byte lengths support bits per byte."""

import pytest

from lm.tokenizers import ByteTokenizer, SentencePieceTokenizer
from tools import train_tokenizer

TEXTS = ['def f(x):\n\treturn x  # two  spaces\n', 'naïve café → ∑ 😀', '', '  lead and trail  ',
         'line1\r\nline2', '0123456789' * 3]


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
  with pytest.raises(FileNotFoundError, match='tokenizer_path'):
    SentencePieceTokenizer(str(tmp_path / 'nope.model'))
