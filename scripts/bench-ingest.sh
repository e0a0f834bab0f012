#!/usr/bin/env bash
# Metric ingest, planning and executor overhead of ablate, beside MLflow's tracking store
# and raw SQLite on this machine, in one run: ../shared/bench/mlflow_ingest_bench.py next to
# `cargo bench --bench overhead`, then the ratios.
#
#   scripts/bench-ingest.sh
#
# MLflow goes into a virtual environment outside the project ($ABLATE_MLFLOW_VENV, default
# ~/.cache/ablate/mlflow-venv), installed on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${ABLATE_MLFLOW_VENV:-$HOME/.cache/ablate/mlflow-venv}"
script="${ABLATE_MLFLOW_BENCH:-../shared/bench/mlflow_ingest_bench.py}"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import mlflow" 2>/dev/null; then
  echo "installing mlflow into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q mlflow
fi
out="${BENCH_OUT:-results/bench}"
mkdir -p "$out"
cargo bench --no-run --bench overhead >/dev/null 2>&1
cargo bench -q --bench overhead 2>/dev/null | tail -1 >"$out/overhead-ablate.json"
"$venv/bin/python" "$script" --parts mlflow,sqlite --percall-max-s "${PERCALL_MAX_S:-60}" \
  --json-out "$out/ingest-peers.json" >/dev/null
python3 - "$out/overhead-ablate.json" "$out/ingest-peers.json" <<'PY'
import json, sys
a = json.load(open(sys.argv[1]))
p = json.load(open(sys.argv[2]))["headline"]
rows = [
    ("ablate store, 64k points (8 runs x 2,000 steps x 4)", a["ingest_64k_points_per_s"]),
    ("ablate store, 1M points (125 runs x 2,000 x 4)", a["ingest_1m_points_per_s"]),
    ("raw sqlite3 executemany, 64k, one transaction", p["sqlite_64k_points_per_s"]),
    ("raw sqlite3 executemany, 1M, one transaction", p["sqlite_1m_points_per_s"]),
    ("MLflow log_batch (SQLite store), 64k", p["mlflow_log_batch_points_per_s"]),
    ("MLflow log_metric, one call per point", p["mlflow_log_metric_points_per_s"]),
]
print("| ingest | points/s |\n| --- | ---: |")
for name, v in rows:
    print(f"| {name} | {v:,.0f} |")
print()
print(f"ablate / raw SQLite (1M): {a['ingest_1m_points_per_s'] / p['sqlite_1m_points_per_s']:.2f}")
print(f"ablate / MLflow log_batch (64k): {a['ingest_64k_points_per_s'] / p['mlflow_log_batch_points_per_s']:.1f}")
print(f"planning 100,000 runs: {a['plan_100k_runs_s']:.2f} s")
print(f"executor overhead: {a['executor_overhead_ms_per_run']:.2f} ms a run ({a['executor_runs']} no-op runs, plan -> store -> report)")
PY
