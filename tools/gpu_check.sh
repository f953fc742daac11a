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
#    the dense document mask, and with cuDNN's packed documents (model.attn_max_docs;
#    the A/B in one run that 2026-11-27 lacked); 3. packed small models (lm/pack.py,
#    measured 2026-11-27: off by default).
# A gpt2_medium batch-48 row takes ~200 s alone (2026-11-27: 202.5 s, compile 69 s), and
# rows of 160 s with an empty autotuning cache printed nothing: the first row has ROW1_S.
# The defaults (tests 90 s, two rows 260 + 180 s, no packed rows) fit one 10-minute
# call with ~1 minute to spare for the install and start; a device session has 15
# minutes in all, so choose what a second call runs:
#   TEST_S=0 skips the tests (else their limit in s), TEST_K selects them (pytest -k);
#   ROWS: one "XLA_FLAGS-or-- flags..." per line (several XLA flags joined by commas),
#     ROWS= (empty) runs none; ROW1_S / ROW_S limit the first / each later row (s);
#   PACK_S: the packed rows' limit (s); 0 (the default) skips them.
# Logs go to $OUT: test_attention.log, bench.log (each row's label and exit status,
# 124 = its limit), pack.log.
set -o pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
if ! python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl >"$OUT/pip.log" 2>&1; then
  echo 'wheel install failed:'; tail -5 "$OUT/pip.log"; exit 1
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi -L
python3 -c 'import jax, flax, optax; print("jax", jax.__version__, "flax", flax.__version__, "optax", optax.__version__, jax.devices())'
if [ "${TEST_S:-90}" != 0 ]; then
  JAX_PLATFORMS=cuda timeout "${TEST_S:-90}" python3 -m pytest -v -p no:cacheprovider \
    ${TEST_K:+-k "$TEST_K"} tests/test_attention.py 2>&1 | tee "$OUT/test_attention.log" | tail -6
  echo "== tests exit ${PIPESTATUS[0]}" | tee -a "$OUT/test_attention.log"
fi
# Rows share GEMM autotuning results through this cache (2026-11-27: the compiles took
# 38 s cold, 21-40 s after; the gpt2_medium step compile, autotuning included).
AT=--xla_gpu_per_fusion_autotune_cache_dir=/tmp/atc
M="--configs=gpt2_medium --attention=dot_product"
# One row per line: XLA_FLAGS (- for none; commas between flags), then tools.bench_train's flags.
first=1
while read -r xf args; do
  [ -z "$xf" ] && continue
  [ "$xf" = - ] && xf=
  xf=${xf//,/ }
  # The first row autotunes every GEMM afresh (no cache yet): it gets ROW1_S.
  limit=${ROW_S:-180}; [ $first = 1 ] && limit=${ROW1_S:-260}; first=0
  echo "== XLA_FLAGS=$xf $args (limit $limit s)" | tee -a "$OUT/bench.log"
  XLA_FLAGS=$xf timeout "$limit" python3 -m tools.bench_train --dtype=bfloat16 --steps=10 \
    --nokeep_freed_memory $args 2>&1 | tee -a "$OUT/bench.log" | grep '^| [a-z]\|^profile\|error'
  echo "== exit ${PIPESTATUS[0]}" | tee -a "$OUT/bench.log"
done <<ROWS
${ROWS-$AT $M --batch=48 --loss_chunk=0 --profile_dir=/tmp/prof
$AT $M --batch=48 --loss_chunk=0 --attn_max_docs=16}
ROWS
if [ "${PACK_S:-0}" != 0 ]; then
  timeout "$PACK_S" python3 -m tools.bench_train --pack=8 --steps=5 2>&1 | tee "$OUT/pack.log" \
    | grep '^|\|speed-up\|error'
  echo "== pack exit ${PIPESTATUS[0]}" | tee -a "$OUT/pack.log"
fi
