#!/bin/bash
# The device checks of a lent NVIDIA GPU, in one call (the device tool's
# machines have jax, flax, optax and orbax but not the packages below, which
# travel as wheels in .whl/, made as /work/.library/device/README.md says).
#   run: bash tools/gpu_check.sh   (carry .whl)
# Prints versions, runs the attention agreement tests on the GPU (cuDNN and
# the Pallas/Triton kernel), then tools/bench_train for GPT-2 small and medium
# in bfloat16 per attention path. Logs go to $OUT.
set -o pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl >/dev/null 2>&1 || echo 'wheel install failed'
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi -L
python3 -c 'import jax, flax, optax, orbax.checkpoint as o; print("jax", jax.__version__, "flax", flax.__version__, "optax", optax.__version__, jax.devices())'
STEPS=${STEPS:-10}
JAX_PLATFORMS=cuda timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_attention.py \
  2>&1 | tee "$OUT/test_attention.log" | tail -15
for spec in ${BENCH:-gpt2_small:xla,dot_product,chunked,pallas gpt2_medium:xla,dot_product,pallas}; do
  cfg=${spec%%:*}; paths=${spec#*:}
  timeout 300 python3 -m tools.bench_train --configs=$cfg --attention=$paths --dtype=bfloat16 \
    --scan_layers --batch=${BATCH:-16} --steps=$STEPS --loss_chunk=${LOSS_CHUNK:-0} \
    --nokeep_freed_memory 2>&1 | tee -a "$OUT/bench.log" | grep -v '^WARNING\|^I0000\|^W0000'
done
