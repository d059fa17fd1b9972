#!/usr/bin/env bash
# Runs `zonestore serve` on its embedded default from a fresh clone: installs the build
# dependencies (clang for RocksDB), builds the release binary, and starts the server with three
# emulated ZNS drives under ./zonestore-data, each behind an NVMe/TCP target on loopback.
# Extra arguments go to `zonestore serve` (see `zonestore serve --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
ZONESTORE_SKIP_VM=1 ZONESTORE_SKIP_PYTHON=1 scripts/install-deps.sh
exec cargo run --release --locked --bin zonestore -- serve "$@"
