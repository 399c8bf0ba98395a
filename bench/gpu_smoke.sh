#!/usr/bin/env bash
# The GPU check in one command, for a lent GPU machine (no network there): installs the wheels
# carried in .whl/ (see bench/gpu_wheels.txt; the machine has torch, transformers, peft, accelerate and
# sentence-transformers), then runs bench/gpu_smoke.py, which writes gpu_smoke.md/.json to $OUT.
#   here, once:  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#                  --platform manylinux2014_x86_64 -d .whl -r bench/gpu_wheels.txt
#   there:       bash bench/gpu_smoke.sh          (about 6-9 minutes on one H100/H200)
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS=${GPU_WHEELS:-.whl}
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl || exit 2
  export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
exec python3 bench/gpu_smoke.py "$@"
