#!/usr/bin/env bash
# The project's test command (README, CI): installs into .venv, then runs pytest.
#   bash test.sh            # every test, the slow real-data ones included
#   bash test.sh -m "not slow"
cd "$(dirname "$0")"
source setup_env.sh requirements-dev.txt
exec "$PY" -m pytest -q tests "$@"
