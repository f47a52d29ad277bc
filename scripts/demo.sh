#!/usr/bin/env bash
# The main job on a fresh machine: set-up, release build, then `tessera demo` (extra
# arguments are passed through, e.g. --preset small --steps 50).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --release --locked
exec ./target/release/tessera demo "$@"
