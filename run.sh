#!/usr/bin/env bash
# FlexAvatar Runtime: the two commands of the README.
#
#   bash run.sh demo [flexavatar demo options]   install, then run the main job (export -> serve -> stream -> latency)
#   bash run.sh test [pytest options]            install, then run the test suite (GPU tests skip without a GPU)
#
# Installing: a machine without torch gets the CPU wheel torch==2.13.0 (an unpinned torch would pull several GB of
# CUDA packages); a machine that already has torch (e.g. a CUDA build) keeps it. onnxruntime (CPU) is installed
# unless an onnxruntime (or onnxruntime-gpu) is already importable.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}

install() {
  $PY -c "import torch" 2>/dev/null || $PY -m pip install -q torch==2.13.0
  extras="dev,bench"
  $PY -c "import onnxruntime" 2>/dev/null || extras="cpu,$extras"
  $PY -m pip install -q -e ".[$extras]"
}

cmd=${1:-}
shift || true
case "$cmd" in
  demo) install; exec $PY -m flexrt.cli demo "$@" ;;
  test) install; exec $PY -m pytest -q "$@" ;;
  *) echo "usage: bash run.sh demo|test [options]" >&2; exit 2 ;;
esac
