"""python -m tools.memory --config=configs/llama3_8b.py --devices=64 --config.mesh.fsdp=64

Llama-3-8B's shapes (Grattafiori et al. 2024, "The Llama 3 Herd of Models",
Table 3): 32 layers, d_model 4096, 32 query and 8 KV heads of 128, SwiGLU
MLP 14336, RMSNorm, RoPE with theta 500,000, no biases, untied embeddings,
vocabulary 128,256, context 8192. Written for the memory estimator and for
sharded runs on accelerators: bfloat16 compute, float32 master weights,
scanned layers (one compiled layer: the estimator's command above took 15-26 s
on 2 CPU cores, 2026-11-27..29; on one H100, GPT-2-sized models ran 20-25% faster unrolled,
tools/bench_train) with full rematerialisation, cuDNN flash attention on
GPUs and chunked attention elsewhere (`auto`), chunked loss, and documents
masked within packed windows.
Training it needs a tokenizer of that vocabulary (data.tokenizer=hf with
Llama 3's tokenizer.json); the byte tokenizer only fills the first 259 ids.
"""

from configs import common


def get_config(arg=None):
  common.no_arg(arg)
  c = common.base()
  c.name = 'llama3_8b'
  c.model.update(vocab_size=128_256, d_model=4096, num_layers=32, num_heads=32,
                 num_kv_heads=8, head_dim=128, mlp_dim=14_336, max_len=8192,
                 position='rope', rope_theta=500_000.0, norm='rmsnorm', norm_eps=1e-5,
                 use_bias=False, activation='swiglu', tie_embeddings=False,
                 dtype='bfloat16', param_dtype='float32', scan_layers=True, remat='full',
                 attention='auto', attn_block=512, loss_chunk=512)
  c.data.update(seq_len=8192)
  c.opt.update(lr=3e-4, warmup_steps=2000, schedule='cosine', b2=0.95, weight_decay=0.1)
  c.train.update(batch_size=64, steps=100_000, log_every=10, eval_every=2000,
                 eval_batches=8, checkpoint_every=1000)
  return c
