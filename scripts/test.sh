#!/usr/bin/env bash
# The one command that runs every gate, cheapest first: set-up (idempotent), format, lints,
# the whole test suite. CI (.ci/run) calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
# Tests size their own libtorch thread pools; keep OpenMP from oversubscribing 2 cores.
OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} cargo test --workspace --locked
