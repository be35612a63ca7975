#!/usr/bin/env bash
# The CUDA backend's check on a GPU machine, in one run (about 5 minutes; keep the call's limit at 600 s):
#   1. the environment (GPU, driver, nvcc, Python packages), into env.txt
#   2. the CUDA library built for the GPU in hand (build.txt: command, manifest, nvcc's log)
#   3. tests/test_cuda.py: every kernel against the numpy references, whole models on the GPU against the
#      CPU and against llama.cpp's logits on its tiny models (tests/fixtures/logits_tiny.npz) (pytest.txt)
#   4. random-weight replicas of SmolLM2-135M Q4_1 and Gemma 3 270M Q4_K_M (bench/make_replica.py: same
#      tensors, types and shapes; the real files, 98 and 253 MB, cannot travel: 64 MiB per call), and
#      the real files too where they are in $EDGEINFER_HOME/models (then also against llama.cpp's
#      fixtures): GPU logits against CPU logits, all layers and half of them (agreement.json)
#   5. `edgeinfer bench -p 512 -n 128 -r 3` on each model: -ngl -1 (GPU), -ngl -1 with the small ops on
#      the host (EDGEINFER_CUDA_SMALL_OPS=host), and -ngl 0 (CPU, all cores), tokens/s and tokens per
#      joule (NVML + RAPL/estimate) (bench.jsonl)
# Everything is written under $OUT (default ./cuda-check-out): at most 8 files, as the device tool
# returns them. A summary table comes last on stdout.
#
# Before, on the development machine: `bash bench/cuda_prepare.sh` (fills the ignored .whl/: the gguf
# wheel the GPU image lacks, and a prebuilt sm_90 library for an image without nvcc). Then, through the
# device tool: run(command="bash bench/cuda_check.sh", carry=[".whl"], timeout_s=600).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/cuda-check-out}
mkdir -p "$OUT"
LOG="$OUT/log.txt"
exec > >(tee -a "$LOG") 2>&1
T0=$(date +%s)
step() { echo; echo "=== [$(( $(date +%s) - T0 )) s] $*"; }
export PYTHONUNBUFFERED=1
export EDGEINFER_HOME=${EDGEINFER_HOME:-/tmp/edgeinfer-home}
PY=${PYTHON:-python3}
P=${CUDA_CHECK_P:-512} N=${CUDA_CHECK_N:-128} R=${CUDA_CHECK_R:-3}  # smaller for a dry run elsewhere
mkdir -p "$EDGEINFER_HOME"

step "environment"
{
  date -u; uname -a
  nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total,memory.used,power.draw --format=csv || true
  command -v nvcc && nvcc --version | tail -2 || echo "no nvcc on PATH"
  [ -x /usr/local/cuda/bin/nvcc ] && /usr/local/cuda/bin/nvcc --version | tail -1
  $PY -c 'import sys; print(sys.version)'
  $PY -m pip list 2>/dev/null | grep -iE '^(numpy|numba|llvmlite|gguf|jinja2|regex|sentencepiece|platformdirs|pytest|setuptools) '
  nproc; free -g | head -2
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

step "wheels from .whl (gguf, platformdirs)"
SITE=/tmp/edgeinfer-site
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
    || echo "WARNING: the wheels did not install"
fi
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"
if [ -d .whl/eihome/cuda ]; then  # a prebuilt library: used only where no nvcc is found
  mkdir -p "$EDGEINFER_HOME/cuda" && cp -r .whl/eihome/cuda/. "$EDGEINFER_HOME/cuda/"
fi
$PY -c 'import gguf, numba, numpy; print("gguf", gguf.__file__, "numba", numba.__version__, "numpy", numpy.__version__)' \
  || echo "ERROR: a dependency is missing (see env.txt); run bench/cuda_prepare.sh and carry .whl"

step "the native CPU extension (in place, for this Python), in the background"
if [ -z "${CUDA_CHECK_SKIP_NATIVE:-}" ]; then
  ( timeout 240 $PY setup.py -q build_ext --inplace > "$OUT/native_build.txt" 2>&1; echo "exit $?" >> "$OUT/native_build.txt" ) &
else
  ( echo "skipped (CUDA_CHECK_SKIP_NATIVE)" > "$OUT/native_build.txt" ) &
fi
NATIVE_PID=$!

step "the CUDA library"
timeout 300 $PY - <<'EOF' > "$OUT/build.txt" 2>&1
import json, time
from edgeinfer.kernels import cuda
from edgeinfer.kernels.cuda import build, driver
print("driver:", driver.probe())
print("nvcc:", build.find_nvcc(), "; candidates:", build.nvcc_candidates())
t = time.time()
try:
    lib = build.library_path(log=print)
except Exception as e:
    print("BUILD FAILED:", e)
    raise SystemExit(1)
print(f"library: {lib} ({time.time() - t:.1f} s)")
for name in ("manifest.json", "build.log"):
    p = lib.parent / name
    if p.exists():
        print(f"--- {name}\n{p.read_text()}")
from edgeinfer.kernels.cuda.binding import open_library
l = open_library()
print("device:", l.info, "versions (runtime, driver):", l.versions(), "mem (free, total):", l.mem_info())
print("available:", cuda.available(), cuda.unavailable_reason())
EOF
echo "exit $?" >> "$OUT/build.txt"
cat "$OUT/build.txt"
wait $NATIVE_PID
tail -3 "$OUT/native_build.txt"

step "tests/test_cuda.py"
timeout 330 $PY -m pytest -q -rs -p no:cacheprovider tests/test_cuda.py > "$OUT/pytest.txt" 2>&1
echo "exit $?" >> "$OUT/pytest.txt"
tail -25 "$OUT/pytest.txt"

step "models: replicas of SmolLM2-135M and Gemma 3 270M (random weights, real shapes and types)"
MODELS=/tmp/edgeinfer-models
mkdir -p "$MODELS"
for m in smollm2-135m gemma3-270m; do
  timeout 120 $PY bench/make_replica.py "bench/shapes/$m.json" "$MODELS/$m-replica.gguf" || echo "replica $m failed"
done
LIST=("$MODELS"/*-replica.gguf)
for real in "$EDGEINFER_HOME"/models/smollm2-135m/*.gguf "$EDGEINFER_HOME"/models/gemma3-270m/*.gguf; do
  [ -f "$real" ] && LIST+=("$real")  # the real files, where someone brought them
done
ls -la "${LIST[@]}"

step "agreement: GPU logits against CPU logits (and llama.cpp's, for the real files)"
timeout 240 $PY bench/cuda_agreement.py "${LIST[@]}" --json "$OUT/agreement.json"
echo "agreement exit $?"

step "bench: -p $P -n $N -r $R, GPU (-ngl -1), GPU with the small ops on the host, CPU (-ngl 0)"
: > "$OUT/bench.jsonl"
for model in "${LIST[@]}"; do
  for mode in gpu gpu-hostops cpu; do
    case $mode in
      gpu) args=(-ngl -1); envs=() ;;
      gpu-hostops) args=(-ngl -1); envs=(EDGEINFER_CUDA_SMALL_OPS=host) ;;
      cpu) args=(-ngl 0); envs=() ;;
    esac
    left=$(( 560 - ($(date +%s) - T0) ))
    if [ $left -lt 30 ]; then echo "no time left for $mode $(basename "$model")"; continue; fi
    echo "--- $mode $(basename "$model") (at most $left s)"
    env "${envs[@]}" timeout $left $PY -m edgeinfer bench "$model" -p $P -n $N -r $R "${args[@]}" --json -v \
      2> >(tail -4 >&2) | $PY -c "import json,sys; [print(json.dumps({'mode': '$mode', **json.loads(l)})) for l in sys.stdin if l.strip()]" \
      >> "$OUT/bench.jsonl"
  done
done

step "summary"
$PY - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
try:
    for r in json.loads((out / "agreement.json").read_text()):
        parts = [f"{k}: argmax {v['argmax']:.3f}, max rel diff {v.get('max_rel_diff', float('nan')):.2e}"
                 for k, v in r.items() if isinstance(v, dict) and "argmax" in v]
        print(f"agreement {r['model']}: {'PASS' if r['pass'] else 'FAIL'}; " + "; ".join(parts))
except Exception as e:
    print("agreement: no results", e)
rows = [json.loads(l) for l in (out / "bench.jsonl").read_text().splitlines() if l.strip()] if (out / "bench.jsonl").exists() else []
print(f"{'model':34} {'mode':12} {'backend':14} {'ngl':>4} {'pp t/s':>10} {'tg t/s':>10} {'pp tok/J':>9} {'tg tok/J':>9}  energy")
for r in rows:
    tpj = r.get("tokens_per_joule") or {}
    f = lambda v: f"{v:.2f}" if isinstance(v, (int, float)) else "n/a"
    print(f"{Path(r['model_path']).name[:34]:34} {r['mode']:12} {r['backend'][:14]:14} {r.get('n_gpu_layers', 0):>4} "
          f"{r['pp_tps']:>10.1f} {r['tg_tps']:>10.1f} {f(tpj.get('pp')):>9} {f(tpj.get('tg')):>9}  {r['energy_source']}")
EOF
grep -E "passed|failed|error" "$OUT/pytest.txt" | tail -1
echo "total $(( $(date +%s) - T0 )) s; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
