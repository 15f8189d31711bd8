#!/usr/bin/env bash
# One-command GPU check, for a lent GPU machine (about 8 minutes at most on one H100/H200).
# Runs from the repository root on a bare machine whose python3 has torch with CUDA: nothing is
# downloaded; the project runs from the source tree. Writes gpu_check.json (and the CUDA test
# log) to $OUT when set, else to benchmarks/results/.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks/results}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 - <<'PY' || { echo "python3 has no torch: nothing to check"; exit 1; }
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "devices", torch.cuda.device_count())
PY
for pkg in yaml tqdm matplotlib pytest; do
  python3 -c "import $pkg" 2>/dev/null || echo "missing python package: $pkg (some parts will fail)"
done
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
# 1. The CUDA tests (a minute or two).
timeout 180 python3 -m pytest -q -p no:cacheprovider -m cuda tests 2>&1 | tee "$out/cuda_tests.log" | tail -5
# 2. The figures (bounded by --budget; the timeout is a backstop).
timeout 330 python3 benchmarks/gpu_check.py --out "$out/gpu_check.json" --budget 270 > /dev/null
status=$?
python3 - "$out/gpu_check.json" <<'PY' || true
import json, sys
r = json.load(open(sys.argv[1]))["sections"]
for row in r.get("step", {}).get("rows", []):
    print(f"step {row['kind']:5} {row['precision']:7} graph={row['cuda_graph']!s:5} {row['ms_per_step']:.3f} ms")
for row in r.get("ratio", {}).get("rows", []):
    print(f"ratio {row['preset']:27} graph={row['cuda_graph']!s:5} EP/BP {row['ratio']:.1f}")
for row in r.get("epoch", {}).get("rows", []):
    print(f"epoch {row['preset']:27} graph={row['cuda_graph']!s:5} {row['epoch_seconds']:.0f} s")
print("ddp", r.get("ddp"))
PY
exit $status
