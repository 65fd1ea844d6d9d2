#!/usr/bin/env bash
# Installs the host tools os-build and the QEMU tests need on a Debian 12 machine:
# QEMU 10 + firmware from bookworm-backports, the arm64 cross toolchain (Debian's
# rustc-web, since rustup cannot add targets here), mmdebstrap, erofs-utils,
# cryptsetup (veritysetup for tests), secilc (the SELinux policy) and setools (its unit
# tests), sbsigntool, efitools, openssl and python3-virt-firmware (Secure Boot), xorriso
# (the OVF environment ISO of the vmware scenario), and qemu-user binfmt for arm64 roots.
# Idempotent: a second run only checks.
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
  echo "host-deps: must run as root (apt-get, binfmt registration)" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
stamp=/var/lib/berth-host-deps.v4

src=/etc/apt/sources.list.d/berth-backports.sources
if [ ! -f "$src" ]; then
  cat >"$src" <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi

if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  dpkg --add-architecture arm64
fi

if [ ! -f "$stamp" ]; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends \
    -t bookworm-backports qemu-system-x86 qemu-system-arm qemu-user-static qemu-utils \
    >/dev/null
  apt-get install -y -qq --no-install-recommends \
    ovmf qemu-efi-aarch64 mmdebstrap erofs-utils cryptsetup-bin dosfstools mtools \
    e2fsprogs fdisk kmod cpio arch-test gcc-aarch64-linux-gnu libc6-dev-arm64-cross \
    rustc-web cargo-web libstd-rust-web-dev:arm64 binfmt-support zstd xz-utils \
    debian-archive-keyring ca-certificates xorriso >/dev/null
  touch "$stamp"
fi

# Added after v3: the SELinux policy compiler, and sesearch for the policy's unit tests.
if ! command -v secilc >/dev/null || ! command -v sesearch >/dev/null; then
  apt-get install -y -qq --no-install-recommends secilc setools >/dev/null
fi

# Added after v4: libfaketime, for the updater test that runs a check under a clock far ahead
# (os-build/tests/update_repo.rs).
if [ ! -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ]; then
  apt-get install -y -qq --no-install-recommends faketime >/dev/null
fi

# Secure Boot (docs/secure-boot.md): sbsign signs systemd-boot and the UKIs, efitools makes
# the signed enrolment updates (PK/KEK/db.auth), virt-fw-vars (bookworm-backports) writes the
# OVMF/AAVMF variable stores and EC2's UEFI data, openssl makes the keys.
if ! command -v sbsign >/dev/null || ! command -v sign-efi-sig-list >/dev/null \
  || ! command -v openssl >/dev/null; then
  apt-get install -y -qq --no-install-recommends sbsigntool efitools openssl >/dev/null
fi
if ! command -v virt-fw-vars >/dev/null; then
  apt-get install -y -qq --no-install-recommends -t bookworm-backports python3-virt-firmware \
    >/dev/null
fi

# arm64 roots run their maintainer scripts under qemu-user.
if [ -d /proc/sys/fs/binfmt_misc ] && [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  conf=$(ls /usr/lib/binfmt.d/qemu-aarch64.conf 2>/dev/null || true)
  if [ -n "$conf" ]; then
    grep -v '^#' "$conf" | head -1 >/proc/sys/fs/binfmt_misc/register
  else
    update-binfmts --enable qemu-aarch64
  fi
fi
