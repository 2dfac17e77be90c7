#!/usr/bin/env bash
# GPU check, one command on a CUDA machine (from the repository root, package installed):
#     bash benchmarks/gpu_check.sh [OUT_DIR]
# Trains on cuda (train and demo), samples on cuda, runs a short compare on cuda (with the real
# peers when they are installed), and checks that every output landed; then, with two or more GPUs,
# trains under torchrun (one GPU per local rank, NCCL). Exits non-zero on the first failure.
# DEVICE=cpu ITERATIONS=3 STEPS=5 runs the same script on a CPU (to check the script itself).
set -euo pipefail
out=${1:-gpu_check_out}
device=${DEVICE:-cuda}
rm -rf "$out" && mkdir -p "$out"
[ "$device" = cpu ] || python - <<'PY'
import sys, torch
if not torch.cuda.is_available():
    sys.exit("gpu_check: CUDA is not available on this machine")
print("gpu_check: torch", torch.__version__, "on", torch.cuda.get_device_name(0), "x", torch.cuda.device_count())
PY
python - "$out/data.npy" <<'PY'
import sys
import numpy as np
from jko_plugin.datasets import two_moons
np.save(sys.argv[1], two_moons(6000, seed=0, noise=0.05, standardize=True).numpy())
PY
small=(--blocks 2 --iterations "${ITERATIONS:-100}" --quiet --device "$device")
jko-flow train --data "$out/data.npy" --out "$out/train" --block ode "${small[@]}"
jko-flow train --data "$out/data.npy" --out "$out/train_spline" --block spline "${small[@]}"
jko-flow demo --out "$out/demo" "${small[@]}"
jko-flow sample --model "$out/train/model" -n 1000 --out "$out/samples.npy" --device "$device"
methods=jko,jko-spline,cfm,otcfm,realnvp,nsf
python -c "import torchcfm" 2>/dev/null && methods+=",torchcfm,torchcfm-ot"
python -c "import flow_matching" 2>/dev/null && methods+=",flow_matching"
jko-flow compare --methods "$methods" --steps "${STEPS:-300}" --num-train 4000 --num-test 1000 \
    --out "$out/compare" --device "$device"
python - "$out" <<'PY'
import json, sys
from pathlib import Path
import numpy as np
out = Path(sys.argv[1])
for run in ("train", "train_spline", "demo"):
    m = json.loads((out / run / "metrics.json").read_text())
    assert np.isfinite(m["test_nll"]) and np.isfinite(m["w2"]), (run, m["test_nll"], m["w2"])
    assert (out / run / "model" / "model_index.json").is_file(), run
s = np.load(out / "samples.npy")
assert s.shape == (1000, 2) and np.isfinite(s).all(), s.shape
records = json.loads((out / "compare" / "results.json").read_text())
bad = [r["method"] for r in records if r["errors"] or r["test_nll"] is None]
assert not bad, f"methods with errors: {bad}"
print("gpu_check: ok:", ", ".join(f"{r['method']} NLL {r['test_nll']:.3f}" for r in records))
PY
ngpu=$(python -c "import torch; print(torch.cuda.device_count() if '$device' != 'cpu' else 0)")
if [ "$ngpu" -ge 2 ]; then
    torchrun --standalone --nproc_per_node=2 -m jko_plugin.cli train --data "$out/data.npy" \
        --out "$out/torchrun" "${small[@]}"
    test -f "$out/torchrun/metrics.json"
    echo "gpu_check: torchrun on 2 GPUs (NCCL) ok"
fi
echo "gpu_check: all passed; outputs in $out"
