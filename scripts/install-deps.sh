#!/usr/bin/env bash
# Installs what blenderdist's demo and tests need on a Debian machine: Blender (Debian's 3.4 package), iproute2,
# Chromium (the dashboard's browser test runs it headless), ffmpeg (`video = mp4` jobs), and the UPnP lab's router.
# The UPnP lab (tests/upnp.rs) runs Debian's miniupnpd (nftables flavour) in a namespace, with nft for its firewall,
# python3 for its STUN responder and upnpc to check it; the package's own service stays disabled (it is never
# started outside the test's namespaces).
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
command -v nft >/dev/null 2>&1 || missing+=(nftables)
command -v miniupnpd >/dev/null 2>&1 || missing+=(miniupnpd miniupnpd-nftables)
command -v upnpc >/dev/null 2>&1 || missing+=(miniupnpc)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
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
