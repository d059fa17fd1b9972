#!/usr/bin/env bash
# Installs what a fresh machine lacks to build and test Zonestore: the C toolchain RocksDB needs
# (clang, libclang-dev), QEMU and the guest tools for the Linux-kernel interop test, rclone, and a
# Python venv (.venv) with aws-cli, boto3, s3fs and s3cmd for the end-to-end client tests.
# Idempotent and quick when everything is present.
set -euo pipefail
cd "$(dirname "$0")/.."

# rustfmt and clippy (scripts/test.sh runs both), where rustup manages the toolchain.
if command -v rustup >/dev/null 2>&1 \
    && ! { cargo fmt --version && cargo clippy --version; } >/dev/null 2>&1; then
    echo "install-deps: rustup component add rustfmt clippy"
    rustup component add rustfmt clippy
fi

packages=(clang libclang-dev python3 python3-venv openssl rclone)
if [ "${ZONESTORE_SKIP_VM:-0}" != 1 ]; then
    packages+=(qemu-system-x86 busybox-static nvme-cli fio util-linux kmod cpio)
fi
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "install-deps: apt-get install ${missing[*]}"
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ "${ZONESTORE_SKIP_PYTHON:-0}" != 1 ]; then
    stamp=".venv/requirements.sha256"
    wanted="$(sha256sum scripts/requirements.txt | cut -d' ' -f1)"
    if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ] \
        || ! .venv/bin/python -c "import boto3, s3fs, awscli, awscrt, S3" 2>/dev/null; then
        echo "install-deps: creating .venv with awscli, boto3, s3fs"
        rm -rf .venv
        python3 -m venv .venv
        .venv/bin/pip install -q --upgrade pip
        .venv/bin/pip install -q -r scripts/requirements.txt
        echo "$wanted" > "$stamp"
    fi

fi
