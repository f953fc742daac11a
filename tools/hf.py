"""Hugging Face interchange: export a run as a GPT-2 or Llama directory, import one.

  python -m tools.hf export --workdir=runs/tiny --out=hf/tiny
  python -m tools.hf import --hf_dir=hf/tiny --workdir=runs/from_hf

An export is a transformers directory (config.json + model.safetensors) that
`AutoModelForCausalLM.from_pretrained` loads: GPT-2 for learned positions,
LayerNorm with biases, tanh-GELU and tied embeddings; Llama for RoPE, RMSNorm
without biases and SwiGLU (any GQA, tied or not). Other architectures have no
transformers equivalent and are refused with the fields that prevent it. Our
whole run config rides along in config.json under `lm_config`, so importing
our own export restores the tokenizer and training settings.

An import reads such a directory (GPT-2 or Llama weights on local disk, one
safetensors file or a sharded index) into a run directory with a step-0
params checkpoint, which `experiments.generate --workdir` samples from and
`--config.init_from` fine-tunes. A tokenizer beside the weights becomes the
run's tokenizer: tokenizer.model (SentencePiece) if present, else tokenizer.json
(GPT-2's byte-level BPE, Llama 3's, ...; data.tokenizer=hf, read by the
`tokenizers` library), so `experiments.generate --prompt=...` works on text.
Neither direction needs torch; the parity tests use transformers and torch.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import sys

import numpy as np

from lm import checkpoint
from lm import config as config_lib
from lm import workdir as workdir_lib
from lm.config import ModelConfig


# Our tokenizer kinds and the file each is in a transformers directory.
TOKENIZER_FILES = {'sentencepiece': 'tokenizer.model', 'hf': 'tokenizer.json'}


class HFError(ValueError):
  """The architecture or directory has no counterpart on the other side."""


# --- Which family -------------------------------------------------------------

# How export treats every architecture and head field (lm/config.FIELD_KINDS
# 'arch' and 'head'), per Hugging Face family: OK (written to config.json or
# the tensor layout, or unused by a decoder-only LM) or a rule the model must
# meet, else export refuses naming the field. tests/test_hf.py checks that
# every such field is listed, so a new architecture option cannot export wrongly.
OK = 'ok'


def _is(value):
  return lambda m, f: getattr(m, f) == value, repr(value)


_COMMON = {
    'family': _is('decoder'), 'vocab_size': OK, 'd_model': OK, 'num_layers': OK,
    'num_decoder_layers': OK,  # Unused by a decoder-only model.
    'num_heads': OK, 'mlp_dim': OK, 'max_len': OK, 'norm_eps': OK,
    'param_dtype': OK,  # Exported as float32.
    'scan_layers': OK,  # Layout only: stacked layers are unstacked.
    'qk_norm': _is(False), 'num_classes': _is(0), 'mlm_transform': _is(False),
    'pool': OK,  # Unused without num_classes.
    # muP's and depth scaling's multipliers are folded into the weights (lm/model.py).
    'parametrization': OK, 'base_width': OK, 'depth_base': OK, 'depth_alpha': OK,
}
HF_FIELDS = {
    'gpt2': {**_COMMON, 'position': _is('learned'), 'norm': _is('layernorm'),
             'use_bias': _is(True), 'activation': _is('gelu'), 'tie_embeddings': _is(True),
             'rope_theta': OK,  # Unused with learned positions.
             'num_kv_heads': (lambda m, f: m.kv_heads == m.num_heads,
                              'num_heads (GPT-2 has no GQA)'),
             'head_dim': (lambda m, f: m.dh * m.num_heads == m.d_model,
                          'd_model / num_heads')},
    'llama': {**_COMMON, 'position': _is('rope'), 'norm': _is('rmsnorm'),
              'use_bias': _is(False), 'activation': _is('swiglu'), 'tie_embeddings': OK,
              'rope_theta': OK, 'num_kv_heads': OK, 'head_dim': OK},
}


def family(m: ModelConfig) -> str:
  """'gpt2' or 'llama', or an HFError naming the fields that match neither."""
  if m.family != 'decoder':
    raise HFError(f'model.family={m.family!r}: only decoder-only models export as GPT-2 '
                  'or Llama')
  if m.num_classes:
    raise HFError('a sequence classifier has no causal-LM equivalent to export')
  misses = {}
  for name, table in HF_FIELDS.items():
    bad = [f'model.{f}={getattr(m, f)!r} (needs {rule[1]})' for f, rule in table.items()
           if rule != OK and not rule[0](m, f)]
    if not bad:
      return name
    misses[name] = bad
  raise HFError('this architecture has no Hugging Face equivalent: as GPT-2, '
                + '; '.join(misses['gpt2']) + ' | as Llama, ' + '; '.join(misses['llama']))


# --- Layer access ---------------------------------------------------------------

def _layers(params: dict, m: ModelConfig) -> list[dict]:
  """Per-layer param dicts (numpy), from the scanned or the unrolled layout."""
  import jax
  p = jax.tree_util.tree_map(np.asarray, params)
  if m.scan_layers:
    return [jax.tree_util.tree_map(lambda a, i=i: a[i], p['blocks'])
            for i in range(m.num_layers)]
  return [p[f'block_{i}'] for i in range(m.num_layers)]


def _from_layers(top: dict, layers: list[dict], m: ModelConfig) -> dict:
  import jax
  if m.scan_layers:
    return {**top, 'blocks': jax.tree_util.tree_map(lambda *a: np.stack(a), *layers)}
  return {**top, **{f'block_{i}': l for i, l in enumerate(layers)}}


# --- Ours -> transformers -------------------------------------------------------

def to_hf(params: dict, m: ModelConfig) -> tuple[dict, dict[str, np.ndarray]]:
  """(config.json dict, safetensors tensors) in transformers' layout."""
  fam = family(m)
  from lm import model as model_lib
  params, m = model_lib.fold_multipliers(params, m)  # An SP model computing the same.
  D, H, K, Dh, F, V = m.d_model, m.num_heads, m.kv_heads, m.dh, m.ff_dim, m.vocab_size
  t: dict[str, np.ndarray] = {}
  if fam == 'gpt2':
    t['transformer.wte.weight'] = np.asarray(params['embed']['embedding'])
    t['transformer.wpe.weight'] = np.asarray(params['pos_embed']['embedding'])
    for i, l in enumerate(_layers(params, m)):
      a, pre = l['attn'], f'transformer.h.{i}.'
      t[pre + 'ln_1.weight'], t[pre + 'ln_1.bias'] = l['attn_norm']['scale'], l['attn_norm']['bias']
      t[pre + 'attn.c_attn.weight'] = np.concatenate(
          [a[n].reshape(D, H * Dh) for n in ('query', 'key', 'value')], axis=1)
      t[pre + 'attn.c_attn.bias'] = np.concatenate(
          [a[n + '_bias'].reshape(-1) for n in ('query', 'key', 'value')])
      t[pre + 'attn.c_proj.weight'] = a['out'].reshape(H * Dh, D)
      t[pre + 'attn.c_proj.bias'] = a['out_bias']
      t[pre + 'ln_2.weight'], t[pre + 'ln_2.bias'] = l['mlp_norm']['scale'], l['mlp_norm']['bias']
      t[pre + 'mlp.c_fc.weight'], t[pre + 'mlp.c_fc.bias'] = l['mlp']['up']['kernel'], l['mlp']['up']['bias']
      t[pre + 'mlp.c_proj.weight'] = l['mlp']['down']['kernel']
      t[pre + 'mlp.c_proj.bias'] = l['mlp']['down']['bias']
    t['transformer.ln_f.weight'] = np.asarray(params['final_norm']['scale'])
    t['transformer.ln_f.bias'] = np.asarray(params['final_norm']['bias'])
    cfg = dict(model_type='gpt2', architectures=['GPT2LMHeadModel'], vocab_size=V,
               n_embd=D, n_layer=m.num_layers, n_head=H, n_inner=F, n_positions=m.max_len,
               n_ctx=m.max_len, activation_function='gelu_new',
               layer_norm_epsilon=m.norm_eps, tie_word_embeddings=True,
               resid_pdrop=m.resid_dropout, embd_pdrop=m.embed_dropout,
               attn_pdrop=m.attn_dropout, initializer_range=m.init_std)
  else:
    t['model.embed_tokens.weight'] = np.asarray(params['embed']['embedding'])
    for i, l in enumerate(_layers(params, m)):
      a, pre = l['attn'], f'model.layers.{i}.'
      t[pre + 'input_layernorm.weight'] = l['attn_norm']['scale']
      t[pre + 'self_attn.q_proj.weight'] = a['query'].reshape(D, H * Dh).T
      t[pre + 'self_attn.k_proj.weight'] = a['key'].reshape(D, K * Dh).T
      t[pre + 'self_attn.v_proj.weight'] = a['value'].reshape(D, K * Dh).T
      t[pre + 'self_attn.o_proj.weight'] = a['out'].reshape(H * Dh, D).T
      t[pre + 'post_attention_layernorm.weight'] = l['mlp_norm']['scale']
      for ours, theirs in (('gate', 'gate_proj'), ('up', 'up_proj'), ('down', 'down_proj')):
        t[pre + f'mlp.{theirs}.weight'] = l['mlp'][ours]['kernel'].T
    t['model.norm.weight'] = np.asarray(params['final_norm']['scale'])
    if not m.tie_embeddings:
      t['lm_head.weight'] = np.asarray(params['head']['kernel']).T
    cfg = dict(model_type='llama', architectures=['LlamaForCausalLM'], vocab_size=V,
               hidden_size=D, intermediate_size=F, num_hidden_layers=m.num_layers,
               num_attention_heads=H, num_key_value_heads=K, head_dim=Dh,
               max_position_embeddings=m.max_len, rms_norm_eps=m.norm_eps,
               rope_theta=m.rope_theta,
               rope_parameters={'rope_type': 'default', 'rope_theta': m.rope_theta},
               hidden_act='silu', attention_bias=False, mlp_bias=False,
               tie_word_embeddings=m.tie_embeddings, attention_dropout=m.attn_dropout,
               initializer_range=m.init_std)
  cfg['torch_dtype'] = 'float32'
  t = {k: np.ascontiguousarray(np.asarray(v, np.float32)) for k, v in t.items()}
  return cfg, t


# --- transformers -> ours -------------------------------------------------------

def _get(cfg: dict, *names, default=None):
  for n in names:
    if cfg.get(n) is not None:
      return cfg[n]
  return default


def model_config(cfg: dict) -> ModelConfig:
  """Our ModelConfig for a transformers GPT-2 or Llama config.json."""
  try:
    m = _model_config(cfg)
    # Types and values as a config file's would be checked (lm/config.py).
    m = config_lib._build(ModelConfig, 'model', dataclasses.asdict(m))
    config_lib.validate_model(m)
    return m
  except config_lib.ConfigError as e:
    raise HFError(f'config.json (model_type={cfg.get("model_type")!r}) gives {e}') from None
  except KeyError as e:
    raise HFError(f'config.json (model_type={cfg.get("model_type")!r}) has no '
                  f'{e.args[0]!r}, which that model type needs') from None
  except TypeError as e:  # E.g. a string where a number belongs.
    raise HFError(f'config.json (model_type={cfg.get("model_type")!r}) holds a value of '
                  f'the wrong type ({e})') from None


def _model_config(cfg: dict) -> ModelConfig:
  kind = cfg.get('model_type')
  if kind == 'gpt2':
    act = cfg.get('activation_function', 'gelu_new')
    if act not in ('gelu_new', 'gelu_pytorch_tanh'):
      raise HFError(f'GPT-2 activation_function={act!r}: only the tanh GELU is supported')
    if cfg.get('scale_attn_by_inverse_layer_idx') or cfg.get('reorder_and_upcast_attn'):
      raise HFError('GPT-2 with scale_attn_by_inverse_layer_idx or reorder_and_upcast_attn '
                    'is not supported')
    if not cfg.get('scale_attn_weights', True):
      raise HFError('GPT-2 with scale_attn_weights=false (attention scores not divided by '
                    'sqrt(head_dim)) is not supported')
    if not cfg.get('tie_word_embeddings', True):  # Its lm_head would be read as wte.
      raise HFError('GPT-2 with tie_word_embeddings=false (a separate lm_head) is not '
                    'supported: its GPT-2 mapping ties the output head to the embedding')
    D = cfg['n_embd']
    return ModelConfig(
        vocab_size=cfg['vocab_size'], d_model=D, num_layers=cfg['n_layer'],
        num_heads=cfg['n_head'], mlp_dim=cfg.get('n_inner') or 4 * D,
        max_len=cfg['n_positions'], position='learned', norm='layernorm',
        norm_eps=cfg.get('layer_norm_epsilon', 1e-5), use_bias=True, activation='gelu',
        tie_embeddings=True, init_std=cfg.get('initializer_range', 0.02))
  if kind in ('llama', 'mistral', 'qwen2'):
    if cfg.get('attention_bias') or cfg.get('mlp_bias') or kind == 'qwen2':
      raise HFError(f'{kind} with attention or MLP biases is not supported')
    if cfg.get('hidden_act', 'silu') != 'silu':
      raise HFError(f'hidden_act={cfg["hidden_act"]!r}: only SwiGLU (silu) is supported')
    rope = _get(cfg, 'rope_parameters', 'rope_scaling', default={}) or {}
    if not isinstance(rope, dict):
      raise HFError(f'rope_scaling={rope!r} is not a JSON object (transformers writes '
                    '{"rope_type": ...} or null)')
    if rope.get('rope_type', rope.get('type', 'default')) != 'default':
      raise HFError(f'rope scaling {rope} is not supported (plain RoPE only)')
    if cfg.get('sliding_window') and kind == 'mistral':
      raise HFError('sliding-window attention is not supported')
    D, H = cfg['hidden_size'], cfg['num_attention_heads']
    dh = cfg.get('head_dim') or D // H
    return ModelConfig(
        vocab_size=cfg['vocab_size'], d_model=D, num_layers=cfg['num_hidden_layers'],
        num_heads=H, num_kv_heads=cfg.get('num_key_value_heads') or H,
        head_dim=0 if dh * H == D else dh, mlp_dim=cfg['intermediate_size'],
        max_len=cfg['max_position_embeddings'], position='rope',
        rope_theta=float(rope.get('rope_theta', cfg.get('rope_theta', 10000.0))),
        norm='rmsnorm', norm_eps=cfg.get('rms_norm_eps', 1e-6), use_bias=False,
        activation='swiglu', tie_embeddings=bool(cfg.get('tie_word_embeddings', False)),
        init_std=cfg.get('initializer_range', 0.02))
  raise HFError(f'model_type={kind!r} is not supported: use a GPT-2 or Llama checkpoint')


def from_hf(cfg: dict, t: dict[str, np.ndarray], m: ModelConfig | None = None
            ) -> tuple[ModelConfig, dict]:
  """(our ModelConfig, params) from a transformers config and its tensors."""
  m = m or model_config(cfg)
  try:
    return _from_hf(cfg, t, m)
  except HFError:
    raise
  except ValueError as e:  # A reshape of a tensor whose size does not fit the config.
    raise HFError(f'the tensors do not fit config.json (d_model {m.d_model}, heads '
                  f'{m.num_heads}, kv heads {m.kv_heads}, head_dim {m.dh}): {e}') from None


def _from_hf(cfg: dict, t: dict[str, np.ndarray], m: ModelConfig) -> tuple[ModelConfig, dict]:
  D, H, K, Dh = m.d_model, m.num_heads, m.kv_heads, m.dh
  t = {k: np.asarray(v, np.float32) for k, v in t.items()}

  def need(name):
    if name not in t:
      raise HFError(f'tensor {name!r} is missing from the checkpoint')
    return t[name]

  layers = []
  if cfg['model_type'] == 'gpt2':
    if not any(k.startswith('transformer.') for k in t):  # GPT2Model without the LM head.
      t = {'transformer.' + k: v for k, v in t.items()}
    for i in range(m.num_layers):
      g = lambda n, i=i: need(f'transformer.h.{i}.{n}')
      w, b = g('attn.c_attn.weight'), g('attn.c_attn.bias')
      layers.append({
          'attn_norm': {'scale': g('ln_1.weight'), 'bias': g('ln_1.bias')},
          'attn': {'query': w[:, :D].reshape(D, H, Dh), 'key': w[:, D:2 * D].reshape(D, H, Dh),
                   'value': w[:, 2 * D:].reshape(D, H, Dh),
                   'query_bias': b[:D].reshape(H, Dh), 'key_bias': b[D:2 * D].reshape(H, Dh),
                   'value_bias': b[2 * D:].reshape(H, Dh),
                   'out': g('attn.c_proj.weight').reshape(H, Dh, D),
                   'out_bias': g('attn.c_proj.bias')},
          'mlp_norm': {'scale': g('ln_2.weight'), 'bias': g('ln_2.bias')},
          'mlp': {'up': {'kernel': g('mlp.c_fc.weight'), 'bias': g('mlp.c_fc.bias')},
                  'down': {'kernel': g('mlp.c_proj.weight'), 'bias': g('mlp.c_proj.bias')}}})
    top = {'embed': {'embedding': need('transformer.wte.weight')},
           'pos_embed': {'embedding': need('transformer.wpe.weight')},
           'final_norm': {'scale': need('transformer.ln_f.weight'),
                          'bias': need('transformer.ln_f.bias')}}
  else:
    for i in range(m.num_layers):
      g = lambda n, i=i: need(f'model.layers.{i}.{n}')
      layers.append({
          'attn_norm': {'scale': g('input_layernorm.weight')},
          'attn': {'query': g('self_attn.q_proj.weight').T.reshape(D, H, Dh),
                   'key': g('self_attn.k_proj.weight').T.reshape(D, K, Dh),
                   'value': g('self_attn.v_proj.weight').T.reshape(D, K, Dh),
                   'out': g('self_attn.o_proj.weight').T.reshape(H, Dh, D)},
          'mlp_norm': {'scale': g('post_attention_layernorm.weight')},
          'mlp': {'gate': {'kernel': g('mlp.gate_proj.weight').T},
                  'up': {'kernel': g('mlp.up_proj.weight').T},
                  'down': {'kernel': g('mlp.down_proj.weight').T}}})
    top = {'embed': {'embedding': need('model.embed_tokens.weight')},
           'final_norm': {'scale': need('model.norm.weight')}}
    if not m.tie_embeddings:
      top['head'] = {'kernel': need('lm_head.weight').T}
  params = _from_layers(top, layers, m)
  _check_shapes(params, m)
  return m, params


def _check_shapes(params: dict, m: ModelConfig) -> None:
  import jax
  want = checkpoint.abstract_params(m)
  got_s = jax.tree_util.tree_map(lambda a: a.shape, params)
  want_s = jax.tree_util.tree_map(lambda a: a.shape, want)
  if got_s != want_s:
    got = dict(jax.tree_util.tree_leaves_with_path(got_s, is_leaf=lambda x: isinstance(x, tuple)))
    want = dict(jax.tree_util.tree_leaves_with_path(want_s,
                                                    is_leaf=lambda x: isinstance(x, tuple)))
    bad = [f'{jax.tree_util.keystr(k)} is {got.get(k)}, the config wants {want.get(k)}'
           for k in sorted(set(got) | set(want), key=str) if got.get(k) != want.get(k)]
    raise HFError(f'the tensors do not fit config.json ({len(bad)} differ: '
                  f'{"; ".join(bad[:3])}); check its vocab_size, hidden and intermediate '
                  'sizes, heads and max positions against the weights')


# --- Files -----------------------------------------------------------------------

def read_dir(hf_dir: str) -> tuple[dict, dict[str, np.ndarray]]:
  """config.json and all safetensors tensors (one file or a sharded index)."""
  from safetensors import SafetensorError, safe_open
  cfg_path = os.path.join(hf_dir, 'config.json')
  if not os.path.exists(cfg_path):
    raise HFError(f'{hf_dir} has no config.json: not a transformers model directory')
  try:
    with open(cfg_path) as f:
      cfg = json.load(f)
  except ValueError as e:
    raise HFError(f'{cfg_path} is not valid JSON ({e})') from None
  except OSError as e:  # E.g. a directory of that name.
    raise HFError(f'{cfg_path} cannot be read ({e.strerror})') from None
  if not isinstance(cfg, dict):
    raise HFError(f'{cfg_path} does not hold a JSON object')
  files = sorted(glob.glob(os.path.join(hf_dir, '*.safetensors')))
  if not files:
    raise HFError(f'{hf_dir} has no *.safetensors weights (PyTorch .bin files are not '
                  'read: re-save with safe_serialization=True)')
  t = {}
  for path in files:
    try:
      with safe_open(path, framework='numpy') as f:
        for k in f.keys():
          t[k] = f.get_tensor(k)
    except (SafetensorError, OSError, ValueError) as e:
      raise HFError(f'{path} is not a readable safetensors file ({e})') from None
  return cfg, t


def sentencepiece_config(tok) -> dict:
  """tokenizer_config.json for an exported tokenizer.model: transformers (>= 5)
  then builds its fast tokenizer from the file itself, which encodes as ours
  (tests/test_hf.py; only a literal U+2581 in the text decodes as a space
  there), and knows our end-of-text token. Without it AutoTokenizer takes the
  model type's tokenizer class and mis-encodes. split_special_tokens keeps
  special-token text in a document text, as ours reads it. Two differences
  remain for unigram models, both in transformers' conversion: pieces of equal
  total score (runs of spaces) can split differently, and special-token text
  ('</s>') still encodes as the special id; BPE models encode as ours."""
  piece = lambda i: tok.sp.id_to_piece(i)  # noqa: E731
  return {'tokenizer_class': 'PreTrainedTokenizerFast', 'add_bos_token': False,
          'add_eos_token': False, 'eos_token': piece(tok.eos_id),
          'bos_token': piece(tok.bos_id), 'pad_token': piece(tok.pad_id),
          'unk_token': piece(tok.sp.unk_id()), 'split_special_tokens': True}


def hf_tokenizer_config(tok, side: dict | None) -> dict:
  """tokenizer_config.json for an exported tokenizer.json: the one beside our
  file if any, else one naming our special tokens, so AutoTokenizer builds its
  fast tokenizer from the file (without one it took the model type's class:
  GPT2Tokenizer re-encoded a Metaspace vocabulary and added its own
  <|endoftext|> past the vocabulary; Llama's had no EOS). Either way
  special-token text inside a document stays text, as ours reads it
  (lm/tokenizers.HFTokenizer: encode_special_tokens)."""
  out = dict(side or {'add_bos_token': False, 'add_eos_token': False})
  if not out.get('tokenizer_class'):  # A side file naming only eos_token, as ours advises.
    out['tokenizer_class'] = 'PreTrainedTokenizerFast'
  for role in ('eos', 'bos', 'pad'):
    if out.get(f'{role}_token') is None:
      out[f'{role}_token'] = tok.tok.id_to_token(getattr(tok, f'{role}_id'))
  out['split_special_tokens'] = True
  return out


def _refuse_nonempty(path: str, flag: str, hint: str) -> None:
  if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
    raise HFError(f'{flag}={path} already exists and is not empty; it was left untouched: '
                  + hint)


def export(workdir: str, out: str, overwrite: bool = False) -> str:
  """Writes a transformers directory for the run's latest (or given) checkpoint;
  a non-empty `out` is refused unless `overwrite`."""
  from safetensors.numpy import save_file
  if not overwrite:
    _refuse_nonempty(out, '--out', 'choose an empty directory or pass --overwrite')
  workdir_lib.check_writable(out, '--out')
  if os.path.isdir(os.path.join(out, 'checkpoints')):
    raise HFError(f'--out={out} is a run directory (it has checkpoints/); --overwrite would '
                  'replace its config.json and break it: it was left untouched, choose '
                  'another --out')
  c = checkpoint.load_config(workdir)
  family(c.model)  # Refuse before reading any weights.
  c, params = checkpoint.load_params(workdir)
  cfg, tensors = to_hf(params, c.model)
  cfg['lm_config'] = config_lib.to_dict(c)
  tok = c.data
  ours = checkpoint.load_tokenizer(workdir, c, fits=False)
  cfg['eos_token_id'] = cfg['bos_token_id'] = int(ours.eos_id)
  # Read before --overwrite deletes anything: a run imported from --out reads
  # its tokenizer from there (it was deleted, then copied from itself).
  tok_files = {}
  if tok.tokenizer in TOKENIZER_FILES:
    tok_files[TOKENIZER_FILES[tok.tokenizer]] = open(tok.tokenizer_path, 'rb').read()
  side = os.path.join(os.path.dirname(tok.tokenizer_path or '.'), 'tokenizer_config.json')
  if tok.tokenizer == 'hf':  # Else AutoTokenizer takes model_type's class (GPT-2's BPE).
    side_cfg = json.load(open(side, encoding='utf-8')) if os.path.isfile(side) else None
    tok_files['tokenizer_config.json'] = json.dumps(hf_tokenizer_config(ours, side_cfg),
                                                    indent=2).encode()
  if tok.tokenizer == 'sentencepiece':  # Else AutoTokenizer takes model_type's (GPT-2's BPE).
    tok_files['tokenizer_config.json'] = json.dumps(sentencepiece_config(ours), indent=2).encode()
  os.makedirs(out, exist_ok=True)
  if overwrite:  # An earlier export's tokenizer or weights would be loaded beside ours.
    for name in os.listdir(out):
      if name in (*TOKENIZER_FILES.values(), 'tokenizer_config.json',
                  'special_tokens_map.json', 'model.safetensors.index.json') or (
                      name.startswith(('model-', 'pytorch_model')) and
                      name.endswith(('.safetensors', '.bin'))):
        os.remove(os.path.join(out, name))
  save_file(tensors, os.path.join(out, 'model.safetensors'), metadata={'format': 'pt'})
  with open(os.path.join(out, 'config.json'), 'w') as f:
    json.dump(cfg, f, indent=2)
  for name, blob in tok_files.items():
    with open(os.path.join(out, name), 'wb') as f:
      f.write(blob)
  return out


def _shipped_tokenizer(hf_dir: str, data: dict) -> str:
  """The path of the tokenizer file in `hf_dir` (setting data['tokenizer']), or
  '' for none. SentencePiece first; Llama 2 ships both and its tokenizer.model
  adds a dummy prefix, which SentencePieceTokenizer refuses: then tokenizer.json."""
  from lm.tokenizers import get_tokenizer
  refused = None
  for kind, name in TOKENIZER_FILES.items():
    path = os.path.abspath(os.path.join(hf_dir, name))
    if not os.path.exists(path):
      continue
    try:
      get_tokenizer(kind, path)
    except config_lib.ConfigError as e:
      refused = refused or e
      continue
    data['tokenizer'] = kind
    return path
  if refused:  # Every file there was refused: say why the first one was.
    raise refused
  return ''


def import_dir(hf_dir: str, workdir: str, log=print) -> str:
  """Writes a new run directory (config.json + step-0 params) from a transformers
  dir; never into an existing run."""
  _refuse_nonempty(workdir, '--workdir', 'import writes a new run: choose a new --workdir')
  workdir_lib.check_writable(workdir, '--workdir')  # Before the weights are read.
  cfg, t = read_dir(hf_dir)
  m = model_config(cfg)
  if 'lm_config' in cfg:  # Our own export: keep the tokenizer and training settings.
    if not isinstance(cfg['lm_config'], dict):
      raise HFError(f'config.json\'s lm_config is {type(cfg["lm_config"]).__name__}, not the '
                    'JSON object tools.hf export writes')
    # Every section, with defaults for any the file leaves out (checked as a config file's).
    full = config_lib.from_configdict(dict(cfg['lm_config']), recorded=True)  # A trained run's.
    d, orig = config_lib.to_dict(full), full.model
    # Free and head fields, and the layer layout, come from the original.
    keep = [f.name for f in dataclasses.fields(m)
            if config_lib.field_kind(f'model.{f.name}') != config_lib.ARCH
            or f.name == 'scan_layers']
    m = dataclasses.replace(m, **{k: getattr(orig, k) for k in keep})
    if not checkpoint.arch_diff(m, orig):
      m = orig  # The same model: keep its spelling (mlp_dim 0, num_kv_heads 0, ...).
    m, params = from_hf(cfg, t, m)
    d['model'] = dataclasses.asdict(m)
    shipped = os.path.join(hf_dir, TOKENIZER_FILES.get(d['data']['tokenizer'], ''))
    if os.path.isfile(shipped):  # The copy export wrote: the original path may be gone.
      d['data']['tokenizer_path'] = os.path.abspath(shipped)
  else:
    m, params = from_hf(cfg, t, m)
    d = config_lib.to_dict(config_lib.from_configdict({}))  # Every default.
    d['model'] = dataclasses.asdict(m)
    d['data']['seq_len'] = min(d['data']['seq_len'], m.max_len)
    d['data']['tokenizer_path'] = _shipped_tokenizer(hf_dir, d['data'])
    d['name'] = os.path.basename(os.path.abspath(hf_dir))
  d['init_from'] = ''
  c = config_lib.from_configdict(d, recorded='lm_config' in cfg)
  from lm.tokenizers import get_tokenizer
  # A tokenizer file that came with the weights must fit them (ids past the
  # embedding score NaN or crash generation). Without one the run reads bytes
  # by default, which a model of another vocabulary may not be meant for: its
  # weights still load, but the text tools refuse it (checkpoint.load_tokenizer).
  n = get_tokenizer(c.data.tokenizer, c.data.tokenizer_path).vocab_size
  if n > c.model.vocab_size and c.data.tokenizer_path:
    raise HFError(f'the tokenizer ({c.data.tokenizer_path}) has {n} '
                  f'tokens, more than the model\'s vocab_size {c.model.vocab_size}: they do '
                  'not belong together; nothing was written')
  if n > c.model.vocab_size:
    log(f'note: {hf_dir} ships no {" or ".join(TOKENIZER_FILES.values())}, and the byte '
        f'tokenizer used without one has {n} ids, more than the model\'s vocab_size '
        f'{c.model.vocab_size}: its weights load, but generate and eval will refuse the run')
  checkpoint.save_params(workdir, c, params)
  return workdir


def main(argv: list[str]) -> None:
  from absl import flags, logging
  logging.set_verbosity(logging.WARNING)  # orbax's and JAX's INFO lines are not ours.
  FLAGS = flags.FLAGS
  if len(argv) != 2 or argv[1] not in ('export', 'import'):
    print('usage: python -m tools.hf export --workdir=W --out=DIR | '
          'import --hf_dir=DIR --workdir=W', file=sys.stderr)
    sys.exit(2)
  try:
    if argv[1] == 'export':
      if not (FLAGS.workdir and FLAGS.out):
        raise HFError('export needs --workdir and --out')
      print(f'wrote {export(FLAGS.workdir, FLAGS.out, FLAGS.overwrite)}')
    else:
      if not (FLAGS.workdir and FLAGS.hf_dir):
        raise HFError('import needs --hf_dir and --workdir')
      print(f'wrote {import_dir(FLAGS.hf_dir, FLAGS.workdir)}')
  except (HFError, checkpoint.CheckpointError, config_lib.ConfigError,
          workdir_lib.NotWritable) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  from absl import app, flags
  flags.DEFINE_string('workdir', None, 'Our run directory (export: source; import: target).')
  flags.DEFINE_string('out', None, 'export: the transformers directory to write.')
  flags.DEFINE_string('hf_dir', None, 'import: a transformers GPT-2 or Llama directory.')
  flags.DEFINE_bool('overwrite', False, 'export: replace the files of a non-empty --out.')
  import functools

  from lm import cli
  app.run(main, flags_parser=functools.partial(cli.parse_flags, positional=1))  # export|import
