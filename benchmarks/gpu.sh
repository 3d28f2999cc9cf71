#!/usr/bin/env bash
# The GPU table of docs/benchmarks.md, measured on a fresh GPU machine in a few minutes:
#
#   benchmarks/gpu.sh [gpu_models.py options]     (PYTHON=/path/to/python to pick one)
#
# Needs a Python with torch (CUDA), numpy and OpenCV; nothing from this repository is installed
# (benchmarks/gpu_models.py maps the checkout onto the `eri` package). No MediaPipe, PyAV or Qt.
# For the TensorRT and ONNX Runtime (CUDA provider) rows it pip-installs what the ONNX export and
# the fp16 conversion need, only if missing: onnxscript (+ onnx-ir, ml_dtypes) and
# onnxconverter-common, about 6 MB of wheels. Rows whose runtime is absent say so.
#
# Writes benchmarks/results/gpu_models.json (and gpu_pipeline.json when the full package with
# MediaPipe and PyAV is installed, for the end-to-end pipeline rows). Engines and ONNX files are
# cached in $ERI_CACHE_DIR (default ~/.cache/eri-live), so a second run skips the builds.
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-python3}"
mkdir -p benchmarks/results

"$py" -c 'import sys, torch
sys.exit(0 if torch.cuda.is_available() else "torch sees no CUDA GPU: install a CUDA build of torch, "
         "or run benchmarks/gpu_models.py --device cpu --quick on a CPU machine")'

# The ONNX export and fp16 conversion, for the TensorRT / ONNX Runtime CUDA rows only.
if "$py" -c 'import importlib.util as u, sys
ort = u.find_spec("onnxruntime") and "CUDAExecutionProvider" in __import__("onnxruntime").get_available_providers()
sys.exit(0 if u.find_spec("tensorrt") or ort else 1)'; then
  missing=$("$py" -c 'import importlib.util as u
print(" ".join(p for m, p in (("onnxscript", "onnxscript"), ("onnxconverter_common", "onnxconverter-common")) if u.find_spec(m) is None))')
  if [ -n "$missing" ]; then
    echo "installing $missing (ONNX export for the TensorRT / ONNX Runtime rows)"
    "$py" -m pip install --only-binary=:all: $missing
  fi
fi

"$py" benchmarks/gpu_models.py --json benchmarks/results/gpu_models.json "$@"

# End-to-end rows (camera-free synthetic source through the real pipeline) when the full
# package is installed; the model-level table above never needs it.
if "$py" -c 'import eri.realtime.face, mediapipe, av' 2>/dev/null; then
  backends=$("$py" -c 'from eri.choices import BACKENDS; print(",".join(BACKENDS))')
  "$py" -c 'import sys; from eri.realtime.cli import main; sys.exit(main(sys.argv[1:]))' \
    benchmark --source synthetic --backends "$backends" --precisions fp32,fp16 \
    --mode streaming,recompute --frames 128 --repeats 2 --no-progress \
    --json benchmarks/results/gpu_pipeline.json
fi

# The training row: one epoch per stage of the dual_branch recipe, fp16 autocast (and fp32 for
# comparison), from the windows `python benchmarks/gpu_train.py pack` preprocessed beforehand
# (it needs MediaPipe and PyAV; carry benchmarks/results/gpu_train_pack/ to this machine).
if [ -f benchmarks/results/gpu_train_pack/pack.json ]; then
  "$py" benchmarks/gpu_train.py run --fp32 --json benchmarks/results/gpu_train.json
else
  echo "no benchmarks/results/gpu_train_pack: training row skipped (make it with gpu_train.py pack)"
fi
