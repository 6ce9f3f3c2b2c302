#!/usr/bin/env bash
# The whole pipeline on sample_data/, ending in recommendations. Run by `make demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
export MSTAGE_WORKSPACE=${WS:-mstage-workspace}
step() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }

step "mstage prepare-data"
mstage prepare-data --interactions sample_data/interactions.parquet \
  --users sample_data/users.parquet --items sample_data/items.parquet --label-col click

step "mstage train-retrieval"
mstage train-retrieval

step "mstage train-ranking"
mstage train-ranking

step "mstage export-features"
mstage export-features

step "mstage build-index"
mstage build-index

step "mstage status"
mstage status

step "mstage recommend (in-process)"
mstage recommend --user-id 1 --top-k 5 --explain
printf '2\n3\n4\n' | mstage recommend --user-ids-file - --top-k 5 --json

step "mstage evaluate (popularity vs retrieval vs the whole pipeline)"
mstage evaluate --users 300 --plot "$MSTAGE_WORKSPACE/reports/quality.png"

step "mstage build-ensemble"
mstage build-ensemble

step "mstage serve --detach"
mstage serve --detach
trap 'mstage stop >/dev/null 2>&1 || true' EXIT

step "mstage recommend --server (Triton)"
mstage recommend --user-id 1 --top-k 5 --server 127.0.0.1:8001

step "mstage bench --server (Triton, gRPC)"
mstage bench --server 127.0.0.1:8001 --requests 200 --concurrency 1,4

step "mstage stop"
mstage stop
