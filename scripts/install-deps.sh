#!/usr/bin/env bash
# Installs what blenderdist's demo and tests need on a Debian machine: Blender (Debian's 3.4 package), iproute2,
# and Chromium (the dashboard's browser test runs it headless).
set -euo pipefail
missing=()
command -v blender >/dev/null 2>&1 || missing+=(blender)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v unshare >/dev/null 2>&1 || missing+=(util-linux)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing ${missing[*]} ..."
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing[@]}"
fi
blender --version | head -1
chromium --version
