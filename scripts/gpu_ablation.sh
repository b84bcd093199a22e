#!/usr/bin/env bash
# The SmolLM2 ablation (configs/study_smollm2_ablation_gpu.yaml) on one GPU box that has torch,
# transformers, peft and torch_geometric but not deepspeed, pydantic, ray or mlflow, and no network.
#
#   bash scripts/gpu_ablation.sh pack      # here: everything the box lacks, under .gpu/ (git-ignored)
#   bash scripts/gpu_ablation.sh stage     # on the box, call 1 (carry .gpu/gguf.part00)
#   bash scripts/gpu_ablation.sh run       # on the box, call 2 (carry .gpu/gguf.part01 .gpu/wheels
#                                          #   .gpu/data.tar.xz .gpu/gguf.sha256), right after call 1
#   bash scripts/gpu_ablation.sh local     # here, on CPU with a tiny student: the code path of `run`
#
# Why two calls: a call carries at most 64 MiB, and the SmolLM2-135M-Instruct GGUF alone is 93.8 MiB
# (Q4_1; a bf16 export is 257 MiB, and the GGUF barely compresses). `pack` splits it in two halves;
# `stage` keeps the first on the box in .gpu_stash/ (an ignored path, kept while the box stays warm:
# make call 2 within its warm window, 30 s on nvidia-h200), `run` joins both and checks the sha256.
# Each call then carries under 55 MiB with the repo (`pack` prints the sizes: 46.9 and 52.8 MiB
# besides the repo on 2026-12-03). As device-tool calls:
#   run(command="bash scripts/gpu_ablation.sh stage", carry=[".gpu/gguf.part00"], timeout_s=120)
#   run(command="bash scripts/gpu_ablation.sh run", carry=[".gpu/gguf.part01", ".gpu/wheels",
#       ".gpu/data.tar.xz", ".gpu/gguf.sha256"], timeout_s=600)
# Never run on a GPU yet: the first `run` is also its first test there (`local` is its CPU rehearsal).
#
# What `run` installs (pip --no-index --no-deps from .gpu/wheels, into /tmp/magdi-site): deepspeed (the
# engine: training does not run without it; built here as a pure-Python wheel, no ops), pydantic and
# its parts (config, deepspeed), hjson (deepspeed), gguf (transformers reads the GGUF with it), typer and
# rich at the versions tested here (the CLI). Ray and MLflow are not needed: the script starts torchrun
# and `magdi-dist evaluate` itself (scripts/gpu_ablation.py), and tests/test_gpu_ablation.py runs the
# same path on CPU with both made unimportable.
# Results: $OUT/report.md, $OUT/summary.json, $OUT/cells.tar.gz (the device tool brings $OUT back).
set -euo pipefail
cd "$(dirname "$0")/.."
G=.gpu
GGUF_NAME=SmolLM2-135M-Instruct.Q4_1.gguf
DATA=${MAGDI_TEST_DATA:-../shared/data}
DATA_FILES=(benchmarks/gsm8k/test.jsonl mag/debate_du/gsm_3_2_100.json mag/debate_du/gsm_3_3_top100.json
            mag/debate_du/gsm_llama32_3b_agents3_rounds3.json
            mag/debate_du/gsm_v4_stateful_3_4_top_100_majority_error.json mag/magdi_layout/GSM8k_gpt4o_round_2.json)
WHEELS=(pydantic pydantic-core annotated-types typing-inspection typing-extensions hjson gguf typer rich)

pack() {
  local py=${PYTHON:-.venv/bin/python} pins=() name
  mkdir -p "$G/wheels"
  rm -f "$G"/wheels/*.whl
  for name in "${WHEELS[@]}" deepspeed; do  # the versions tested here
    pins+=("$name==$("$py" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")")
  done
  # The box runs CPython 3.12 on x86-64 (KINDS.md); only pydantic-core is compiled.
  "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$G/wheels" "${pins[@]:0:${#WHEELS[@]}}"
  # DeepSpeed is published as source only: a pure-Python wheel, its ops left to JIT (none is used).
  DS_BUILD_OPS=0 "$py" -m pip wheel -q --no-deps --no-build-isolation -w "$G/wheels" "${pins[-1]}"
  tar -cJf "$G/data.tar.xz" -C "$DATA" "${DATA_FILES[@]}"
  local gguf
  gguf=$("$py" -c "from magdi_dist.model.sources import preset_file; print(preset_file('smollm2-135m-instruct'))")
  (cd "$(dirname "$gguf")" && sha256sum "$GGUF_NAME") > "$G/gguf.sha256"
  rm -f "$G"/gguf.part*
  split -n 2 -d "$gguf" "$G/gguf.part"
  du -b "$G"/gguf.part00 | awk '{printf "call 1 carries %.1f MiB (+ the repo)\n", $1 / 1048576}'
  du -bc "$G"/gguf.part01 "$G"/wheels "$G"/data.tar.xz "$G"/gguf.sha256 | tail -1 |
    awk '{printf "call 2 carries %.1f MiB (+ the repo)\n", $1 / 1048576}'
}

stage() {
  mkdir -p .gpu_stash
  cp "$G/gguf.part00" .gpu_stash/
  echo "staged $(du -b .gpu_stash/gguf.part00 | cut -f1) bytes in .gpu_stash/: make call 2 (run) now"
}

run() {
  if [ ! -f .gpu_stash/gguf.part00 ]; then
    echo "error: .gpu_stash/gguf.part00 is not on this machine (it went back after call 1): stage again," \
         "then run right after it" >&2
    exit 3
  fi
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/magdi-site \
    "$G"/wheels/*.whl
  export PYTHONPATH=/tmp/magdi-site${PYTHONPATH:+:$PYTHONPATH} MAGDI_CACHE=/tmp/magdi-cache
  mkdir -p ../shared/data  # where the configs name the data (../shared/data, as on the developers' machines)
  tar -xJf "$G/data.tar.xz" -C ../shared/data
  cat .gpu_stash/gguf.part00 "$G/gguf.part01" > "/tmp/$GGUF_NAME"
  (cd /tmp && sha256sum -c "$OLDPWD/$G/gguf.sha256")
  nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv || true
  python3 scripts/gpu_ablation.py --device cuda --gguf "/tmp/$GGUF_NAME" --out "${OUT:-runs/gpu_ablation}" \
    --workdir /tmp/magdi-work --deadline-s "${DEADLINE_S:-500}" "$@"
}

local_run() {  # the CPU rehearsal: tiny student, few steps, few questions
  ${PYTHON:-.venv/bin/python} scripts/gpu_ablation.py --device cpu --student tiny --out "${OUT:-runs/gpu_ablation_cpu}" \
    --workdir runs/gpu_ablation_cpu/work --set train.max_steps=2 --set data.max_mags=40 --limit 4 \
    --max-new-tokens 8 --batch-size 4 --deadline-s 1500 "$@"
}

cmd=${1:-}
shift || true
case "$cmd" in
  pack) pack ;;
  stage) stage ;;
  run) run "$@" ;;
  local) local_run "$@" ;;
  *) echo "usage: bash scripts/gpu_ablation.sh pack|stage|run|local [scripts/gpu_ablation.py options]" >&2; exit 2 ;;
esac
