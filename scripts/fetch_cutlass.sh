#!/usr/bin/env bash
# fetch_cutlass.sh: CUTLASS's C++ headers (the grouped expert GEMMs of kernels/grouped_gemm.cu), from
# the pinned `nvidia-cutlass` wheel on PyPI, into third_party/cutlass-VERSION/{include,util/include}.
# The wheel is checked against its SHA-256. A wheel already in third_party/ (carried to a machine
# without network, as scripts/device_run.sh does) is used instead of downloading.
#   scripts/fetch_cutlass.sh        prints the folder it filled (or found)
set -euo pipefail
cd "$(dirname "$0")/.."
version=4.2.0.0
wheel=nvidia_cutlass-$version-py3-none-any.whl
url=https://files.pythonhosted.org/packages/21/6b/e86fc2fd536dd4b8bd2209aa31d7002610c501b0802337787eac9c9b328c/$wheel
sha256=f9599ada45c7bcb6bf53f7d3f0a7d154183e53451c01bfa59eecd37dd4a693f6
dest=third_party/cutlass-$version
if [ -f "$dest/include/cutlass/cutlass.h" ] && [ -f "$dest/util/include/cutlass/util/packed_stride.hpp" ]; then
    echo "$dest"
    exit 0
fi
mkdir -p third_party
if [ ! -f "third_party/$wheel" ]; then
    curl -fsSL --retry 3 -o "third_party/$wheel.part" "$url"
    mv "third_party/$wheel.part" "third_party/$wheel"
fi
echo "$sha256  third_party/$wheel" | sha256sum -c --quiet - || {
    echo "fetch_cutlass.sh: third_party/$wheel does not match its SHA-256; delete it and run again" >&2
    exit 1
}
rm -rf "$dest.part"
mkdir -p "$dest.part"
python3 - "third_party/$wheel" "$dest.part" <<'PY'
import sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
prefixes = {"cutlass_library/source/include/": "include/",
            "cutlass_library/source/tools/util/include/": "util/include/"}
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        for src, dst in prefixes.items():
            if name.startswith(src) and not name.endswith("/"):
                target = f"{dest}/{dst}{name[len(src):]}"
                import os
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with z.open(name) as f, open(target, "wb") as out:
                    out.write(f.read())
PY
rm -rf "$dest"
mv "$dest.part" "$dest"
echo "$dest"
