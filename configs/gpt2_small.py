"""python -m experiments.train --config=configs/gpt2_small.py --workdir=runs/gpt2s

GPT-2 small (Radford et al. 2019): 12 layers, d_model 768, 12 heads, context
1024, GELU, LayerNorm, learned positions, tied embeddings; bf16 compute. With
the byte tokenizer the vocabulary is 259; pass a SentencePiece model for a
GPT-2-sized vocabulary (data.tokenizer=sentencepiece, data.tokenizer_path=...).
"""

from configs import common


def get_config(arg=None):
  common.no_arg(arg)
  c = common.base()
  c.name = 'gpt2_small'
  c.model.update(d_model=768, num_layers=12, num_heads=12, max_len=1024,
                 position='learned', activation='gelu', norm='layernorm',
                 dtype='bfloat16', remat='none',
                 # Unrolled: 20-25% faster steps than nn.scan on one H100 (tools/bench_train);
                 # a run started scanned resumes with --config.model.scan_layers=True.
                 scan_layers=False,
                 # Chunked logits: 1.5 GiB less at batch 8 with GPT-2's vocabulary, for
                 # ~6% of the step (GPT-2 medium, batch 16, one H100); 0 where memory allows.
                 loss_chunk=256)
  c.data.update(seq_len=1024)
  c.opt.update(lr=6e-4, warmup_steps=2000, schedule='cosine', b2=0.95,
               weight_decay=0.1)
  c.train.update(batch_size=512, grad_accum=1, steps=100_000, log_every=50,
                 eval_every=2000, eval_batches=20, checkpoint_every=2000)
  return c
