#!/usr/bin/env bash
# Prepare, on a machine with PyPI (the development machine), what bench/cuda_check.sh needs on the GPU
# machine (no network there): the ignored folder .whl/ with
#   - wheels the GPU image lacks: gguf (and platformdirs), installed there with --no-deps;
#   - a prebuilt libedgeinfer_cuda.so for sm_90 (H100 / H200) in .whl/eihome/cuda/, built here with the
#     nvcc 13.0 wheel: used there only if that image has no nvcc (the nvcc wheels, ~100 MB, are too big
#     to travel: one device call carries 64 MiB). Rebuild it after any change to native/cuda/.
# Then run on the GPU machine (device tool): command `bash bench/cuda_check.sh`, carry [".whl"].
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "gguf==$(python3 -c 'import importlib.metadata as m; print(m.version("gguf"))')" platformdirs
NVCC=${EDGEINFER_NVCC:-$(command -v nvcc || true)}  # this project's machines have CUDA 13.0 in /usr/local/cuda
if [ -z "$NVCC" ]; then
  NVCC_DIR=${NVCC_DIR:-/tmp/nvcc13}
  [ -x "$NVCC_DIR/nvidia/cu13/bin/nvcc" ] || python3 -m pip install -q --no-deps --target "$NVCC_DIR" \
    nvidia-cuda-nvcc==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88
  NVCC="$NVCC_DIR/nvidia/cu13/bin/nvcc"
fi
rm -rf .whl/eihome
EDGEINFER_HOME="$PWD/.whl/eihome" EDGEINFER_NVCC="$NVCC" python3 -c '
from edgeinfer.kernels.cuda import build
print(build.library_path(cc=(9, 0), log=print))'
du -sh .whl; ls -la .whl
