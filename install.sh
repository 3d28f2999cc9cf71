#!/usr/bin/env bash
# Install ERI Live from nothing: system libraries (apt-get), then a virtual environment in .venv.
#   ./install.sh          the app
#   ./install.sh --dev    the app and the test tools
set -euo pipefail
cd "$(dirname "$0")"

extras=""
[ "${1:-}" = "--dev" ] && extras="[dev]"

# System libraries: PortAudio (microphone), OpenGL/EGL/GLib (OpenCV, MediaPipe, Qt),
# fonts and xkbcommon (Qt), Xvfb (GUI tests without a display).
packages="libportaudio2 libgl1 libegl1 libglib2.0-0 libxkbcommon0 libxkbcommon-x11-0 \
libfontconfig1 libdbus-1-3 xvfb python3-venv"
missing=""
for p in $packages; do
  dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ] && command -v apt-get >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "Installing system packages:$missing"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $missing >/dev/null
fi

python="${PYTHON:-python3}"
[ -d .venv ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# The CPU build of torch first, so that no CUDA build is pulled in on a machine without a GPU;
# on a GPU machine, install the CUDA build of torch you want before running this script.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
fi
.venv/bin/python -m pip install -q -e ".$extras"
echo "Installed. Try: .venv/bin/eri info"
