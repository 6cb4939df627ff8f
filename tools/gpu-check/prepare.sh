#!/usr/bin/env bash
# Prepare the GPU check on this machine (x86-64, glibc): build the release binaries that
# run.sh runs, strip and pack them into .gpu/bin.tar.gz, and download the Vulkan loader
# and its companions (EGL, GLVND, GL, GLES) into .gl/; git ignores both, and the device
# tool carries them (64 MiB at most with the working tree):
#
#   tools/gpu-check/prepare.sh
#   device run: carry [".gl", ".gpu"], command "bash tools/gpu-check/run.sh", timeout_s 480
#
# The lent machine may have no Rust toolchain, hence prebuilt binaries.
set -euo pipefail
cd "$(dirname "$0")/../.."

# Engine tests that compare every op with its CPU reference on whatever adapter they find
# (the subgroup kernels at the adapter's own width among them), what the backend lacks, and
# the transformers parity of the model (its fixtures are found where they were built).
TESTS="elementwise reduce_matmul rows_index grad matmul_variants row_workgroup subgroups backend runtime optim errors autotune half parity"

for d in /.gl/ /.gpu/; do
    grep -qxF "$d" .git/info/exclude 2>/dev/null || echo "$d" >>.git/info/exclude
done
rm -rf .gpu && mkdir -p .gpu/bin
cargo build --release -p engine --example bench
cargo build --release -p mae --example speed
cp target/release/examples/bench target/release/examples/speed .gpu/bin/
cargo test --release -p engine -p mae --no-run 2>&1 |
    sed -n 's/^ *Executable tests\/\([a-z_0-9]*\)\.rs (\(.*\))$/\1 \2/p' |
    while read -r name path; do
        case " $TESTS " in *" $name "*) cp "$path" ".gpu/bin/test-$name" ;; esac
    done
for name in $TESTS; do
    [ -f ".gpu/bin/test-$name" ] || { echo "error: no test binary $name"; exit 1; }
done
strip .gpu/bin/*
tar -czf .gpu/bin.tar.gz -C .gpu bin
rm -rf .gpu/bin

packages="libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2"
for p in $packages; do
    if ! ls .gl/"${p}"_*.deb >/dev/null 2>&1; then
        mkdir -p .gl /tmp/amd64/partial
        o="-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64"
        # shellcheck disable=SC2086
        apt-get $o update -qq
        # shellcheck disable=SC2086
        (cd .gl && apt-get $o download $packages)
        break
    fi
done
du -sh .gpu .gl
total=$(du -sk .gpu .gl | awk '{s += $1} END {print s}')
tree=$(git ls-files -z | xargs -0 du -ck 2>/dev/null | tail -1 | cut -f1)
echo "carried: $((total / 1024)) MiB, working tree: $((tree / 1024)) MiB (the device takes 64 MiB in all)"
[ $((total + tree)) -lt $((64 * 1024)) ] || { echo "error: more than 64 MiB"; exit 1; }
