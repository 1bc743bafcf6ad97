#!/usr/bin/env bash
# Exercise the GPU path whenever a GPU is available: the hf engine's batched KV-cache generation,
# a DeepSpeed learner step (DIS policy loss) and the learner -> engine weight push, on a random-init
# Qwen2 with Qwen2.5-0.5B's dims. Prints one JSON object per learner preset (stdout); exits 2 without
# a GPU. Extra arguments go to every `horizonrl-bench gpu` call, e.g. `--layers 4 --steps 2`.
#
#   bash scripts/gpu_check.sh                   # fp32 ZeRO-0 learner, then bf16 ZeRO-3 (the production preset)
#   bash scripts/gpu_check.sh --batch 1 8 64    # other engine batch sizes
set -uo pipefail
cd "$(dirname "$0")/.."
python=python3
[ -x .venv/bin/python ] && python=.venv/bin/python

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu_check: no NVIDIA GPU here (nvidia-smi missing or it lists none); nothing to check" >&2
    exit 2
fi
nvidia-smi -L >&2
# Each preset in its own process (DeepSpeed joins one process group per process); both run even if
# the first fails, and the script fails if either did.
status=0
"$python" -m rl.bench gpu "$@" || status=$?
"$python" -m rl.bench gpu --zero-stage 3 --bf16 "$@" || status=$?
exit $status
