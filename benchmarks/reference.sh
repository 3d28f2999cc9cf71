#!/usr/bin/env bash
# The reference CPU benchmark recorded in docs/benchmarks.md: the 640x360 Pexels clip through
# every CPU backend, streaming vs recompute, plus the live path paced at 30 fps.
#   benchmarks/reference.sh [MEDIA_DIR]     (default: ../shared/media beside the checkout)
set -euo pipefail
cd "$(dirname "$0")/.."
media="${1:-../shared/media}"
clip="$media/video/WolfgangLanger_Pexels.mp4"
[ -f "$clip" ] || { echo "missing $clip: pass the media folder as the first argument" >&2; exit 1; }
mkdir -p benchmarks/results
.venv/bin/eri benchmark --source "$clip" --backends onnxruntime,torch \
  --mode streaming,recompute,live --pace-fps 30 --frames 300 --repeats 3 \
  --json benchmarks/results/cpu_reference.json
.venv/bin/python benchmarks/components.py --media "$media" --json benchmarks/results/components.json
