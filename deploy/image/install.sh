#!/usr/bin/env bash
# Installs the marketplace for production into a new virtual environment: the package from this
# source tree (not editable) with its `dagster` and `deploy` extras, bytecode compiled, and the
# install checked. The Dockerfile runs it; CI runs it on a plain machine into a fresh venv, so the
# image's install steps are exercised even where no image is built.
#
#   deploy/image/install.sh VENV_DIR
#
# SRC: the source tree to install (default: the repository this script is in).
# PYTHON: the interpreter that creates the venv (default: python3; the image's is 3.11).
set -euo pipefail

say() { printf 'install.sh: %s\n' "$*"; }
fail() {
  printf 'install.sh: error: %s\n' "$*" >&2
  exit 1
}

if [ "$#" -ne 1 ] || [ -z "$1" ]; then
  printf 'usage: %s VENV_DIR\n' "$0" >&2
  exit 2
fi
VENV=$1
SRC=${SRC:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
PYTHON=${PYTHON:-python3}

[ -f "$SRC/pyproject.toml" ] || fail "no pyproject.toml in $SRC (set SRC to the source tree)"
command -v "$PYTHON" >/dev/null || fail "$PYTHON not found (set PYTHON)"
# A fresh venv only: packages left from an earlier install would hide a missing dependency.
if [ -e "$VENV" ] && [ -n "$(ls -A "$VENV" 2>/dev/null)" ]; then
  fail "$VENV exists and is not empty; give a new folder"
fi

say "creating a virtual environment at $VENV with $("$PYTHON" --version 2>&1)"
"$PYTHON" -m venv "$VENV"
PY=$VENV/bin/python

say "upgrading pip"
"$PY" -m pip install --quiet --upgrade pip

say "installing $SRC[dagster,deploy]"
"$PY" -m pip install --quiet "$SRC[dagster,deploy]"

# pip compiles what it installs; this compiles our two packages again and fails on a syntax
# error, so no process of the image pays for compiling them at start (PYTHONDONTWRITEBYTECODE is
# set in many containers).
say "compiling bytecode"
SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
"$PY" -m compileall -q "$SITE/marketplace" "$SITE/marketplace_dagster"

# The packages each process imports, without loading the definitions (that needs a configuration
# and the registries it names).
say "checking the install"
"$PY" -c "import marketplace, marketplace_dagster, dagster_k8s, dagster_postgres" ||
  fail "a package is missing from $VENV (are the dagster and deploy extras in pyproject.toml?)"
"$VENV/bin/dagster" --version || fail "the dagster command does not run"
for command in dagster-webserver dagster-daemon marketplace-webhooks; do
  [ -x "$VENV/bin/$command" ] || fail "$VENV/bin/$command is missing"
done

say "done: $VENV"
