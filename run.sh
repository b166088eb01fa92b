#!/usr/bin/env bash
# One entry point for a fresh machine. Creates .venv/ (pip + venv; torch==2.13.0 is pinned) when it is
# missing or when the requirements changed, then:
#   ./run.sh serve [bentoml serve options]   serve the API on http://127.0.0.1:3000
#   ./run.sh test  [pytest options]          run the test suite
#   ./run.sh lint                            ruff
#   ./run.sh python ...                      a Python inside the venv
set -euo pipefail
cd "$(dirname "$0")"
# No usage analytics leave this machine unless the operator opts in (docs/security.md): BentoML's, Ray's (ecgfm batch)
# and huggingface_hub's. Set a variable explicitly to override.
export BENTOML_DO_NOT_TRACK="${BENTOML_DO_NOT_TRACK:-true}" RAY_USAGE_STATS_ENABLED="${RAY_USAGE_STATS_ENABLED:-0}"
export HF_HUB_DISABLE_TELEMETRY="${HF_HUB_DISABLE_TELEMETRY:-1}"

ensure_venv() {
  local stamp=.venv/.requirements.sha256
  local wanted
  wanted=$(cat requirements.txt requirements-dev.txt pyproject.toml | sha256sum | cut -d' ' -f1)
  if [ -x .venv/bin/python ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
    return
  fi
  echo "run.sh: setting up .venv (first run or requirements changed)..." >&2
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -r requirements-dev.txt
  .venv/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .
  echo "$wanted" > "$stamp"
}

command=${1:-help}
[ $# -gt 0 ] && shift
case "$command" in
  serve)
    ensure_venv
    exec .venv/bin/bentoml serve service:ECGFMService --host "${HOST:-127.0.0.1}" --port "${PORT:-3000}" "$@"
    ;;
  test)
    ensure_venv
    exec .venv/bin/python -m pytest "$@"
    ;;
  lint)
    ensure_venv
    .venv/bin/ruff check . && .venv/bin/ruff format --check .
    ;;
  python)
    ensure_venv
    exec .venv/bin/python "$@"
    ;;
  *)
    sed -n '2,8p' "$0"
    exit 2
    ;;
esac
