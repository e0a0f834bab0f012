#!/usr/bin/env bash
# Training-step throughput of ablate against PyTorch on this machine, same configs, one run:
# ../shared/bench/torch_train_bench.py beside `cargo bench --bench train_step`.
#
#   scripts/bench-train.sh                 # CPU: small 8x256 and opt-125m-shape 4x256
#   BENCH_THREADS=2 BENCH_ROUNDS=5 scripts/bench-train.sh
#
# PyTorch and transformers go into a virtual environment outside the project
# ($ABLATE_BENCH_VENV, default ~/.cache/ablate/torch-venv), installed on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${ABLATE_BENCH_VENV:-$HOME/.cache/ablate/torch-venv}"
threads="${BENCH_THREADS:-$(nproc)}"
rounds="${BENCH_ROUNDS:-3}"
torch_script="${ABLATE_TORCH_BENCH:-../shared/bench/torch_train_bench.py}"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import torch, transformers" 2>/dev/null; then
  echo "installing torch and transformers into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q torch transformers
fi
# The CPU backward pass uses OpenBLAS when it is installed (src/train/matmul.rs): install
# Debian's threaded build where we can, and measure ablate with and without it.
if [ ! -e /usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0 ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  echo "installing libopenblas0-pthread" >&2
  { apt-get update -qq && apt-get install -y -qq libopenblas0-pthread; } >/dev/null 2>&1 || echo "could not install OpenBLAS" >&2
fi
cargo bench --no-run --bench train_step >/dev/null 2>&1
out="${BENCH_OUT:-results/bench}"
mkdir -p "$out"
run() { # name, batch, torch config, ablate config, steps, warmup
  local name=$1 batch=$2 tcfg=$3 acfg=$4 steps=$5 warm=$6 i
  # This machine's speed drifts by tens of percent within minutes, so the three are
  # measured in turn, $rounds times, and each side's median is compared.
  for i in $(seq "$rounds"); do
    RAYON_NUM_THREADS="$threads" cargo bench -q --bench train_step -- --config "$acfg" \
      --batch "$batch" --seq 256 --steps "$steps" --warmup "$warm" 2>/dev/null | tail -1 >"$out/$name-ablate-$i.json"
    # dropout 0: ablate trains without dropout, so both do the same work.
    "$venv/bin/python" "$torch_script" --config "$tcfg" --batch "$batch" --seq 256 \
      --steps "$steps" --warmup "$warm" --threads "$threads" --dropout 0.0 2>/dev/null >"$out/$name-torch-$i.json"
    ABLATE_BLAS=off RAYON_NUM_THREADS="$threads" cargo bench -q --bench train_step -- --config "$acfg" \
      --batch "$batch" --seq 256 --steps "$steps" --warmup "$warm" 2>/dev/null | tail -1 >"$out/$name-ablate-gemm-$i.json"
  done
  python3 - "$name" "$out" "$rounds" <<'PY'
import json, statistics, sys
name, out, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
load = lambda kind: [json.load(open(f"{out}/{name}-{kind}-{i}.json")) for i in range(1, rounds + 1)]
a, t, g = load("ablate"), load("torch"), load("ablate-gemm")
med = lambda runs, key: statistics.median(r[key] for r in runs)
rounds_ratio = [x["tokens_per_s"] / y["tokens_per_s"] for x, y in zip(a, t)]
print(f"{name:>16}: ablate {med(a, 'tokens_per_s'):8.1f} tok/s, {med(a, 'peak_rss_mb'):6.0f} MB | "
      f"torch {med(t, 'tokens_per_s'):8.1f} tok/s, {med(t, 'peak_rss_mb'):6.0f} MB | "
      f"speed ratio {med(a, 'tokens_per_s') / med(t, 'tokens_per_s'):.2f} "
      f"(per round {', '.join(f'{r:.2f}' for r in rounds_ratio)}), "
      f"memory ratio {med(a, 'peak_rss_mb') / med(t, 'peak_rss_mb'):.2f} | "
      f"matmuls: {a[0].get('blas') or 'gemm crate'}; without OpenBLAS {med(g, 'tokens_per_s'):.1f} tok/s "
      f"(ratio {med(g, 'tokens_per_s') / med(t, 'tokens_per_s'):.2f})")
PY
}
run small-8x256 8 small small 10 2
run opt-125m-4x256 4 opt-125m-shape opt-125m 5 1
