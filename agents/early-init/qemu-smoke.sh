#!/bin/bash
# Standalone QEMU smoke test of early-init (and berth-probe) without os-build:
# erofs root from a Debian root tree, dm-verity, GPT disk, cpio initramfs, direct kernel boot.
#
# Developer tool, not part of CI (qemu-tests owns the real scenarios). Needs: a Debian root
# tree with a kernel and systemd (ROOT_TREE, default /var/tmp/explore/r), release builds of
# early-init and berth-probe (cargo build --release -p early-init -p probe), and
# qemu-system-x86_64, mkfs.erofs, veritysetup, sfdisk, cpio.
#   ./qemu-smoke.sh build          # make WORK/{disk.img,initrd.cpio,cmdline.berth}
#   ./qemu-smoke.sh boot first     # boot; prints the early-init and berth-probe lines
#   ./qemu-smoke.sh all            # build, then first boot, second boot, wrong slot, corrupt root
set -euo pipefail
R=${ROOT_TREE:-/var/tmp/explore/r}
W=${WORK:-/var/tmp/e2e/work}
T=${CARGO_TARGET_DIR:-/var/tmp/target-agents}/release
PROBE_UNIT=${PROBE_UNIT:-$(cd "$(dirname "$0")/../probe" && pwd)/berth-probe.service}
KVER=$(ls "$R/usr/lib/modules" | head -1)
KERNEL="$R/boot/vmlinuz-$KVER"
MODE=${1:-build}   # build | boot

build() {
rm -rf "$W"; mkdir -p "$W"
# --- root image: hard-linked copy of the tree plus our files (new files only: never edit a linked one)
cp -al "$R" "$W/root"
rm -rf "$W/root/boot" "$W/root/initrd.img" "$W/root/initrd.img.old" "$W/root/vmlinuz" "$W/root/vmlinuz.old"
mkdir -p "$W/root/private" "$W/root/local"
rm -f "$W/root/usr/bin/berth-probe"; install -m 0755 "$T/berth-probe" "$W/root/usr/bin/berth-probe"
rm -f "$W/root/usr/lib/systemd/system/berth-probe.service"
install -m 0644 "$PROBE_UNIT" "$W/root/usr/lib/systemd/system/berth-probe.service"
ln -sf /usr/lib/systemd/system/berth-probe.service "$W/root/etc/systemd/system/multi-user.target.wants/berth-probe.service"
rm -f "$W/root/etc/modules-load.d/berth.conf"; echo qemu_fw_cfg > "$W/root/etc/modules-load.d/berth.conf"
rm -f "$W/root/etc/hostname"; echo berth-smoke > "$W/root/etc/hostname"
mkdir -p "$W/root/var/lib/berth-seed-check"
mkfs.erofs --quiet "$W/root.erofs" "$W/root"
veritysetup format --hash-offset=0 --data-block-size=4096 --hash-block-size=4096 \
  "$W/root.erofs" "$W/verity.img" > "$W/verity.txt"
ROOTHASH=$(awk '/^Root hash:/ {print $3}' "$W/verity.txt")
SALT=$(awk '/^Salt:/ {print $2}' "$W/verity.txt")
BLOCKS=$(( $(stat -c %s "$W/root.erofs") / 4096 ))
echo "berth.slot=a berth.verity.root=$ROOTHASH berth.verity.salt=$SALT berth.verity.data-blocks=$BLOCKS berth.verity.hash-start=1" > "$W/cmdline.berth"

# --- disk: sizes in MiB
mib() { echo $(( ($(stat -c %s "$1") + 1048575) / 1048576 )); }
RA=$(mib "$W/root.erofs"); VA=$(mib "$W/verity.img")
TOTAL=$(( 1 + 8 + RA + VA + 1 + 1 + 32 + 64 + 1 ))
truncate -s "${TOTAL}M" "$W/disk.img"
sfdisk -q "$W/disk.img" <<EOT
label: gpt
size=8MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=ESP
size=${RA}MiB, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name=root-a
size=${VA}MiB, type=2C7357ED-EBD2-46D9-AEC1-23D437EC2BF5, name=verity-a
size=1MiB, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name=root-b
size=1MiB, type=2C7357ED-EBD2-46D9-AEC1-23D437EC2BF5, name=verity-b
size=32MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=private
size=64MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=data
EOT
start() { sfdisk -J "$W/disk.img" | python3 -c "import json,sys; print(json.load(sys.stdin)['partitiontable']['partitions'][$1-1]['start'])"; }
dd if="$W/root.erofs" of="$W/disk.img" bs=512 seek="$(start 2)" conv=notrunc status=none
dd if="$W/verity.img" of="$W/disk.img" bs=512 seek="$(start 3)" conv=notrunc status=none
# the disk "grows" after the image was written: data must follow
truncate -s +256M "$W/disk.img"

# --- initramfs
I="$W/initrd"; mkdir -p "$I"/{dev,proc,sys,run,sysroot,etc/berth,usr/sbin,usr/lib/x86_64-linux-gnu,usr/lib64}
ln -s usr/lib "$I/lib"; ln -s usr/lib64 "$I/lib64"
install -m 0755 "$T/early-init" "$I/init"
cp "$R/usr/sbin/mke2fs" "$I/usr/sbin/"
cp -L "$R/usr/lib64/ld-linux-x86-64.so.2" "$I/usr/lib64/"
for l in libc.so.6 libgcc_s.so.1 libext2fs.so.2 libcom_err.so.2 libblkid.so.1 libuuid.so.1 libe2p.so.2; do
  cp -L "$R/usr/lib/x86_64-linux-gnu/$l" "$I/usr/lib/x86_64-linux-gnu/"
done
MODS="kernel/drivers/block/virtio_blk.ko.xz kernel/crypto/crc32c_generic.ko.xz kernel/lib/libcrc32c.ko.xz
kernel/fs/erofs/erofs.ko.xz kernel/drivers/md/dm-mod.ko.xz kernel/drivers/md/dm-bufio.ko.xz
kernel/lib/reed_solomon/reed_solomon.ko.xz kernel/drivers/md/dm-verity.ko.xz kernel/lib/crc16.ko.xz
kernel/fs/mbcache.ko.xz kernel/fs/jbd2/jbd2.ko.xz kernel/fs/ext4/ext4.ko.xz kernel/fs/efivarfs/efivarfs.ko.xz"
LIST=""
for m in $MODS; do
  mkdir -p "$I/usr/lib/modules/$KVER/$(dirname "$m")"
  cp "$R/usr/lib/modules/$KVER/$m" "$I/usr/lib/modules/$KVER/$m"
  LIST="$LIST\"/usr/lib/modules/$KVER/$m\","
done
echo "{\"kernel_version\": \"$KVER\", \"modules\": [${LIST%,}]}" > "$I/etc/berth/initrd.json"
mknod -m 600 "$I/dev/console" c 5 1
(cd "$I" && find . | LC_ALL=C sort | cpio -o -H newc --quiet) > "$W/initrd.cpio"
ls -la "$W/initrd.cpio" "$W/disk.img"
}

boot() {
  local log="$W/serial-$1.log" extra=${2:-} deadline=$(( $(date +%s) + ${BOOT_TIMEOUT:-300} ))
  : > "$log"
  # shellcheck disable=SC2086
  qemu-system-x86_64 -machine q35 -m 1024 -smp 2 -nographic -no-reboot ${QEMU_EXTRA:-} \
    -kernel "$KERNEL" -initrd "$W/initrd.cpio" \
    -append "console=ttyS0 panic=-1 systemd.gpt_auto=0 $(cat "$W/cmdline.berth") $extra" \
    -drive "file=$W/disk.img,if=virtio,format=raw" \
    -fw_cfg name=opt/org.berth/probe,string=1 < /dev/null > "$log" 2>&1 &
  local qpid=$!
  while kill -0 "$qpid" 2>/dev/null; do
    if grep -q "berth-probe: end" "$log" || [ "$(date +%s)" -gt "$deadline" ]; then
      sleep 1; kill "$qpid" 2>/dev/null || true; break
    fi
    sleep 1
  done
  wait "$qpid" 2>/dev/null || true
  grep -aE "early-init|berth-probe" "$log" || true
}

expect() { # expect NAME PATTERN...: every pattern must be in the serial log of NAME
  local name=$1 p ok=1; shift
  for p in "$@"; do grep -aqE -- "$p" "$W/serial-$name.log" || { echo "  missing: $p"; ok=0; }; done
  if [ $ok = 1 ]; then echo "PASS $name"; PASSED=$((PASSED+1)); else echo "FAIL $name"; FAILED=$((FAILED+1)); fi
}

all() {
  PASSED=0 FAILED=0
  build
  boot first > /dev/null
  expect first "early-init: making ext4 file system private" "early-init: data partition grown" \
    "early-init: switching root to systemd" "berth-probe: root-dm-target=verity" \
    "berth-probe: root-dm-status=V" "berth-probe: root-ro=true" "berth-probe: etc-writable=true" \
    "berth-probe: var-partname=data" "berth-probe: private-partname=private" "berth-probe: end"
  boot second > /dev/null
  expect second "berth-probe: end" "berth-probe: machine-id=$(grep -aoE 'new machine id [0-9a-f]+' "$W/serial-first.log" | awk '{print $4}')"
  grep -aq "making ext4" "$W/serial-second.log" && { echo "FAIL second: formatted again"; FAILED=$((FAILED+1)); }
  cp "$W/cmdline.berth" "$W/cmdline.good"
  sed -i 's/berth.slot=a/berth.slot=b/' "$W/cmdline.berth"
  boot wrong-slot > /dev/null
  cp "$W/cmdline.good" "$W/cmdline.berth"
  expect wrong-slot "early-init: FATAL: set up dm-verity over root-b and verity-b: .*; rebooting" "reboot: Restarting system"
  cp "$W/disk.img" "$W/disk.good"
  local s; s=$(sfdisk -J "$W/disk.img" | python3 -c "import json,sys; print(json.load(sys.stdin)['partitiontable']['partitions'][1]['start'])")
  printf 'X' | dd of="$W/disk.img" bs=1 seek=$((s * 512 + 100)) conv=notrunc status=none
  boot corrupt > /dev/null
  mv "$W/disk.good" "$W/disk.img"
  expect corrupt "verity: .*data block 0 is corrupted" "Restarting system with command 'dm-verity device corrupted'"
  echo "$PASSED passed, $FAILED failed"
  [ "$FAILED" = 0 ]
}

case "$MODE" in
  build) build ;;
  boot) boot "${2:-1}" "${3:-}" ;;
  all) all ;;
esac
