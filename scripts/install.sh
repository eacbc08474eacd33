#!/usr/bin/env bash
# Installs blenderdist for this user: the program, shell completions (bash, zsh, fish) and man pages, all made
# from the program's own command-line definitions (`blenderdist generate`).
#
#   scripts/install.sh                 build a release binary and install into ~/.local
#   scripts/install.sh --prefix DIR    install into DIR/bin and DIR/share instead
#   scripts/install.sh --bin PATH      install an already-built binary instead of building one
#
# With the default prefix, `man blenderdist` and bash completion work as soon as ~/.local/bin is on PATH (man-db and
# bash-completion look in ~/.local/share); zsh needs DIR/share/zsh/site-functions on its fpath (printed below).
set -euo pipefail
cd "$(dirname "$0")/.."
prefix="$HOME/.local"
bin=""
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) prefix="${2:?--prefix needs a folder}"; shift 2 ;;
        --bin) bin="${2:?--bin needs a path}"; shift 2 ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
if [ -z "$bin" ]; then
    cargo build --release --locked --bin blenderdist
    bin=target/release/blenderdist
fi
[ -x "$bin" ] || { echo "install.sh: $bin is not an executable program" >&2; exit 1; }

share="$prefix/share"
mkdir -p "$prefix/bin" "$share/bash-completion/completions" "$share/zsh/site-functions" \
    "$share/fish/vendor_completions.d" "$share/man/man1"
# Copy to a temporary name and rename, so a running blenderdist never sees a half-written program file.
install -m 0755 "$bin" "$prefix/bin/.blenderdist.new"
mv -f "$prefix/bin/.blenderdist.new" "$prefix/bin/blenderdist"
installed="$prefix/bin/blenderdist"
"$installed" generate completions bash > "$share/bash-completion/completions/blenderdist"
"$installed" generate completions zsh > "$share/zsh/site-functions/_blenderdist"
"$installed" generate completions fish > "$share/fish/vendor_completions.d/blenderdist.fish"
"$installed" generate man "$share/man/man1" > /dev/null

echo "installed $installed"
echo "  man pages:   $share/man/man1/blenderdist*.1 (man blenderdist, man blenderdist-host, ...)"
echo "  completions: bash $share/bash-completion/completions/blenderdist"
echo "               zsh  $share/zsh/site-functions/_blenderdist (add: fpath=($share/zsh/site-functions \$fpath))"
echo "               fish $share/fish/vendor_completions.d/blenderdist.fish"
case ":$PATH:" in
    *":$prefix/bin:"*) ;;
    *) echo "note: $prefix/bin is not on your PATH; add it to use blenderdist by name" ;;
esac
