#!/usr/bin/env bash
# Prepare the GPU check on this machine (x86-64, glibc): build the release binaries that
# run.sh runs, strip and pack them into .gpu/bin.tar.gz, and download the Vulkan loader
# package into .gl/; git ignores both, and the device tool carries them:
#
#   tools/gpu-check/prepare.sh
#   device run: carry [".gl", ".gpu"], command "bash tools/gpu-check/run.sh", timeout_s 480
#
# The lent machine may have no Rust toolchain, hence prebuilt binaries.
set -euo pipefail
cd "$(dirname "$0")/../.."

# Engine tests that compare every op with its CPU reference on whatever adapter they find,
# and the transformers parity of the model (its fixtures are found where they were built).
TESTS="elementwise reduce_matmul rows_index grad matmul_variants row_workgroup runtime optim errors autotune half parity"

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
strip .gpu/bin/*
tar -czf .gpu/bin.tar.gz -C .gpu bin
rm -rf .gpu/bin

if ! ls .gl/libvulkan1_*.deb >/dev/null 2>&1; then
    mkdir -p .gl /tmp/amd64/partial
    o="-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64"
    apt-get $o update -qq
    (cd .gl && apt-get $o download libvulkan1)
fi
du -sh .gpu .gl
