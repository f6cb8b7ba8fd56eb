#!/usr/bin/env bash
# setup.sh: install what moerun needs to build and test on Debian/Ubuntu, then configure the build.
#   scripts/setup.sh [BUILD_DIR] [extra meson options...]
# Installs with apt-get only what is missing (needs root, as on the CI and dev machines).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
shift || true

# python3-scipy: HiGHS, the independent MILP that tests/placement/exact_vs_milp.py checks
# `moerun place --exact` against (the test is skipped without it)
# curl, ca-certificates, python3: scripts/fetch_cutlass.sh (CUTLASS's headers for the cuda backend)
# iproute2, util-linux (ip netns, unshare): tests/runtime/multihost_netns.sh, hosts as namespaces
packages=(build-essential pkg-config meson ninja-build openmpi-bin libopenmpi-dev libyaml-dev
          libhwloc-dev libopenblas-dev libglpk-dev libjansson-dev python3-numpy python3-scipy
          curl ca-certificates python3 iproute2 util-linux)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Where CUDA is (nvcc), the cuda backend builds, and its grouped GEMMs need CUTLASS's headers: the
# pinned wheel, fetched once into third_party/. Without them the backend builds its fallback paths.
if command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ]; then
    scripts/fetch_cutlass.sh >/dev/null ||
        echo "setup: warning: could not fetch CUTLASS (scripts/fetch_cutlass.sh); the cuda backend builds without it" >&2
fi

if [ -d "$build" ]; then
    meson setup --reconfigure "$build" "$@" >/dev/null
else
    meson setup "$build" "$@" >/dev/null
fi
ninja -C "$build" >/dev/null
echo "setup: built $build"
