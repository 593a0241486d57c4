#!/usr/bin/env bash
# Install Horovod 0.28.1 (its last release, 2023) from PyPI's source release into the
# current Python environment, for PyTorch on CPU with Gloo. The release is pinned by its
# SHA-256 (the one PyPI lists for horovod-0.28.1.tar.gz): any other file is refused
# before it is unpacked or built.
#
# Why a patch: Horovod 0.28.1 compiles its PyTorch extension as C++14, but PyTorch ≥ 2.1
# needs C++17 to compile against its headers. Changing CMAKE_CXX_STANDARD from 14 to 17 in
# the top-level CMakeLists.txt and in horovod/torch/CMakeLists.txt is enough.
#
# Usage: scripts/install-horovod.sh [python]   (default: python3 on PATH)
set -euo pipefail
PYTHON=${1:-python3}
VERSION=0.28.1
SHA256=92a43f5a94c43907a56805bad15f19700c62ffc83b7ca483f9e104e229f67ef0
here=$(cd "$(dirname "$0")" && pwd)

if "$PYTHON" -c "import horovod.torch" 2>/dev/null; then
  echo "horovod.torch already importable"; exit 0
fi
"$PYTHON" -m pip install -q "cmake>=3.13,<4" packaging setuptools wheel  # CMake 4 refuses gloo's old CMakeLists
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PYTHON" -m pip download -q --no-deps --no-binary :all: "horovod==$VERSION" -d "$work"
"$here/check-sha256.sh" "$work/horovod-$VERSION.tar.gz" "$SHA256"
tar -xzf "$work/horovod-$VERSION.tar.gz" -C "$work"
src="$work/horovod-$VERSION"
for f in "$src/CMakeLists.txt" "$src/horovod/torch/CMakeLists.txt"; do
  grep -q "CMAKE_CXX_STANDARD 14" "$f" || { echo "unexpected $f: no CMAKE_CXX_STANDARD 14" >&2; exit 1; }
  sed -i 's/CMAKE_CXX_STANDARD 14/CMAKE_CXX_STANDARD 17/' "$f"
done
export PATH="$(dirname "$("$PYTHON" -c 'import sys; print(sys.executable)')"):$PATH"
HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 HOROVOD_CPU_OPERATIONS=gloo \
MAKEFLAGS="-j$(nproc)" \
  "$PYTHON" -m pip install -q --no-build-isolation --no-cache-dir "$src"
"$PYTHON" -c "import horovod.torch as hvd; print('horovod', hvd.__version__ if hasattr(hvd, '__version__') else '', 'gloo built:', hvd.gloo_built())"
