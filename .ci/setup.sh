#!/usr/bin/env bash
# Set up a fresh Debian/Ubuntu machine for napari-nmsr: system libraries for Qt
# and Xvfb, torch, then the project with its test extra (editable).
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES="xvfb xauth libgl1 libgl1-mesa-dri libglx-mesa0 libegl1 libxkbcommon-x11-0 libx11-xcb1
libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0
libxcb-xfixes0 libxcb-shape0 libxcb-xkb1 libfontconfig1 libdbus-1-3 fonts-dejavu-core"

if command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  missing=$(dpkg-query -W -f='${Package} ${Status}\n' $APT_PACKAGES 2>/dev/null | grep -vc "install ok installed" || true)
  if [ "$missing" != "0" ] || ! dpkg -s $APT_PACKAGES >/dev/null 2>&1; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $APT_PACKAGES >/dev/null
  fi
fi

PY=${PYTHON:-python3}
# torch first: on the CI/dev machines this is a local CPU wheel; elsewhere a
# normal download. Any torch already installed that satisfies >=2.1 is kept.
if ! $PY -c "import torch" >/dev/null 2>&1; then
  $PY -m pip install -q "torch==2.13.0" || $PY -m pip install -q "torch>=2.1"
fi
$PY -m pip install -q -e ".[test]"
