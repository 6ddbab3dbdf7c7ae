# Sourced by reproduce.sh and test.sh: makes .venv (once) and installs what the project needs.
# torch goes in first, on its own, so that pip keeps a CPU build on a CPU machine.
# Set NSR_NO_VENV=1 to use the current python instead of .venv.
set -e
REQS=${1:-requirements.txt}
if [ "${NSR_NO_VENV:-0}" != 1 ]; then
  if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
  fi
  PY=.venv/bin/python
else
  PY=$(command -v python3)
fi
if ! "$PY" -c "import torch" 2>/dev/null; then
  echo "installing torch (CPU build unless TORCH_SPEC/TORCH_INDEX say otherwise)..."
  if [ -n "${TORCH_INDEX:-}" ]; then
    "$PY" -m pip install -q "${TORCH_SPEC:-torch}" --index-url "$TORCH_INDEX"
  else
    # the pinned CPU wheel; on a machine without it, the PyTorch CPU index has the same build
    "$PY" -m pip install -q "${TORCH_SPEC:-torch==2.13.0}" 2>/dev/null \
      || "$PY" -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu
  fi
fi
# a stamp in .venv skips pip on later runs until a requirements file changes
stamp=.venv/$(basename "$REQS").ok
if [ "${NSR_NO_VENV:-0}" = 1 ] || [ ! -f "$stamp" ] || [ "$REQS" -nt "$stamp" ] \
   || [ requirements.txt -nt "$stamp" ] || [ requirements-nodeps.txt -nt "$stamp" ]; then
  "$PY" -m pip install -q -r "$REQS"
  # torchattacks declares torchvision (which would pull a CUDA torch): no dependencies
  "$PY" -m pip install -q --no-deps -r requirements-nodeps.txt
  [ "${NSR_NO_VENV:-0}" = 1 ] || touch "$stamp"
fi
# the torch build must still be the one installed first (no CUDA build pulled in by a package)
"$PY" - <<'PYEOF'
import os, shutil, sys
import torch
cpu_machine = shutil.which("nvidia-smi") is None and not os.environ.get("TORCH_INDEX")
if cpu_machine and torch.version.cuda is not None:
    sys.exit(f"setup_env.sh: a CUDA build of torch ({torch.__version__}) was installed on a "
             "machine without a GPU: remove .venv and re-run")
print(f"torch {torch.__version__} ({'CUDA ' + torch.version.cuda if torch.version.cuda else 'CPU build'})")
PYEOF
