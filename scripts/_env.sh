# Shared by scripts/run and scripts/test: a project virtualenv with the given requirements.
# Re-installs only when a requirements file changed (a stamp keyed by their hash).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${AGENTOPS_VENV:-$ROOT/.venv}"
PYTHON_BIN="${PYTHON:-python3}"

ensure_venv() {
  if ! "$PYTHON_BIN" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "Agent Ops Console needs Python 3.11 or newer ($PYTHON_BIN is $("$PYTHON_BIN" --version 2>&1))." >&2
    exit 1
  fi
  [ -x "$VENV/bin/python" ] || "$PYTHON_BIN" -m venv "$VENV"
  local files=() f
  for f in "$@"; do files+=("$ROOT/$f"); done
  local stamp="$VENV/.installed-$(cat "${files[@]}" | sha256sum | cut -c1-16)"
  if [ ! -f "$stamp" ]; then
    echo "Installing Python dependencies into $VENV ..."
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
    local args=() 
    for f in "${files[@]}"; do args+=(-r "$f"); done
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${args[@]}"
    touch "$stamp"
  fi
  export PATH="$VENV/bin:$PATH"
}
