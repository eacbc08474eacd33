#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs Blender when missing, builds once, runs every test.
# Tests that need root (mount and network namespaces) skip with a message when not run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --locked --all-targets
cargo test --locked
