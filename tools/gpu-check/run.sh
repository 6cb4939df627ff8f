#!/usr/bin/env bash
# The GPU check, run on a lent GPU machine from the repository root with .gl and .gpu
# carried (tools/gpu-check/prepare.sh builds them):
#
#   device run: carry [".gl", ".gpu"], command "bash tools/gpu-check/run.sh", timeout_s 480
#
# One overall deadline ($DEADLINE seconds, default 420: with a machine's start it leaves
# time for a rerun within the 15 minutes a session gets). A short adapter probe is the only
# stage that may stop the run; every later stage runs on its own, under what is left of
# the deadline and its own budget, and writes its results as it goes:
#   env      $OUT/env.txt: the GPU's name, clocks and driver (nvidia-smi, queries only),
#            the Vulkan ICD directories and the one chosen, what ldconfig sees
#   probe    the adapter, limits, features and cooperative-matrix properties, with the
#            Vulkan loader's debug output in env.txt; a software adapter stops the run
#   bench    matmul tuned (ENGINE_TUNE_BUDGET_MS a shape) and timed, checked kernels
#            against trusted ones, attention, row kernels, AdamW, a ViT-B block, the
#            dispatch overhead; the tuning cache in $OUT/autotune.json
#   speed    one ViT-B MAE step at batch 64 (fp32, f16-mixed, checkpointing), its
#            dispatches and a per-kernel GPU-timestamp table
#   tests    every op, every matmul variant, the subgroup kernels (at the adapter's
#            width), the backend's fallbacks and the transformers parity, tuning from the
#            bench's cache; each test binary on its own
#   torch    PyTorch's fp32 figures for the same products and step, when python3 has it
# Comes back: gpu-check.jsonl (every figure and each stage's status), env.txt,
# stderr.log, tests.log, autotune.json. The last lines printed are a summary.
#
# Rehearse on a machine without a GPU, the ICD discovery included, with a fake NVIDIA
# driver directory that holds lavapipe's ICD (about 7 minutes on 2 cores):
#   mkdir -p /tmp/fake-nvidia/share/vulkan/icd.d
#   cp /usr/share/vulkan/icd.d/lvp_icd.x86_64.json /tmp/fake-nvidia/share/vulkan/icd.d/nvidia_icd.json
#   NVIDIA_ROOT=/tmp/fake-nvidia SYSTEM_ICD_DIRS=/nonexistent BENCH_ALLOW_SOFTWARE=1 QUICK=1 \
#   SPEED_PRESET=mae_tiny_28_patch7 SPEED_BATCH=16 bash tools/gpu-check/run.sh
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check}
DEADLINE=${DEADLINE:-420}
NVIDIA_ROOT=${NVIDIA_ROOT:-/usr/local/nvidia}
SYSTEM_ICD_DIRS=${SYSTEM_ICD_DIRS:-/usr/share/vulkan/icd.d /etc/vulkan/icd.d}
START=$(date +%s)
mkdir -p "$OUT"
log=$OUT/gpu-check.jsonl env_txt=$OUT/env.txt errors=$OUT/stderr.log tests_log=$OUT/tests.log
: >"$log"
: >"$env_txt"
: >"$errors"
: >"$tests_log"

left() { echo $((DEADLINE - ($(date +%s) - START))); }

# stage NAME BUDGET COMMAND...: COMMAND's stdout into the log and its stderr into
# stderr.log, under its budget or what is left of the deadline (less a margin), and a line
# with its status. Returns COMMAND's status.
stage() {
    local name=$1 budget=$2
    shift 2
    local t=$(($(left) - 10))
    [ "$t" -gt "$budget" ] && t=$budget
    if [ "$t" -lt 15 ]; then
        echo "{\"stage\":\"$name\",\"status\":\"skipped: the deadline\"}" | tee -a "$log"
        return 124
    fi
    echo "== $name (up to $t s)" | tee -a "$errors"
    local s rc
    s=$(date +%s)
    timeout -k 5 "$t" "$@" 2>>"$errors" | tee -a "$log"
    rc=${PIPESTATUS[0]}
    echo "{\"stage\":\"$name\",\"rc\":$rc,\"seconds\":$(($(date +%s) - s)),\"budget\":$t}" | tee -a "$log"
    return "$rc"
}

# The Vulkan loader and its companions (EGL, GLVND, GL, GLES), when the image lacks them.
if [ -d .gl ]; then
    for f in .gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
fi

# Which Vulkan driver: a system ICD of NVIDIA's, else the driver's own directory.
{
    echo "# GPU (nvidia-smi, queries only)"
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem,clocks.max.sm,clocks.max.mem,temperature.gpu,power.draw --format=csv 2>&1
    else
        echo "nvidia-smi: not found"
    fi
    echo "# Vulkan ICDs"
    for d in $SYSTEM_ICD_DIRS "$NVIDIA_ROOT/share/vulkan/icd.d"; do
        echo "$d: $(ls "$d" 2>/dev/null | tr '\n' ' ')"
    done
} >>"$env_txt" 2>&1
system_icd=$(for d in $SYSTEM_ICD_DIRS; do compgen -G "$d/nvidia*.json"; done | head -1)
driver_icd=$NVIDIA_ROOT/share/vulkan/icd.d/nvidia_icd.json
if [ -n "$system_icd" ]; then
    echo "NVIDIA Vulkan ICD: $system_icd (the loader finds it)" >>"$env_txt"
elif [ -f "$driver_icd" ]; then
    export VK_DRIVER_FILES=$driver_icd
    echo "NVIDIA Vulkan ICD: $driver_icd (VK_DRIVER_FILES)" >>"$env_txt"
    egl=$NVIDIA_ROOT/share/glvnd/egl_vendor.d/10_nvidia.json
    [ -f "$egl" ] && export __EGL_VENDOR_LIBRARY_FILENAMES=$egl
else
    echo "NVIDIA Vulkan ICD: NOT FOUND in $SYSTEM_ICD_DIRS or $NVIDIA_ROOT/share/vulkan/icd.d" >>"$env_txt"
fi
{
    echo "# ldconfig"
    ldconfig -p | grep -E 'libvulkan|libEGL|libGLX|libnvidia|libcuda' || echo "(none of vulkan, EGL, GLX, nvidia, cuda)"
} >>"$env_txt" 2>&1
echo "{\"stage\":\"env\",\"vk_driver_files\":\"${VK_DRIVER_FILES:-}\",\"system_icd\":\"$system_icd\"}" | tee -a "$log"

bin=$(mktemp -d)
if ! tar -xzf .gpu/bin.tar.gz -C "$bin"; then
    echo "{\"stage\":\"unpack\",\"status\":\"no .gpu/bin.tar.gz: run tools/gpu-check/prepare.sh\"}" | tee -a "$log"
    exit 2
fi
bin=$bin/bin
# The tests find their fixtures under the path they were built at.
[ -e /work/main ] || { mkdir -p /work && ln -s "$PWD" /work/main; }
export ENGINE_TUNE_CACHE=$OUT/autotune.json ENGINE_TUNE_BUDGET_MS=${ENGINE_TUNE_BUDGET_MS:-500}

# The probe: the only stage that may stop the run.
echo "# the Vulkan loader's debug output for the probe" >>"$env_txt"
if ! VK_LOADER_DEBUG=error,warn,info,driver stage probe 60 "$bin/bench" --probe; then
    tail -n 60 "$errors" >>"$env_txt"
    echo "== summary: the probe failed or found no GPU; see env.txt and stderr.log"
    grep -E '"stage"|"adapter"' "$log"
    exit 3
fi
sed -n '/^== probe/,$p' "$errors" >>"$env_txt"

stage bench 170 env ENGINE_AUTOTUNE=on "$bin/bench" --gpu ${QUICK:+--quick}
stage speed 100 env ENGINE_AUTOTUNE=cache ENGINE_PROFILE=1 "$bin/speed" "${SPEED_PRESET:-mae_vit_base_patch16}" "${SPEED_BATCH:-64}"

# Tests: tuning from the bench's cache, each binary on its own.
tests() {
    local status=0 name t rc
    for t in "$bin"/test-*; do
        name=${t##*/test-}
        [ "$(left)" -lt 20 ] && { echo "{\"tests\":\"$name\",\"status\":\"skipped: the deadline\"}"; continue; }
        echo "== $name" >>"$tests_log"
        timeout -k 5 $(($(left) - 15)) "$t" --test-threads 2 >>"$tests_log" 2>&1
        rc=$?
        echo "{\"tests\":\"$name\",\"passed\":$([ $rc = 0 ] && echo true || echo false),\"rc\":$rc}"
        [ $rc = 0 ] || status=1
    done
    return $status
}
export -f tests left
export bin tests_log DEADLINE START
stage tests 150 env ENGINE_AUTOTUNE=cache bash -c tests

if python3 -c 'import torch, transformers' 2>/dev/null; then
    stage torch 90 python3 tools/gpu-check/torch_baseline.py
else
    echo "{\"stage\":\"torch\",\"status\":\"skipped: python3 has no torch and transformers\"}" | tee -a "$log"
fi

echo "== summary ($(($(date +%s) - START)) s)"
grep -E '"stage"|"adapter"|"op":"(matmul|runtime_checks|pretrain_step|dispatches|dispatch_overhead)"|"passed":false|"torch":"(matmul|pretrain_step)"' "$log"
