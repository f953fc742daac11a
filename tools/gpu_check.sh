#!/bin/bash
# The device checks of a lent NVIDIA GPU, in one call (the device tool's
# machines have jax, flax, optax, orbax and pytest but not ml_collections, grain,
# array-record, portpicker or importlib_resources (lm/train imports grain),
# which travel as wheels in .whl/, made as /work/.library/device/README.md says).
#   run: bash tools/gpu_check.sh   (carry .whl)
# 1. the attention agreement tests on the GPU (cuDNN, the Pallas/Triton kernel,
#    the chunked path's custom VJP); 2. tools/bench_train, one process per row
#    (so each row's allocator peak is its own), GPT-2 medium in bfloat16 at batch
#    48 with whole logits (the fastest, 2026-11-27): with a kernel profile and
#    the dense document mask, with cuDNN's packed documents (model.attn_max_docs;
#    the A/B in one run that 2026-11-27 lacked) and without document masks;
#    3. packed small models (lm/pack.py).
# A gpt2_medium batch-48 row takes ~200 s alone (2026-11-27: 202.5 s, compile 69 s), and
# rows of 160 s with an empty autotuning cache printed nothing: the first row has ROW1_S.
# Logs go to $OUT. All of it needs more than one 10-minute call: choose rows
# with ROWS, one "XLA_FLAGS-or-- flags..." per line;
# TEST_K selects tests (pytest -k), PACK_S=0 skips the packed rows, ROW1_S / ROW_S
# limit the first / each later row (seconds).
set -o pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl >/dev/null 2>&1 || echo 'wheel install failed'
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi -L
python3 -c 'import jax, flax, optax; print("jax", jax.__version__, "flax", flax.__version__, "optax", optax.__version__, jax.devices())'
JAX_PLATFORMS=cuda timeout ${TEST_S:-120} python3 -m pytest -v -p no:cacheprovider \
  ${TEST_K:+-k "$TEST_K"} tests/test_attention.py 2>&1 | tee "$OUT/test_attention.log" | tail -6
# Rows share GEMM autotuning results through this cache (2026-11-27: the compiles took
# 38 s cold, 21-40 s after; the gpt2_medium step compile, autotuning included).
AT=--xla_gpu_per_fusion_autotune_cache_dir=/tmp/atc
M="--configs=gpt2_medium --attention=dot_product"
# One row per line: XLA_FLAGS (- for none), then tools.bench_train's flags.
first=1
while read -r xf args; do
  [ -z "$xf" ] && continue
  [ "$xf" = - ] && xf=
  # The first row autotunes every GEMM afresh (no cache yet): it gets ROW1_S.
  limit=${ROW_S:-180}; [ $first = 1 ] && limit=${ROW1_S:-260}; first=0
  echo "== XLA_FLAGS=$xf $args (limit $limit s)"
  XLA_FLAGS=$xf timeout $limit python3 -m tools.bench_train --dtype=bfloat16 --steps=10 \
    --nokeep_freed_memory $args 2>&1 | tee -a "$OUT/bench.log" | grep '^| [a-z]\|^profile'
done <<ROWS
${ROWS:-$AT $M --batch=48 --loss_chunk=0 --profile_dir=/tmp/prof
$AT $M --batch=48 --loss_chunk=0 --attn_max_docs=16
$AT $M --batch=48 --loss_chunk=0 --nodocument_mask}
ROWS
[ "${PACK_S:-150}" = 0 ] || timeout ${PACK_S:-150} python3 -m tools.bench_train --pack=8 \
  --steps=5 2>&1 | tee "$OUT/pack.log" | grep '^|\|speed-up'
