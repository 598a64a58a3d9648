#!/usr/bin/env bash
# Set up (or refresh) the project's virtual environment.
#
# - creates $VENV (default: .venv in the repo, ignored by git);
# - installs torch 2.13.0 first, unless the environment already has a torch
#   (a user with a CUDA build keeps theirs: create $VENV with it, or point
#   VENV at an existing environment);
# - builds torch-scatter and torch-sparse from source once, with
#   --no-build-isolation so that they compile against that torch;
# - installs vqgnn editable with the extras in $EXTRAS (default: test,dev).
#
# Re-running it is fast and changes nothing: every step checks first.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
VENV="${VENV:-.venv}"
EXTRAS="${EXTRAS:-test,dev}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
PYTHON="${PYTHON:-python3}"
JOBS="${MAX_JOBS:-$(nproc 2>/dev/null || echo 2)}"

say() { printf '[bootstrap] %s\n' "$*"; }

if [ ! -x "$VENV/bin/python" ]; then
    say "creating virtual environment $VENV"
    "$PYTHON" -m venv "$VENV"
fi
py="$VENV/bin/python"
pip=("$py" -m pip --disable-pip-version-check)

has() { "$py" -c "import $1" >/dev/null 2>&1; }

if ! has torch; then
    say "installing torch==$TORCH_VERSION"
    "${pip[@]}" install "torch==$TORCH_VERSION"
else
    say "torch $("$py" -c 'import torch; print(torch.__version__)') already installed: kept"
fi

if ! has torch_scatter || ! has torch_sparse; then
    say "building torch-scatter and torch-sparse from source ($JOBS jobs, once)"
    # setuptools/wheel/ninja are needed by the no-isolation build; ninja
    # compiles the extension's files in parallel.
    "${pip[@]}" install setuptools wheel ninja
    MAX_JOBS="$JOBS" "${pip[@]}" install --no-build-isolation torch-scatter
    MAX_JOBS="$JOBS" "${pip[@]}" install --no-build-isolation torch-sparse
else
    say "torch-scatter and torch-sparse already built: kept"
fi

# The editable install is redone only when setup.py changed since the last one.
stamp="$VENV/.vqgnn-install-stamp"
want="$(sha256sum setup.py | cut -d' ' -f1) $EXTRAS"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! has vqgnn; then
    say "installing vqgnn (editable) with extras [$EXTRAS]"
    "${pip[@]}" install -e ".[$EXTRAS]"
    echo "$want" > "$stamp"
else
    say "vqgnn already installed with extras [$EXTRAS]: kept"
fi
say "ready: $VENV"
