#!/usr/bin/env bash
# Builds a Berth variant (default: qemu for x86_64) and boots it in QEMU with the serial
# console attached to this terminal. Quit QEMU with Ctrl-A X.
#
#   scripts/run.sh                      # qemu variant, x86_64
#   scripts/run.sh --variant qemu-dev   # with a root shell on the console
#   scripts/run.sh --arch aarch64
#
# Installs its host prerequisites first (scripts/host-deps.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

variant=qemu
arch=x86_64
while [ $# -gt 0 ]; do
  case "$1" in
    --variant) variant=$2; shift 2 ;;
    --arch) arch=$2; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
done

scripts/host-deps.sh
cargo build --release -p os-build -p qemu-tests --bin os-build --bin berth-vm
target/release/os-build build --variant "$variant" --arch "$arch"
exec target/release/berth-vm --arch "$arch" "build/$variant/$arch/disk.qcow2"
