"""Feeds every CLI bad input and checks it fails the way the guide asks.

python -m tools.bad_inputs [--only=SUBSTRING] [--scratch=/tmp/lm_bad_inputs]

Each case runs one command in a subprocess against files this tool makes (a
small corpus, a trained tiny run, its HF export, data files, ...), and must
end with exit status 2 and a one-line `error: ...` on stderr naming the bad
value or file, with no traceback, and without changing or adding any file
under the scratch directory. Prints one line per case and the totals:

  cases  clear errors  tracebacks  other failures  damaged files

CASES lists them; tests/test_bad_inputs.py runs a sample and checks that
the corpus holds at least 100 cases.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = ['-m', 'experiments.train', '--config=configs/tiny.py']
SWEEP = ['-m', 'experiments.sweep', '--config=configs/isoflop_tiny.py']


def _cfg(**over) -> list[str]:
  return [f'--config.{k}={v}' for k, v in over.items()]


# (name, argv after `python`, text that the error must contain). {S} is the
# scratch directory, {RUN} a trained tiny run, {HF} its HF export, {CORPUS} a
# small text corpus. Every run-config case trains into {S}/w, which must not appear.
_W = '--workdir={S}/w'
_DIR = ['--config.data.source=dir', '--config.data.path={CORPUS}']
# How {RUN} was trained (besides _DIR), for cases that resume it.
_RUN_FLAGS = ['--config.train.steps=2', '--config.opt.warmup_steps=1',
              '--config.train.batch_size=8', '--config.data.seq_len=32',
              '--config.train.progress=False', '--config.model.d_model=32',
              '--config.train.eval_batches=1']
# A finished two-run grid sweep of {CORPUS} ({S}/sw, made when a case names it).
_SWF = ['--config.sweep.design=grid', '--config.sweep.params=(900.0,)',
        '--config.sweep.tokens=(40960.0, 81920.0)', '--config.sweep.budgets=()',
        '--config.sweep.tokens_per_param=20.0', '--config.sweep.workers=1',
        '--config.sweep.bootstrap=10', *_DIR]
CASES: list[tuple[str, list[str], str]] = []

# Config values, one per rule of lm/config.py (the train CLI; validated before
# any data preparation or compilation).
for field, value, want in [
    ('model.family', 'gpt', 'model.family'), ('model.d_model', '0', 'model.d_model'),
    ('model.d_model', '30', 'divisible by model.num_heads'),
    ('model.num_layers', '0', 'model.num_layers'), ('model.num_heads', '-1', 'model.num_heads'),
    ('model.max_len', '0', 'model.max_len'), ('model.vocab_size', '-5', 'model.vocab_size'),
    ('model.num_kv_heads', '3', 'model.num_kv_heads'), ('model.head_dim', '-1', 'model.head_dim'),
    ('model.mlp_dim', '-1', 'model.mlp_dim'), ('model.position', 'alibi', 'model.position'),
    ('model.norm', 'batchnorm', 'model.norm'), ('model.activation', 'tanh', 'model.activation'),
    ('model.dtype', 'float16', 'model.dtype'), ('model.param_dtype', 'int8', 'model.param_dtype'),
    ('model.remat', 'some', 'model.remat'), ('model.pool', 'max', 'model.pool'),
    ('model.embed_dropout', '1.5', 'model.embed_dropout'),
    ('model.attn_dropout', '-0.1', 'model.attn_dropout'),
    ('model.resid_dropout', '1.0', 'model.resid_dropout'),
    ('model.init_std', '0', 'model.init_std'), ('model.norm_eps', '-1e-5', 'model.norm_eps'),
    ('model.attn_block', '-2', 'model.attn_block'),
    ('model.attention', 'flash', 'model.attention'), ('model.loss_chunk', '-1', 'model.loss_chunk'),
    ('train.max_rollbacks', '0', 'train.max_rollbacks'),
    ('train.seed', '4294967296', 'train.seed'),
    ('model.num_classes', '3', 'model.num_classes'),
    ('model.mlm_transform', 'True', 'model.mlm_transform'),
    ('model.num_decoder_layers', '-1', 'model.num_decoder_layers'),
    ('model.num_decoder_layers', '2', "read only with model.family='encoder_decoder'"),
    ('model.rope_theta', '500000.0', "read only with model.position='rope'"),
    ('train.max_skips', '3', "read only with train.on_nonfinite='skip'"),
    ('opt.lr', '0', 'opt.lr'), ('opt.lr', '-1e-3', 'opt.lr'),
    ('opt.warmup_steps', '-1', 'opt.warmup_steps'),
    ('opt.warmup_steps', '100000', 'warmup must not be longer'),
    ('opt.schedule', 'step', 'opt.schedule'), ('opt.cooldown_shape', 'cubic', 'opt.cooldown_shape'),
    ('opt.cooldown_fraction', '0', 'opt.cooldown_fraction'),
    ('opt.cooldown_fraction', '1.5', 'opt.cooldown_fraction'),
    ('opt.min_lr_ratio', '2', 'opt.min_lr_ratio'), ('opt.b1', '1.0', 'opt.b1'),
    ('opt.b2', '-0.5', 'opt.b2'), ('opt.eps', '0', 'opt.eps'),
    ('opt.weight_decay', '-0.1', 'weight_decay'), ('opt.grad_clip', '-1', 'grad_clip'),
    ('opt.z_loss', '-1e-4', 'z_loss'), ('opt.wd_exclude', "('norm', 'bogus')", 'opt.wd_exclude'),
    ('opt.freeze_backbone', 'True', 'opt.freeze_backbone'),
    ('data.source', 'web', 'data.source'), ('data.tokenizer', 'bpe', 'data.tokenizer'),
    ('data.seq_len', '0', 'data.seq_len'), ('data.seq_len', '4096', 'data.seq_len'),
    ('data.val_fraction', '0', 'data.val_fraction'), ('data.val_fraction', '1.0', 'data.val_fraction'),
    ('data.source', 'dir', 'data.path'), ('data.source', 'tfds', 'data.tfds_name'),
    ('data.source', 'file', 'data.path'), ('data.label_key', 'label', 'data.source'),
    ('data.target_key', 'y', 'data.source'), ('data.target_len', '-1', 'data.target_len'),
    ('data.target_len', '8', 'read only with (input, target) pairs'),
    ('data.mlm_rate', '0', 'data.mlm_rate'), ('data.mlm_rate', '1.0', 'data.mlm_rate'),
    ('data.noise_density', '1.2', 'data.noise_density'),
    ('data.mlm_mask_frac', '1.5', 'data.mlm_mask_frac'),
    ('data.mlm_random_frac', '-0.1', 'data.mlm_random_frac'),
    ('data.mean_span', '0.5', 'data.mean_span'),
    ('data.mlm_rate', '0.3', 'read only by the mlm objective'),
    ('model.pool', 'mean', 'read only by the classify objective'),
    ('data.canary_digits', '3', 'read only with data.canary_repeats'),
    ('data.tokenizer', 'sentencepiece', 'data.tokenizer_path'),
    ('data.tokenizer', 'hf', 'data.tokenizer_path'),
    ('train.batch_size', '0', 'train.batch_size'), ('train.grad_accum', '0', 'train.grad_accum'),
    ('train.grad_accum', '3', 'divisible by train.grad_accum'),
    ('train.steps', '0', 'train.steps'), ('train.log_every', '0', 'train.log_every'),
    ('train.eval_every', '-1', 'train.eval_every'), ('train.eval_batches', '0', 'train.eval_batches'),
    ('train.checkpoint_every', '0', 'train.checkpoint_every'),
    ('train.keep_checkpoints', '0', 'train.keep_checkpoints'),
    ('train.peak_flops', '-1.0', 'train.peak_flops'),
    ('train.flops_convention', '7N', 'train.flops_convention'),
    ('train.on_nonfinite', 'ignore', 'train.on_nonfinite'), ('train.max_skips', '0', 'train.max_skips'),
    ('train.objective', 'dpo', 'train.objective'), ('train.objective', 'classify', 'data.label_key'),
    ('mesh.data', '0', 'mesh.data'), ('mesh.fsdp', '-2', 'mesh.fsdp'),
    ('mesh.dcn_data', '0', 'mesh.dcn_data'), ('mesh.data', '3', 'mesh'),
    ('train.steps', 'many', "invalid literal for int() with base 10: 'many'"),
    ('model.d_modle', '64', 'Did you mean "d_model"'), ('trian.steps', '5', 'trian'),
    ('model.parametrization', 'ntk', 'model.parametrization'),
    ('model.base_width', '-64', 'model.base_width'), ('model.depth_base', '-1', 'model.depth_base'),
    ('model.depth_alpha', '2.0', 'model.depth_alpha'),
    ('data.canary_repeats', '(-1,)', 'data.canary_repeats'),
    ('data.canary_template', 'no placeholder', 'data.canary_template'),
    ('data.canary_digits', '0', 'data.canary_digits'),
    ('train.eval_tasks_limit', '-1', 'train.eval_tasks_limit'),
    ('train.eval_tasks_path', '/nonexistent_tasks', 'train.eval_tasks_path'),
    ('train.eval_bias_csv', '/nonexistent.csv', 'train.eval_bias_csv'),
    ('train.eval_tasks', "('no_such_task_xyz',)", 'no_such_task_xyz'),
    ('opt.lr', 'inf', 'finite number'), ('opt.weight_decay', 'nan', 'finite number'),
    ('model.init_std', 'inf', 'finite number'), ('model.rope_theta', '-1.0', 'model.rope_theta'),
    ('train.extra_checkpoints', '(-5,)', 'train.extra_checkpoints'),
    ('train.seed', '-1', 'train.seed'), ('data.val_split', 'test', 'data.val_split'),
    ('data.labels', '(0, 1)', 'class names are strings'),
]:
  CASES.append((f'train --config.{field}={value}', [*TRAIN, _W, f'--config.{field}={value}'],
                want))

# Files and directories of the train CLI.
CASES += [
    ('train: missing config file', ['-m', 'experiments.train', '--config={S}/nope.py', _W],
     'nope.py'),
    ('train: config with a syntax error', ['-m', 'experiments.train',
                                           '--config={S}/broken.py', _W], 'SyntaxError'),
    ('train: no --workdir', [*TRAIN], '--workdir'),
    ('train: read-only workdir', [*TRAIN, '--workdir=/proc/lm_w'], 'not writable'),
    ('train: read-only data cache', [*TRAIN, _W, '--config.data.cache_dir=/proc/lm_cache'],
     'the data cache'),
    ('sweep: read-only sweep directory', [*SWEEP, '--workdir=/proc/lm_sweep'], 'not writable'),
    ('sweep: collect into a read-only sweep directory',
     [*SWEEP, '--workdir=/proc/lm_sweep', '--mode=collect'], 'not writable'),
    ('train: span corruption longer than the position table',
     ['-m', 'experiments.train', '--config=configs/t5_tiny.py', _W,
      '--config.data.mean_span=1.0'], 'longer than the learned position table'),
    ('train: data dir does not exist', [*TRAIN, _W, '--config.data.source=dir',
                                        '--config.data.path={S}/missing'], 'missing'),
    ('train: data dir that is a file', [*TRAIN, _W, '--config.data.source=dir',
                                        '--config.data.path={S}/broken.py'],
     'is a file, not a directory'),
    ('train: data dir of binary files', [*TRAIN, _W, '--config.data.source=dir',
                                         '--config.data.path={S}/binary'], 'binary'),
    ('train: a workdir with foreign checkpoints', [*TRAIN, '--workdir={S}/foreign', *_DIR],
     'not a checkpoint directory'),
    ('train: resume with another architecture', [*TRAIN, '--workdir={RUN}', *_DIR,
                                                 '--config.model.d_model=64'],
     'model.d_model'),
    ('train: resume with gradient clipping turned off',
     [*TRAIN, '--workdir={RUN}', *_DIR, *_RUN_FLAGS, '--config.opt.grad_clip=0'],
     'opt.grad_clip: 1.0 != 0'),
    ('train: resume from a damaged checkpoint',
     [*TRAIN, '--workdir={S}/damaged', *_DIR, *_RUN_FLAGS],
     'could not be restored'),
    ('bench_train: a config name it does not have',
     ['-m', 'tools.bench_train', '--configs=gpt2-small', '--steps=1'], 'not among tiny'),
    ('bench_decode: a model name it does not have',
     ['-m', 'tools.bench_decode', '--models=gpt2-small'], 'not among tiny'),
    ('bench_data: a data dir that does not exist',
     ['-m', 'tools.bench_data', '--config=configs/tiny.py', '--config.data.source=dir',
      '--config.data.path={S}/missing', '--batches=2'], 'missing'),
    ('train: init_from that does not exist', [*TRAIN, _W, *_DIR, '--config.init_from={S}/none'],
     'none'),
    ('config: a config file without get_config',
     ['-m', 'tools.config', '--config=configs/common.py'], 'configs/common.py defines no get_config'),
    ('train: init_from a damaged checkpoint',
     [*TRAIN, _W, *_DIR, *_RUN_FLAGS, '--config.init_from={S}/damaged'],
     'could not be restored'),
    ('train: finetune_lm without init_from', ['-m', 'experiments.train',
                                              '--config=configs/finetune_lm.py', _W, *_DIR],
     'config.init_from'),
    ('train: sinusoidal positions past max_len',
     [*TRAIN, _W, '--config.model.position=sinusoidal', '--config.data.seq_len=4096'],
     'sinusoidal position table'),
    ('train: sentencepiece model without EOS',
     [*TRAIN, _W, '--config.data.tokenizer=sentencepiece',
      '--config.data.tokenizer_path={S}/noeos.model'], 'no end-of-text token'),
    ('train: sentencepiece model that normalises the text',
     [*TRAIN, _W, '--config.data.tokenizer=sentencepiece',
      '--config.data.tokenizer_path={S}/nfkc.model'], 'rewrites the text it encodes'),
    ('train: labelled CSV that is not UTF-8',
     [*TRAIN, _W, '--config.data.source=file', '--config.data.path={S}/latin1.csv',
      '--config.data.label_key=label'], 'not UTF-8'),
    ('train: TFDS name with an unknown version',
     [*TRAIN, _W, '--config.data.source=tfds', '--config.data.tfds_name=tiny_shakespeare:9.9.9'],
     'not a valid TFDS name'),
    ('train: missing labelled file', [*TRAIN, _W, '--config.data.source=file',
                                      '--config.data.path={S}/none.jsonl',
                                      '--config.data.label_key=label'], 'none.jsonl'),
    ('train: labelled file with a row missing its label',
     [*TRAIN, _W, '--config.data.source=file', '--config.data.path={S}/nolabel.jsonl',
      '--config.data.label_key=label'], "missing field 'label'"),
    ('train: hf tokenizer file that is not one', [*TRAIN, _W, '--config.data.tokenizer=hf',
                                                  '--config.data.tokenizer_path={S}/broken.py'],
     'is not a Hugging Face tokenizer.json'),
    ('train: sentencepiece file that is not one', [*TRAIN, _W,
                                                   '--config.data.tokenizer=sentencepiece',
                                                   '--config.data.tokenizer_path={S}/broken.py'],
     'is not a SentencePiece .model'),
    ('train: sentencepiece model file missing', [*TRAIN, _W, '--config.data.tokenizer=sentencepiece',
                                                 '--config.data.tokenizer_path={S}/none.model'],
     'none.model'),
]

# Sweep config values (validated before the plan is written).
for name, override, want in [
    ('negative budget', 'sweep.budgets=(-1e11,)', 'sweep.budgets'),
    ('grid without params', 'sweep.design=grid', 'sweep.params'),
    ('unknown design', 'sweep.design=random', 'sweep.design'),
    ('sizes < 3', 'sweep.sizes=2', 'sweep.sizes'),
    ('a seed listed twice', 'sweep.seeds=(0, 0)', 'list each value once'),
    ('a seed past 32 bits', 'sweep.seeds=(0, 4294967296)', 'sweep.seeds'),
    ('negative job_gpus', 'sweep.job_gpus=-1', 'sweep.job_gpus'),
    ('negative bootstrap', 'sweep.bootstrap=-1', 'sweep.bootstrap'),
]:
  CASES.append((f'sweep: {name}', [*SWEEP, _W, f'--config.{override}'], want))

# Other CLIs.
CASES += [
    ('generate: no such run', ['-m', 'experiments.generate', '--workdir={S}/none',
                               '--prompt=x'], 'none'),
    ('generate: empty prompt', ['-m', 'experiments.generate', '--workdir={RUN}', '--prompt='],
     'prompt 0 is empty'),
    ('generate: top_p out of range', ['-m', 'experiments.generate', '--workdir={RUN}',
                                      '--prompt=x', '--top_p=1.5'], 'top_p'),
    ('generate: temperature 0', ['-m', 'experiments.generate', '--workdir={RUN}',
                                 '--prompt=x', '--temperature=0'], 'temperature'),
    ('generate: too many new tokens', ['-m', 'experiments.generate', '--workdir={RUN}',
                                       '--prompt=x', '--max_new_tokens=100000'], 'max_len'),
    ('generate: nothing to do', ['-m', 'experiments.generate', '--workdir={RUN}'],
     'give --prompt'),
    ('generate: --score not UTF-8', ['-m', 'experiments.generate', '--workdir={RUN}',
                                     '--score=a\udcffb'], "--score: not UTF-8 text (byte b'\\xff'"),
    ('generate: --prompt not UTF-8', ['-m', 'experiments.generate', '--workdir={RUN}',
                                      '--prompt=\udcff'], '--prompt: not UTF-8'),
    ('generate: a seed past 32 bits', ['-m', 'experiments.generate', '--workdir={RUN}',
                                       '--prompt=x', '--seed=4294967296'], 'seed=4294967296'),
    ('classify: --text not UTF-8', ['-m', 'experiments.classify', '--workdir={RUN}',
                                    '--text=\udcff'], '--text: not UTF-8'),
    ('classify: an empty --text', ['-m', 'experiments.classify', '--workdir={RUN}', '--text=x',
                                   '--text='], '--text number 2 is empty'),
    ('fill_mask: --text not UTF-8', ['-m', 'experiments.fill_mask', '--workdir={RUN}',
                                     '--text=\udcff [MASK]'], '--text: not UTF-8'),
    ('generate: missing prompts file', ['-m', 'experiments.generate', '--workdir={RUN}',
                                        '--prompts_file={S}/none.txt'], 'none.txt'),
    ('generate: a checkpoint step that does not exist',
     ['-m', 'experiments.generate', '--workdir={RUN}/checkpoints/999', '--prompt=a'],
     'checkpoints/999 does not exist'),
    ('generate: prompts file of blank lines', ['-m', 'experiments.generate', '--workdir={RUN}',
                                               '--prompts_file={S}/blank.txt'],
     'blank.txt holds no text (only empty lines)'),
    ('generate: prompts file not UTF-8', ['-m', 'experiments.generate', '--workdir={RUN}',
                                          '--prompts_file={S}/binary/b0.bin'], 'b0.bin is not UTF-8'),
    ('sweep: --config.train.steps, which the plan sets', [*SWEEP, _W, '--config.train.steps=77'],
     'train.steps'),
    ('sweep: plan with --only not in it', [*SWEEP, _W, '--mode=plan', '--only=nope'], "'nope'"),
    ('train: a bias CSV row without bias_type',
     [*TRAIN, _W, '--config.train.eval_bias_csv={S}/notype.csv'], 'row 3 has no bias_type'),
    ('eval: a bias CSV row without bias_type', ['-m', 'tools.eval', '--workdir={RUN}',
                                                '--bias_csv={S}/notype.csv'], 'row 3 has no bias_type'),
    ('train: a tuple of unquoted strings', [*TRAIN, _W, '--config.data.labels=(pos, neg)'],
     'not a Python tuple'),
    ('train: negative steps', [*TRAIN, _W, '--config.train.steps=-5',
                               '--config.opt.warmup_steps=0'], 'train.steps=-5'),
    ('fill_mask: a decoder run', ['-m', 'experiments.fill_mask', '--workdir={RUN}',
                                  '--text=a [MASK]'], 'fill-mask needs'),
    ('classify: a language-model run', ['-m', 'experiments.classify', '--workdir={RUN}',
                                        '--text=x'], 'not a classifier'),
    ('hf export: non-empty --out', ['-m', 'tools.hf', 'export', '--workdir={RUN}',
                                    '--out={S}/full'], 'not empty'),
    ('hf export: --overwrite onto a run', ['-m', 'tools.hf', 'export', '--workdir={RUN}',
                                           '--out={RUN}', '--overwrite'], 'a run directory'),
    ('hf export: no such run', ['-m', 'tools.hf', 'export', '--workdir={S}/none',
                                '--out={S}/o'], 'none'),
    ('hf export: --out under a file', ['-m', 'tools.hf', 'export', '--workdir={RUN}',
                                       '--out={S}/binary/b0.bin/hf'], 'cannot be a directory'),
    ('hf import: --workdir under a file', ['-m', 'tools.hf', 'import', '--hf_dir={HF}',
                                           '--workdir={S}/binary/b0.bin/w'],
     'cannot be a directory'),
    ('hf import: into an existing run', ['-m', 'tools.hf', 'import', '--hf_dir={HF}',
                                         '--workdir={RUN}'], 'already exists'),
    ('hf import: no config.json', ['-m', 'tools.hf', 'import', '--hf_dir={S}/binary',
                                   '--workdir={S}/imp'], 'no config.json'),
    ('hf import: corrupt config.json', ['-m', 'tools.hf', 'import', '--hf_dir={S}/badhf',
                                        '--workdir={S}/imp'], 'config.json'),
    ('count: negative aspect', ['-m', 'tools.count', '--config=configs/isoflop_tiny.py',
                                '--ladder=1e4', '--aspect=-8'], 'aspect'),
    ('count: bad ladder', ['-m', 'tools.count', '--config=configs/isoflop_tiny.py',
                           '--ladder=1e4,abc'], 'ladder'),
    ('count: negative ladder size', ['-m', 'tools.count', '--config=configs/isoflop_tiny.py',
                                     '--ladder=-1e4'], 'positive'),
    ('sweep: collect an empty workdir', [*SWEEP, '--workdir={S}/empty', '--mode=collect'],
     'no run'),
    ('sweep: --only not in the plan', [*SWEEP, _W, '--only=nope'], '--only'),
    ('train: data.eval_path with a TFDS source (was ignored)',
     [*TRAIN, _W, *_cfg(**{'data.source': 'tfds', 'data.tfds_name': 'tiny_shakespeare',
                           'data.eval_path': '{S}/nolabel.jsonl'})],
     "read with data.source='file' only"),
    ('report: a file where the report directory goes',
     ['-m', 'tools.report', '--config=configs/isoflop_tiny.py', '--workdir={S}/rep'],
     "/rep/report' cannot be a directory"),
    ('sweep: a file where the report directory goes (refused before training)',
     [*SWEEP, '--workdir={S}/rep'], "error: the report directory '"),
    ('fit: missing results table', ['-m', 'tools.fit', '--results={S}/none.csv'], 'none.csv'),
    ('fit: a directory as the table', ['-m', 'tools.fit', '--results={S}/binary'], 'binary'),
    ('fit: a table without an N column', ['-m', 'tools.fit', '--results={S}/nolabel.jsonl'],
     'the table has no N or D column'),
    ('fit: unknown FLOP convention', ['-m', 'tools.fit', '--results={S}/nolabel.jsonl',
                                      '--convention=7N'], '--convention'),
    ('train_tokenizer: existing --out', ['-m', 'tools.train_tokenizer', '--out={S}/sp',
                                         '--vocab_size=400', '--data_path={CORPUS}'],
     'sp.model already exists'),
    ('train_tokenizer: vocab too small', ['-m', 'tools.train_tokenizer', '--out={S}/sp2',
                                          '--vocab_size=20', '--data_path={CORPUS}'],
     '--vocab_size=20 is too small'),
    ('train_tokenizer: missing data', ['-m', 'tools.train_tokenizer', '--out={S}/sp3',
                                       '--data_path={S}/nothing'], '--data_path='),
    ('config: a size not in the ladder', ['-m', 'tools.config',
                                          '--config=configs/ladder.py:size=zz'],
     "size='zz' is not in the ladder"),
    ('config: an override given twice', ['-m', 'tools.config', '--config=configs/tiny.py',
                                         '--config.train.steps=3', '--config.train.steps=4'],
     '--config.train.steps is given twice'),
    ('config: a whole section', ['-m', 'tools.config', '--config=configs/tiny.py',
                                 "--config.train={{'steps': 70}}"],  # {{}}: format().
     '--config.train=... would replace the whole train section'),
    ('config: misspelt field', ['-m', 'tools.config', '--config=configs/tiny.py',
                                '--config.train.stpes=3'], 'stpes'),
    ('eval: nothing to evaluate', ['-m', 'tools.eval', '--workdir={RUN}'],
     'nothing to evaluate'),
    ('eval: --out onto a run config', ['-m', 'tools.eval', '--workdir={RUN}', '--tasks=x',
                                       '--out={RUN}/config.json'], 'not an earlier tools.eval'),
    ('eval: --out a directory', ['-m', 'tools.eval', '--workdir={RUN}', '--tasks=x',
                                 '--out={S}/full.json'], 'is a directory'),
    ('eval: --batch_size 0', ['-m', 'tools.eval', '--workdir={RUN}', '--tasks=x',
                              '--batch_size=0'], '--batch_size'),
    ('eval: --limit 0', ['-m', 'tools.eval', '--workdir={RUN}', '--tasks=x', '--limit=0'],
     '--limit'),
    ('eval: --out in a read-only directory', ['-m', 'tools.eval', '--workdir={RUN}',
                                               '--tasks=x', '--out=/proc/lm_eval/e.json'],
     'not writable'),
    ('eval: no such run', ['-m', 'tools.eval', '--workdir={S}/none', '--tasks=x'], 'none'),
    ('eval: missing bias csv', ['-m', 'tools.eval', '--workdir={RUN}',
                                '--bias_csv={S}/none.csv'], 'none.csv'),
    ('eval: bias csv without the columns', ['-m', 'tools.eval', '--workdir={RUN}',
                                            '--bias_csv={S}/broken.py'], 'sent_more'),
    ('eval: canaries of a run without any', ['-m', 'tools.eval', '--workdir={RUN}',
                                             '--canaries'], 'canaries.json'),
    ('eval: unknown task', ['-m', 'tools.eval', '--workdir={RUN}', '--tasks=no_such_task_xyz',
                            '--include_path=tests/tasks'], 'no_such_task_xyz'),
    ('coord_check: widths not divisible by heads', ['-m', 'tools.coord_check',
                                                    '--config=configs/tiny.py', '--out={S}/cc',
                                                    '--widths=30,64'], '--widths'),
    ('coord_check: one width', ['-m', 'tools.coord_check', '--config=configs/tiny.py',
                                '--out={S}/cc', '--widths=64'], '--widths'),
    ('shardings: mesh larger than the devices', ['-m', 'tools.shardings',
                                                 '--config=configs/tiny.py',
                                                 '--config.mesh.data=64'], 'mesh'),
    ('coord_check: --out an existing file', ['-m', 'tools.coord_check', '--config=configs/tiny.py',
                                             '--out={S}/blank.txt', '--widths=32,64'],
     'blank.txt'),
    ('coord_check: --lr nan', ['-m', 'tools.coord_check', '--config=configs/tiny.py',
                               '--out={S}/cc', '--widths=32,64', '--lr=nan'], '--lr=nan'),
    ('config: a config file whose code fails', ['-m', 'tools.config', '--config={S}/nameerr.py'],
     "NameError: name 'undefined_name' is not defined"),
    ('fit_coverage: negative noise', ['-m', 'tools.fit_coverage', '--noise=-1'], '--noise=-1.0'),
    ('fit_coverage: size ratio 1', ['-m', 'tools.fit_coverage', '--size_ratio=1'],
     '--size_ratio=1.0'),
    ('train_tokenizer: --out under a file', ['-m', 'tools.train_tokenizer',
                                             '--out={S}/blank.txt/sp'], 'must be a file prefix'),
    ('count: aspect not a multiple of the head dim', ['-m', 'tools.count',
                                                      '--config=configs/tiny.py', '--ladder=1e5',
                                                      '--head_dim=7'], '--head_dim=7'),
    ('train: a --flagfile that does not exist', [*TRAIN, _W, '--flagfile={S}/none.flags'],
     'none.flags'),
    ('fit: a finished row without N', ['-m', 'tools.fit', '--results={S}/no_n.jsonl'],
     'N=None is missing'),
    ('count: --aspect without --ladder', ['-m', 'tools.count', '--config=configs/tiny.py',
                                          '--aspect=8'], '--aspect=8'),
    ('bench_train: a mesh that is not three sizes',
     ['-m', 'tools.bench_train', '--configs=tiny', '--mesh=1,1'], '--mesh=1,1'),
    ('bench_train: an attention path it does not have',
     ['-m', 'tools.bench_train', '--configs=tiny', '--attention=flash'], 'flash'),
    ('bench_train: --seq_len too short for the document mask',
     ['-m', 'tools.bench_train', '--configs=tiny', '--seq_len=2'], '--seq_len=2'),
    ('bench_train: --pack with a flag it would ignore',
     ['-m', 'tools.bench_train', '--pack=2', '--dtype=bfloat16'], '--dtype'),
    ('bench_train: --pack_devices not dividing --pack',
     ['-m', 'tools.bench_train', '--pack=3', '--pack_devices=2'], '--pack_devices=2'),
    ('bench_decode: --batches not integers', ['-m', 'tools.bench_decode', '--batches=1,x'],
     '--batches=1,x'),
    ('bench_decode: --uncached_steps 0', ['-m', 'tools.bench_decode', '--uncached_steps=0'],
     '--uncached_steps=0'),
    ('bench_data: --batches 0', ['-m', 'tools.bench_data', '--batches=0'], '--batches=0'),
    ('eta_replay: a result whose wall_s is text', ['-m', 'tools.eta_replay',
                                                   '--workdir={S}/eta_wall'], "wall_s='abc'"),
    ('eta_replay: a plan whose compute is text', ['-m', 'tools.eta_replay',
                                                  '--workdir={S}/eta_plan'], "run 'a'"),
    ('coord_check: an empty --out', ['-m', 'tools.coord_check', '--config=configs/tiny.py',
                                     '--out=', '--widths=32,64', '--steps=1', '--seeds=1'],
     '--out is empty'),
    ('hf import: config.json a directory', ['-m', 'tools.hf', 'import', '--hf_dir={S}/hf_cfgdir',
                                            '--workdir={S}/imp'], 'cannot be read'),
    ('hf import: rope_scaling a string', ['-m', 'tools.hf', 'import', '--hf_dir={S}/hf_rope',
                                          '--workdir={S}/imp'], "rope_scaling='linear'"),
    ('hf import: lm_config a number', ['-m', 'tools.hf', 'import', '--hf_dir={S}/hf_lmcfg',
                                       '--workdir={S}/imp'], 'lm_config is int'),
    ('memory: --devices past 8192', ['-m', 'tools.memory', '--config=configs/tiny.py',
                                     '--devices=1000000'], '--devices=1000000'),
    ('fit_coverage: --decades past floating point',
     ['-m', 'tools.fit_coverage', '--decades=400', '--replicates=1', '--resamples=5'],
     '--decades=400'),
    ('fault_inject: a --workdir it did not make', ['-m', 'tools.fault_inject',
                                                   '--workdir={S}/full'], 'did not make'),
    ('bad_inputs: a --scratch it did not make', ['-m', 'tools.bad_inputs', '--scratch={S}/full'],
     'did not make'),
    ('generate: a sampling flag with --score', ['-m', 'experiments.generate', '--workdir={RUN}',
                                                '--score=abc', '--temperature=0.5'],
     '--temperature only applies to sampling'),
    ('generate: a temperature past float32', ['-m', 'experiments.generate', '--workdir={RUN}',
                                              '--prompt=x', '--temperature=1e300'],
     'temperature=1e+300'),
    ('generate: 10**9 return sequences', ['-m', 'experiments.generate', '--workdir={RUN}',
                                          '--prompt=x', '--num_return_sequences=1000000000'],
     'num_return_sequences=1000000000'),
    ('eval: --limit without --tasks', ['-m', 'tools.eval', '--workdir={RUN}', '--limit=1',
                                       '--bias_csv=tests/data/bias_pairs.csv'],
     '--limit only applies to harness tasks'),
    ('eval: a task YAML that does not parse', ['-m', 'tools.eval', '--workdir={RUN}',
                                               '--tasks=t_badyaml', '--include_path={S}/badyaml'],
     't.yaml is not valid YAML (line 3)'),
    ('eval: a task whose JSONL does not parse', ['-m', 'tools.eval', '--workdir={RUN}',
                                                 '--tasks=t_garb', '--include_path={S}/garb'],
     "task 't_garb' cannot be loaded"),
    ('train_tokenizer: an existing PREFIX.vocab',
     ['-m', 'tools.train_tokenizer', '--out={S}/tok/f', '--data_path={CORPUS}',
      '--vocab_size=300'], 'f.vocab already exists'),
    ('config: an argument to a config that takes none',
     ['-m', 'tools.config', '--config=configs/tiny.py:foo'], 'takes no argument after ":"'),
    ('config: get_config returning a number', ['-m', 'tools.config', '--config={S}/five.py'],
     'returned int'),
    ('fault_inject: negative --kills', ['-m', 'tools.fault_inject', '--workdir={S}/fi',
                                        '--kills=-5'], '--kills=-5'),
    ('fault_inject: a missing --data_dir', ['-m', 'tools.fault_inject', '--workdir={S}/fi',
                                            '--data_dir={S}/none'], 'none is not a directory'),
    ('tokamax_check: a flag', ['-m', 'tools.tokamax_check', '--bogus=1'], 'takes no arguments'),
    ('sweep: a word that is not a flag', [*SWEEP, _W, '--mode=plan', 'plan'],
     "unexpected argument 'plan'"),
    ('sweep: --worker not i/n', [*SWEEP, _W, '--worker=abc'], '--worker=abc'),
    ('sweep: --only with --mode=collect', [*SWEEP, _W, '--mode=collect', '--only=x'],
     'drop --only'),
    ('sweep: a job resource the local executor does not read',
     [*SWEEP, _W, '--mode=plan', '--config.sweep.job_gpus=1'],
     "sweep.executor='local' does not read it (only slurm and ray do)"),
    ('config: a config argument given twice', ['-m', 'tools.config',
                                                '--config=configs/ladder.py:size=m,size=s'],
     "config argument 'size' is given twice"),
    ('sweep: --noreport with --mode=plan', [*SWEEP, _W, '--mode=plan', '--noreport'],
     '--[no]report only applies to --mode=run and --mode=collect'),
    ('sweep: --workers with --mode=plan', [*SWEEP, _W, '--mode=plan', '--workers=2'],
     '--workers=2'),
    ('sweep: a field its design does not read', [*SWEEP, _W, '--mode=plan',
                                                 '--config.sweep.params=(1e5,)'],
     "design 'isoflop' does not read it"),
    ('sweep: size_ratio past floating point', [*SWEEP, _W, '--mode=plan',
                                               '--config.sweep.size_ratio=1e200'],
     'size_ratio=1e+200'),
    ('sweep: tokens_per_param near zero', [*SWEEP, _W, '--mode=plan',
                                           '--config.sweep.tokens_per_param=1e-300'],
     'tokens_per_param=1e-300'),
    ('train: negative --sample_tokens', [*TRAIN, _W, '--sample_tokens=-5'], '--sample_tokens=-5'),
    ('fit: --loss naming no column', ['-m', 'tools.fit', '--results={S}/table.jsonl',
                                      '--loss=nosuch'], '--loss=nosuch'),
    ('memory: --devices 0, space-separated', ['-m', 'tools.memory', '--config=configs/tiny.py',
                                              '--devices', '0'], '--devices=0'),
    # A run's config.json damaged one way each ({S}/cfg_*: copies of {RUN}), read by
    # every tool that opens a run (they were JSONDecodeError, TypeError and
    # IsADirectoryError tracebacks).
    ('train: --config.init_from a run whose config.json is cut short',
     [*TRAIN, _W, *_DIR, *_RUN_FLAGS, '--config.init_from={S}/cfg_cut'], 'cfg_cut/config.json'),
    ('generate: a run whose config.json is a JSON list',
     ['-m', 'experiments.generate', '--workdir={S}/cfg_list', '--prompt=x'],
     'cfg_list/config.json holds a JSON list'),
    ('hf export: a run whose config.json is a directory',
     ['-m', 'tools.hf', 'export', '--workdir={S}/cfg_dir', '--out={S}/o'],
     'cfg_dir/config.json is not a readable run config'),
    ('eval: a run whose config.json has a section that is a number',
     ['-m', 'tools.eval', '--workdir={S}/cfg_num', '--canaries'], 'config.model is 5'),
    ('train: resume a run whose config.json is a directory',
     [*TRAIN, '--workdir={S}/cfg_dir', *_DIR, *_RUN_FLAGS], 'cfg_dir/config.json'),
    # Writing into a Hugging Face export, or into a run's checkpoints/ (each left
    # that directory unreadable to the tool that made it).
    ('train: --workdir a Hugging Face export', [*TRAIN, '--workdir={HF}', *_DIR, *_RUN_FLAGS],
     'is a Hugging Face config'),
    ('train: --workdir inside a run\'s checkpoints',
     [*TRAIN, '--workdir={RUN}/checkpoints/w', *_DIR, *_RUN_FLAGS],
     'lies inside the checkpoints of the run'),
    ('hf export: --overwrite into a run\'s checkpoints',
     ['-m', 'tools.hf', 'export', '--workdir={RUN}', '--out={RUN}/checkpoints', '--overwrite'],
     'lies inside the checkpoints of the run'),
    ('hf import: into a run\'s checkpoints',
     ['-m', 'tools.hf', 'import', '--hf_dir={HF}', '--workdir={RUN}/checkpoints/imp'],
     'lies inside the checkpoints of the run'),
    ('train: resume a run whose metrics.jsonl is not UTF-8',
     [*TRAIN, '--workdir={S}/metrics_bin', *_DIR, *_RUN_FLAGS[1:], '--config.train.steps=4'],
     'metrics.jsonl cannot be read'),
    ('eval: --canaries of a damaged canaries.json',
     ['-m', 'tools.eval', '--workdir={S}/canaries_bad', '--canaries'],
     "canaries.json is not a canary record of this codebase (no 'canaries' list)"),
    ('train: rules mapping a mesh axis twice',
     [*TRAIN, _W, "--config.rules=(('embed', ('data', 'data')),)"], 'split a logical axis once'),
    ('train: rules naming no logical axis of the model',
     [*TRAIN, _W, "--config.rules=(('embd', 'fsdp'),)"], 'logical axes are batch'),
    ('train: opt.schedule=wsd whose cooldown starts inside the 30-step warmup',
     [*TRAIN, _W, '--config.train.steps=30', '--config.opt.schedule=wsd'],
     'would start at step 24, inside the warmup'),
    ('train --config.train.eval_tasks of numbers', [*TRAIN, _W, '--config.train.eval_tasks=(1, 2)'],
     'task names are strings'),
    ('sweep: a run config', ['-m', 'experiments.sweep', '--config=configs/tiny.py', _W,
                             '--mode=plan'], 'has no sweep section'),
    ('sweep: --config.model.d_model, which the plan sets', [*SWEEP, _W, '--mode=plan',
                                                            '--config.model.d_model=256'],
     "sets every run's model.d_model"),
    ('sweep: --config.train.seed, which the plan sets', [*SWEEP, _W, '--mode=plan',
                                                         '--config.train.seed=5'],
     'set sweep.seeds instead'),
    # A finished two-run sweep ({S}/sw) damaged one way each ({S}/sw_*).
    ('sweep: collect with plan.json a directory', [*SWEEP, *_SWF, '--workdir={S}/sw_plandir',
                                                   '--mode=collect'],
     'plan.json cannot be read (Is a directory)'),
    ('sweep: collect with results.csv a directory', [*SWEEP, *_SWF, '--workdir={S}/sw_csvdir',
                                                     '--mode=collect'],
     'results.csv is a directory'),
    ('sweep: report.md a directory (refused before training)',
     [*SWEEP, *_SWF, '--workdir={S}/sw_mddir'], 'report.md is a directory'),
    ('sweep: collect a done run whose metrics lost its evaluations',
     [*SWEEP, *_SWF, '--workdir={S}/sw_noeval', '--mode=collect'],
     'has no evaluation at step'),
    # A second hunt (2026-11-29): flags and paths of the other tools.
    ('train: --coordinator_address with a port that is not a number',
     [*TRAIN, _W, '--coordinator_address=localhost:abc', '--num_processes=1', '--process_id=0'],
     'give HOST:PORT, a port in 1..65535'),
    ('train: --process_id below -1', [*TRAIN, _W, '--process_id=-7'], '--process_id=-7'),
    ('sweep: a data.path that does not exist (refused before plan.json)',
     [*SWEEP, _W, '--config.data.source=dir', '--config.data.path={S}/none'],
     "config.data.path='"),
    ('bench_data: a data cache that is a file', ['-m', 'tools.bench_data',
                                                 '--config=configs/tiny.py', *_DIR,
                                                 '--config.data.cache_dir={S}/blank.txt'],
     'cannot be a directory'),
    ('eval: its default output file is a directory',
     ['-m', 'tools.eval', '--workdir={S}/eval_dir', '--bias_csv=tests/data/bias_pairs.csv'],
     'eval/step_2.json (--out: write elsewhere) is a directory'),
    ("eval: --out inside a run's checkpoints",
     ['-m', 'tools.eval', '--workdir={RUN}', '--bias_csv=tests/data/bias_pairs.csv',
      '--out={RUN}/checkpoints/e.json'], 'lies inside the checkpoints of the run'),
    ("train_tokenizer: --out inside a run's checkpoints",
     ['-m', 'tools.train_tokenizer', '--out={RUN}/checkpoints/sp', '--data_path={CORPUS}',
      '--vocab_size=300'], 'lies inside the checkpoints of the run'),
    ('train_tokenizer: --vocab_size past int32', ['-m', 'tools.train_tokenizer', '--out={S}/t/sp',
                                                  '--vocab_size=3000000000'],
     '--vocab_size=3000000000'),
    ('coord_check: a directory where coord_check.png goes',
     ['-m', 'tools.coord_check', '--config=configs/tiny.py', '--out={S}/cc', '--widths=8,16',
      '--steps=1', '--seeds=1'], 'coord_check.png is a directory'),
    ('fit: --bootstrap of a billion', ['-m', 'tools.fit', '--results={S}/table.jsonl',
                                       '--bootstrap=1000000000'], '--bootstrap=1000000000'),
    ('fit_coverage: --budgets of a billion', ['-m', 'tools.fit_coverage',
                                              '--budgets=1000000000'], '--budgets=1000000000'),
    ('eta_replay: --workers of a billion', ['-m', 'tools.eta_replay', '--workdir={S}/eta_wall',
                                            '--workers=1000000000'], '--workers=1000000000'),
    ('bench_decode: --new_tokens of a billion', ['-m', 'tools.bench_decode',
                                                 '--new_tokens=1000000000'],
     '--new_tokens=1000000000'),
    ('sweep: resume a sweep whose run config.json is a JSON list',
     [*SWEEP, *_SWF, '--workdir={S}/sw_cfglist', '--noreport'],
     'config.json is unreadable (not an object of config sections)'),
    ('sweep: collect a run whose metrics.jsonl is not UTF-8',
     [*SWEEP, *_SWF, '--workdir={S}/sw_bin', '--mode=collect'], 'metrics.jsonl cannot be read'),
]


def _prepare(scratch: str, hf: bool = True, sw: bool = True) -> dict[str, str]:
  """Makes the files the cases refer to; returns the placeholders. `hf=False`
  skips the Hugging Face export ({HF}), `sw=False` the finished sweep ({S}/sw),
  for callers whose cases do not use them."""
  s = scratch
  corpus = os.path.join(s, 'corpus')
  os.makedirs(corpus, exist_ok=True)
  for i in range(30):
    with open(os.path.join(corpus, f'm{i}.py'), 'w') as f:
      f.write(''.join(f'def f{i}_{j}(x):\n    return x * {j}\n' for j in range(40)))
  os.makedirs(os.path.join(s, 'binary'), exist_ok=True)
  for i in range(3):
    with open(os.path.join(s, 'binary', f'b{i}.bin'), 'wb') as f:
      f.write(b'\xff\xfe\x00\x81' * 50)
  with open(os.path.join(s, 'broken.py'), 'w') as f:
    f.write('def get_config(:\n')
  with open(os.path.join(s, 'nameerr.py'), 'w') as f:
    f.write('def get_config():\n  return undefined_name\n')
  with open(os.path.join(s, 'blank.txt'), 'w') as f:
    f.write('\n\n')
  with open(os.path.join(s, 'notype.csv'), 'w') as f:  # The second row has no bias_type.
    f.write('sent_more,sent_less,bias_type\nA he,A she,gender\nB he,B she\n')
  os.makedirs(os.path.join(s, 'foreign', 'checkpoints'), exist_ok=True)
  with open(os.path.join(s, 'foreign', 'checkpoints', 'model.pt'), 'w') as f:
    f.write('not ours')
  with open(os.path.join(s, 'no_n.jsonl'), 'w') as f:  # A results row without its size.
    f.write('{"name": "z", "status": "done", "N": 1e3, "D": 1e6, "final_loss": 3.1}\n'
            '{"name": "a", "status": "done", "D": 1e6, "final_loss": 3.0}\n')
  with open(os.path.join(s, 'nolabel.jsonl'), 'w') as f:
    f.write('{"text": "a", "label": "x"}\n{"text": "b"}\n')
  os.makedirs(os.path.join(s, 'full'), exist_ok=True)
  os.makedirs(os.path.join(s, 'full.json'), exist_ok=True)  # A directory named like a file.
  with open(os.path.join(s, 'sp.model'), 'wb') as f:  # A tokenizer runs may depend on.
    f.write(b'keep me')
  with open(os.path.join(s, 'full', 'keep.txt'), 'w') as f:
    f.write('keep me')
  os.makedirs(os.path.join(s, 'badhf'), exist_ok=True)
  with open(os.path.join(s, 'badhf', 'config.json'), 'w') as f:
    f.write('{"model_type": "gpt2", ')
  with open(os.path.join(s, 'badhf', 'model.safetensors'), 'wb') as f:
    f.write(b'garbage')
  os.makedirs(os.path.join(s, 'empty'), exist_ok=True)
  with open(os.path.join(s, 'latin1.csv'), 'wb') as f:
    f.write('text,label\nun café,pos\n'.encode('latin-1'))
  for name, extra in (('noeos', {'eos_id': -1}), ('nfkc', {})):  # eos_id -1 = none; {}:
    if not os.path.exists(os.path.join(s, f'{name}.model')):  # SentencePiece's normaliser.
      import sentencepiece as spm
      spm.SentencePieceTrainer.train(
          input=os.path.join(corpus, 'm0.py'), model_prefix=os.path.join(s, name),
          vocab_size=80, hard_vocab_limit=False, minloglevel=2, **extra)
  run, hf = os.path.join(s, 'run'), os.path.join(s, 'hf')
  env = dict(os.environ, PYTHONPATH=ROOT)
  if not os.path.isdir(os.path.join(run, 'checkpoints')):
    subprocess.run([sys.executable, *TRAIN, f'--workdir={run}', '--config.data.source=dir',
                    f'--config.data.path={corpus}', *_RUN_FLAGS, '--sample_tokens=0'],
                   check=True, cwd=ROOT, env=env, capture_output=True)
  damaged = os.path.join(s, 'damaged')  # {RUN} with its checkpoint's arrays cut short.
  if not os.path.isdir(damaged):
    shutil.copytree(run, damaged)
    for d, _, files in os.walk(os.path.join(damaged, 'checkpoints')):
      for f in files:
        if os.path.basename(d) == 'd':  # OCDBT's data files.
          os.truncate(os.path.join(d, f), 10)
  for name, damage in (  # {RUN}'s copies, one file damaged each.
      ('cfg_cut', lambda d: os.truncate(os.path.join(d, 'config.json'), 100)),
      ('cfg_list', lambda d: _write(os.path.join(d, 'config.json'), '[1, 2]')),
      ('cfg_num', lambda d: _write(os.path.join(d, 'config.json'), json.dumps(
          {**_read_json(os.path.join(run, 'config.json')), 'model': 5}))),
      ('cfg_dir', lambda d: (os.remove(os.path.join(d, 'config.json')),
                             os.makedirs(os.path.join(d, 'config.json')))),
      ('metrics_bin', lambda d: open(os.path.join(d, 'metrics.jsonl'), 'ab').write(b'\xff\xfe\n')),
      ('canaries_bad', lambda d: _write(os.path.join(d, 'canaries.json'), '{"a": 1}')),
      ('eval_dir', lambda d: os.makedirs(os.path.join(d, 'eval', 'step_2.json')))):
    if not os.path.isdir(os.path.join(s, name)):
      shutil.copytree(run, os.path.join(s, name))
      damage(os.path.join(s, name))
  sweep_dir = os.path.join(s, 'sw')
  if sw and not os.path.isdir(sweep_dir):
    subprocess.run([sys.executable, *SWEEP, f'--workdir={sweep_dir}',
                    *[a.format(CORPUS=corpus) for a in _SWF]],
                   check=True, cwd=ROOT, env=env, capture_output=True)
    first = sorted(os.listdir(os.path.join(sweep_dir, 'runs')))[0]
    for name, damage in (
        ('sw_plandir', lambda d: (os.remove(os.path.join(d, 'plan.json')),
                                  os.makedirs(os.path.join(d, 'plan.json')))),
        ('sw_csvdir', lambda d: (os.remove(os.path.join(d, 'results.csv')),
                                 os.makedirs(os.path.join(d, 'results.csv')))),
        ('sw_mddir', lambda d: (os.remove(os.path.join(d, 'report', 'report.md')),
                                os.makedirs(os.path.join(d, 'report', 'report.md')))),
        ('sw_noeval', lambda d: _write(os.path.join(d, 'runs', first, 'metrics.jsonl'),
                                       'garbage\n')),
        ('sw_bin', lambda d: open(os.path.join(d, 'runs', first, 'metrics.jsonl'),
                                  'ab').write(b'\xff\xfe\n')),
        ('sw_cfglist', lambda d: _write(os.path.join(d, 'runs', first, 'config.json'),
                                        '[1, 2]'))):
      shutil.copytree(sweep_dir, os.path.join(s, name))
      damage(os.path.join(s, name))
  if hf and not os.path.isdir(hf):
    subprocess.run([sys.executable, '-m', 'tools.hf', 'export', f'--workdir={run}',
                    f'--out={hf}'], check=True, cwd=ROOT, env=env, capture_output=True)
  if hf:  # Exports damaged one way each: {HF}'s weights under a config.json that is wrong.
    with open(os.path.join(hf, 'config.json')) as f:
      cfg = json.load(f)
    os.makedirs(os.path.join(s, 'hf_cfgdir', 'config.json'), exist_ok=True)
    for name, bad in (('hf_rope', {'model_type': 'llama', 'rope_scaling': 'linear'}),
                      ('hf_lmcfg', {'lm_config': 5})):
      os.makedirs(os.path.join(s, name), exist_ok=True)
      shutil.copy(os.path.join(hf, 'model.safetensors'), os.path.join(s, name))
      with open(os.path.join(s, name, 'config.json'), 'w') as f:
        json.dump({**cfg, **bad}, f)
  _prepare_small(s)
  return {'S': s, 'RUN': run, 'HF': hf, 'CORPUS': corpus}


# What _prepare writes into the scratch directory (and the cases' LM_CACHE).
SCRATCH_NAMES = frozenset({
    'badhf', 'badyaml', 'binary', 'blank.txt', 'broken.py', 'cache', 'canaries_bad', 'cc',
    'cfg_cut', 'cfg_dir', 'cfg_list', 'cfg_num', 'corpus', 'damaged', 'empty', 'eta_plan',
    'eta_wall', 'eval_dir', 'five.py', 'foreign', 'full', 'full.json', 'garb', 'hf',
    'hf_cfgdir', 'hf_lmcfg', 'hf_rope', 'latin1.csv', 'metrics_bin', 'nameerr.py', 'nfkc.model',
    'nfkc.vocab', 'no_n.jsonl', 'noeos.model', 'noeos.vocab', 'nolabel.jsonl', 'notype.csv',
    'rep', 'run', 'sp.model', 'sw', 'sw_bin', 'sw_cfglist', 'sw_csvdir', 'sw_mddir',
    'sw_noeval', 'sw_plandir', 'table.jsonl', 'tok'})


def _write(path: str, text: str) -> None:
  with open(path, 'w') as f:
    f.write(text)


def _read_json(path: str):
  with open(path) as f:
    return json.load(f)


def _prepare_small(s: str) -> None:
  """The files of the cases that need no trained run: {S}/eta_* (two-run sweep
  directories, one damaged field each), task YAMLs that do not parse or whose
  data does not, a tokenizer's .vocab, a config returning a number."""
  for name, yaml_text in (('badyaml', 'task: t_badyaml\ndataset_path: [json\n'),
                          ('garb', f'task: t_garb\ndataset_path: json\ndataset_kwargs:\n'
                                   f'  data_files:\n    test: {s}/garb/data.jsonl\n'
                                   'test_split: test\noutput_type: multiple_choice\n'
                                   'doc_to_text: "{{question}}"\ndoc_to_choice: "{{choices}}"\n'
                                   'doc_to_target: "{{answer}}"\n')):
    os.makedirs(os.path.join(s, name), exist_ok=True)
    with open(os.path.join(s, name, 't.yaml'), 'w') as f:
      f.write(yaml_text)
  with open(os.path.join(s, 'garb', 'data.jsonl'), 'w') as f:
    f.write('{"question": "a", "choices": ["b", "c"], "answer": 0}\n{not json\n')
  os.makedirs(os.path.join(s, 'tok'), exist_ok=True)
  with open(os.path.join(s, 'tok', 'f.vocab'), 'w') as f:
    f.write('keep me\n')
  os.makedirs(os.path.join(s, 'rep'), exist_ok=True)
  with open(os.path.join(s, 'rep', 'report'), 'w') as f:  # Where the report directory goes.
    f.write('keep me\n')
  os.makedirs(os.path.join(s, 'cc', 'coord_check.png'), exist_ok=True)  # Where it writes.
  with open(os.path.join(s, 'five.py'), 'w') as f:
    f.write('def get_config(arg=None):\n  return 5\n')
  with open(os.path.join(s, 'table.jsonl'), 'w') as f:  # One finished run.
    f.write('{"name": "a", "status": "done", "N": 1e5, "D": 1e6, "final_loss": 3.0}\n')
  run_rec = {'overrides': {}, 'n': 1000, 'tokens': 10**6, 'compute': 6e9, 'budget': 6e9,
             'design': 'isoflop'}
  for name, plan_a, wall_a in (('eta_wall', {}, 'abc'), ('eta_plan', {'compute': 'abc'}, 5.0)):
    for r in 'ab':  # Two finished runs: a replay's minimum.
      os.makedirs(os.path.join(s, name, 'runs', r), exist_ok=True)
      with open(os.path.join(s, name, 'runs', r, 'result.json'), 'w') as f:
        json.dump({'name': r, 'status': 'done', 'wall_s': wall_a if r == 'a' else 5.0}, f)
    with open(os.path.join(s, name, 'plan.json'), 'w') as f:
      json.dump([{**run_rec, 'name': 'a', **plan_a}, {**run_rec, 'name': 'b'}], f)


def _snapshot(root: str) -> dict[str, str]:
  out = {}
  for d, _, files in os.walk(root):
    for f in files:
      p = os.path.join(d, f)
      with open(p, 'rb') as fh:
        out[p] = hashlib.sha256(fh.read()).hexdigest()
  return out


def run_case(name: str, argv: list[str], want: str, places: dict[str, str],
             run=subprocess.run) -> dict:
  """{'verdict': clear | traceback | other, 'damaged': [paths], 'stderr': ...};
  `run`: subprocess.run or a stand-in with its signature (the tests fork)."""
  argv = [a.format(**places) for a in argv]
  before = _snapshot(places['S'])
  cache = os.path.join(places['S'], 'cache')
  r = run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True,
          env=dict(os.environ, PYTHONPATH=ROOT, LM_CACHE=cache), timeout=600)
  after = _snapshot(places['S'])
  damaged = sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p)
                   and not p.startswith(cache + os.sep))
  err = r.stderr.strip()
  lines = [x for x in err.splitlines() if not x.startswith(('W', 'I')) or 'error' in x]
  if 'Traceback' in err:
    verdict = 'traceback'
  elif (r.returncode == 2 and len(lines) == 1 and lines[0].startswith('error: ')
        and want in lines[0]):
    verdict = 'clear'
  else:
    verdict = 'other'
  return {'name': name, 'verdict': verdict, 'damaged': damaged, 'rc': r.returncode,
          'stderr': err[-400:]}


def main(argv):
  del argv
  from lm import workdir as workdir_lib
  try:
    workdir_lib.fresh_scratch(flags.FLAGS.scratch, 'scratch', SCRATCH_NAMES)
  except workdir_lib.NotWritable as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  places = _prepare(flags.FLAGS.scratch)
  results = []
  for name, args, want in CASES:
    if flags.FLAGS.only in name:
      res = run_case(name, args, want, places)
      results.append(res)
      flag = '' if res['verdict'] == 'clear' and not res['damaged'] else '  <--'
      print(f'{res["verdict"]:9s} {name}{flag}' + (f'\n    {res["stderr"]}' if flag else ''))
  tot = {k: sum(r['verdict'] == k for r in results) for k in ('clear', 'traceback', 'other')}
  damaged = sum(bool(r['damaged']) for r in results)
  print(f'\ncases {len(results)}  clear errors {tot["clear"]}  tracebacks {tot["traceback"]}  '
        f'other failures {tot["other"]}  damaged files {damaged}')
  sys.exit(0 if tot['clear'] == len(results) and not damaged else 1)


if __name__ == '__main__':
  # Flags only when run as a program, so tests can import this module.
  flags.DEFINE_string('only', '', 'Run the cases whose name contains this.')
  flags.DEFINE_string('scratch', '/tmp/lm_bad_inputs', 'Scratch directory (replaced; one it '
                      'made, or a new or empty one).')
  from lm import cli
  app.run(main, flags_parser=cli.parse_flags)
