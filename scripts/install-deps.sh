#!/usr/bin/env bash
# Installs what blenderdist's demo and tests need on a Debian machine: Blender (Debian's 3.4 package), iproute2,
# Chromium (the dashboard's browser test runs it headless) and ffmpeg (`video = mp4` jobs).
set -euo pipefail
missing=()
command -v blender >/dev/null 2>&1 || missing+=(blender)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v unshare >/dev/null 2>&1 || missing+=(util-linux)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
# `video = mp4` jobs and their test need ffmpeg (and ffprobe, from the same package).
{ command -v ffmpeg && command -v ffprobe; } >/dev/null 2>&1 || missing+=(ffmpeg)
# The install kit's test renders a man page and runs `status --watch` in a pseudo-terminal (`script`).
command -v man >/dev/null 2>&1 || missing+=(man-db)
command -v script >/dev/null 2>&1 || missing+=(bsdutils)
# The relay test (tests/relay.rs) builds two NAT routers in network namespaces with iptables (MASQUERADE, DROP).
command -v iptables >/dev/null 2>&1 || missing+=(iptables)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing ${missing[*]} ..."
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing[@]}"
fi
blender --version | head -1
chromium --version
ffmpeg -hide_banner -version | head -1
