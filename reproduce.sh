#!/usr/bin/env bash
# Install what is needed (.venv, CPU torch first), then run a preset of reproduce.py.
#   bash reproduce.sh quick          # the demo (<= 10 min on 2 CPU cores): results/report.md
#   bash reproduce.sh paper --device cuda
set -e
cd "$(dirname "$0")"
source setup_env.sh requirements.txt
exec "$PY" reproduce.py "$@"
