"""Hugging Face parity: our logits and greedy tokens equal transformers' (torch, CPU)."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from lm import checkpoint, sampling
from lm.config import ModelConfig
from lm.model import Transformer
from tests import forked_cli
from tests.helpers import tiny
from tools import hf

V = 61


def _randomize(model, std=0.1):
  """Random values everywhere (HF inits biases to 0 and norms to 1: too easy)."""
  g = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for name, p in model.named_parameters():
      is_scale = ('ln' in name or 'norm' in name) and name.endswith('weight')
      p.copy_(torch.randn(p.shape, generator=g) * std + (1.0 if is_scale else 0.0))
  return model.eval()


def _gpt2(path):
  cfg = transformers.GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_inner=48,
                                n_positions=32, resid_pdrop=0.0, embd_pdrop=0.0,
                                attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
  model = _randomize(transformers.GPT2LMHeadModel(cfg))
  model.save_pretrained(path)
  return model


def _llama(path, tie=False):
  cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=48,
                                 num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, max_position_embeddings=32,
                                 rope_theta=500.0, tie_word_embeddings=tie,
                                 bos_token_id=0, eos_token_id=0, pad_token_id=0)
  model = _randomize(transformers.LlamaForCausalLM(cfg))
  model.save_pretrained(path)
  return model


MAKERS = {'gpt2': _gpt2, 'llama': _llama, 'llama_tied': lambda p: _llama(p, tie=True)}


def _tokens(B=2, L=16, seed=0):
  return np.random.default_rng(seed).integers(1, V, size=(B, L))


@pytest.mark.parametrize('kind', MAKERS)
def test_imported_logits_match_transformers(kind, tmp_path):
  theirs = MAKERS[kind](tmp_path / 'hf')
  notes = []
  hf.import_dir(str(tmp_path / 'hf'), str(tmp_path / 'run'), log=notes.append)
  c, params = checkpoint.load_params(str(tmp_path / 'run'))
  assert c.model.position == ('learned' if kind == 'gpt2' else 'rope')
  # No tokenizer file came with these 61-token weights: the default byte
  # tokenizer's ids do not fit, so the text tools refuse the run in one line
  # (generate had crashed on an id past the embedding, --score printed nan).
  assert 'ships no tokenizer.model or tokenizer.json' in notes[0], notes
  with pytest.raises(checkpoint.CheckpointError, match=r'259 ids, more than the model.s '
                                                       r'vocab_size 61; import the model with'):
    checkpoint.load_tokenizer(str(tmp_path / 'run'), c)
  tokens = _tokens()
  ours = Transformer(c.model).apply({'params': params}, jnp.asarray(tokens))
  with torch.no_grad():
    want = theirs(torch.tensor(tokens)).logits.numpy()
  np.testing.assert_allclose(np.asarray(ours), want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize('kind', ['gpt2', 'llama'])
def test_greedy_generation_matches_transformers(kind, tmp_path):
  theirs = MAKERS[kind](tmp_path / 'hf')
  hf.import_dir(str(tmp_path / 'hf'), str(tmp_path / 'run'))
  c, params = checkpoint.load_params(str(tmp_path / 'run'))
  prompts = [[5, 9, 13, 2, 7, 40], [11, 3, 22]]  # Different lengths: left padding.
  ours = sampling.generate(params, c.model, prompts, sampling.SamplingConfig(
      max_new_tokens=10, greedy=True), eos_id=-1)
  P = max(map(len, prompts))
  ids = torch.tensor([[0] * (P - len(p)) + p for p in prompts])
  mask = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in prompts])
  with torch.no_grad():
    out = theirs.generate(input_ids=ids, attention_mask=mask, max_new_tokens=10,
                          min_new_tokens=10, do_sample=False, pad_token_id=0)
  assert [o[0] for o in ours] == out[:, P:].tolist()


def _ours(kind):
  base = ModelConfig(vocab_size=V, d_model=32, num_layers=2, num_heads=4, mlp_dim=48,
                     max_len=32)
  if kind == 'gpt2':
    return base
  return dataclasses.replace(base, position='rope', norm='rmsnorm', use_bias=False,
                             activation='swiglu', tie_embeddings=False, num_kv_heads=2,
                             rope_theta=500.0, norm_eps=1e-6, scan_layers=False)


@pytest.mark.parametrize('kind', ['gpt2', 'llama'])
def test_export_loads_in_transformers_and_round_trips(kind, tmp_path):
  m = _ours(kind)
  params = jax.tree_util.tree_map(
      lambda a: a + 0.1 * jax.random.normal(jax.random.key(1), a.shape),  # Non-trivial.
      jax.jit(lambda r: Transformer(m).init(r, jnp.zeros((1, 8), jnp.int32))['params'])(
          jax.random.key(0)))
  params = jax.tree_util.tree_map(lambda x: getattr(x, 'value', x), params,
                                  is_leaf=lambda x: hasattr(x, 'value'))
  c = dataclasses.replace(tiny(**{'data.seq_len': 16}), model=m)
  checkpoint.save_params(str(tmp_path / 'run'), c, params, step=3)
  hf.export(str(tmp_path / 'run'), str(tmp_path / 'hf'))
  theirs = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / 'hf')).eval()
  tokens = _tokens()
  with torch.no_grad():
    want = theirs(torch.tensor(tokens)).logits.numpy()
  ours = Transformer(m).apply({'params': params}, jnp.asarray(tokens))
  np.testing.assert_allclose(np.asarray(ours), want, atol=1e-4, rtol=1e-4)
  # Export then import: identical params, and our config comes back.
  hf.import_dir(str(tmp_path / 'hf'), str(tmp_path / 'back'))
  c2, back = checkpoint.load_params(str(tmp_path / 'back'))
  assert c2.model == m and c2.data == c.data
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(params),
                          jax.tree_util.tree_leaves(back)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(path))


def test_unsupported_architectures_are_refused(tmp_path):
  m = dataclasses.replace(_ours('gpt2'), activation='relu2', position='sinusoidal')
  with pytest.raises(hf.HFError, match=r"(?s)no Hugging Face equivalent.*"
                                       r"model.position='sinusoidal'.*model.activation='relu2'"):
    hf.family(m)
  c = dataclasses.replace(tiny(), model=m)
  checkpoint.save_params(str(tmp_path / 'run'), c, {'x': np.zeros(2)})
  with pytest.raises(hf.HFError, match='no Hugging Face equivalent'):
    hf.export(str(tmp_path / 'run'), str(tmp_path / 'hf'))
  assert not (tmp_path / 'hf').exists()
  with pytest.raises(hf.HFError, match="model.family='encoder'"):
    hf.family(dataclasses.replace(_ours('gpt2'), family='encoder'))
  with pytest.raises(hf.HFError, match="model_type='bert' is not supported"):
    hf.model_config({'model_type': 'bert'})
  gpt2 = {'model_type': 'gpt2', 'vocab_size': 64, 'n_embd': 16, 'n_layer': 1, 'n_head': 2,
          'n_positions': 32}
  assert hf.model_config(gpt2).tie_embeddings  # Its lm_head would be read as wte, so:
  with pytest.raises(hf.HFError, match='tie_word_embeddings=false'):
    hf.model_config({**gpt2, 'tie_word_embeddings': False})
  with pytest.raises(hf.HFError, match='scale_attn_weights=false'):  # Unscaled scores.
    hf.model_config({**gpt2, 'scale_attn_weights': False})
  with pytest.raises(hf.HFError, match='no config.json'):
    hf.read_dir(str(tmp_path))


def test_gpt2_with_tokenizer_json_generates_from_text(tmp_path, corpus_dir):
  """A GPT-2 directory with a byte-level BPE tokenizer.json imports as an `hf`
  tokenizer run: our ids and greedy text equal transformers', the generate CLI
  takes a text prompt, and an export carries the tokenizer back out."""
  import sys

  from lm import tokenizers
  from tests.test_tokenizers import _train_hf
  texts = [p.read_text() for p in sorted(corpus_dir.glob('*.py'))]
  _train_hf(texts, tmp_path / 'hf' / 'tokenizer.json')
  their_tok = transformers.AutoTokenizer.from_pretrained  # After config.json exists.
  ours_tok = tokenizers.get_tokenizer('hf', str(tmp_path / 'hf' / 'tokenizer.json'))
  eos = ours_tok.eos_id
  cfg = transformers.GPT2Config(vocab_size=ours_tok.vocab_size, n_embd=32, n_layer=2,
                                n_head=4, n_inner=48, n_positions=64, resid_pdrop=0.0,
                                embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=eos,
                                eos_token_id=eos)
  theirs = _randomize(transformers.GPT2LMHeadModel(cfg))
  theirs.save_pretrained(tmp_path / 'hf')
  their_tok = their_tok(str(tmp_path / 'hf'))
  hf.import_dir(str(tmp_path / 'hf'), str(tmp_path / 'run'))
  c, params = checkpoint.load_params(str(tmp_path / 'run'))
  assert c.data.tokenizer == 'hf'
  tok = tokenizers.get_tokenizer(c.data.tokenizer, c.data.tokenizer_path)
  prompt = 'def f3_4(x):\n    return'
  ids = list(tok.encode(prompt))
  assert ids == their_tok(prompt)['input_ids']
  ours = sampling.generate(params, c.model, [ids], sampling.SamplingConfig(
      max_new_tokens=8, greedy=True), eos_id=-1)[0][0]
  with torch.no_grad():
    out = theirs.generate(input_ids=torch.tensor([ids]), max_new_tokens=8, min_new_tokens=8,
                          do_sample=False, pad_token_id=eos)
  assert tok.decode(ours) == their_tok.decode(out[0, len(ids):], skip_special_tokens=True)
  r = forked_cli.run([sys.executable, '-m', 'experiments.generate',
                      f'--workdir={tmp_path / "run"}', f'--prompt={prompt}', '--greedy',
                      '--max_new_tokens=8'], capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr
  assert "=== prompt 0, sample 0 ===" in r.stdout, r.stdout
  hf.export(str(tmp_path / 'run'), str(tmp_path / 'out'))
  assert (tmp_path / 'out' / 'tokenizer.json').read_bytes() == (
      tmp_path / 'hf' / 'tokenizer.json').read_bytes()
  # With no tokenizer_config.json beside ours, the export writes one: AutoTokenizer
  # had taken GPT2Tokenizer (a Metaspace vocabulary re-encoded, a foreign
  # <|endoftext|> added), and read special-token text in a document as EOS.
  exported = transformers.AutoTokenizer.from_pretrained(str(tmp_path / 'out'))
  assert exported.eos_token_id == eos and len(exported) == ours_tok.vocab_size
  for text in (prompt, 'x = 1  # <|endoftext|> in a comment'):
    assert exported(text, add_special_tokens=False)['input_ids'] == list(tok.encode(text)), text
  # A side file naming only the EOS (as our error message advises) gets the class too.
  (tmp_path / 'hf' / 'tokenizer_config.json').write_text('{"eos_token": "<|endoftext|>"}')
  hf.export(str(tmp_path / 'run'), str(tmp_path / 'out2'))
  cls, exported = type(exported), transformers.AutoTokenizer.from_pretrained(
      str(tmp_path / 'out2'))
  assert type(exported) is cls, type(exported)  # Not the model type's GPT2Tokenizer.
  assert len(exported) == ours_tok.vocab_size and exported.eos_token_id == eos
  assert exported(prompt, add_special_tokens=False)['input_ids'] == ids
  (tmp_path / 'hf' / 'tokenizer_config.json').unlink()
  # Exported back over the directory it was imported from, which holds the
  # run's tokenizer: --overwrite had deleted it before copying it from there.
  before = (tmp_path / 'hf' / 'tokenizer.json').read_bytes()
  hf.export(str(tmp_path / 'run'), str(tmp_path / 'hf'), overwrite=True)
  assert (tmp_path / 'hf' / 'tokenizer.json').read_bytes() == before
  # Importing our own export reads the tokenizer it ships, not the original
  # path (here removed).
  (tmp_path / 'hf' / 'tokenizer.json').rename(tmp_path / 'moved.json')
  hf.import_dir(str(tmp_path / 'out'), str(tmp_path / 'back'))
  c2 = checkpoint.load_config(str(tmp_path / 'back'))
  assert c2.data.tokenizer_path == str(tmp_path / 'out' / 'tokenizer.json')
  assert list(checkpoint.load_tokenizer(str(tmp_path / 'back'), c2).encode(prompt)) == ids


@pytest.mark.parametrize('model_type', ['unigram', 'bpe'])
def test_sentencepiece_export_encodes_in_transformers_as_here(model_type, tmp_path, corpus_dir):
  """An exported tokenizer.model with no tokenizer_config.json loaded in
  AutoTokenizer as GPT-2's BPE (the model type's): 'import os' became 7
  pieces, its space lost. Its tokenizer_config.json makes transformers encode
  as we do and know our end-of-text token."""
  from lm import tokenizers
  from tools import train_tokenizer
  texts = [p.read_text() for p in sorted(corpus_dir.glob('*.py'))]
  path = train_tokenizer.train(texts, str(tmp_path / 'sp'), 300, model_type)
  ours = tokenizers.get_tokenizer('sentencepiece', path)
  c = tiny(**{'data.seq_len': 16, 'data.tokenizer': 'sentencepiece',
              'data.tokenizer_path': path, 'model.vocab_size': ours.vocab_size})
  params = jax.jit(lambda r: Transformer(c.model).init(r, jnp.zeros((1, 8), jnp.int32))[
      'params'])(jax.random.key(0))
  params = jax.tree_util.tree_map(lambda x: getattr(x, 'value', x), params,
                                  is_leaf=lambda x: hasattr(x, 'value'))
  checkpoint.save_params(str(tmp_path / 'run'), c, params)
  hf.export(str(tmp_path / 'run'), str(tmp_path / 'hf'))
  theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path / 'hf'))
  for text in [*texts[:3], 'import os', '  x = 1\n\ty\n', 'café → 9 中 😀', ' lead', 'trail  ']:
    assert theirs(text, add_special_tokens=False)['input_ids'] == list(ours.encode(text)), text
    assert theirs.decode(list(ours.encode(text))) == text
  assert theirs.eos_token_id == ours.eos_id
  eos_text = f'a {ours.sp.id_to_piece(ours.eos_id)} b'  # Text, as ours reads it, not EOS.
  if model_type == 'bpe':  # transformers' unigram conversion keeps '</s>' a matchable piece.
    assert theirs(eos_text, add_special_tokens=False)['input_ids'] == list(ours.encode(eos_text))


def test_llama2_directory_with_both_tokenizer_files_uses_its_tokenizer_json(tmp_path,
                                                                            corpus_dir):
  """Llama 2 ships tokenizer.model and tokenizer.json; its tokenizer.model adds
  a dummy prefix, which our SentencePiece reader refuses, so the import takes
  tokenizer.json (it had refused the directory). generate prints the prompt
  and the text the new ids add after it (tokenizers.continuation), equal to
  transformers' greedy ids decoded with the prompt."""
  import sys

  import sentencepiece as spm

  from lm import tokenizers
  from tests.test_tokenizers import _llama2_layout, _train_hf
  texts = [p.read_text() for p in sorted(corpus_dir.glob('*.py'))]
  (tmp_path / 'c.txt').write_text(''.join(texts))
  d = tmp_path / 'hf'
  path = _llama2_layout(_train_hf(texts, d / 'tokenizer.json', 'metaspace'))
  spm.SentencePieceTrainer.train(  # Llama 2's settings.
      input=str(tmp_path / 'c.txt'), model_prefix=str(d / 'tokenizer'), vocab_size=300,
      model_type='bpe', byte_fallback=True, normalization_rule_name='identity',
      add_dummy_prefix=True, remove_extra_whitespaces=False, minloglevel=2)
  tok = tokenizers.get_tokenizer('hf', path)
  cfg = transformers.LlamaConfig(vocab_size=tok.vocab_size, hidden_size=32,
                                 intermediate_size=48, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2,
                                 max_position_embeddings=32, bos_token_id=tok.eos_id,
                                 eos_token_id=tok.eos_id, pad_token_id=tok.eos_id)
  theirs = _randomize(transformers.LlamaForCausalLM(cfg))
  theirs.save_pretrained(d)
  hf.import_dir(str(d), str(tmp_path / 'run'))
  c = checkpoint.load_config(str(tmp_path / 'run'))
  assert (c.data.tokenizer, c.data.tokenizer_path) == ('hf', path)
  for prompt in ('def', 'return', 'x =', 'import', 'for', 'if', 'print', 'class', 'y'):
    ids = list(tok.encode(prompt))
    with torch.no_grad():
      out = theirs.generate(input_ids=torch.tensor([ids]), max_new_tokens=6, min_new_tokens=6,
                            do_sample=False, pad_token_id=tok.eos_id)[0, len(ids):].tolist()
    if tok.decode(out) != tokenizers.continuation(tok, ids, out):
      break  # A continuation that starts with a space: decoded alone, it loses it.
  else:
    raise AssertionError('no prompt continues with a space')
  r = forked_cli.run([sys.executable, '-m', 'experiments.generate',
                      f'--workdir={tmp_path / "run"}', f'--prompt={prompt}', '--greedy',
                      '--max_new_tokens=6'], capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr
  shown = r.stdout.split('=== prompt 0, sample 0 ===\n')[1][:-1]  # print's newline.
  assert shown == prompt + tokenizers.continuation(tok, ids, out), (shown, out)


def test_malformed_directories_are_refused_in_one_line(tmp_path):
  """A config.json missing a field, weights that are not safetensors, and
  tensors that do not fit the config: each an HFError, and no run is started."""
  import json
  m = _ours('gpt2')
  params = jax.jit(lambda r: Transformer(m).init(r, jnp.zeros((1, 8), jnp.int32))['params'])(
      jax.random.key(0))
  params = jax.tree_util.tree_map(lambda x: getattr(x, 'value', x), params,
                                  is_leaf=lambda x: hasattr(x, 'value'))
  checkpoint.save_params(str(tmp_path / 'run'), dataclasses.replace(tiny(), model=m), params)
  hf.export(str(tmp_path / 'run'), str(tmp_path / 'hf'))
  cfg_path = tmp_path / 'hf' / 'config.json'
  good = json.loads(cfg_path.read_text())
  cases = [({'model_type': 'gpt2'}, None, "has no 'n_embd'"),
           ({**good, 'n_layer': 'two'}, None, 'num_layers=.two. is invalid: expected an integer'),
           ({k: v for k, v in good.items() if k != 'lm_config'} | {'n_embd': 64}, None,
            'do not fit config.json'),
           ({k: v for k, v in good.items() if k != 'lm_config'} | {'n_positions': 64}, None,
            r'do not fit config.json \(1 differ: .*is \(32, 32\), the config wants '
            r'\(64, 32\)'),
           (good, b'\x00' * 64, 'not a readable safetensors file')]
  weights = (tmp_path / 'hf' / 'model.safetensors').read_bytes()
  for i, (cfg, blob, want) in enumerate(cases):
    cfg_path.write_text(json.dumps(cfg))
    (tmp_path / 'hf' / 'model.safetensors').write_bytes(blob or weights)
    with pytest.raises(hf.HFError, match=want):
      hf.import_dir(str(tmp_path / 'hf'), str(tmp_path / f'back{i}'))
    assert not (tmp_path / f'back{i}').exists()
  # A tokenizer with more tokens than the model has embeddings (generation
  # had scored NaN or crashed on the ids past them).
  from tests.test_tokenizers import _train_hf
  cfg_path.write_text(json.dumps({k: v for k, v in good.items() if k != 'lm_config'}))
  (tmp_path / 'hf' / 'model.safetensors').write_bytes(weights)
  _train_hf(['def f(x):\n    return x * 2\n' * 20], tmp_path / 'hf' / 'tokenizer.json', vocab=80)
  with pytest.raises(hf.HFError, match=r'has \d+ tokens, more than the model.s vocab_size 61'):
    hf.import_dir(str(tmp_path / 'hf'), str(tmp_path / 'big_tok'))
  assert not (tmp_path / 'big_tok').exists()
  # An --out or --workdir that cannot be a directory: refused before any
  # weights are read (export had raised FileExistsError, import NotADirectoryError).
  from lm import workdir as workdir_lib
  under_file = str(cfg_path / 'sub')
  with pytest.raises(workdir_lib.NotWritable, match=r"--out .*sub' cannot be a directory"):
    hf.export(str(tmp_path / 'run'), under_file)
  with pytest.raises(workdir_lib.NotWritable, match=r"--workdir .*sub' cannot be a directory"):
    hf.import_dir(str(tmp_path / 'hf'), under_file)
  # --overwrite replaces an earlier export's tokenizer and weight files too.
  (tmp_path / 'hf' / 'tokenizer.model').write_bytes(b'x')
  (tmp_path / 'hf' / 'notes.txt').write_text('mine')
  hf.export(str(tmp_path / 'run'), str(tmp_path / 'hf'), overwrite=True)
  assert sorted(os.listdir(tmp_path / 'hf')) == ['config.json', 'model.safetensors', 'notes.txt']


def test_every_architecture_field_is_mapped_or_refused_by_export():
  from lm import config as config_lib
  arch = {k.split('.')[1] for k, v in config_lib.FIELD_KINDS.items()
          if k.startswith('model.') and v in (config_lib.ARCH, config_lib.HEAD)}
  for name, table in hf.HF_FIELDS.items():
    assert set(table) == arch, (name, set(table) ^ arch)


# Every architecture option export maps: (family, overrides on _ours(family)).
EXPORTABLE = {
    'gpt2_default_mlp': ('gpt2', dict(mlp_dim=0)),
    'gpt2_scanned': ('gpt2', dict(scan_layers=True, norm_eps=1e-6, max_len=24)),
    'llama_gqa_untied': ('llama', dict()),
    'llama_mqa_tied': ('llama', dict(num_kv_heads=1, tie_embeddings=True, rope_theta=1e4)),
    'llama_wide_heads': ('llama', dict(head_dim=16, num_kv_heads=0, mlp_dim=0)),
}


@pytest.mark.parametrize('name', EXPORTABLE)
def test_export_import_round_trips_config_and_logits(name, tmp_path):
  kind, over = EXPORTABLE[name]
  m = dataclasses.replace(_ours(kind), **over)
  params = jax.jit(lambda r: Transformer(m).init(r, jnp.zeros((1, 8), jnp.int32))['params'])(
      jax.random.key(0))
  params = jax.tree_util.tree_map(lambda x: getattr(x, 'value', x), params,
                                  is_leaf=lambda x: hasattr(x, 'value'))
  c = dataclasses.replace(tiny(**{'data.seq_len': 16}), model=m)
  checkpoint.save_params(str(tmp_path / 'run'), c, params)
  hf.export(str(tmp_path / 'run'), str(tmp_path / 'hf'))
  hf.import_dir(str(tmp_path / 'hf'), str(tmp_path / 'back'))
  c2, back = checkpoint.load_params(str(tmp_path / 'back'))
  assert c2.model == m  # Spelled as before: fine-tuning from it is not refused.
  assert checkpoint.arch_diff(c2.model, m) == []
  tokens = jnp.asarray(_tokens())
  np.testing.assert_allclose(np.asarray(Transformer(c2.model).apply({'params': back}, tokens)),
                             np.asarray(Transformer(m).apply({'params': params}, tokens)),
                             atol=1e-4, rtol=1e-4)
  theirs = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / 'hf')).eval()
  with torch.no_grad():
    want = theirs(torch.tensor(np.asarray(tokens))).logits.numpy()
  np.testing.assert_allclose(np.asarray(Transformer(m).apply({'params': params}, tokens)),
                             want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize('field,value', [
    ('qk_norm', True), ('activation', 'relu2'), ('position', 'sinusoidal'),
    ('position', 'none'), ('family', 'encoder'), ('num_classes', 3)])
def test_unmappable_architecture_options_are_refused_by_name(field, value):
  for kind in ('gpt2', 'llama'):
    with pytest.raises(hf.HFError, match=f'model.{field}' if field != 'num_classes'
                       else 'sequence classifier'):
      hf.family(dataclasses.replace(_ours(kind), **{field: value}))


@pytest.mark.parametrize('kind,over', [
    ('gpt2', dict(parametrization='mup', base_width=8, depth_base=1, scan_layers=True)),
    ('llama', dict(parametrization='mup', base_width=16, depth_base=1, depth_alpha=0.5)),
    ('llama', dict(parametrization='mup', base_width=8, tie_embeddings=True, head_dim=16))])
def test_mup_export_folds_the_multipliers_into_the_weights(kind, over, tmp_path):
  """transformers has no query, branch or logit multipliers: export folds them
  in, so the exported model (and its import, an SP model) gives our logits."""
  m = dataclasses.replace(_ours(kind), **over)
  params = jax.jit(lambda r: Transformer(m).init(r, jnp.zeros((1, 8), jnp.int32))['params'])(
      jax.random.key(0))
  params = jax.tree_util.tree_map(
      lambda x: x.value + 0.05 * jax.random.normal(jax.random.key(2), x.value.shape),
      params, is_leaf=lambda x: hasattr(x, 'value'))
  c = dataclasses.replace(tiny(**{'data.seq_len': 16}), model=m)
  checkpoint.save_params(str(tmp_path / 'run'), c, params)
  hf.export(str(tmp_path / 'run'), str(tmp_path / 'hf'))
  tokens = jnp.asarray(_tokens())
  ours = np.asarray(Transformer(m).apply({'params': params}, tokens))
  theirs = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / 'hf')).eval()
  with torch.no_grad():
    want = theirs(torch.tensor(np.asarray(tokens))).logits.numpy()
  np.testing.assert_allclose(ours, want, atol=1e-4, rtol=1e-4)
  hf.import_dir(str(tmp_path / 'hf'), str(tmp_path / 'back'))
  c2, back = checkpoint.load_params(str(tmp_path / 'back'))
  assert c2.model.parametrization == 'sp' and c2.model.depth_base == 0
  np.testing.assert_allclose(np.asarray(Transformer(c2.model).apply({'params': back}, tokens)),
                             ours, atol=1e-4, rtol=1e-4)
