#!/usr/bin/env bash
# Stop what deploy/local/up.sh started: replicas first (SIGTERM: they drain), then haproxy and redis.
set -euo pipefail
cd "$(dirname "$0")/../.."
exec "${PYTHON:-python3}" deploy/local/cluster.py down --dir "${FLEXRT_RUN_DIR:-.run/cluster}" "$@"
