#!/usr/bin/env bash
# Install what is needed (.venv, CPU torch first), then run a preset of reproduce.py.
#   bash reproduce.sh quick          # the demo (<= 10 min on 2 CPU cores): results/report.md
#   bash reproduce.sh paper --device cuda
# The demo runs as two torchrun workers of one thread each where there are 2 cores or more
# (1.2x faster than one process of two threads, docs/distributed.md); NSR_WORKERS=1 runs one.
set -e
cd "$(dirname "$0")"
source setup_env.sh requirements.txt
WORKERS=${NSR_WORKERS:-2}
CORES=$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)
if [ "${1:-}" = quick ] && [ "$WORKERS" -gt 1 ] && [ "$CORES" -ge "$WORKERS" ] \
        && [ -z "${WORLD_SIZE:-}" ]; then
    echo "running the demo as $WORKERS torchrun workers of one thread each (NSR_WORKERS=1: one process)"
    OMP_NUM_THREADS=1 exec "$PY" -m torch.distributed.run --standalone \
        --nproc-per-node "$WORKERS" --max-restarts 0 reproduce.py "$@"
fi
exec "$PY" reproduce.py "$@"
