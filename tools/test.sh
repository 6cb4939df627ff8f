#!/usr/bin/env bash
# The test command: installs what the tests need where it is missing (Mesa's software
# Vulkan driver lavapipe and its OpenGL driver llvmpipe through EGL, for machines without a
# GPU; SPIR-V and GLSL validators, for the translation test; Open MPI and libclang, for the
# data-parallel tests), then runs every test, the MPI ones included, on the Vulkan backend
# and again on the GL backend.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
if ! compgen -G "/usr/share/vulkan/icd.d/*.json" >/dev/null && ! compgen -G "/etc/vulkan/icd.d/*.json" >/dev/null; then
    need+=(mesa-vulkan-drivers)
fi
compgen -G "/usr/lib/*/libEGL_mesa.so*" >/dev/null || need+=(libegl1 libegl-mesa0 libgl1-mesa-dri)
command -v spirv-val >/dev/null || need+=(spirv-tools)
command -v glslangValidator >/dev/null || need+=(glslang-tools)
command -v mpirun >/dev/null || need+=(openmpi-bin)
command -v mpicc >/dev/null || need+=(libopenmpi-dev)
compgen -G "/usr/lib/llvm-*/lib/libclang*.so*" >/dev/null || compgen -G "/usr/lib/x86_64-linux-gnu/libclang*.so*" >/dev/null || need+=(libclang-dev)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing ${need[*]}"
    sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

cargo test --workspace --features mae/distributed
echo "the same tests on the GL backend (WGPU_BACKEND=gl); the translation test, which needs no"
echo "device, ran above"
WGPU_BACKEND=gl cargo test --workspace --features mae/distributed -- \
    --skip every_kernel_translates_for_every_backend
