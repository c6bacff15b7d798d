#!/usr/bin/env bash
# Creates .venv (if missing) and installs physsample with its test extra, editable.
# With no torch in the environment it first installs torch==2.13.0, which on the
# project's machines is a CPU build lying on disk (an unpinned torch would pull CUDA).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip_install() {  # quiet on success; on failure print pip's output and stop
  local log; log=$(mktemp)
  if ! .venv/bin/python -m pip install -q --disable-pip-version-check "$@" >"$log" 2>&1; then
    grep -v "^WARNING: Location" "$log" >&2; rm -f "$log"; return 1
  fi
  rm -f "$log"
}
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  pip_install torch==2.13.0
fi
pip_install -e ".[test]"
.venv/bin/python -c "import physsample, torch, openmm, e3nn, mdtraj; print('physsample environment ready: torch', torch.__version__, '| openmm', openmm.__version__)"
