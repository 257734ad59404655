#!/usr/bin/env bash
# Start redis + haproxy + N flexavatar replicas on this machine (deploy/local/cluster.py; docs/SCALEOUT.md).
#   bash deploy/local/up.sh                      # 3 CPU replicas (tiny model), balancer on 127.0.0.1:50051
#   bash deploy/local/up.sh --gpus -- --engines engines/    # one replica per GPU, serving exported engines
# Run directory: $FLEXRT_RUN_DIR (default .run/cluster). Stop with: bash deploy/local/down.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
exec "${PYTHON:-python3}" deploy/local/cluster.py up --dir "${FLEXRT_RUN_DIR:-.run/cluster}" "$@"
