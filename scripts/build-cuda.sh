#!/usr/bin/env bash
# Builds `ablate --features cuda` on a machine with no GPU and no CUDA toolkit (this
# project's CPU machines), for the lent H100/H200 machine; see ../shared/notes/cuda-build.md.
# With a real CUDA toolkit, `cargo build --release --features cuda` is all you need.
#
#   scripts/build-cuda.sh            # → .cuda/ablate (stripped) and .cuda/train_step (bench)
#
# nvcc comes from PyPI (cuda-toolkit 13.0.2, into $CUDA_WHEEL_DIR); the link uses stub
# libraries generated from the function names in cudarc's bindings (into $CUDA_STUBS_DIR).
# On the GPU machine, run with LD_LIBRARY_PATH set to PyTorch's nvidia/cu13/lib folder:
#   LD_LIBRARY_PATH=$(python3 -c "import nvidia,os;print(os.path.join(list(nvidia.__path__)[0],'cu13','lib'))"):/usr/local/nvidia/lib64
set -euo pipefail
cd "$(dirname "$0")/.."
wheel="${CUDA_WHEEL_DIR:-/opt/cu13}"
stubs="${CUDA_STUBS_DIR:-/opt/cudastubs}"
target="${CUDA_TARGET_DIR:-/opt/cuda-target}"
cu="$wheel/nvidia/cu13"

if [ ! -x "$cu/bin/nvcc" ]; then
  python3 -m pip install -q --target "$wheel" "cuda-toolkit[nvcc,crt,nvvm,cudart,cccl]==13.0.2"
fi

cargo fetch -q
cudarc="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.*/ | sort -V | tail -1)"
mkdir -p "$stubs"
# Every CUDA function cudarc declares, one stub library per real one, with its SONAME.
grep -rhoE 'fn (cu[A-Z][A-Za-z0-9_]*|nvrtc[A-Za-z0-9_]+|curand[A-Za-z0-9_]+|cublas[A-Za-z0-9_]+)\(' "$cudarc/src" \
  | sed -E 's/^fn //; s/\($//' | sort -u >"$stubs/all.txt"
stub() { # name, soname, grep pattern, [exclude pattern]
  local name=$1 soname=$2 pat=$3 excl=${4:-^$}
  grep -E "$pat" "$stubs/all.txt" | grep -vE "$excl" | sed 's/.*/void &(void){}/' >"$stubs/$name.c"
  cc -shared -fPIC -o "$stubs/lib$name.so" -Wl,-soname,"$soname" "$stubs/$name.c"
}
stub cuda libcuda.so.1 '^cu[A-Z]'
stub nvrtc libnvrtc.so.13 '^nvrtc'
stub curand libcurand.so.10 '^curand'
stub cublas libcublas.so.13 '^cublas' '^cublasLt'
stub cublasLt libcublasLt.so.13 '^cublasLt'
ln -sf "$cu/lib/libcudart.so.13" "$stubs/libcudart.so"

export PATH="$cu/bin:$PATH" CUDA_ROOT="$cu" LIBRARY_PATH="$stubs"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}" CUDAFORGE_THREADS="${CUDAFORGE_THREADS:-2}"
export CARGO_TARGET_DIR="$target"
cargo build --release --features cuda --bin ablate
cargo bench --no-run --features cuda --bench train_step 2>&1 | tee "$target/bench-build.log" >/dev/null
mkdir -p .cuda
strip -o .cuda/ablate "$target/release/ablate"
bench="$(grep -oE '\(([^)]*train_step-[0-9a-f]+)\)' "$target/bench-build.log" | tr -d '()' | tail -1)"
[ -n "$bench" ] && strip -o .cuda/train_step "$bench"
ls -la .cuda
