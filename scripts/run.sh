#!/usr/bin/env bash
# Builds a Berth variant (default: qemu for x86_64), signed with throwaway development
# Secure Boot keys it makes under build/ on its first run, and boots it in QEMU with Secure
# Boot on and the serial console attached to this terminal. Quit QEMU with Ctrl-A X.
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
# Secure Boot on with throwaway development keys, made once under build/ (docs/secure-boot.md).
keys=build/secure-boot-dev-keys
if [ ! -f "$keys/db.key" ]; then
  echo "run.sh: first run: making throwaway development Secure Boot keys in $keys (not for production)"
  target/release/os-build secure-boot keygen --out "$keys" --common-name "Berth development"
fi
target/release/os-build build --variant "$variant" --arch "$arch" --secure-boot-keys "$keys"
exec target/release/berth-vm --arch "$arch" "build/$variant/$arch/disk.qcow2"
