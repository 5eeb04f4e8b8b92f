#!/usr/bin/env bash
# One GPU check for Herd (issue 23): Herd's worker against llama-server built from the same
# llama.cpp source, on an NVIDIA GPU, in one results file. See usage() or --help.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: bench/gpu_check.sh [--cpu] [--help]

On a machine with an NVIDIA GPU (nvidia-smi answers), it builds llama-cpp-python with CUDA
into a venv and llama-server (CUDA) from the same llama-cpp-python sdist's vendored llama.cpp,
then measures, in about 6 minutes (bench/latency_bench.py, both servers side by side):
  1. tokens/s at 1 and 8 streams, Herd's worker vs llama-server, all layers on the GPU;
  2. TTFT under the latency bench's 70 % schedule (a short run), with each one's capacity;
  3. the VRAM each server holds (nvidia-smi) beside Herd's own estimate;
  4. tokens/s and VRAM again with half the layers offloaded.
It writes one markdown file, gpu_check.md, in $OUT (default: bench/.work).

Without a GPU, or with --cpu, it runs the CPU fallback: no builds, the installed
llama-cpp-python, llama-server from $LLAMA_SERVER if set (else Herd alone), tiny versions of
the same measurements (seconds, 1 stream); the file then says "CPU fallback".

Environment:
  OUT              folder for gpu_check.md (default: bench/.work)
  PYTHON           the Python that Herd is installed in (default: python3)
  MODEL            GGUF to measure (default: the demo SmolLM2-135M model)
  LLAMA_SERVER     CPU fallback: a llama-server binary to compare against
  LLAMA_CPP_SDIST  llama-cpp-python sdist (.tar.gz) to build from (default: pip download of
                   the installed version, which needs PyPI from the GPU machine)
  CUDA_ARCH        CMAKE_CUDA_ARCHITECTURES (default: native)
  THREADS          CPU threads of both servers (default: 8 on a GPU, 1 in the fallback: a
                   busy 2-core machine stalls llama.cpp's threads at every barrier)
  GPU_CHECK_WORK   build and scratch folder (default: bench/.work/gpu-check)
EOF
}

say() { printf 'gpu_check: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

cpu_only=0
for arg in "$@"; do
  case "$arg" in
    -h | --help) usage; exit 0 ;;
    --cpu) cpu_only=1 ;;
    *) usage >&2; die "unknown argument: $arg" ;;
  esac
done

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
OUT_DIR=${OUT:-$REPO/bench/.work}
WORK=${GPU_CHECK_WORK:-$REPO/bench/.work/gpu-check}
CUDA_ARCH=${CUDA_ARCH:-native}
RESULTS=$OUT_DIR/gpu_check.md
mkdir -p "$OUT_DIR" "$WORK"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

if [[ $cpu_only == 0 ]] && command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  mode=gpu
else
  mode=cpu
fi
say "mode: $mode; results go to $RESULTS"

"$PYTHON" -c 'import llama_cpp, app' 2>/dev/null \
  || die "$PYTHON cannot import llama_cpp and Herd's app: pip install -e '.[test]' first"
MODEL=${MODEL:-$("$PYTHON" -c 'from app.store.demo import find_demo_model; print(find_demo_model().path)')}
[[ -f $MODEL ]] || die "no model file at $MODEL"

# Unpack the llama-cpp-python sdist Herd's installed version comes from; prints its folder.
unpack_sdist() {
  local version sdist
  version=$("$PYTHON" -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))')
  sdist=${LLAMA_CPP_SDIST:-}
  if [[ -z $sdist ]]; then
    say "downloading the llama-cpp-python $version sdist"
    "$PYTHON" -m pip download -q --no-binary :all: --no-deps "llama-cpp-python==$version" \
      -d "$WORK/src" >&2
    sdist=$WORK/src/llama_cpp_python-$version.tar.gz
  fi
  [[ -f $sdist ]] || die "no sdist at $sdist (set LLAMA_CPP_SDIST)"
  tar -xzf "$sdist" -C "$WORK/src"
  printf '%s\n%s\n' "$sdist" "$WORK/src/$(basename "$sdist" .tar.gz)"
}

# llama-cpp-python with CUDA into $WORK/venv (Herd's other packages from the system's).
build_wheel() {
  local sdist=$1
  "$PYTHON" -m venv --system-site-packages "$WORK/venv"
  CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=$CUDA_ARCH" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
    "$WORK/venv/bin/python" -m pip install --no-deps --force-reinstall --no-cache-dir "$sdist"
}

# llama-server with CUDA from the same source; the binary lands in $WORK/llama-build/bin.
build_server() {
  local src=$1
  cmake -S "$src/vendor/llama.cpp" -B "$WORK/llama-build" -DCMAKE_BUILD_TYPE=Release \
    -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$CUDA_ARCH" -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
  cmake --build "$WORK/llama-build" --config Release -j "$(nproc)" --target llama-server
}

build_cuda() {
  command -v cmake >/dev/null || die "cmake is needed for the CUDA builds"
  command -v nvcc >/dev/null || [[ -x /usr/local/cuda/bin/nvcc ]] || die "nvcc (the CUDA toolkit) is needed"
  export PATH="$PATH:/usr/local/cuda/bin"
  local sdist src wheel_pid server_pid
  { read -r sdist; read -r src; } < <(unpack_sdist)
  say "building llama-cpp-python (CUDA) and llama-server (CUDA) from $sdist; logs in $WORK"
  build_wheel "$sdist" >"$WORK/build-wheel.log" 2>&1 &
  wheel_pid=$!
  build_server "$src" >"$WORK/build-server.log" 2>&1 &
  server_pid=$!
  wait "$wheel_pid" || die "llama-cpp-python build failed: $WORK/build-wheel.log"
  wait "$server_pid" || die "llama-server build failed: $WORK/build-server.log"
  "$WORK/venv/bin/python" -c 'import llama_cpp, sys; sys.exit(not llama_cpp.llama_supports_gpu_offload())' \
    || die "the llama-cpp-python built has no GPU offload: $WORK/build-wheel.log"
  PYTHON=$WORK/venv/bin/python
  LLAMA_SERVER=$WORK/llama-build/bin/llama-server
}

# One latency_bench.py run in the background, so that a TERM or INT to this script reaches
# it: it then stops the servers it started.
bench() {
  say "latency_bench.py $*"
  "$PYTHON" "$REPO/bench/latency_bench.py" --model "$MODEL" "$@" >>"$WORK/bench.log" 2>&1 &
  bench_pid=$!
  trap 'kill -TERM "$bench_pid" 2>/dev/null; wait "$bench_pid"; exit 143' TERM INT
  wait "$bench_pid" || die "bench/latency_bench.py $* failed; its output: $WORK/bench.log"
  trap - TERM INT
}

# "Herd worker VRAM: measured vs estimated" from one latency_bench --json file.
vram_line() {
  "$PYTHON" - "$1" <<'EOF'
import json, sys
doc = json.load(open(sys.argv[1]))
est, got = doc["estimate_mib"]["vram_mib"], doc["vram_mib"].get("herd")
seen = "not measured (no nvidia-smi)" if got is None else f"{got:.0f} MiB measured by nvidia-smi"
ratio = f" ({got / est:.2f}x the estimate)" if got and est else ""
print(f"Herd worker VRAM: {seen}, Herd's estimate {est:.0f} MiB{ratio}; nvidia-smi counts the "
      "CUDA context too, which the estimate leaves out (app/store/estimate.py).")
EOF
}

machine_lines() {
  echo "Date: $(date -u '+%Y-%m-%d %H:%M') UTC; commit $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "CPU: $(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1), $(nproc) cores"
  if [[ $mode == gpu ]]; then
    echo "GPU: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)"
  fi
  echo "llama-cpp-python $("$PYTHON" -c 'import llama_cpp; print(llama_cpp.__version__)'); model $(basename "$MODEL")"
}

started=$(date +%s)
: >"$WORK/bench.log"
anchor=(--no-anchor)
if [[ $mode == gpu ]]; then
  build_cuda
  anchor=(--llama-server "$LLAMA_SERVER")
  threads=${THREADS:-8}
  half=$("$PYTHON" -c 'import sys; from pathlib import Path; from app.store.gguf_file import read_gguf
print(len(read_gguf(Path(sys.argv[1])).layout.layer_bytes) // 2)' "$MODEL")
  measured_at=$(date +%s)
  bench "${anchor[@]}" --threads "$threads" --parallel 8 --n-gpu-layers -1 --streams 1 8 \
    --levels 0.7 --rounds 2 --duration 15 --capacity-duration 10 \
    --json "$WORK/full.json" --markdown "$WORK/full.md"
  bench "${anchor[@]}" --threads "$threads" --parallel 8 --n-gpu-layers "$half" --streams 1 8 \
    --levels --rounds 1 --capacity-duration 10 --json "$WORK/half.json" --markdown "$WORK/half.md"
else
  if [[ -n ${LLAMA_SERVER:-} ]]; then
    [[ -x $LLAMA_SERVER ]] || die "LLAMA_SERVER=$LLAMA_SERVER is not an executable"
    anchor=(--llama-server "$LLAMA_SERVER")
  else
    say "no GPU and no LLAMA_SERVER: Herd alone, no anchor"
  fi
  measured_at=$(date +%s)
  bench "${anchor[@]}" --threads "${THREADS:-1}" --parallel 1 --streams 1 --levels 0.7 \
    --rounds 1 --duration 3 --capacity-duration 4 --prompt-words 8 32 --max-tokens 4 8 \
    --json "$WORK/full.json" --markdown "$WORK/full.md"
fi
finished=$(date +%s)

{
  if [[ $mode == gpu ]]; then
    echo "# GPU check: Herd vs llama-server, same llama.cpp source (bench/gpu_check.sh)"
  else
    echo "# GPU check: CPU fallback (no NVIDIA GPU here; tiny runs, not a GPU measurement)"
  fi
  echo
  machine_lines
  echo "Measurements took $((finished - measured_at)) s; the whole script $((finished - started)) s."
  echo
  echo "## All layers offloaded (-1): tokens/s at 1 and 8 streams, TTFT at 70 % load, VRAM"
  [[ $mode == gpu ]] || echo "(CPU fallback: GPU layers 0, 1 slot, 1 stream, seconds-long runs)"
  echo
  cat "$WORK/full.md"
  echo
  vram_line "$WORK/full.json"
  echo
  echo "## Half the layers offloaded"
  echo
  if [[ $mode == gpu ]]; then
    echo "GPU layers: $half."
    echo
    cat "$WORK/half.md"
    echo
    vram_line "$WORK/half.json"
  else
    echo "Skipped: CPU fallback (no GPU to offload to)."
  fi
} >"$RESULTS"
say "wrote $RESULTS"
