#!/usr/bin/env bash
# Runs every test: formatting, clippy, docs, unit and host integration tests, then builds the
# x86_64 images and runs the QEMU scenarios on them (aarch64: see below). CI (.ci/run) calls
# this.
# Installs its host prerequisites first (scripts/host-deps.sh).
#
#   scripts/test.sh           everything
#   scripts/test.sh --quick   fmt, clippy, unit and host integration tests: no images, no QEMU
#
# The images are built one after another while the scenarios whose images are ready run:
# the build holds one of the two QEMU slots (qemu-tests/src/scenario.rs), so a scenario has
# the other core; after the last image two scenarios run at a time, one vCPU each. The run
# ends with a stage summary (scripts/stages.sh): wall and CPU seconds per stage and the
# slowest scenarios.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/stages.sh

quick=false
case "${1:-}" in
  "") ;;
  --quick) quick=true ;;
  -h | --help) sed -n '2,14p' "$0"; exit 0 ;;
  *) echo "test.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
esac
trap stage_summary EXIT

# The QEMU scenarios: the integration tests of qemu-tests. Everything else is a unit or host
# integration test.
scenarios='package(qemu-tests) & kind(test)'

stage "host prerequisites"
scripts/host-deps.sh

stage "cargo fmt --check"
cargo fmt --all -- --check

stage "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

if ! $quick; then
  stage "cargo doc"
  RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet
fi

stage "unit and host integration tests"
cargo nextest run --workspace --locked --no-fail-fast -E "not ($scenarios)"
if $quick; then
  echo "test.sh --quick: no images built, no QEMU scenario run (scripts/test.sh runs them)"
  exit 0
fi

stage "Berth's programs for x86_64 (os-build, then every program of the images)"
cargo build --release --locked -p os-build
os_build=target/release/os-build
# Every image program, once: the image builds below find them built. x86_64 only: the
# aarch64 images are not built in CI for now (see "aarch64" below).
"$os_build" programs --arch x86_64

stage "update repository: fresh keys and trusted root (docs/updates.md)"
keys=build/update-keys
repo=build/update-repo
# New keys every run: the images below trust this repository's root. One repository per
# architecture (same keys and root), so that adding one architecture's v2 does not change
# the metadata the other architecture's update scenario is reading.
rm -rf "$keys" "$repo" build/update-v2
mkdir -p "$keys"
for role in root targets snapshot timestamp; do
  "$os_build" repo keygen --out "$keys/$role"
done
"$os_build" repo init --repo "$repo/x86_64" --root-key "$keys/root.pk8" \
  --targets-key "$keys/targets.pk8" --snapshot-key "$keys/snapshot.pk8" \
  --timestamp-key "$keys/timestamp.pk8"
cp -a "$repo/x86_64" "$repo/aarch64"
trusted_root="$repo/x86_64/metadata/1.root.json"

# Secure Boot (docs/secure-boot.md): fresh PK, KEK and db every run, as for the repository
# (a different key from every TUF key). Every build below signs with them and writes
# uefi-vars.fd, so the QEMU scenarios boot with Secure Boot enforced; repo add checks the
# UKIs against db.crt.
rm -rf build/secure-boot-keys
"$os_build" secure-boot keygen --out build/secure-boot-keys --common-name "Berth test"
export BERTH_SECURE_BOOT_KEYS=build/secure-boot-keys
export BERTH_SECURE_BOOT_DB=build/secure-boot-keys/db.crt

stage "images and QEMU scenarios"
export BERTH_QEMU_TESTS=1 BERTH_QEMU_SLOTS=2
# Absolute: each scenario runs in its package folder.
export BERTH_SCENARIO_TIMES=$PWD/target/qemu-scenario-times.txt
rm -f "$BERTH_SCENARIO_TIMES"
logs=target/qemu-scenario-logs
rm -rf "$logs"
mkdir -p "$logs"
# Roots mmdebstrap made in this run, shared by the builds that ask for the same packages
# (os-build build --root-cache). Emptied first: a root from an earlier run would carry that
# day's package versions.
root_cache=build/root-cache
rm -rf "$root_cache"
IFS=. read -r major minor patch < <(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
v2_version="$major.$minor.$((patch + 1))"

# build ARCH VARIANT [os-build build options]
build() {
  local arch=$1 variant=$2
  shift 2
  echo "--> image $variant $arch $* ($((SECONDS - _run_started))s)"
  "$os_build" build --variant "$variant" --arch "$arch" --plain --update-root "$trusted_root" \
    --root-cache "$root_cache" "$@"
}

# build_update ARCH: v2 of qemu-test (one patch version up), offered by ARCH's repository.
build_update() {
  local arch=$1
  build "$arch" qemu-test --version "$v2_version" --out build/update-v2
  "$os_build" repo add --repo "$repo/$arch" --key "$keys/targets.pk8" \
    --key "$keys/snapshot.pk8" --key "$keys/timestamp.pk8" \
    --build "build/update-v2/qemu-test/$arch"
}

# start NAME FILTER [nextest options]: runs the scenarios FILTER selects, in the background;
# their output goes to the terminal with a `[NAME]` prefix and to $logs/NAME.log.
started=()
filters=()
start() {
  local name=$1 filter="$scenarios & ($2)"
  shift 2
  echo "--> scenarios $name: $filter ($((SECONDS - _run_started))s)"
  (
    set -o pipefail
    cargo nextest run --workspace --locked --no-fail-fast --success-output final \
      --failure-output final -E "$filter" "$@" 2>&1 |
      tee "$logs/$name.log" | sed -u "s/^/[$name] /"
  ) &
  started+=("$name:$!")
  filters+=("($filter)")
}

# The image builds hold QEMU slot 1: a build is about one core's work, like a VM.
exec {build_slot}>"${TMPDIR:-/tmp}/berth-qemu-tests.1.lock"
flock "$build_slot"

build x86_64 qemu
build x86_64 qemu-test
build_update x86_64
start x86_64-qemu 'test(/_x86_64$/) & (binary(boot) | binary(update) | binary(config) | binary(cis) | binary(ec2) | test(metal_config_drive)) | (binary(harness) & not test(/aarch64$/))'


# The EKS node, the ECS instance and the EKS Anywhere nodes, built without the external
# artifacts no one can download here (kubelet, the ECS agent); each image says so at /os.
# vmware-k8s-1.33-test also makes the OVA, metal-k8s-1.33-test disk.raw.gz.
for variant in aws-k8s-1.33-test vmware-k8s-1.33-test metal-k8s-1.33-test aws-ecs-test; do
  build x86_64 "$variant" --allow-missing-artifacts
done
start x86_64-nodes 'test(/_x86_64$/) & (binary(eks) | binary(ecs) | binary(vmware) | test(eksa_metal))'

flock -u "$build_slot"
# aarch64: no image is built and no aarch64 scenario runs in CI for now. Its programs take
# 14 minutes to compile with Debian's rustc and its root 9 minutes under qemu-user on CI's
# two cores, which with the x86_64 scenarios passes CI's 90 minutes (qemu-tests/README.md).
# By hand: scripts/run.sh --arch aarch64, or build qemu / qemu-test / aws-k8s-1.33-test for
# aarch64 (with the update repository above) and run
#   BERTH_QEMU_TESTS=1 cargo nextest run -p qemu-tests -E 'test(/_aarch64$/)'
not_in_ci='test(/_aarch64$/)'
# Scenarios none of the groups above selects (a new file in qemu-tests/tests/ lands here).
unmatched=$(IFS='|'; echo "${filters[*]}")
start others "not ($unmatched) & not ($not_in_ci)" --no-tests=warn

failed=()
for run in "${started[@]}"; do
  wait "${run#*:}" || failed+=("${run%%:*}")
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "test.sh: QEMU scenarios failed in: ${failed[*]} (their output: $logs/)" >&2
  exit 1
fi
