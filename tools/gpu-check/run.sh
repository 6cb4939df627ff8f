#!/usr/bin/env bash
# The GPU check, run on a lent GPU machine from the repository root with .gl and .gpu
# carried (tools/gpu-check/prepare.sh builds them). About 6 minutes on an H200:
#   1. the adapter, its limits and features; a software adapter (llvmpipe) is refused;
#   2. matmul tuned and timed (1024 to 4096, ViT-B at batch 64 and its weight gradients,
#      attention products), attention, row kernels, AdamW, a ViT-B block (engine bench);
#   3. one ViT-B MAE pretraining step at batch 64 (mask 0.75 and 0.0);
#   4. every op against the CPU reference, every matmul variant, and the model against
#      transformers, on the GPU (the engine's and the model's tests).
# Writes $OUT/gpu-check.jsonl, $OUT/tests.log and the tuning cache
# $OUT/mae-stack/autotune.json; prints a summary last.
#
# Rehearse on a machine without a GPU (about 6 minutes on 2 cores):
#   BENCH_ALLOW_SOFTWARE=1 QUICK=1 SPEED_PRESET=mae_tiny_28_patch7 SPEED_BATCH=16 \
#   bash tools/gpu-check/run.sh
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
log="$OUT/gpu-check.jsonl"
: >"$log"

if [ -d .gl ]; then
    for f in .gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
fi
nvidia_icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if ! compgen -G "/usr/share/vulkan/icd.d/nvidia*" >/dev/null &&
    ! compgen -G "/etc/vulkan/icd.d/nvidia*" >/dev/null && [ -f "$nvidia_icd" ]; then
    export VK_DRIVER_FILES=$nvidia_icd
fi
bin=$(mktemp -d)
tar -xzf .gpu/bin.tar.gz -C "$bin" || { echo "no .gpu/bin.tar.gz: run tools/gpu-check/prepare.sh"; exit 2; }
bin=$bin/bin
# The tests find their fixtures under the path they were built at.
[ -e /work/main ] || { mkdir -p /work && ln -s "$PWD" /work/main; }
export ENGINE_AUTOTUNE=${ENGINE_AUTOTUNE:-on} XDG_CACHE_HOME=$OUT

echo "== bench (adapter, matmul tuned, attention, rows, AdamW, block)"
if ! timeout 240 "$bin/bench" --gpu ${QUICK:+--quick} | tee -a "$log"; then
    echo "bench failed or refused the adapter: see above"
    exit 3
fi

echo "== MAE pretraining step"
timeout 180 "$bin/speed" "${SPEED_PRESET:-mae_vit_base_patch16}" "${SPEED_BATCH:-64}" | tee -a "$log"

echo "== tests on this adapter"
status=0
for t in "$bin"/test-*; do
    name=${t##*/test-}
    if timeout 120 "$t" --test-threads 2 >>"$OUT/tests.log" 2>&1; then
        echo "{\"tests\":\"$name\",\"passed\":true}" | tee -a "$log"
    else
        echo "{\"tests\":\"$name\",\"passed\":false}" | tee -a "$log"
        status=1
    fi
done

echo "== summary"
grep -E '"op":"(matmul|qkv_attention|pretrain_step|adamw_step)"|"passed":false' "$log"
exit $status
