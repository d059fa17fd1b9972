#!/usr/bin/env bash
# The one command that checks everything: installs what is missing, then formatting, lints and
# the whole test suite (unit, property, crash, end-to-end with real clients, kernel interop).
# Tests and the binaries the end-to-end tests start share one cargo profile, so RocksDB is built
# once per target directory.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
export PATH="$PWD/.venv/bin:$PATH"
# Tests that would skip themselves where the machine lacks something (QEMU, the right to mount a
# tmpfs) fail instead: a green run here means every test ran (ZONESTORE_REQUIRE_ALL_TESTS=0 lets
# them skip).
export ZONESTORE_REQUIRE_ALL_TESTS="${ZONESTORE_REQUIRE_ALL_TESTS:-1}"
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build --workspace --bins --locked
cargo test --workspace --locked "$@"
