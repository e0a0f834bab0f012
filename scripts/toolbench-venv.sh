#!/usr/bin/env bash
# A virtual environment for ToolBench's own ToolEval (../shared/upstream/ToolBench/toolbench/
# tooleval, run unchanged), outside the project ($ABLATE_TOOLBENCH_VENV, default
# ~/.cache/ablate/toolbench-venv), installed on first use. ToolBench's evaluator calls
# `openai.ChatCompletion` (the API before openai 1.0), so its `openai` requirement, which
# names no version, is pinned below 1.0 here; the rest of its requirements.txt as it is.
#
#   scripts/toolbench-venv.sh        install if missing; print the venv's python.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
upstream="${ABLATE_TOOLBENCH_UPSTREAM:-$here/../shared/upstream/ToolBench}"
venv="${ABLATE_TOOLBENCH_VENV:-$HOME/.cache/ablate/toolbench-venv}"
log() { echo "toolbench-venv: $*" >&2; }

if ! { [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import openai, yaml, tenacity, numpy, pandas, tqdm, pydantic; assert openai.version.VERSION < '1'" 2>/dev/null; }; then
  log "installing ToolBench's ToolEval requirements (openai<1.0) into $venv"
  python3 -m venv "$venv"
  grep -v '^openai' "$upstream/toolbench/tooleval/requirements.txt" >"$venv/requirements.txt"
  echo 'openai<1.0' >>"$venv/requirements.txt"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$venv/requirements.txt"
fi
echo "$venv/bin/python"
