"""Train-step throughput and MFU against this machine's measured matmul peak.

python -m tools.bench_train [--configs=tiny,small,medium] [--steps=10] [--dtype=float32]
                            [--mesh=DATA,FSDP,TENSOR] [--batch=N]
python -m tools.bench_train --pack=K [--pack_devices=N] [--steps=10]
python -m tools.bench_train --layers_ab [--steps=8]
python -m tools.bench_train --configs=gpt2_medium --dtype=bfloat16 --attention=dot_product
                            [--loss_chunk=256] [--nodocument_mask] [--profile_dir=/tmp/prof]

On accelerators: --configs=gpt2_small --dtype=bfloat16 --mesh=-1,1,1 (all
devices data-parallel) or --mesh=1,-1,1 (FSDP); MFU is then against the
measured bf16 matmul peak (the table in lm/flops.py gives the data-sheet one).

Measures, in one run: for each config, the peak FLOP/s of large square
matmuls (the best of several sizes, measured right before and right after
the config so both numbers see the same machine state), the median step time of the
jitted train step (AdamW included), tokens/s, achieved FLOP/s under the
`exact` convention (lm/flops.py; cross-checked against XLA's cost analysis
in the xla/exact column) and MFU = achieved / measured peak. Shared 2-core
machines are noisy: run it twice before trusting a difference under ~10%.

Measured on this project's 2-core CPU machine (AMD EPYC, 2 cores, fp32),
2026-11-22, `python -m tools.bench_train` (10 timed steps), two consecutive runs
after lm/host.py (CPU-only runs keep freed host memory):

  config  step_ms  tokens/s  GFLOP/step  GFLOP/s  peak GFLOP/s   MFU   target
  tiny       76.1     53820       12.88    169.3         437.1  38.7%      -
  small     447.6      9150       90.19    201.5         431.7  46.7%    35%
  medium   2104.0      1947      518.6     246.5         427.0  57.7%    45%
  tiny       84.5     48450       12.88    152.4         436.6  34.9%      -
  small     489.6      8365       90.19    184.2         438.9  42.0%    35%
  medium   2328.0      1760      518.6     222.8         430.5  51.8%    45%

A third run, then one with `--nokeep_freed_memory` (lm/host.py not applied)
right after it:

  config  step_ms  MFU    faults/step     --nokeep: step_ms  MFU    faults/step
  tiny       80.3  39.0%           0                  115.6  26.2%       42631
  small     444.4  48.1%           0                  549.9  37.1%      149031
  medium   2484.0  48.7%       45969                 2857.0  42.7%      458128

(medium's 46K is one step of heap growth among the ten.) Shared 2-core
machines drift by ~10% between runs.

2026-11-25, A/B again on a machine of the same kind (kernel 6.18, THP
"madvise", 4 KiB pages; this window's measured peak was about half of the
runs above, ~213 GFLOP/s, so compare MFU, not step times, across windows):

  config  step_ms  MFU    faults/step     --nokeep: step_ms  MFU    faults/step
  tiny      129.4  46.9%           0                  185.6  32.3%       42540
  small     740.2  56.9%       15048                  964.9  43.5%      149138
  medium   3680.0  66.5%       90918                 4506.0  53.4%      464836

How many faults the default costs depends on the kernel, not on our code:
here it mapped every 4 KiB page afresh (as above), but a kernel that maps
larger folios or faults around takes far fewer faults for the same memory
(tests/test_host.py's 256 MB probe: 65,536 faults per call here, 5,120 on
another host of this kind, ~256 with glibc's huge-page tunable), so the
column and the saving it explains vary from host to host.

Where the time went: XLA:CPU allocates each step's temporaries afresh (1.9 GB
for medium, 0.57 GB for small; `compiled.memory_analysis()`), and glibc
serves blocks that large with mmap and unmaps them on free, so every step
page-faulted all of them back in: ~470K minor faults per medium step, about
0.5 s of it. The faults/step column counts them (resource.getrusage); it
should read ~0 once the heap has grown to its steady state. This had also
made the batched attention matmuls look ~3x slower than they are: a
64x512x64x512 einsum takes 26 ms with a fresh 64 MB output and 8 ms when its
pages are mapped, while an in-place 64 MB update runs at ~55 GB/s.

One NVIDIA H100 80GB HBM3 (the device tool's nvidia-h100-x1; jax 0.11.2,
flax 0.12.10 as installed there), 2026-11-25, bfloat16 compute with float32
parameters, 10 timed steps, `bash tools/gpu_check.sh` and then the runs it
lists by hand; vocab 50304, seq 1024. MFU is against the measured bf16 matmul
peak (8192^3 random-data products: 746-772 TFLOP/s) and, in "sheet", against
the data sheet's 989 TFLOP/s dense peak. "temp" is XLA's compiled temporary
buffer; "peak" the allocator's peak (first block: one process ran all four
paths, so its peak column is the largest of them, 28.2 GB).

  config       attention    layers  batch  loss_chunk  step_ms  tokens/s  MFU    sheet  temp GiB  peak GiB
  gpt2_small   xla          scan    16     0           111.9    146,400   15.4%  11.9%  26.1      -
  gpt2_small   dot_product  scan    16     0            62.3    263,100   27.8%  21.4%  16.0      -
  gpt2_small   chunked      scan    16     0           172.4     95,050    9.9%   7.7%  16.0      -
  gpt2_small   pallas       scan    16     0            65.8    249,100   26.2%  20.3%  16.0      -
  (second call, each run its own process)
  gpt2_small   dot_product  scan    16     0            62.3    262,800   28.3%  21.4%  16.0      17.4
  gpt2_small   dot_product  unroll  16     0            50.3    325,500   34.5%  26.5%  12.1      13.5
  gpt2_small   dot_product  scan    32     256         129.5    253,100   26.7%  20.6%  23.0      24.3
  gpt2_medium  dot_product  scan    16     256         154.4    106,100   31.8%  24.6%  28.5      32.5
  gpt2_medium  dot_product  unroll  16     256         117.5    139,500   41.7%  32.3%  17.9      21.8
  gpt2_medium  pallas       scan    16     256         164.6     99,510   29.6%  23.1%  28.5      32.5
  gpt2_medium  xla          scan     8     256         153.0     53,540   16.0%  12.4%  29.2      33.2

The chunked rows ran the first version of that path (a checkpointed scan per
query block, commit 3ea13ce); its custom-VJP version (FlashAttention-2's
backward) came after the device time was spent and was not run on the GPU.
gpt2_medium (355M) with xla attention at batch 16 and whole logits ran out of
memory (one 59.4 GiB temporary). The issue's goal of 50% MFU for the ~350M
config is not met: 41.7% of the measured peak (32.3% of the data sheet) is the
best measured. Unrolled layers beat nn.scan by 20-25% on the GPU (scan's
stacked activations cost copies), so the GPU configs want
model.scan_layers=False. What limits the rest was not measured (no profile
was taken in the device time this session had); the xla/exact column reads
~0 on GPUs because XLA's cost analysis does not count cuDNN's or Triton's
custom calls.

2026-11-26, another nvidia-h100-x1 machine (jax 0.11.2), `bash
tools/gpu_check.sh` (whose GPT-2 medium rows ran past their 90-second limit,
compilation included, and printed nothing) and one row by hand after it, each
row its own process, unrolled layers, bfloat16, batch 16, loss_chunk 256, with
XLA_FLAGS=--xla_gpu_enable_triton_gemm=false (cuBLAS for every matmul):

  config       attention    step_ms  tokens/s  MFU    sheet  temp GiB  peak GiB
  gpt2_small   dot_product     57.0   287,400  29.8%  23.4%   7.8       9.2
  gpt2_medium  dot_product    121.6   134,700  39.9%  31.2%  17.8      21.8

Turning off Triton's GEMM fusions did not help: gpt2_medium read 39.9% here
against 41.7% with XLA's defaults on 2026-11-25 (another machine, so not an
A/B in one run; read it as no gain). 50% MFU for the 350M config is still not
met.

2026-11-27, another nvidia-h100-x1 machine (jax 0.11.2, flax 0.12.10), `bash
tools/gpu_check.sh` with TEST_K=chunked TEST_S=60 ROW_S=160 PACK_S=0 and the
rows below (the command is in this session's note), each row its own process,
unrolled layers, bfloat16, document masking on (4 documents per window),
XLA_FLAGS=--xla_gpu_per_fusion_autotune_cache_dir=/tmp/atc (so a row reuses
earlier rows' GEMM autotuning; "compile s" is lower+compile of the step). The
measured matmul peak read 766-787 TFLOP/s:

  config       attention    batch  loss_chunk  step_ms  tokens/s  MFU    sheet  temp GiB  peak GiB  compile s
  gpt2_medium  dot_product  16     256          120.1   136,400  39.7%  31.6%  17.9      21.8      38.0
  gpt2_medium  dot_product  16     0            113.0   145,000  42.3%  33.6%  21.9      25.9      29.6
  gpt2_medium  dot_product  32     0            215.0   152,400  45.0%  35.3%  43.2      47.2      40.0
  gpt2_small   dot_product  16     256           57.6   284,400  29.9%  23.1%   7.8       9.2      21.1

Where the first row's time went (`--profile_dir`, 3 traced steps, GPU kernels
summed per step; 110.3 of its 120.1 ms are kernels):

  kind               ms/step  share    largest kernels (ms/step)
  matmul               51.26  46.5%    cuBLAS nvjet bf16 GEMMs; TF32 sm90_xmma f32 GEMMs 6.29 + 3.78
  other fusion         40.46  36.7%    XLA's elementwise/reduction fusions (input_add_reduce_fusion_7: 4.26)
  attention (cuDNN)    18.12  16.4%    flash backward 11.06, forward 4.92
  copy/memset           0.46   0.4%

The two float32 (TF32) GEMMs, 8.4% of the step (9.1% of its kernel time),
were the LM head's backward:
the logits are a bf16 matmul with a float32 result, and plain autodiff handed
the float32 cotangent to both transposed matmuls. model.einsum_f32 now casts
that cotangent to bfloat16 (as every bf16 layer's output already is), and the
same for the xla attention path's scores; tests/test_model.py checks that no
float32 matmul is left in the bf16 gradient. The step time after that change
was not measured on a GPU (the session's device time was spent). Whole logits
(loss_chunk 0) saved 6% here, and batch 32 another 6%: 45.0% of the measured
peak is the best measured; the 50% goal for the 350M config is still not met.
gpt2_small with `chunked` attention (the custom-VJP version) and gpt2_medium
without document masking ran past the rows' limits and were not measured; the
chunked attention tests (-k chunked) printed nothing within their 60 s on the
GPU, so that path's GPU agreement is not verified either.

2026-11-27 (later), another nvidia-h100-x1 machine (jax 0.11.2, flax 0.12.10),
after model.einsum_f32: `TEST_K=chunked TEST_S=110 ROW_S=130 PACK_S=0 ROWS=...
bash tools/gpu_check.sh` with the rows below (same flags as above), each row
its own process; the batch-32 row, the first, with an empty autotuning cache,
ran past its 130 s there (why was not measured) and was rerun alone with
ROW_S=180 (it then took under 160 s, setup included), the batch-48 row after
it. Measured matmul peak 769-784 TFLOP/s:

  config       attention    batch  loss_chunk  step_ms  tokens/s  MFU    sheet  temp GiB  peak GiB  compile s
  gpt2_medium  dot_product  16     256          113.9   143,800  42.0%  33.3%  17.8      21.8      38.9
  gpt2_medium  dot_product  32     0            200.2   163,700  48.4%  37.9%  43.2      47.1      38.8
  gpt2_medium  dot_product  48     0            296.0   166,000  49.1%  38.5%  52.8      56.7      45.8
  gpt2_small   chunked      16     256          100.1   163,700  17.1%  13.3%   8.6       9.9      40.1

Casting the LM head's cotangent to bfloat16 took the batch-16 row from 120.1
to 113.9 ms (5%) and batch 32 from 215.0 to 200.2 ms (7%; another machine,
so not an A/B in one run). The best measured for the 355M config is 49.1% of
the measured peak (38.5% of the data sheet) at batch 48: the 50% goal is
still not met. The chunked path's custom VJP (pure JAX, no kernel) runs
gpt2_small at 100.1 ms, 1.7x the cuDNN path's 57.6 ms and 1.7x faster than
its first version (172.4 ms, with scanned layers); both of those were
measured on earlier machines, so read the ratios as rough. The GPU test runs had
stopped in collection: tests/conftest.py set a CPU-only XLA flag that this
jaxlib does not know, and XLA aborts on unknown flags; with conftest skipped
(`--noconftest`) all 22 attention agreement tests pass on the H100
(`pytest tests/test_attention.py`: 22 passed in 53.6 s; the chunked ones 8
passed in 27.2 s), and conftest now sets the CPU flags on CPU runs only.

Packed small models on the same H100, `python -m tools.bench_train --pack=8
--steps=5` (the d_model 64 and 128 rows ran past the script's limit):

  d_model  params   seq ms  packed ms  seq tokens/s  packed tokens/s  speed-up
  16        13,760   11.18      2.434     2,932,000       13,460,000    4.59x
  32        65,216   19.14      8.424     1,712,000        3,890,000    2.27x

On the GPU a d_model-16 step is dispatch-bound (1.4 ms per member run alone)
and packing 8 of them gives 4.6x; at d_model 32 2.3x.

Long context on CPU (item 6 of the attention issue), 2026-11-25, this 2-core
machine, `python -m tools.bench_train --configs=long --attention=A
--seq_len=L --steps=3`, one process per row ("long": d_model 64, 2 layers, 8
heads of 8, batch 1, vocab 512, attn_block 128; "temp" is the compiled step's
XLA temporaries, "RSS" the process's peak resident memory, which also holds
the JAX runtime and the compiler):

  attention  seq    step_ms  temp MiB  RSS MiB
  xla        2048     213.1     269.1      972
  chunked    2048     225.1      39.1      933
  chunked    8192    2519       159.5     2180
  xla        8192    2966      3643       8631
  chunked    8192    4663       189.6     1005   (--attn_block=512)

The step's working memory at 8192 tokens with `chunked` (160 MiB) is below
`xla`'s at 2048 (269 MiB) and 23x below xla's at 8192. The process peak is
not: compiling 64 unrolled query blocks costs more than the step (2180 MiB),
and with 512-token blocks (16 of them) it is 1005 MiB, still a little above
xla at 2048 (972 MiB, most of it the runtime).

Packed training (lm/pack.py), 2026-11-26, this 2-core machine,
`python -m tools.bench_train --pack=8 --steps=10` (4 min 41 s): 8 members of
the main job's shape (seq 64, batch 64, d_model/8 layers up to 4, heads of 8)
one after another vs one vmapped step (the step every run uses, which reads
its schedule as inputs):

  d_model  params   seq ms  packed ms  seq tokens/s  packed tokens/s  seq GFLOP/s  packed GFLOP/s  speed-up
  16        13,760   153.8      166.8       213,100          196,400        20.94           19.31     0.92x
  32        65,216   471.7      515.0        69,470           63,630        32.44           29.71     0.92x
  64       228,736  1361       1283          24,080           25,550        36.69           38.92     1.06x
  128      850,688  2704       2841          12,120           11,530        65.51           62.35     0.95x
  packed speed-up at d_model<=32: 0.92x

(2026-11-25, d_model/8 layers without the cap of 4: 0.96x, 0.78x, 0.75x for
16-64; d_model 128 with 16 layers was killed for memory.) On XLA:CPU packing
does not pay: a d_model-16 step is bound by its elementwise work (the
attention softmax and its gradient are ~40% of it in a profile), not by
dispatch, and the vmapped step's batched matmuls run no faster than the
members' one by one. The issue's 4x target is not met here; what does pay on
2 cores is two single-threaded processes (sweep.workers=2, ~1.4x) and sharing
one compiled step per shape. Packing is the building block for accelerators,
where it was not measured.

The member axis split over the 2 cores as 2 XLA host devices (2026-11-26,
`python -m tools.bench_train --pack=8 --steps=10 --pack_devices=2`, 3 min 36 s;
each device then runs its members' ops on its own thread, as a pod's device
groups each train their members):

  d_model  K  devices  params   seq ms  packed ms  seq GFLOP/s  packed GFLOP/s  speed-up
  16       8  2         13,760   287.1      170.4        11.22           18.91     1.69x
  32       8  2         65,216   635.9      478.1        24.06           32.01     1.33x
  64       8  2        228,736  1139       1251          43.84           39.93     0.91x
  128      8  2        850,688  2793       2786          63.44           63.59     1.00x
  packed speed-up at d_model<=32: 1.33x

The one-after-another baseline moves by more than the gain between windows:
right after, bench_pack(d, 8, 10, n) in one process per n read, d16: 204.9 ->
190.5 ms (1 device, 1.08x) and 172.5 -> 137.4 ms (2 devices, 1.26x); d32:
668.4 -> 635.7 ms (1.05x) and 535.0 -> 544.7 ms (0.98x). Two devices give at
most what two worker processes give (sweep.workers=2, ~1.4x); 4x on 2 cores is
not in reach of packing.

2026-11-27 (third session), another nvidia-h100-x1 machine (jax 0.11.2),
after the packed-document cuDNN path (model.attn_max_docs > 0: each window's
documents go to cuDNN as ragged sequences, offsets and lengths, instead of a
dense B x 1 x L x S mask that cuDNN takes as a bias and differentiates).
`bash tools/gpu_check.sh` with TEST_S=80 ROW_S=160 PACK_S=0 and three
batch-48 rows (packed, dense, no document mask): on the GPU, with
tests/conftest.py, 22 attention tests passed (every agreement test, both
packed-document ones included, before the 80 s ran out; the document-isolation
and end-to-end ones were not reached), and all three rows ran past their 160 s
with an empty autotuning cache and printed nothing. One row then ran alone
(`XLA_FLAGS=--xla_gpu_per_fusion_autotune_cache_dir=/tmp/atc python3 -m
tools.bench_train --dtype=bfloat16 --steps=5 --nokeep_freed_memory
--configs=gpt2_medium --attention=dot_product --batch=48 --loss_chunk=0
--attn_max_docs=16`, 202.5 s in all, compile 69.3 s):

  config       attention    batch  max_docs  step_ms  tokens/s  MFU    sheet  temp GiB  peak GiB
  gpt2_medium  dot_product  48     16         296.0   166,100  52.4%  38.5%  54.4      58.3

The step time equals the dense-mask row's 296.0 ms above (another machine,
not an A/B in one run), and the temporaries grew by 1.6 GiB. Two causes are
likely, neither measured apart: cuDNN keeps softmax statistics for each of
the 16 document slots (B x 16 x heads x L float32 a layer, 1.1 GiB over 24
layers), and the lax.cond that falls back to the dense mask keeps both
branches' residuals for the gradient (the dense one's zero-filled). The 52.4% is
against this window's measured matmul peak, 726 TFLOP/s, 6-7% below the
769-784 TFLOP/s of the runs above; against the data sheet it is 38.5%, as
before. So the code did not move the 355M step: the 50% goal is not shown to
be met, and model.attn_max_docs stays 0 (the dense mask) by default. Where
the batch-48 step's time goes was not measured (its profile row did not finish).

nn.scan against unrolled layers at the main job's shapes (2026-11-27, this
2-core machine, one XLA thread as each sweep worker runs, `XLA_FLAGS=
"--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" python -m
tools.bench_train --layers_ab --steps=8`, 4 min; 6 alternating rounds of 8 steps;
the byte vocabulary padded to 384 as in the main job;
compile s is one lower+compile of the train step, no persistent cache):

  d_model  layers  scan ms  unrolled ms  speed-up  scan compile s  unrolled compile s
  8        1         9.73     10.0        0.97       6.98            4.68
  16       2        30.2      25.8        1.17       7.69            5.35
  24       3        65.6      50.1        1.31       8.19            8.78
  32       4       112        85.4        1.31       7.43            9.69
  40       5       183       151          1.21       9.72           10.3
  48       6       262       203          1.29       9.64           13.6

The scanned step stacks every layer's saved activations into [layers, ...]
buffers (zero-filled broadcasts, then copies and dynamic-update-slices in the
profile) that the unrolled step never makes; unrolled compiles take longer
from 3-4 layers on. (A run with vocabulary 256, just before: 1.00, 1.22, 1.27,
1.29, 1.20, 1.33x.) configs/isoflop_tiny.py therefore trains unrolled: the main
job's train steps went from 731 s to 595 s summed over its 15 runs (fresh
clones, 2026-11-27, README). The project default stays nn.scan (one compiled
layer for deep models); flipping it left the test suite's time unchanged
(755 s against 749-758 s).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import resource
import statistics
import time

from absl import app, flags

_CONFIGS = flags.DEFINE_string('configs', 'tiny,small,medium', 'Comma-separated names.')
_STEPS = flags.DEFINE_integer('steps', 10, 'Timed steps per config (after 2 warm-up steps).',
                              lower_bound=1)
_DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'Compute dtype.')
_SCAN = flags.DEFINE_bool('scan_layers', False, 'nn.scan over layers.')
_MESH = flags.DEFINE_string('mesh', '', 'data,fsdp,tensor sizes (-1: the rest); empty: 1 device.')
_BATCH = flags.DEFINE_integer('batch', 0, 'Global batch override (0: the config\'s).')
_ATTENTION = flags.DEFINE_string('attention', 'xla',
                                 'Comma-separated model.attention paths, each benchmarked.')
_LOSS_CHUNK = flags.DEFINE_integer('loss_chunk', 0, 'model.loss_chunk (0: whole logits).')
_SEQ = flags.DEFINE_integer('seq_len', 0, 'Sequence length override (0: the config\'s).')
_BLOCK = flags.DEFINE_integer('attn_block', 128, 'model.attn_block (query/key block length).')
_REMAT = flags.DEFINE_string('remat', 'none', 'model.remat policy.')
_DOC_MASK = flags.DEFINE_bool('document_mask', True, 'data.document_mask: 4 documents per '
                              'window whose attention stays within each (as pre-training runs).')
_MAX_DOCS = flags.DEFINE_integer('attn_max_docs', 0, 'model.attn_max_docs: dot_product on '
                                 'Hopper+ GPUs runs document masks with cuDNN\'s packed '
                                 'kernel up to this many documents per window (0: dense mask).',
                                 lower_bound=0)
_PACK = flags.DEFINE_integer('pack', 0, 'K > 0: K packed members (lm/pack.py) vs the same K '
                             'run one after another, at d_model 16, 32, 64 and 128.',
                             lower_bound=0)
_PACK_DEVICES = flags.DEFINE_integer(
    'pack_devices', 1, 'With --pack on CPU: split the packed step\'s member axis over this '
    'many CPU devices (XLA\'s host device count; lm/pack.member_mesh), as a sweep on a pod '
    'splits it over its devices; the one-after-another runs keep one device.', lower_bound=1)
_LAYERS_AB = flags.DEFINE_bool(
    'layers_ab', False, 'nn.scan vs unrolled layers at the main job\'s shapes (d_model 8-48, '
    'd_model/8 layers), timed in alternating rounds in one process.')
_PROFILE = flags.DEFINE_string(
    'profile_dir', '', 'Non-empty: trace 3 more steps of each config with jax.profiler into '
    'this folder and print where the device time went (kernels by name and by kind).')
_KEEP = flags.DEFINE_bool('keep_freed_memory', True,
                          'lm/host.py\'s allocator setting, as the entry points apply it; '
                          '--nokeep_freed_memory measures without it.')

# name: (d_model, layers, heads, seq_len, batch, vocab); learned positions, GELU,
# tied embeddings. gpt2_small/gpt2_medium are GPT-2's 124M and 350M shapes
# (vocab 50257 padded to 50304, a multiple of 128).
CONFIGS = {
    'tiny': (128, 2, 4, 128, 32, 512),
    'small': (256, 4, 4, 256, 16, 512),
    'medium': (512, 6, 8, 512, 8, 512),
    'long': (64, 2, 8, 2048, 1, 512),  # Many small heads: attention memory dominates.
    'gpt2_small': (768, 12, 12, 1024, 8, 50304),
    'gpt2_medium': (1024, 24, 16, 1024, 8, 50304),
}


def check_names(flag: str, value: str) -> None:
  """Exits 2 in one line if the comma-separated --flag names a config not in CONFIGS."""
  unknown = [n for n in value.split(',') if n not in CONFIGS]
  if unknown:
    print(f'error: --{flag}={value}: {", ".join(unknown)} not among {", ".join(CONFIGS)}',
          file=sys.stderr)
    sys.exit(2)


def measure_peak(dtype: str, seconds: float = 2.0) -> tuple[float, int]:
  """Best FLOP/s of chained n x n matmuls over a few n."""
  import jax
  import jax.numpy as jnp
  best, best_n = 0.0, 0
  sizes = (512, 1024, 2048) if jax.devices()[0].platform == 'cpu' else (4096, 8192)
  for n in sizes:
    # Random data (constant or zero operands run faster than real ones on GPUs),
    # scaled by 1/sqrt(n) so the chained products stay O(1).
    a = (jax.random.normal(jax.random.key(n), (n, n), jnp.float32) / n ** 0.5).astype(dtype)
    f = jax.jit(lambda x, a=a: x @ a @ a @ a @ a)
    x = f(a).block_until_ready()
    t_end = time.perf_counter() + seconds / 3
    while time.perf_counter() < t_end:
      t0 = time.perf_counter()
      x = f(x).block_until_ready()
      fl = 4 * 2 * n ** 3 / (time.perf_counter() - t0)
      if fl > best:
        best, best_n = fl, n
  return best, best_n


def bench_config(name: str, dtype: str, scan: bool, mesh_arg: str = '', batch: int = 0,
                 attention: str = 'xla', loss_chunk: int = 0, remat: str = 'none',
                 seq_len: int = 0, attn_block: int = 128, document_mask: bool = True,
                 attn_max_docs: int = 0):
  """The validated run config of one benchmark row; a ConfigError names the
  flag (or config field) that cannot work."""
  from lm import config as config_lib
  d, layers, heads, L, B, V = CONFIGS[name]
  L = seq_len or L
  if document_mask and 0 < L < 4:
    raise config_lib.ConfigError(f'--seq_len={L}: the document mask puts 4 documents in each '
                                 'window, so it needs a length >= 4 (or --nodocument_mask)')
  try:
    sizes = [int(x) for x in mesh_arg.split(',')] if mesh_arg else [1, 1, 1]
  except ValueError:
    sizes = []
  if len(sizes) != 3:
    raise config_lib.ConfigError(f'--mesh={mesh_arg}: give three comma-separated sizes '
                                 'DATA,FSDP,TENSOR (-1: the rest), e.g. -1,1,1')
  cd = {'model': dict(vocab_size=V, d_model=d, num_layers=layers, num_heads=heads,
                      max_len=L, position='learned', activation='gelu', dtype=dtype,
                      scan_layers=scan, attention=attention, loss_chunk=loss_chunk, attn_block=attn_block,
                      remat=remat, attn_max_docs=attn_max_docs),
        'data': dict(seq_len=L, document_mask=document_mask), 'opt': dict(warmup_steps=10),
        'train': dict(batch_size=batch or B, steps=1000, progress=False),
        'mesh': dict(data=sizes[0], fsdp=sizes[1], tensor=sizes[2])}
  return config_lib.from_configdict(cd)


def bench(name: str, dtype: str, steps: int, scan: bool, mesh_arg: str = '',
          batch: int = 0, attention: str = 'xla', loss_chunk: int = 0,
          remat: str = 'none', seq_len: int = 0, attn_block: int = 128,
          document_mask: bool = True, profile_dir: str = '', attn_max_docs: int = 0) -> dict:
  import jax
  import numpy as np

  from lm import flops, train
  c = bench_config(name, dtype, scan, mesh_arg, batch, attention, loss_chunk, remat, seq_len,
                   attn_block, document_mask, attn_max_docs)
  m, B, L = c.model, c.train.batch_size, c.data.seq_len
  t = train.build(c, jax.devices() if mesh_arg else jax.devices()[:1])
  mesh = t.mesh
  with t.context():
    state = t.init()
    rng = np.random.default_rng(1)  # Random ids; weights and masks all ones.

    def row(k, a):  # Document masking: 4 documents per window.
      if k == 'segments':
        return np.broadcast_to(np.arange(a.shape[1]) * 4 // a.shape[1], a.shape)
      if k == 'positions':
        return np.broadcast_to(np.arange(a.shape[1]) % (a.shape[1] // 4), a.shape)
      if np.issubdtype(a.dtype, np.integer):
        return rng.integers(0, m.vocab_size, a.shape)
      return np.ones(a.shape, a.dtype)

    batch = {k: jax.device_put(np.asarray(row(k, a), a.dtype), t.batch_shardings[k])
             for k, a in t.abstract_batch().items()}
    t0 = time.perf_counter()
    compiled = t.train_step.lower(state, batch, t.sched).compile()
    compile_s = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  temp_mb = getattr(mem, 'temp_size_in_bytes', 0) / 2 ** 20
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  xla_flops = float(cost.get('flops', 0.0))
  step = compiled
  for _ in range(2):
    state, metrics = step(state, batch, t.sched)
  jax.block_until_ready(metrics)
  times, faults0 = [], resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  for _ in range(steps):
    t0 = time.perf_counter()
    state, metrics = step(state, batch, t.sched)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t0)
  faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0) / steps
  if profile_dir:
    with jax.profiler.trace(profile_dir):
      for _ in range(3):
        state, metrics = step(state, batch, t.sched)
      jax.block_until_ready(metrics)
  stats = jax.devices()[0].memory_stats() or {}
  # GPU/TPU: the allocator's peak; CPU: the process's peak resident memory
  # (ru_maxrss, KiB; over the whole process, so run one config per process).
  peak_mb = stats.get('peak_bytes_in_use', 0) / 2 ** 20
  peak_mb = peak_mb or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 10
  dt = statistics.median(times)
  fl = flops.train_flops_per_token(m, L, 'exact') * B * L
  return {'config': name, 'attention': attention, 'temp MiB': temp_mb,
          'seq': L, 'peak MiB': peak_mb, 'devices': mesh.size, 'params': flops.param_counts(m)['total'],
          'tokens/step': B * L,
          'step_ms': dt * 1e3, 'tokens/s': B * L / dt, 'GFLOP/step': fl / 1e9,
          'xla/exact': xla_flops * mesh.size / fl, 'GFLOP/s': fl / dt / 1e9,  # XLA: per device.
          'faults/step': round(faults), 'compile s': compile_s}


def kernel_kind(name: str) -> str:
  """A device kernel's kind, by the names cuBLAS, cuDNN, Triton and XLA give them."""
  n = name.lower()
  if any(k in n for k in ('cudnn', 'fmha', 'flash')):
    return 'attention (cuDNN)'
  if any(k in n for k in ('gemm', 'xmma', 'nvjet', 'cutlass', 'cublas', 'matmul', 'dot')):
    return 'matmul'
  if 'triton' in n:
    return 'triton fusion'
  if 'memcpy' in n or 'memset' in n:
    return 'copy/memset'
  return 'other fusion'


def profile_table(profile_dir: str, steps: int = 3, top: int = 20) -> None:
  """Device time per step from the newest trace under profile_dir: by kind and
  the `top` kernels, summed over the first GPU's stream lines (one device of a
  mesh) or, without a GPU, the host's XLA op lines."""
  import glob

  from jax.profiler import ProfileData
  paths = glob.glob(os.path.join(profile_dir, '**', '*.xplane.pb'), recursive=True)
  if not paths:
    raise FileNotFoundError(f'no *.xplane.pb trace under {profile_dir}')
  path = max(paths, key=os.path.getmtime)
  data = ProfileData.from_file(path)
  plane = data.find_plane_with_name('/device:GPU:0')
  gpu = plane is not None
  per_name: dict[str, list[float]] = {}
  for line in (plane or data.find_plane_with_name('/host:CPU')).lines:
    if gpu and not line.name.startswith('Stream'):
      continue  # XLA's derived 'XLA Ops'/'XLA Modules' lines repeat the streams' time.
    if not gpu and 'XLA Ops' not in line.name and 'tf_XLA' not in line.name:
      continue
    for e in line.events:
      if e.name.startswith('ThunkExecutor'):
        continue  # CPU: the wrapper around each op's own event.
      c = per_name.setdefault(e.name, [0, 0.0])
      c[0] += 1
      c[1] += e.duration_ns / 1e6
  total = sum(c[1] for c in per_name.values()) / steps
  kinds: dict[str, float] = {}
  for n, c in per_name.items():
    k = kernel_kind(n)
    kinds[k] = kinds.get(k, 0.0) + c[1] / steps
  print(f'\nprofile {path}: {total:.2f} ms of device kernels per step')
  print('| kind | ms/step | share |\n|---|---|---|')
  for k, ms in sorted(kinds.items(), key=lambda kv: -kv[1]):
    print(f'| {k} | {ms:.2f} | {100 * ms / max(total, 1e-9):.1f}% |')
  print('| kernel | calls/step | ms/step | share |\n|---|---|---|---|')
  for n, c in sorted(per_name.items(), key=lambda kv: -kv[1][1])[:top]:
    print(f'| {n[:90]} | {c[0] / steps:g} | {c[1] / steps:.3f} | '
          f'{100 * c[1] / steps / max(total, 1e-9):.1f}% |')


def main_job_shape(d: int, layers: int, **model) -> dict:
  """A config dict of the main job's shape (configs/isoflop_tiny: seq 64, batch
  64, byte vocabulary padded to 384, heads of 8, learned positions, GELU) at
  d_model d."""
  return {'model': dict(vocab_size=384, d_model=d, num_layers=layers,
                        num_heads=max(d // 8, 1), max_len=64, position='learned',
                        activation='gelu', attention='xla', **model),
          'data': dict(seq_len=64, document_mask=False), 'opt': dict(warmup_steps=10),
          'train': dict(batch_size=64, steps=1000, progress=False), 'mesh': dict(data=1)}


def print_row(r: dict, cols: list[str], fmt: str = '.4g') -> None:
  print('| ' + ' | '.join(f'{r[k]:{fmt}}' if isinstance(r[k], float) else str(r[k])
                          for k in cols) + ' |', flush=True)


def bench_pack(d: int, K: int, steps: int, n_devices: int = 1) -> dict:
  """Aggregate throughput of K members of the main job's shape (seq 64, batch
  64, byte vocabulary, d_model/8 layers up to 4, heads of 8) trained one after
  another (one jitted step each) and packed (one vmapped step for all, its
  member axis split over n_devices)."""
  import flax.linen as nn
  import jax
  import numpy as np

  from lm import config as config_lib
  from lm import flops, pack, train
  L, B = 64, 64
  configs = []
  for k in range(K):
    ck = config_lib.from_configdict(main_job_shape(d, min(max(d // 8, 1), 4)))
    configs.append(dataclasses.replace(
        ck, name=f'm{k}', opt=dataclasses.replace(ck.opt, lr=3e-3 * 2 ** (k % 4 - 2)),
        train=dataclasses.replace(ck.train, seed=k)))
  rng = np.random.default_rng(0)
  batches = [{'tokens': rng.integers(0, 384, (B, L + 1)).astype(np.int32)} for _ in range(K)]
  # One after another: each member's own jitted step.
  t = train.build(configs[0], jax.devices()[:1])
  with t.context():
    states = [t.init() for _ in range(K)]
    step = t.train_step.lower(states[0], batches[0], t.sched).compile()
    for _ in range(2):
      states = [step(s, b, t.sched)[0] for s, b in zip(states, batches)]
    jax.block_until_ready(states)
    seq = []
    for _ in range(steps):
      t0 = time.perf_counter()
      outs = [step(s, b, t.sched) for s, b in zip(states, batches)]
      jax.block_until_ready(outs)
      seq.append(time.perf_counter() - t0)
      states = [o[0] for o in outs]
  # Packed.
  p = pack.Pack(tuple(configs))
  mm = pack.member_mesh(K, jax.devices()[:n_devices])
  pstep = pack.make_step(p)
  pstate, scal, pbatch = pack.on_members(
      (pack.init(p), p.scalars(), pack.stack_batches(batches)), mm)
  with jax.set_mesh(mm), nn.logical_axis_rules(()):  # As lm/pack.train_pack runs it.
    for _ in range(2):
      pstate, m = pstep(pstate, pbatch, scal)
    jax.block_until_ready(m)
    packed = []
    for _ in range(steps):
      t0 = time.perf_counter()
      pstate, m = pstep(pstate, pbatch, scal)
      jax.block_until_ready(m)
      packed.append(time.perf_counter() - t0)
  fl = flops.train_flops_per_token(configs[0].model, L, 'exact') * B * L * K
  t_seq, t_pack = statistics.median(seq), statistics.median(packed)
  return {'d_model': d, 'K': K, 'devices': mm.size, 'params': flops.param_counts(configs[0].model)['total'],
          'seq ms': t_seq * 1e3, 'packed ms': t_pack * 1e3,
          'seq tokens/s': K * B * L / t_seq, 'packed tokens/s': K * B * L / t_pack,
          'seq GFLOP/s': fl / t_seq / 1e9, 'packed GFLOP/s': fl / t_pack / 1e9,
          'speed-up': t_seq / t_pack}


def bench_layers_ab(d: int, steps: int, rounds: int = 6) -> dict:
  """Median step time of the main job's shape at d_model d (configs/isoflop_tiny:
  seq 64, batch 64, byte vocabulary padded to 384, d/8 layers, heads of 8) with nn.scan and
  with unrolled layers, alternating rounds of `steps` steps so both see the
  same machine state."""
  import jax
  import numpy as np

  from lm import config as config_lib
  from lm import train
  L, B = 64, 64
  batch = {'tokens': np.random.default_rng(0).integers(0, 256, (B, L + 1)).astype(np.int32)}
  trainers, steps_of, states, compile_s = {}, {}, {}, {}
  times: dict[bool, list[float]] = {True: [], False: []}
  for scan in (True, False):
    t = trainers[scan] = train.build(
        config_lib.from_configdict(main_job_shape(d, d // 8, scan_layers=scan)),
        jax.devices()[:1])
    with t.context():
      states[scan] = t.init()
      t0 = time.perf_counter()
      steps_of[scan] = t.train_step.lower(states[scan], batch, t.sched).compile()
      compile_s[scan] = time.perf_counter() - t0
  for _ in range(rounds):
    for scan in (True, False):
      t, step = trainers[scan], steps_of[scan]
      with t.context():
        for i in range(steps + 2):  # Two warm-up steps per round.
          t0 = time.perf_counter()
          states[scan], m = step(states[scan], batch, t.sched)
          jax.block_until_ready(m)
          if i >= 2:
            times[scan].append(time.perf_counter() - t0)
  ms = {scan: statistics.median(ts) * 1e3 for scan, ts in times.items()}
  return {'d_model': d, 'layers': d // 8, 'scan ms': ms[True], 'unrolled ms': ms[False],
          'speed-up': ms[True] / ms[False], 'scan compile s': compile_s[True],
          'unrolled compile s': compile_s[False]}


# The per-config benchmark's flags; --pack and --layers_ab time fixed shapes.
_MAIN_FLAGS = ('configs', 'dtype', 'scan_layers', 'mesh', 'batch', 'attention', 'loss_chunk',
               'seq_len', 'attn_block', 'remat', 'document_mask', 'attn_max_docs',
               'profile_dir')


def _die(msg: str) -> None:
  print(f'error: {msg}', file=sys.stderr)
  sys.exit(2)


def check_modes() -> None:
  """Exits 2 in one line on a flag the chosen mode would silently ignore."""
  F = flags.FLAGS
  if _PACK.value or _LAYERS_AB.value:
    mode = '--pack' if _PACK.value else '--layers_ab'
    given = [f for f in _MAIN_FLAGS + ('layers_ab',) * bool(_PACK.value) if F[f].present]
    if given:
      _die(f'{mode} times fixed shapes (the main job\'s), so --{given[0]} would be ignored; '
           f'it applies to the per-config benchmark (drop {mode} or --{given[0]})')
  if F['pack_devices'].present and not _PACK.value:
    _die(f'--pack_devices={_PACK_DEVICES.value} applies only with --pack=K')
  if _PACK.value % _PACK_DEVICES.value:
    _die(f'--pack_devices={_PACK_DEVICES.value} does not divide --pack={_PACK.value}: each '
         'device trains an equal share of the members')


def main(argv):
  del argv
  from lm import host
  check_names('configs', _CONFIGS.value)
  check_modes()
  if _KEEP.value:
    host.keep_freed_memory()  # Before JAX starts its CPU client: lm/host.py.
  if _PACK.value and _PACK_DEVICES.value > 1:  # Before JAX starts its CPU client.
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform'
                               f'_device_count={_PACK_DEVICES.value}')
  import jax
  dev = jax.devices()[0]
  if _LAYERS_AB.value:
    cols = ['d_model', 'layers', 'scan ms', 'unrolled ms', 'speed-up', 'scan compile s',
            'unrolled compile s']
    print(f'device: {dev.device_kind} ({dev.platform}), XLA_FLAGS={os.environ.get("XLA_FLAGS", "")!r}\n')
    print('| ' + ' | '.join(cols) + ' |\n|' + '---|' * len(cols))
    for d in (8, 16, 24, 32, 40, 48):
      r = bench_layers_ab(d, _STEPS.value)
      print_row(r, cols, '.3g')
    return
  if _PACK.value:
    cols = ['d_model', 'K', 'devices', 'params', 'seq ms', 'packed ms', 'seq tokens/s',
            'packed tokens/s', 'seq GFLOP/s', 'packed GFLOP/s', 'speed-up']
    print(f'device: {dev.device_kind} ({dev.platform}), {_PACK.value} members\n')
    print('| ' + ' | '.join(cols) + ' |\n|' + '---|' * len(cols))
    ratios = {}
    for d in (16, 32, 64, 128):
      r = bench_pack(d, _PACK.value, _STEPS.value, _PACK_DEVICES.value)
      ratios[d] = r['speed-up']
      print_row(r, cols)
    print(f'packed speed-up at d_model<=32: {min(ratios[16], ratios[32]):.2f}x')
    return
  runs = [(n, a) for n in _CONFIGS.value.split(',') for a in _ATTENTION.value.split(',')]
  from lm import train
  from lm.config import ConfigError
  for name, attention in runs:  # Every row's config, mesh and batch split, before any timing.
    try:
      train.build(bench_config(name, _DTYPE.value, _SCAN.value, _MESH.value, _BATCH.value,
                               attention, _LOSS_CHUNK.value, _REMAT.value, _SEQ.value,
                               _BLOCK.value, _DOC_MASK.value, _MAX_DOCS.value),
                  jax.devices() if _MESH.value else jax.devices()[:1])
    except ConfigError as e:
      _die(str(e))
  print(f'device: {dev.device_kind} ({dev.platform}) x{jax.device_count()}, '
        f'dtype {_DTYPE.value}, scan_layers={_SCAN.value}\n')
  from lm import flops
  sheet = flops.peak_flops(dev.device_kind, _DTYPE.value, 'tpu')  # The table only.
  cols = ['config', 'attention', 'seq', 'devices', 'params', 'tokens/step', 'step_ms', 'tokens/s',
          'GFLOP/step', 'xla/exact', 'GFLOP/s', 'peak GFLOP/s', 'MFU']
  cols += ['MFU sheet'] if sheet else []
  cols += ['temp MiB', 'peak MiB', 'faults/step', 'compile s']
  print('| ' + ' | '.join(cols) + ' |')
  print('|' + '---|' * len(cols))
  for name, attention in runs:
    before, _ = measure_peak(_DTYPE.value)
    r = bench(name, _DTYPE.value, _STEPS.value, _SCAN.value, _MESH.value, _BATCH.value,
              attention, _LOSS_CHUNK.value, _REMAT.value, _SEQ.value, _BLOCK.value,
              _DOC_MASK.value, _PROFILE.value, _MAX_DOCS.value)
    # The peak is the best the machine showed around this config: one window
    # on a shared machine can read 25% low and would inflate MFU.
    peak = max(before, measure_peak(_DTYPE.value)[0])
    r['peak GFLOP/s'] = peak / 1e9
    r['MFU'] = f'{100 * r["GFLOP/s"] * 1e9 / (peak * r["devices"]):.1f}%'
    if sheet:  # Against the data sheet's dense peak (lm/flops.PEAK_FLOPS).
      r['MFU sheet'] = f'{100 * r["GFLOP/s"] * 1e9 / (sheet * r["devices"]):.1f}%'
    print_row(r, cols)
    if _PROFILE.value:
      profile_table(_PROFILE.value)


if __name__ == '__main__':
  from lm import cli
  app.run(main, flags_parser=cli.parse_flags)
