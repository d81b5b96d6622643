#!/usr/bin/env bash
# Final-weight SHA-256 of one seed of each framework x objective, 2 epochs (behaviour-preservation check).
# Usage: benchmarks/redesign-sha/run.sh OUT_DIR [SRC_DIR]   (SRC_DIR: a checkout's src/ to run instead)
set -euo pipefail
out="$1"; src="${2:-}"
py="${PY:-.venv/bin/python}"
mkdir -p "$out"
for cfg in ddpo ddpo-pcpo dancegrpo dancegrpo-pcpo flowgrpo flowgrpo-pcpo; do
  rm -rf "$out/$cfg"
  PYTHONPATH="$src" "$py" -m pcpo.cli train "$cfg" --out "$out/$cfg" --set epochs=2 --set seed=0 \
    --set threads=1 --set log.tensorboard=false > "$out/$cfg.log" 2>&1
  echo "$cfg $(sha256sum "$out/$cfg/final/model.safetensors" | cut -d' ' -f1)"
done
