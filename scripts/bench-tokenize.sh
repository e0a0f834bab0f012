#!/usr/bin/env bash
# Tokenization throughput of ablate against Python `tokenizers` on this machine, same texts,
# same tokenizer, same threads: `cargo bench --bench tokenize` beside scripts/bench_tokenize.py.
#
#   scripts/bench-tokenize.sh                        # 200,000 examples, all cores
#   BENCH_EXAMPLES=20000 BENCH_THREADS=2 BENCH_ROUNDS=3 scripts/bench-tokenize.sh
#
# `tokenizers` goes into a virtual environment outside the project ($ABLATE_BENCH_VENV,
# default ~/.cache/ablate/tokenizers-venv), installed on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${ABLATE_BENCH_VENV:-$HOME/.cache/ablate/tokenizers-venv}"
threads="${BENCH_THREADS:-$(nproc)}"
rounds="${BENCH_ROUNDS:-3}"
n="${BENCH_EXAMPLES:-200000}"
out="${BENCH_OUT:-results/bench/tokenize}"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import tokenizers" 2>/dev/null; then
  echo "installing tokenizers into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q tokenizers
fi
cargo bench --no-run --bench tokenize >/dev/null 2>&1
mkdir -p "$out"
# This machine's speed drifts within minutes: the two are measured in turn, $rounds times,
# and each side's median is compared.
for i in $(seq "$rounds"); do
  RAYON_NUM_THREADS="$threads" cargo bench -q --bench tokenize -- --examples "$n" --out "$out" \
    2>/dev/null | tail -1 >"$out/ablate-$i.json"
  RAYON_RS_NUM_THREADS="$threads" "$venv/bin/python" scripts/bench_tokenize.py "$out" "$n" >"$out/python-$i.json"
done
python3 - "$out" "$rounds" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
load = lambda side: [json.load(open(f"{out}/{side}-{i}.json")) for i in range(1, rounds + 1)]
a, p = load("ablate"), load("python")
assert {r["checksum"] for r in a} == {r["checksum"] for r in p}, "the two tokenizations differ"
assert a[0]["tokens"] == p[0]["tokens"]
ma = statistics.median(r["tokens_per_s"] for r in a)
mp = statistics.median(r["tokens_per_s"] for r in p)
print(json.dumps({
    "examples": a[0]["examples"], "tokens": a[0]["tokens"], "threads": a[0]["threads"],
    "ablate_tokens_per_s": round(ma), "python_tokens_per_s": round(mp),
    "ratio": round(ma / mp, 3),
    "ratio_per_round": [round(x["tokens_per_s"] / y["tokens_per_s"], 3) for x, y in zip(a, p)],
}))
PY
