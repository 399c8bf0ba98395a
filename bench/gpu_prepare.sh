#!/usr/bin/env bash
# Here, on the CPU machine (after `make install`): everything a lent GPU machine (no network, no embedded
# model packages) needs for bench/gpu_smoke.sh, in .gpu/ (git-ignored through .git/info/exclude):
#   .gpu/whl   the wheels of bench/gpu_wheels.txt (cp312, manylinux x86_64, --no-deps)
#   .gpu/src   the committed tree at HEAD (in-progress edits stay here), with the embedded SmolLM2
#              tokenizer in params/model_configs/llama-smoke, so the random model needs no GGUF there
#   .gpu/runs  gpu-smoke's stages 01-02 run here (they need the embedding model, 88 MB, not the GPU)
# Then, with the device tool:  run(command="cd .gpu/src && GPU_WHEELS=../whl bash bench/gpu_smoke.sh
#                                   --upstream ../runs", carry=[".gpu"])
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$PWD/.venv/bin/python}
G=$PWD/.gpu
mkdir -p .git/info && touch .git/info/exclude
grep -qx '/.gpu/' .git/info/exclude || echo /.gpu/ >>.git/info/exclude
rm -rf "$G/src" "$G/runs" "$G/reports" && mkdir -p "$G/whl" "$G/src" "$G/runs"

echo "== wheels -> .gpu/whl"
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
  manylinux2014_x86_64 manylinux1_x86_64 any; do platforms+=(--platform "$p"); done
grep -v '^#' bench/gpu_wheels.txt | while read -r req; do
  [ -z "$req" ] && continue
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d "$G/whl" "$req" >/dev/null 2>&1 ||
    "$PY" -m pip wheel -q --no-deps -w "$G/whl" "$req" >/dev/null # sdist only: a pure-Python wheel
done

echo "== source at $(git rev-parse --short HEAD) -> .gpu/src"
git archive HEAD platypus_utils params bench notebooks accelerate pyproject.toml | tar -x -C "$G/src"
"$PY" - "$G/src/params/model_configs/llama-smoke" <<'PY'
import shutil, sys
from pathlib import Path
from platypus_utils.models import ensure_converted_smollm2
source = ensure_converted_smollm2()
for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"):
    if (source / name).is_file():
        shutil.copy(source / name, Path(sys.argv[1]) / name)
PY

echo "== gpu-smoke stages 01-02 on this CPU -> .gpu/runs"
(cd "$G/src" && PYTHONPATH="$G/src" "$PY" -m platypus_utils run params/gpu-smoke.yaml --only 01 --only 02 \
  --force --set "paths.runs_dir=$G/runs" --set "paths.reports_dir=$G/reports")
du -sh "$G/whl" "$G/src" "$G/runs"
