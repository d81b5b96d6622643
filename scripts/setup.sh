#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install pcpo with its test tools.
#
# * Fresh machine: makes .venv and installs `torch==2.13.0` in the SAME pip command as pcpo (which
#   pulls accelerate and peft), so pip keeps that torch instead of resolving a multi-GB CUDA build.
# * A torch already importable by the chosen python (e.g. your GPU build) is left alone: no pin.
# Environment: PCPO_VENV (default .venv; set to "" to install into the current python),
#              PCPO_TORCH (default torch==2.13.0, the CPU wheel), PCPO_EXTRAS (default dev).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${PCPO_VENV-.venv}"
if [ -n "$venv" ]; then
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  py="$venv/bin/python"
else
  py="$(command -v python3)"
fi
stamp="${venv:-.}/.pcpo-installed"
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && "$py" -c "import pcpo, torch" 2>/dev/null; then
  exit 0
fi
torch_req=()
if ! "$py" -c "import torch" 2>/dev/null; then
  torch_req=("${PCPO_TORCH:-torch==2.13.0}")
fi
"$py" -m pip install --disable-pip-version-check -q "${torch_req[@]}" -e ".[${PCPO_EXTRAS:-dev}]"
touch "$stamp"
