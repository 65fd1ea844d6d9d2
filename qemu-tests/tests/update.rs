//! Signed A/B updates (docs/updates.md), end to end on the qemu-test image, on x86_64 and
//! aarch64: the update repository that scripts/test.sh builds for the architecture
//! (`build/update-repo/<arch>`, offering the v2 build in `build/update-v2`) is served from the
//! host loopback and reached by the guest at 10.0.2.100 through QEMU's user network
//! (guestfwd + tcp-relay). Everything the guest does is driven with the real apiclient
//! through the test API bridge.
//!
//! One machine, four power-ons, each starting from the disk the previous one left:
//! 1. v1 boots (its UKI is marked good by the health gate; early-init gave the disk its own
//!    GUIDs); a setting is changed; `apiclient update check` offers v2;
//!    `apiclient update apply` writes slot B and installs its UKI with boot tries; power off.
//!    The host then corrupts one block of root-b, and flips one byte of the ext4 superblock
//!    magic of `private`.
//! 2. systemd-boot tries v2, dm-verity restarts the machine at each try, the tries run out,
//!    v1 boots again by itself: early-init repairs `private` with e2fsck (the setting and the
//!    update state are still there) and `/updates/status` reports the failed update. A second
//!    `apply` is cut off by killing QEMU while it writes the slot (a power cut).
//! 3. A second disk is attached: a copy of the v1 image, with the same partition names and
//!    the image's GUIDs (an AMI-derived volume attached for recovery). v1 boots from the
//!    first disk; tampered repositories (bad signature, expired timestamp, replaced target)
//!    are each refused; `apiclient update apply --reboot` writes slot B of the boot disk again
//!    and reboots into v2, which passes its health gate: `/os` says v2, the probe says slot
//!    b, the setting made on v1 is still there, and the status is idle with the boot marked
//!    good. Then `apiclient update rollback --reboot` boots v1 from slot A again. Nothing is
//!    written to the second disk.
//! 4. `apiclient update apply --check` (v2 to slot B again); power off; power on with the
//!    ESP not mounted (fw_cfg `opt/org.berth/no-esp` skips boot.mount, qemu-test variant):
//!    each of v2's three trial boots fails its gate (the UKI cannot be marked good without
//!    the ESP) and reboots, v1 boots by itself and `/updates/status` reports the failed
//!    update. Last, a correctly TUF-signed repository offering v2 with UKIs signed by a
//!    foreign Secure Boot key is refused before the ESP or the slot changes.
//!
//! Every power-on enforces Secure Boot with the build's keys.
//!
//! Gated by BERTH_QEMU_TESTS=1.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use boot_contract::{Partition, Slot};
use qemu_tests::api::{build_apiclient, Api};
use qemu_tests::file_server::FileServer;
use qemu_tests::{gpt, markers, scenario, tamper, Arch, Checks, Image, ProbeReport, RunningVm, Vm};
use serde_json::Value;

const VARIANT: &str = "qemu-test";
const PROBE_FW_CFG: &str = "opt/org.berth/probe";
const USER_DATA_FW_CFG: &str = "opt/org.berth/user-data";
/// Where the guest finds the repository (forwarded to the host's file server).
const REPO_IP: &str = "10.0.2.100";
const HEALTHY: &str = markers::HEALTH_GATE_PASSED;
const GATE_FAILED_REBOOTING: &str = markers::HEALTH_GATE_FAILED_REBOOTING;
/// With this fw_cfg file the qemu-test image skips boot.mount (variants/qemu-test).
const NO_ESP_FW_CFG: &str = "opt/org.berth/no-esp";
const BOOT_DEADLINE: Duration = Duration::from_secs(300);
const STEP_DEADLINE: Duration = Duration::from_secs(120);
/// Download, write and verify of a whole slot under TCG.
const APPLY_DEADLINE: Duration = Duration::from_secs(900);
/// Three failed tries of the corrupted slot, then the old slot up to its health gate.
const FALLBACK_DEADLINE: Duration = Duration::from_secs(600);
const MOTD: &str = "set on v1, kept by the update";

fn user_data_toml() -> String {
    format!(
        r#"[settings.updates]
metadata-base-url = "http://{REPO_IP}/metadata/"
targets-base-url = "http://{REPO_IP}/targets/"
seed = 100
ignore-waves = true
"#
    )
}

fn serial_log(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("qemu-tests")
        .join(format!("{name}.serial.log"))
}

struct Machine {
    arch: Arch,
    api: Api,
    server: FileServer,
    work: tempfile::TempDir,
    user_data: PathBuf,
    /// v1's firmware variables (its signed build's uefi-vars.fd): every power-on enforces
    /// Secure Boot with Berth's keys, the kept disks included.
    vars: PathBuf,
}

/// What a power-on adds to the machine.
#[derive(Default)]
struct Extras<'a> {
    /// The ESP is not mounted on this power-on (fw_cfg `opt/org.berth/no-esp`).
    no_esp: bool,
    /// A second disk, attached after the boot disk.
    second_disk: Option<&'a Path>,
}

impl Machine {
    /// Powers on a machine whose disk is `disk` (a qcow2 overlay over it is what changes).
    fn power_on(&self, name: &str, disk: &Path) -> Result<RunningVm> {
        self.power_on_with(name, disk, &Extras::default())
    }

    /// `extras`: a second disk, or the ESP not mounted (qemu-test's fw_cfg switches).
    fn power_on_with(&self, name: &str, disk: &Path, extras: &Extras<'_>) -> Result<RunningVm> {
        // Both architectures' scenarios may run at once: their logs must not collide.
        let name = &format!("update_{}_{name}", self.arch);
        let log = serial_log(name);
        println!("  {name}: serial log {}", log.display());
        let relay = Path::new(env!("CARGO_BIN_EXE_tcp-relay"));
        let mut vm = Vm::builder(self.arch)
            .name(name)
            .disk(disk)
            .fw_cfg_file(USER_DATA_FW_CFG, &self.user_data)
            .fw_cfg_string(PROBE_FW_CFG, "1")
            .net_user([self.api.hostfwd()])
            .net_options([self.server.guestfwd(relay, REPO_IP)])
            .secure_boot(&self.vars)
            .serial_log(&log);
        if extras.no_esp {
            vm = vm.fw_cfg_string(NO_ESP_FW_CFG, "1");
        }
        if let Some(second) = extras.second_disk {
            vm = vm.disk(second);
        }
        Ok(vm.boot()?)
    }

    /// Polls `/updates/status` (the guest reboots in between) until `done` accepts it.
    fn wait_status(&self, deadline: Duration, done: impl Fn(&Value) -> bool) -> Result<Value> {
        let until = Instant::now() + deadline;
        loop {
            let out = Command::new(&self.api.apiclient)
                .arg("--socket-path")
                .arg(&self.api.socket)
                .args(["raw", "-u", "/updates/status"])
                .output()?;
            if out.status.success() {
                if let Ok(status) = serde_json::from_slice::<Value>(&out.stdout) {
                    if done(&status) {
                        println!("  /updates/status: {status}");
                        return Ok(status);
                    }
                }
            }
            ensure!(
                Instant::now() < until,
                "/updates/status never got there in {deadline:?}"
            );
            std::thread::sleep(Duration::from_secs(3));
        }
    }

    /// Keeps the disk a stopped machine left (its overlay, whose backing file stays where it
    /// is) for the next power-on.
    fn keep_disk(&self, vm: &RunningVm, name: &str) -> Result<PathBuf> {
        ensure!(vm.try_wait()?.is_some(), "{} is still running", vm.name());
        let kept = self.work.path().join(format!("{name}.qcow2"));
        std::fs::copy(vm.dir().join("disk0.qcow2"), &kept)
            .with_context(|| format!("cannot keep the disk of {}", vm.name()))?;
        Ok(kept)
    }

    fn status(&self) -> Result<Value> {
        let out = self.api.stdout(&["raw", "-u", "/updates/status"])?;
        let status: Value = serde_json::from_str(&out).context("/updates/status is not JSON")?;
        println!("  /updates/status: {status}");
        Ok(status)
    }

    fn os_version(&self) -> Result<String> {
        let os: Value = serde_json::from_str(&self.api.stdout(&["raw", "-u", "/os"])?)?;
        Ok(os["version_id"].as_str().unwrap_or("?").to_owned())
    }
}

/// The `n`-th "health gate passed" line, and the probe report printed before it.
fn healthy_boot(vm: &RunningVm, n: usize, deadline: Duration) -> Result<(f64, ProbeReport)> {
    let line = vm
        .wait_for_nth_line(HEALTHY, n, deadline)
        .with_context(|| format!("health gate #{n}"))?;
    // The probe runs after configured.target too; take the last complete report so far.
    let report = vm.wait_until("a complete berth-probe report", STEP_DEADLINE, |lines| {
        let starts: Vec<usize> = lines
            .iter()
            .enumerate()
            .filter(|(_, l)| l.text.contains("berth-probe: root-source="))
            .map(|(i, _)| i)
            .collect();
        let from = *starts.get(n.saturating_sub(1))?;
        ProbeReport::parse(lines[from..].iter().map(|l| l.text.as_str())).ok()
    })?;
    Ok((line.elapsed.as_secs_f64(), report))
}

/// Writes `len` bytes of 0x5a at `offset` of a qcow2 disk (its overlay takes the write).
fn corrupt(disk: &Path, offset: u64, len: u64) -> Result<()> {
    let out = Command::new("qemu-io")
        .args([
            "-f",
            "qcow2",
            "-c",
            &format!("write -P 0x5a {offset} {len}"),
        ])
        .arg(disk)
        .output()
        .context("cannot run qemu-io")?;
    if !out.status.success() {
        bail!(
            "qemu-io write at {offset} of {} failed: {}",
            disk.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Writes one byte at `offset` of a qcow2 disk.
fn poke(disk: &Path, offset: u64, byte: u8) -> Result<()> {
    let out = Command::new("qemu-io")
        .args([
            "-f",
            "qcow2",
            "-c",
            &format!("write -P {byte:#04x} {offset} 1"),
        ])
        .arg(disk)
        .output()
        .context("cannot run qemu-io")?;
    ensure!(
        out.status.success(),
        "qemu-io write of one byte at {offset} of {} failed: {}",
        disk.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Whether the overlay `disk` reads exactly as its backing image (nothing written to it).
fn same_as_backing(overlay: &Path, backing: &Path) -> Result<bool> {
    let out = Command::new("qemu-img")
        .args(["compare", "-q", "-f", "qcow2", "-F", "qcow2"])
        .arg(overlay)
        .arg(backing)
        .output()
        .context("cannot run qemu-img compare")?;
    match out.status.code() {
        Some(0) => Ok(true),
        Some(1) => Ok(false),
        _ => bail!(
            "qemu-img compare {} {}: {}",
            overlay.display(),
            backing.display(),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// Copies the repository folder `from` to `to`.
fn copy_repo(from: &Path, to: &Path) -> Result<()> {
    for dir in ["metadata", "targets"] {
        std::fs::create_dir_all(to.join(dir))?;
        for entry in std::fs::read_dir(from.join(dir))? {
            let entry = entry?;
            std::fs::copy(entry.path(), to.join(dir).join(entry.file_name()))?;
        }
    }
    Ok(())
}

/// Runs `os-build repo refresh` (as scripts/test.sh built it) on `repo` with the test keys.
fn refresh(repo: &Path, timestamp_expires: &str) -> Result<()> {
    let root = qemu_tests::image::repo_root();
    let keys = qemu_tests::image::build_dir().join("update-keys");
    let out = Command::new(root.join("target/release/os-build"))
        .args(["repo", "refresh", "--repo"])
        .arg(repo)
        .arg("--key")
        .arg(keys.join("snapshot.pk8"))
        .arg("--key")
        .arg(keys.join("timestamp.pk8"))
        .args(["--timestamp-expires", timestamp_expires])
        .output()
        .context("cannot run target/release/os-build (scripts/test.sh builds it)")?;
    ensure!(
        out.status.success(),
        "os-build repo refresh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A copy of the repository in `dir` whose v2 is re-published (`repo add --replace`, signed
/// with the repository's TUF keys) with UKIs signed by a foreign Secure Boot key.
fn foreign_signed_repo(repo: &Path, dir: &Path) -> Result<PathBuf> {
    let v2 = Image::locate_in(
        &qemu_tests::image::build_dir().join("update-v2"),
        VARIANT,
        Arch::X86_64,
    )?;
    let build = dir.join("v2-foreign");
    std::fs::create_dir_all(&build)?;
    let (key, cert) = tamper::foreign_key(dir)?;
    let mut manifest = v2.manifest.clone();
    for file in ["root.erofs", "verity.img"] {
        std::os::unix::fs::symlink(v2.dir.join(file), build.join(file))?;
    }
    for file in ["uki-a.efi", "uki-b.efi"] {
        let unsigned = dir.join(format!("{file}.unsigned"));
        tamper::unsigned(&v2.dir.join(file), &unsigned)?;
        tamper::sign(&unsigned, &build.join(file), &key, &cert)?;
        let bytes = std::fs::read(build.join(file))?;
        manifest["artifacts"][file]["size"] = Value::from(bytes.len());
        manifest["artifacts"][file]["sha256"] =
            Value::from(hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes)));
    }
    std::fs::write(build.join("manifest.json"), serde_json::to_vec(&manifest)?)?;
    let rogue = dir.join("repo-foreign-uki");
    copy_repo(repo, &rogue)?;
    let keys = qemu_tests::image::build_dir().join("update-keys");
    let out = Command::new(qemu_tests::image::repo_root().join("target/release/os-build"))
        .args(["repo", "add", "--replace", "--repo"])
        .arg(&rogue)
        .arg("--build")
        .arg(&build)
        .arg("--secure-boot-db")
        .arg(&cert)
        .args(["--key"])
        .arg(keys.join("targets.pk8"))
        .args(["--key"])
        .arg(keys.join("snapshot.pk8"))
        .args(["--key"])
        .arg(keys.join("timestamp.pk8"))
        .output()
        .context("cannot run target/release/os-build (scripts/test.sh builds it)")?;
    ensure!(
        out.status.success(),
        "os-build repo add (foreign UKIs) failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(rogue)
}

/// Serves three tampered copies of the repository in turn; `apiclient update apply --check`
/// must fail on each, naming the reason, and leave nothing activated. Then serves a good copy
/// re-signed with newer versions (the guest may have stored the expired one's versions).
fn tampering_is_refused(machine: &Machine, repo: &Path, checks: &mut Checks) -> Result<()> {
    let dir = machine.work.path();
    // A signed field changed without re-signing.
    let bad_signature = dir.join("repo-bad-signature");
    copy_repo(repo, &bad_signature)?;
    let ts = bad_signature.join("metadata/timestamp.json");
    let mut doc: Value = serde_json::from_slice(&std::fs::read(&ts)?)?;
    doc["signed"]["expires"] = Value::from("2099-01-01T00:00:00Z");
    std::fs::write(&ts, serde_json::to_vec(&doc)?)?;
    // Correctly signed, but the timestamp expires a second after signing.
    let expired = dir.join("repo-expired");
    copy_repo(repo, &expired)?;
    refresh(&expired, "1s")?;
    // v2's verity image replaced by other bytes of the same length.
    let replaced = dir.join("repo-replaced-target");
    copy_repo(repo, &replaced)?;
    let target = std::fs::read_dir(replaced.join("targets"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.to_string_lossy().ends_with("-verity.img.zst"))
        .context("the repository has no verity target")?;
    let len = std::fs::metadata(&target)?.len();
    std::fs::write(&target, vec![0x5a_u8; usize::try_from(len)?])?;
    std::thread::sleep(Duration::from_secs(2));

    for (what, served, expected) in [
        ("bad signature", &bad_signature, "signature"),
        ("expired timestamp", &expired, "expired"),
        ("replaced target", &replaced, "mismatch"),
    ] {
        apply_is_refused(machine, what, served, expected, checks)?;
    }
    let good = dir.join("repo-good");
    copy_repo(repo, &good)?;
    refresh(&good, "7d")?;
    machine.server.set_root(Some(good));
    Ok(())
}

/// Tamper 3 (docs/secure-boot.md): a correctly signed repository (the TUF targets key is not
/// the Secure Boot key) offering v2 with UKIs signed by a foreign key. The last step of the
/// scenario: the host keeps the versions of the correctly signed metadata it verified
/// (targets one version up), so afterwards the genuine repository would look like a replay.
fn foreign_uki_is_refused(machine: &Machine, repo: &Path, checks: &mut Checks) -> Result<()> {
    let foreign = foreign_signed_repo(repo, machine.work.path())?;
    apply_is_refused(
        machine,
        "UKI signed by a foreign key",
        &foreign,
        "not in the trusted db",
        checks,
    )
}

/// Serves `served`; `apiclient update apply --check` must fail naming `expected` and leave
/// nothing activated.
fn apply_is_refused(
    machine: &Machine,
    what: &str,
    served: &Path,
    expected: &str,
    checks: &mut Checks,
) -> Result<()> {
    machine.server.set_root(Some(served.to_path_buf()));
    let out = machine.api.run(&["update", "apply", "--check"])?;
    let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase();
    let state = machine.status()?["state"].clone();
    checks.check(
        format!("{what}: apply refused, naming it, nothing activated"),
        !out.status.success() && stderr.contains(expected) && state != "ready",
        format!(
            "exit {:?}, state {state}, stderr: {}",
            out.status.code(),
            stderr.trim()
        ),
    );
    Ok(())
}

#[test]
fn update_rollback_power_cut_and_update_x86_64() -> Result<()> {
    update_rollback_power_cut_and_update(Arch::X86_64)
}

#[test]
fn update_rollback_power_cut_and_update_aarch64() -> Result<()> {
    update_rollback_power_cut_and_update(Arch::Aarch64)
}

fn update_rollback_power_cut_and_update(arch: Arch) -> Result<()> {
    let Some(_lock) = scenario::begin(
        &format!("update_{arch}"),
        &[
            "v1 boots and its health gate marks the UKI good",
            "apiclient update check offers v2 from the signed repository served by the host",
            "apiclient update apply writes slot B; a corrupted root-b fails verity at each try and v1 boots again by itself",
            "a flipped byte of private's superblock magic is repaired by e2fsck at that boot: the setting and the update state survive",
            "/updates/status reports the failed update after the fallback",
            "QEMU killed while apply writes the slot: v1 still boots",
            "with a clone of the image attached as a second disk, v1 boots from the first and nothing is written to the clone",
            "a bad signature, an expired timestamp and a replaced target are each refused",
            "every power-on enforces Secure Boot (signed v1 and v2); v2 whose UKIs a foreign key signed, in a correctly signed repository, is refused before the ESP or the slot changes",
            "apiclient update apply --reboot: v2 boots from slot B, passes its gate, keeps the settings",
            "apiclient update rollback --reboot: v1 boots from slot A",
            "v2 again, with its ESP not mounted: three trial boots fail their gate and reboot, v1 runs again, the status says so",
        ],
    )?
    else {
        return Ok(());
    };
    let build = qemu_tests::image::build_dir();
    let v1 = Image::locate(VARIANT, arch)?;
    let v2 = Image::locate_in(&build.join("update-v2"), VARIANT, arch)?;
    let (v1_version, v2_version) = (
        v1.version()
            .context("v1 manifest has no version")?
            .to_owned(),
        v2.version()
            .context("v2 manifest has no version")?
            .to_owned(),
    );
    println!(
        "  v1 {v1_version} ({}), v2 {v2_version}",
        v1.qcow2.display()
    );
    let repo = build.join("update-repo").join(arch.as_str());
    ensure!(
        repo.join("metadata/timestamp.json").is_file(),
        "no update repository at {} (scripts/test.sh builds it)",
        repo.display()
    );
    let root_b = gpt::find(&v1.raw()?, Partition::Root(Slot::B))?;
    let private = gpt::find(&v1.raw()?, Partition::Private)?;

    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR"))?;
    let user_data = work.path().join("user-data.toml");
    std::fs::write(&user_data, user_data_toml())?;
    let target_tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let machine = Machine {
        arch,
        api: Api::forward(build_apiclient(target_tmp)?, work.path().join("api.sock"))?,
        server: FileServer::start(&repo)?,
        work,
        user_data,
        vars: v1.uefi_vars().with_context(|| {
            format!(
                "{} is not a signed build (no uefi-vars.fd; scripts/test.sh signs it)",
                v1.dir.display()
            )
        })?,
    };
    let mut checks = Checks::new();

    // 1. v1; apply; power off; corrupt root-b.
    let vm = machine.power_on("1_v1", &v1.qcow2)?;
    let (at, report) = healthy_boot(&vm, 1, BOOT_DEADLINE)?;
    println!("  v1 healthy after {at:.1}s");
    checks.equal("v1 boots from slot a", report.get("slot"), "a");
    machine.api.wait_ready(STEP_DEADLINE)?;
    let status = machine.status()?;
    checks.check(
        "v1's first boot marks its UKI good",
        status["last_boot"]["outcome"] == "healthy" && status["last_boot"]["blessed"] == true,
        format!("{}", status["last_boot"]),
    );
    machine.api.stdout(&["set", &format!("motd={MOTD}")])?;
    let checked: Value = serde_json::from_str(&machine.api.stdout(&["update", "check"])?)
        .context("apiclient update check printed no JSON")?;
    checks.check(
        "update check offers v2",
        checked["state"] == "available" && checked["chosen"]["version"] == v2_version.as_str(),
        format!("{checked}"),
    );
    let started = Instant::now();
    machine.api.stdout(&["update", "apply"])?;
    let apply_secs = started.elapsed().as_secs_f64();
    let status = machine.status()?;
    checks.check(
        "apply leaves the update ready in slot b",
        status["state"] == "ready" && status["target_slot"] == "b",
        format!("{status}"),
    );
    println!("  apply (download, write, verify, install UKI): {apply_secs:.1}s");
    vm.power_off(STEP_DEADLINE)?;
    let disk1 = machine.keep_disk(&vm, "after-apply")?;
    drop(vm);
    // The EROFS superblock and the first blocks of root-b: read at mount, so every try fails.
    corrupt(&disk1, root_b.offset(), 64 * 1024)?;
    // One byte of private's ext4 superblock magic (0xEF53 at byte 56 of the superblock at
    // 1024): the kernel no longer mounts it; its backup superblocks are intact.
    poke(&disk1, private.offset() + 1024 + 56, 0x00)?;

    // 2. The corrupted slot falls back to v1 by itself; then a power cut during apply.
    let vm = machine.power_on("2_fallback", &disk1)?;
    let started = Instant::now();
    let (at, report) = healthy_boot(&vm, 1, FALLBACK_DEADLINE)?;
    let kernels = vm.count_matches(markers::KERNEL_BANNER)?;
    println!(
        "  fell back to v1 after {at:.1}s ({kernels} kernel starts, {:.1}s)",
        started.elapsed().as_secs_f64()
    );
    checks.equal("fallback boots slot a", report.get("slot"), "a");
    checks.check(
        "the corrupted slot was tried before falling back",
        kernels >= 2,
        format!("{kernels} kernel banners"),
    );
    machine.api.wait_ready(STEP_DEADLINE)?;
    checks.equal(
        "/os after fallback",
        Some(machine.os_version()?.as_str()),
        &v1_version,
    );
    let repaired = vm.lines();
    let repair_at = |pattern: &str| {
        let re = regex::Regex::new(pattern).ok()?;
        repaired
            .iter()
            .find(|l| re.is_match(&l.text))
            .map(|l| l.elapsed.as_secs_f64())
    };
    let (asked, done) = (
        repair_at(r"early-init: private .* repairing with e2fsck"),
        repair_at(markers::PRIVATE_REPAIRED),
    );
    checks.check(
        "the damaged private was repaired by e2fsck, not formatted",
        done.is_some() && vm.count_matches(r"early-init: making ext4 file system private")? == 0,
        format!("repair line at {done:?}"),
    );
    if let (Some(a), Some(d)) = (asked, done) {
        println!("  private repaired by e2fsck in {:.1}s", d - a);
    }
    let motd = machine.api.get("settings.motd")?;
    checks.equal(
        "the setting made before the damage is still there",
        motd.pointer("/settings/motd").and_then(Value::as_str),
        MOTD,
    );
    let status = machine.status()?;
    checks.check(
        "/updates/status reports the failed update",
        status["failed_update"]["version"] == v2_version.as_str()
            && status["failed_update"]["slot"] == "b"
            && status["state"] == "idle",
        format!("{}", status["failed_update"]),
    );
    machine.api.stdout(&["update", "check"])?;
    let served_before = machine.server.served().len();
    // The cut: once the last image (verity; the UKI comes first, checked before the large
    // images are fetched) is downloaded, the updater writes the slot.
    let apply = {
        let (apiclient, socket) = (machine.api.apiclient.clone(), machine.api.socket.clone());
        std::thread::spawn(move || {
            Command::new(apiclient)
                .arg("--socket-path")
                .arg(socket)
                .args(["update", "apply"])
                .output()
        })
    };
    let deadline = Instant::now() + APPLY_DEADLINE;
    loop {
        let served = machine.server.served();
        if served[served_before..]
            .iter()
            .any(|s| s.path.contains("verity.img") && s.status == 200)
        {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the guest never downloaded v2's UKI"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    vm.kill()?;
    println!("  power cut: QEMU killed 2 s after the last download");
    let _ = apply.join();
    let disk2 = machine.keep_disk(&vm, "after-cut")?;
    drop(vm);

    // 3. v1 again with a clone of the image attached; apply --reboot; v2 healthy.
    let vm = machine.power_on_with(
        "3_v2",
        &disk2,
        &Extras {
            second_disk: Some(&v1.qcow2),
            ..Extras::default()
        },
    )?;
    let (_, report) = healthy_boot(&vm, 1, BOOT_DEADLINE)?;
    checks.equal(
        "after the power cut v1 boots from slot a",
        report.get("slot"),
        "a",
    );
    machine.api.wait_ready(STEP_DEADLINE)?;
    let status = machine.status()?;
    checks.check(
        "after the power cut nothing is ready to boot",
        status["state"] != "ready",
        format!("state {}", status["state"]),
    );
    tampering_is_refused(&machine, &repo, &mut checks)?;
    machine.api.stdout(&["update", "check"])?;
    let started = Instant::now();
    let banners = vm.count_matches(markers::KERNEL_BANNER)?;
    machine.api.run(&["update", "apply", "--reboot"])?;
    let (_, report) = healthy_boot(&vm, 2, BOOT_DEADLINE + APPLY_DEADLINE)?;
    let total = started.elapsed().as_secs_f64();
    println!("  update apply --reboot -> v2 healthy: {total:.1}s");
    checks.check(
        "apply --reboot rebooted once",
        vm.count_matches(markers::KERNEL_BANNER)? == banners + 1,
        format!(
            "{} kernel banners",
            vm.count_matches(markers::KERNEL_BANNER)?
        ),
    );
    checks.equal("v2 boots from slot b", report.get("slot"), "b");
    machine.api.wait_ready(STEP_DEADLINE)?;
    checks.equal(
        "/os says v2",
        Some(machine.os_version()?.as_str()),
        &v2_version,
    );
    let os: Value = serde_json::from_str(&machine.api.stdout(&["raw", "-u", "/os"])?)?;
    checks.check(
        "the signed v2 runs with Secure Boot enforced and the kernel locked down (/os)",
        os["secure_boot"] == "enabled" && os["lockdown"] == "integrity",
        format!(
            "secure_boot {}, lockdown {}",
            os["secure_boot"], os["lockdown"]
        ),
    );
    let motd = machine.api.get("settings.motd")?;
    checks.equal(
        "the setting made on v1 survives the update",
        motd.pointer("/settings/motd").and_then(Value::as_str),
        MOTD,
    );
    let status = machine.status()?;
    checks.check(
        "v2 passed its gate: idle, boot marked good, failure cleared",
        status["state"] == "idle"
            && status["last_boot"]["blessed"] == true
            && status["last_boot"]["version"] == v2_version.as_str()
            && status.get("failed_update").is_none(),
        format!("{status}"),
    );

    // Rollback by hand: the other slot (v1, slot a) boots next.
    machine.api.run(&["update", "rollback", "--reboot"])?;
    let (_, report) = healthy_boot(&vm, 3, BOOT_DEADLINE)?;
    checks.equal("rollback boots slot a", report.get("slot"), "a");
    machine.api.wait_ready(STEP_DEADLINE)?;
    checks.equal(
        "/os after the rollback",
        Some(machine.os_version()?.as_str()),
        &v1_version,
    );

    // 4. A slot whose health gate fails: v2 again, then a power-on where the gate fails.
    machine.api.stdout(&["update", "apply", "--check"])?;
    vm.power_off(STEP_DEADLINE)?;
    checks.check(
        "nothing was written to the cloned disk",
        same_as_backing(&vm.dir().join("disk1.qcow2"), &v1.qcow2)?,
        "its overlay differs from the image",
    );
    let disk3 = machine.keep_disk(&vm, "after-second-apply")?;
    drop(vm);
    let vm = machine.power_on_with(
        "4_no_esp",
        &disk3,
        &Extras {
            no_esp: true,
            ..Extras::default()
        },
    )?;
    let status = machine.wait_status(FALLBACK_DEADLINE, |s| s.get("failed_update").is_some())?;
    let trial_reboots = vm.count_matches(GATE_FAILED_REBOOTING)?;
    println!("  gate failures that rebooted a trial boot: {trial_reboots}");
    checks.check(
        "each trial boot without its ESP fails its gate and reboots (three tries)",
        trial_reboots == 3 && vm.count_matches(r"the ESP is not mounted on /boot")? >= 3,
        format!("{trial_reboots} lines `{GATE_FAILED_REBOOTING}`"),
    );
    checks.check(
        "after its tries v1 runs again and the failed update is reported",
        status["running"] == v1_version.as_str()
            && status["failed_update"]["version"] == v2_version.as_str()
            && status["state"] == "idle",
        format!("{status}"),
    );
    checks.check(
        "v1's own gate failure is reported without a reboot (a good UKI has nowhere to go)",
        status["last_boot"]["outcome"] == "gate-failed"
            && status["last_boot"]["slot"] == "a"
            && status["last_boot"]["detail"]
                .as_str()
                .is_some_and(|d| d.contains("the ESP is not mounted")),
        format!("{}", status["last_boot"]),
    );
    foreign_uki_is_refused(&machine, &repo, &mut checks)?;
    let tail = vm.tail(40);
    vm.power_off(STEP_DEADLINE)?;
    checks
        .finish()
        .map_err(|e| anyhow::anyhow!("{e}\nlast serial lines:\n{tail}"))
}
