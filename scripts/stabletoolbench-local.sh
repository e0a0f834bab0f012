#!/usr/bin/env bash
# StableToolBench's own virtual API server (../shared/upstream/StableToolBench/server, run
# unchanged) on 127.0.0.1, for tests and local sweeps. Its PyPI dependencies go into a
# virtual environment outside the project ($ABLATE_STB_VENV, default
# ~/.cache/ablate/stabletoolbench-venv), installed on first use.
#
#   scripts/stabletoolbench-local.sh venv
#       install the server's requirements (and ToolEval's, for the export check) if
#       missing; print the venv's python.
#   scripts/stabletoolbench-local.sh up WORKDIR PORT CACHE_DIR OPENAI_BASE TOOLBENCH_URL
#       write WORKDIR/config.yml (response cache CACHE_DIR, simulator at OPENAI_BASE, the
#       real-API relay at TOOLBENCH_URL) and start the server there on 127.0.0.1:PORT;
#       its PID goes to WORKDIR/server.pid, its output to WORKDIR/server.out. Returns once
#       the port answers (exit 1 after 60 s).
#   scripts/stabletoolbench-local.sh down WORKDIR
#       stop the server by its PID.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
upstream="${ABLATE_STB_UPSTREAM:-$here/../shared/upstream/StableToolBench}"
venv="${ABLATE_STB_VENV:-$HOME/.cache/ablate/stabletoolbench-venv}"
log() { echo "stabletoolbench-local: $*" >&2; }

ensure_venv() {
  if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import fastapi, uvicorn, slowapi, openai, yaml, requests, tenacity, numpy, pandas, tqdm, backoff" 2>/dev/null; then
    return
  fi
  log "installing StableToolBench's server and ToolEval requirements into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$upstream/server/requirements.txt"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$upstream/toolbench/tooleval/requirements.txt"
  # eval_pass_rate.py also imports backoff, which its requirements.txt does not list.
  "$venv/bin/pip" install -q --disable-pip-version-check backoff
}

case "${1:-}" in
  venv)
    ensure_venv
    echo "$venv/bin/python"
    ;;
  up)
    [ $# -eq 6 ] || { log "usage: up WORKDIR PORT CACHE_DIR OPENAI_BASE TOOLBENCH_URL"; exit 2; }
    work="$2"; port="$3"; cache="$4"; api_base="$5"; relay="$6"
    ensure_venv
    mkdir -p "$work" "$cache"
    cat >"$work/config.yml" <<YAML
api_key: "local-stub"
api_base: "$api_base"
model: "stub-simulator"
temperature: 0
toolbench_url: "$relay"
tools_folder: "$work/tools"
cache_folder: "$cache"
is_save: true
port: $port
log_file: "$work/server.log"
YAML
    # Its own module, run as it is: uvicorn imports main.py from the upstream folder and
    # the server reads config.yml from the working directory.
    (cd "$work" && exec "$venv/bin/python" -m uvicorn main:app --app-dir "$upstream/server" \
      --host 127.0.0.1 --port "$port" >"$work/server.out" 2>&1) &
    echo $! >"$work/server.pid"
    for _ in $(seq 1 120); do
      if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        log "up on 127.0.0.1:$port (pid $(cat "$work/server.pid"))"
        exit 0
      fi
      if ! kill -0 "$(cat "$work/server.pid")" 2>/dev/null; then
        log "the server exited:"; cat "$work/server.out" >&2; exit 1
      fi
      sleep 0.5
    done
    log "no answer on 127.0.0.1:$port after 60 s"; cat "$work/server.out" >&2; exit 1
    ;;
  down)
    [ $# -eq 2 ] || { log "usage: down WORKDIR"; exit 2; }
    pidfile="$2/server.pid"
    if [ -f "$pidfile" ]; then
      pid="$(cat "$pidfile")"
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
      kill -9 "$pid" 2>/dev/null || true
      rm -f "$pidfile"
    fi
    ;;
  *)
    sed -n '2,19p' "$0" >&2
    exit 2
    ;;
esac
