#!/usr/bin/env bash
# The whole pipeline on sample_data/, ending in recommendations. Run by `make demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
WS=${WS:-mstage-workspace}
export MSTAGE_WORKSPACE=$WS
step() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }

step "mstage prepare-data"
mstage prepare-data --interactions sample_data/interactions.parquet \
  --users sample_data/users.parquet --items sample_data/items.parquet --label-col click

step "mstage status"
mstage status
