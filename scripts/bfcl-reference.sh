#!/usr/bin/env bash
# Regenerates tests/fixtures/bfcl (BFCL's own verdicts and converter outputs for the Java
# and JavaScript categories) with bfcl-eval 2026.3.23, the version src/eval/bfcl ports.
# Needs the package registry once; tests only read the files it writes.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${XDG_CACHE_HOME:-$HOME/.cache}/ablate/bfcl-eval-2026.3.23
if [ ! -d "$cache/bfcl_eval" ]; then
  mkdir -p "$cache"
  python3 -m pip download --no-deps --quiet bfcl-eval==2026.3.23 -d "$cache"
  python3 -m zipfile -e "$cache"/bfcl_eval-2026.3.23-py3-none-any.whl "$cache"
fi
PYTHONPATH="$cache" python3 "$root/scripts/bfcl_java_js_reference.py" \
  --data "$root/../shared/data/bfcl" --out "$root/tests/fixtures/bfcl"
