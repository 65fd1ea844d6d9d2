#!/usr/bin/env bash
# Runs every test: formatting, clippy, docs, unit and host integration tests, then builds
# the qemu image for x86_64 and aarch64 and runs the QEMU boot scenarios on them.
# Installs its host prerequisites first (scripts/host-deps.sh). CI (.ci/run) calls this.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
stage() { printf '\n==> %s (%ds)\n' "$*" $((SECONDS - started)); }

stage "host prerequisites"
scripts/host-deps.sh

stage "cargo fmt --check"
cargo fmt --all -- --check

stage "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

stage "cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet

stage "update repository: fresh keys and trusted root (docs/updates.md)"
cargo build --release --locked -p os-build
os_build=target/release/os-build
keys=build/update-keys
repo=build/update-repo
# New keys every run: the images below trust this repository's root.
rm -rf "$keys" "$repo" build/update-v2
mkdir -p "$keys"
for role in root targets snapshot timestamp; do
  "$os_build" repo keygen --out "$keys/$role"
done
"$os_build" repo init --repo "$repo" --root-key "$keys/root.pk8" \
  --targets-key "$keys/targets.pk8" --snapshot-key "$keys/snapshot.pk8" \
  --timestamp-key "$keys/timestamp.pk8"
trusted_root="$repo/metadata/1.root.json"

# Secure Boot (docs/secure-boot.md): fresh PK, KEK and db every run, as for the repository
# (a different key from every TUF key). Every build below signs with them and writes
# uefi-vars.fd, so the QEMU scenarios boot with Secure Boot enforced; repo add checks the
# UKIs against db.crt.
rm -rf build/secure-boot-keys
"$os_build" secure-boot keygen --out build/secure-boot-keys --common-name "Berth test"
export BERTH_SECURE_BOOT_KEYS=build/secure-boot-keys
export BERTH_SECURE_BOOT_DB=build/secure-boot-keys/db.crt

stage "images: qemu x86_64 and aarch64, qemu-test x86_64 (v1 and the v2 update), aws-k8s-1.33-test, aws-ecs-test, vmware-k8s-1.33-test and metal-k8s-1.33-test x86_64"
for arch in x86_64 aarch64; do
  "$os_build" build --variant qemu --arch "$arch" --plain --update-root "$trusted_root"
done
# The qemu image plus berth-api-bridge, for the boot-time configuration and update scenarios.
"$os_build" build --variant qemu-test --arch x86_64 --plain --update-root "$trusted_root"
# v2: the same variant one patch version up, offered by the repository (update scenario).
IFS=. read -r major minor patch < <(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
"$os_build" build --variant qemu-test --arch x86_64 --plain --update-root "$trusted_root" \
  --version "$major.$minor.$((patch + 1))" --out build/update-v2
"$os_build" repo add --repo "$repo" --key "$keys/targets.pk8" --key "$keys/snapshot.pk8" \
  --key "$keys/timestamp.pk8" --build build/update-v2/qemu-test/x86_64
# The EKS node as the QEMU tests boot it (qemu-tests/tests/eks.rs). No kubelet can be
# downloaded here, so it is built without its external artifacts; the image says so at /os.
"$os_build" build --variant aws-k8s-1.33-test --arch x86_64 --plain --allow-missing-artifacts \
  --update-root "$trusted_root"
# The ECS container instance (qemu-tests/tests/ecs.rs), likewise without the ECS agent binary.
"$os_build" build --variant aws-ecs-test --arch x86_64 --plain --allow-missing-artifacts \
  --update-root "$trusted_root"
# The EKS Anywhere nodes, kubelet missing as above: vSphere (qemu-tests/tests/vmware.rs, user
# data from an OVF environment ISO; also makes the OVA) and bare metal (qemu-tests/tests/metal.rs,
# user data from a config drive; also makes disk.raw.gz).
for variant in vmware-k8s-1.33-test metal-k8s-1.33-test; do
  "$os_build" build --variant "$variant" --arch x86_64 --plain --allow-missing-artifacts \
    --update-root "$trusted_root"
done

stage "tests (unit, host integration, QEMU scenarios)"
export BERTH_QEMU_TESTS=1
cargo nextest run --workspace --locked --no-fail-fast --success-output final

stage "done"
