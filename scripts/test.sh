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

stage "images: qemu x86_64 and aarch64, qemu-test and aws-k8s-1.33-test x86_64"
cargo build --release --locked -p os-build
for arch in x86_64 aarch64; do
  target/release/os-build build --variant qemu --arch "$arch" --plain
done
# The qemu image plus berth-api-bridge, for the boot-time configuration scenario.
target/release/os-build build --variant qemu-test --arch x86_64 --plain
# The EKS node as the QEMU tests boot it (qemu-tests/tests/eks.rs). No kubelet can be
# downloaded here, so it is built without its external artifacts; the image says so at /os.
target/release/os-build build --variant aws-k8s-1.33-test --arch x86_64 --plain --allow-missing-artifacts

stage "tests (unit, host integration, QEMU scenarios)"
export BERTH_QEMU_TESTS=1
cargo nextest run --workspace --locked --no-fail-fast --success-output final

stage "done"
