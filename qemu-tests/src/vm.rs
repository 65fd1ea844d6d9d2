//! The `Vm` builder and the running VM.
//!
//! Every VM gets a private temporary directory holding a qcow2 overlay per disk (the built
//! image is never written), a copy of the firmware variable store, the QMP socket, QEMU's
//! stderr and, unless told otherwise, the serial log. The serial console is QEMU's stdout
//! (`-chardev stdio`), so no byte is lost before the harness is ready to read.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use regex::Regex;
use serde_json::Value;
use tempfile::TempDir;

use crate::console::{Console, ConsoleState, Line, WaitOutcome};
use crate::qmp::{Qmp, QmpError};
use crate::{paths, Arch};

/// How many serial lines an error shows.
const TAIL_LINES: usize = 40;
/// How much of QEMU's stderr an error shows.
const STDERR_TAIL_BYTES: u64 = 4000;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("create the VM's temporary directory")]
    TempDir(#[source] io::Error),
    #[error("firmware {path} not found; install the host tools with scripts/host-deps.sh")]
    FirmwareMissing { path: PathBuf },
    #[error("copy the firmware variables {from} to {to}")]
    CopyVars {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("disk image {path} not found")]
    DiskMissing {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("qemu-img could not {action} {path}: {stderr}")]
    QemuImg {
        action: &'static str,
        path: PathBuf,
        stderr: String,
    },
    #[error("run {program}; install the host tools with scripts/host-deps.sh")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("create {path}")]
    CreateFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("start the serial console reader")]
    ReaderThread(#[source] io::Error),
    #[error("invalid pattern `{pattern}`")]
    Pattern {
        pattern: String,
        #[source]
        source: regex::Error,
    },
    #[error("timed out after {waited:?} waiting for {what}; last serial lines:\n{tail}")]
    Timeout {
        what: String,
        waited: Duration,
        tail: String,
    },
    #[error(
        "QEMU exited ({status}) while waiting for {what}; QEMU stderr:\n{stderr}\nlast serial lines:\n{tail}"
    )]
    Exited {
        what: String,
        status: String,
        stderr: String,
        tail: String,
    },
    #[error(
        "the console showed a failure while waiting for {what}: {line}\nlast serial lines:\n{tail}"
    )]
    Failed {
        what: String,
        line: String,
        tail: String,
    },
    #[error("QMP command {command}")]
    Qmp {
        command: String,
        #[source]
        source: QmpError,
    },
    #[error("wait for QEMU")]
    Wait(#[source] io::Error),
    #[error("kill QEMU")]
    Kill(#[source] io::Error),
}

/// Something a console line is matched against: a regular expression, given as text or
/// already compiled.
pub trait Pattern {
    fn to_regex(&self) -> Result<Regex, VmError>;
}

impl Pattern for str {
    fn to_regex(&self) -> Result<Regex, VmError> {
        Regex::new(self).map_err(|source| VmError::Pattern {
            pattern: self.to_owned(),
            source,
        })
    }
}

impl Pattern for String {
    fn to_regex(&self) -> Result<Regex, VmError> {
        self.as_str().to_regex()
    }
}

impl Pattern for Regex {
    fn to_regex(&self) -> Result<Regex, VmError> {
        Ok(self.clone())
    }
}

/// How [`RunningVm::power_off`] ended the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerOff {
    /// The guest powered off after the ACPI / GPIO power button, in `after`.
    Guest { after: Duration, status: ExitStatus },
    /// The guest ignored the power button; QEMU quit on the QMP `quit` command.
    Quit,
    /// QEMU did not quit either and was killed.
    Killed,
    /// QEMU had already exited.
    AlreadyExited(ExitStatus),
}

/// Entry point: `Vm::builder(Arch::X86_64)`.
#[derive(Debug)]
pub struct Vm;

impl Vm {
    pub fn builder(arch: Arch) -> VmBuilder {
        VmBuilder::new(arch)
    }
}

#[derive(Debug, Clone)]
struct Disk {
    path: PathBuf,
    size: Option<u64>,
}

#[derive(Debug, Clone)]
enum FwCfg {
    File(String, PathBuf),
    String(String, String),
}

/// Configures a VM; [`VmBuilder::boot`] starts it.
#[derive(Debug, Clone)]
pub struct VmBuilder {
    arch: Arch,
    name: String,
    disks: Vec<Disk>,
    memory_mib: u32,
    cpus: u32,
    cpu_model: String,
    firmware: (PathBuf, PathBuf),
    fw_cfg: Vec<FwCfg>,
    serial_log: Option<PathBuf>,
    net_user: Option<Vec<String>>,
    net_options: Vec<String>,
    extra_args: Vec<String>,
    qemu: Option<PathBuf>,
    direct_kernel: Option<DirectKernel>,
    /// Serial console on the caller's terminal ([`VmBuilder::run_attached`]).
    attached: bool,
    /// Firmware that enforces Secure Boot (see [`VmBuilder::secure_boot`]).
    secure_boot: bool,
    /// Never take the first disk's `uefi-vars.fd` (see [`VmBuilder::without_secure_boot`]).
    no_secure_boot: bool,
}

#[derive(Debug, Clone)]
struct DirectKernel {
    kernel: PathBuf,
    initrd: Option<PathBuf>,
    cmdline: String,
}

/// Files of one VM that the QEMU command line refers to.
#[derive(Debug, Clone)]
struct Layout {
    vars: PathBuf,
    overlays: Vec<PathBuf>,
    qmp: PathBuf,
}

impl VmBuilder {
    fn new(arch: Arch) -> Self {
        let (cpu_model, code, vars) = match arch {
            Arch::X86_64 => ("max", paths::OVMF_CODE, paths::OVMF_VARS),
            // pauth-impdef: the QARMA pointer-authentication cipher is very slow under TCG.
            Arch::Aarch64 => ("max,pauth-impdef=on", paths::AAVMF_CODE, paths::AAVMF_VARS),
        };
        VmBuilder {
            arch,
            name: format!("berth-{arch}"),
            disks: Vec::new(),
            memory_mib: 1024,
            cpus: crate::scenario::default_vcpus(),
            cpu_model: cpu_model.to_owned(),
            firmware: (PathBuf::from(code), PathBuf::from(vars)),
            fw_cfg: Vec::new(),
            serial_log: None,
            net_user: None,
            net_options: Vec::new(),
            extra_args: Vec::new(),
            qemu: None,
            direct_kernel: None,
            attached: false,
            secure_boot: false,
            no_secure_boot: false,
        }
    }

    /// Boots with the firmware's defaults (Secure Boot off) even when the first disk's
    /// folder holds a signed build's `uefi-vars.fd`.
    pub fn without_secure_boot(mut self) -> Self {
        self.no_secure_boot = true;
        self
    }

    /// A signed build writes `uefi-vars.fd` beside its disks: a VM booting such a disk gets
    /// that store and Secure Boot enforced, as a real machine with the image's keys enrolled
    /// would, unless firmware was chosen explicitly or [`VmBuilder::without_secure_boot`].
    fn with_image_firmware(self) -> Self {
        if self.secure_boot || self.no_secure_boot || self.firmware != Self::new(self.arch).firmware
        {
            return self;
        }
        let vars = self
            .disks
            .first()
            .and_then(|d| d.path.parent().map(|dir| dir.join("uefi-vars.fd")))
            .filter(|v| v.is_file());
        match vars {
            Some(vars) => {
                tracing::info!(vars = %vars.display(), "signed image: booting with Secure Boot on");
                self.secure_boot(vars)
            }
            None => self,
        }
    }

    /// Boots with Secure Boot enforced: the firmware's Secure Boot build (OVMF's needs q35
    /// with SMM and a secure pflash, so the guest cannot write the variables around the
    /// firmware) and `vars`, a variable store with keys enrolled (an image's
    /// `uefi-vars.fd`; each VM gets a private copy).
    pub fn secure_boot(mut self, vars: impl AsRef<Path>) -> Self {
        let code = match self.arch {
            Arch::X86_64 => paths::OVMF_CODE_SECURE_BOOT,
            Arch::Aarch64 => paths::AAVMF_CODE,
        };
        self.firmware = (PathBuf::from(code), vars.as_ref().to_owned());
        self.secure_boot = true;
        self
    }

    /// Name for QEMU's `-name` and the logs.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Adds a virtio-blk disk backed by `path` (qcow2 or raw). The VM writes to a qcow2
    /// overlay in its temporary directory; `path` is never modified.
    pub fn disk(mut self, path: impl AsRef<Path>) -> Self {
        self.disks.push(Disk {
            path: path.as_ref().to_owned(),
            size: None,
        });
        self
    }

    /// Like [`VmBuilder::disk`], with the overlay grown to `bytes` (never shrunk), as a
    /// larger cloud volume would be.
    pub fn disk_with_size(mut self, path: impl AsRef<Path>, bytes: u64) -> Self {
        self.disks.push(Disk {
            path: path.as_ref().to_owned(),
            size: Some(bytes),
        });
        self
    }

    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }

    pub fn cpus(mut self, cpus: u32) -> Self {
        self.cpus = cpus;
        self
    }

    /// QEMU `-cpu` value; defaults to `max` (x86_64) and `max,pauth-impdef=on` (aarch64).
    pub fn cpu_model(mut self, model: impl Into<String>) -> Self {
        self.cpu_model = model.into();
        self
    }

    /// Firmware code and variable-store template instead of the OVMF / AAVMF defaults.
    pub fn firmware(mut self, code: impl AsRef<Path>, vars: impl AsRef<Path>) -> Self {
        self.firmware = (code.as_ref().to_owned(), vars.as_ref().to_owned());
        self
    }

    /// A fw_cfg file with the content of `path`. Guest-visible names start with `opt/`.
    pub fn fw_cfg_file(mut self, name: impl Into<String>, path: impl AsRef<Path>) -> Self {
        self.fw_cfg
            .push(FwCfg::File(name.into(), path.as_ref().to_owned()));
        self
    }

    /// A fw_cfg file with `value` as content.
    pub fn fw_cfg_string(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.fw_cfg.push(FwCfg::String(name.into(), value.into()));
        self
    }

    /// Where to write the timestamped serial log (default: `serial.log` in the VM's
    /// temporary directory). Parent directories are created.
    pub fn serial_log(mut self, path: impl AsRef<Path>) -> Self {
        self.serial_log = Some(path.as_ref().to_owned());
        self
    }

    /// A virtio-net NIC on QEMU's user-mode network, with `hostfwd` rules such as
    /// `tcp:127.0.0.1:2222-:22`. Without this call the VM has no network.
    pub fn net_user<I, S>(mut self, hostfwd: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.net_user = Some(hostfwd.into_iter().map(Into::into).collect());
        self
    }

    /// More `-netdev user` options (`net=...`, `guestfwd=...`; QEMU's comma escaping is
    /// applied), for the NIC [`VmBuilder::net_user`] adds.
    pub fn net_options<I, S>(mut self, options: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.net_options.extend(options.into_iter().map(Into::into));
        self
    }

    /// SMBIOS type 1 (system) manufacturer and product, which Linux shows as
    /// `/sys/class/dmi/id/sys_vendor` and `product_name` (`Amazon EC2`, `m5.large`).
    pub fn smbios_system(mut self, manufacturer: &str, product: &str) -> Self {
        self.extra_args.push("-smbios".into());
        self.extra_args.push(format!(
            "type=1,manufacturer={},product={}",
            escape(manufacturer),
            escape(product)
        ));
        self
    }

    /// A raw QEMU argument, appended last.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.extra_args.push(arg.into());
        self
    }

    /// Boots `kernel` (with `initrd` and `cmdline`) through the firmware's QEMU loader
    /// instead of the disk's boot loader: for early-init work without a full image. The
    /// disks are still attached.
    pub fn direct_kernel(
        mut self,
        kernel: impl AsRef<Path>,
        initrd: Option<&Path>,
        cmdline: impl Into<String>,
    ) -> Self {
        self.direct_kernel = Some(DirectKernel {
            kernel: kernel.as_ref().to_owned(),
            initrd: initrd.map(Path::to_owned),
            cmdline: cmdline.into(),
        });
        self
    }

    /// The QEMU program instead of `qemu-system-<arch>` from `PATH`.
    pub fn qemu_binary(mut self, program: impl AsRef<Path>) -> Self {
        self.qemu = Some(program.as_ref().to_owned());
        self
    }

    fn qemu_args(&self, layout: &Layout) -> Vec<String> {
        let mut a: Vec<String> = Vec::new();
        let mut push = |items: &[&str]| a.extend(items.iter().map(|s| (*s).to_owned()));
        push(&["-nodefaults", "-no-user-config", "-display", "none"]);
        push(&["-name", &self.name]);
        match (self.arch, self.secure_boot) {
            (Arch::X86_64, false) => push(&["-machine", "q35"]),
            (Arch::X86_64, true) => push(&[
                "-machine",
                "q35,smm=on",
                "-global",
                "driver=cfi.pflash01,property=secure,value=on",
            ]),
            (Arch::Aarch64, _) => push(&["-machine", "virt"]),
        }
        push(&["-accel", "tcg,thread=multi", "-cpu", &self.cpu_model]);
        push(&["-smp", &self.cpus.to_string()]);
        push(&["-m", &format!("{}M", self.memory_mib)]);
        let code = escape(&self.firmware.0.to_string_lossy());
        let vars = escape(&layout.vars.to_string_lossy());
        push(&[
            "-drive",
            &format!("if=pflash,format=raw,unit=0,readonly=on,file={code}"),
            "-drive",
            &format!("if=pflash,format=raw,unit=1,file={vars}"),
        ]);
        for (i, overlay) in layout.overlays.iter().enumerate() {
            let file = escape(&overlay.to_string_lossy());
            push(&[
                "-drive",
                &format!("if=none,id=disk{i},format=qcow2,file={file}"),
                "-device",
                &format!("virtio-blk-pci,drive=disk{i}"),
            ]);
        }
        // Entropy for the guest, so that nothing in early boot waits for the CRNG.
        push(&[
            "-object",
            "rng-random,id=rng0,filename=/dev/urandom",
            "-device",
            "virtio-rng-pci,rng=rng0",
        ]);
        if self.attached {
            push(&[
                "-chardev",
                "stdio,id=serial0,mux=on,signal=off",
                "-serial",
                "chardev:serial0",
                "-mon",
                "chardev=serial0,mode=readline",
            ]);
        } else {
            push(&[
                "-chardev",
                "stdio,id=serial0,signal=off",
                "-serial",
                "chardev:serial0",
            ]);
        }
        let qmp = escape(&layout.qmp.to_string_lossy());
        push(&["-qmp", &format!("unix:{qmp},server=on,wait=off")]);
        for entry in &self.fw_cfg {
            let spec = match entry {
                FwCfg::File(name, path) => {
                    format!(
                        "name={},file={}",
                        escape(name),
                        escape(&path.to_string_lossy())
                    )
                }
                FwCfg::String(name, value) => {
                    format!("name={},string={}", escape(name), escape(value))
                }
            };
            push(&["-fw_cfg", &spec]);
        }
        if let Some(direct) = &self.direct_kernel {
            push(&["-kernel", &direct.kernel.to_string_lossy()]);
            if let Some(initrd) = &direct.initrd {
                push(&["-initrd", &initrd.to_string_lossy()]);
            }
            push(&["-append", &direct.cmdline]);
        }
        if let Some(rules) = &self.net_user {
            let mut netdev = "user,id=net0".to_owned();
            for rule in rules {
                netdev.push_str(",hostfwd=");
                netdev.push_str(&escape(rule));
            }
            for option in &self.net_options {
                netdev.push(',');
                netdev.push_str(&escape(option));
            }
            push(&["-netdev", &netdev, "-device", "virtio-net-pci,netdev=net0"]);
        }
        a.extend(self.extra_args.iter().cloned());
        a
    }

    /// The VM's directory (temporary unless BERTH_KEEP_VM says otherwise), its private
    /// firmware variables and disk overlays.
    fn prepare(&self) -> Result<(Option<tempfile::TempDir>, PathBuf, Layout), VmError> {
        let tempdir = tempfile::Builder::new()
            .prefix("berth-vm-")
            .tempdir()
            .map_err(VmError::TempDir)?;
        let keep = std::env::var_os(paths::KEEP_VAR).is_some_and(|v| v == "1");
        let (tempdir, dir) = if keep {
            let dir = tempdir.keep();
            tracing::info!(dir = %dir.display(), "keeping the VM directory");
            (None, dir)
        } else {
            let dir = tempdir.path().to_owned();
            (Some(tempdir), dir)
        };

        let (code, vars_template) = &self.firmware;
        for path in [code, vars_template] {
            if !path.is_file() {
                return Err(VmError::FirmwareMissing { path: path.clone() });
            }
        }
        let vars = dir.join("vars.fd");
        fs::copy(vars_template, &vars).map_err(|source| VmError::CopyVars {
            from: vars_template.clone(),
            to: vars.clone(),
            source,
        })?;

        let mut overlays = Vec::new();
        for (i, disk) in self.disks.iter().enumerate() {
            let overlay = dir.join(format!("disk{i}.qcow2"));
            create_overlay(disk, &overlay)?;
            overlays.push(overlay);
        }
        let layout = Layout {
            vars,
            overlays,
            qmp: dir.join("qmp.sock"),
        };
        Ok((tempdir, dir, layout))
    }

    /// Runs QEMU in the foreground with the serial console and QEMU's monitor on this
    /// terminal (Ctrl-A X quits, Ctrl-A C toggles the monitor) until the guest powers off.
    pub fn run_attached(self) -> Result<ExitStatus, VmError> {
        let mut this = self.with_image_firmware();
        let (_tempdir, dir, layout) = this.prepare()?;
        this.attached = true;
        let args = this.qemu_args(&layout);
        let program = this
            .qemu
            .clone()
            .unwrap_or_else(|| PathBuf::from(this.arch.qemu_binary()));
        let mut child = Command::new(&program)
            .args(&args)
            .current_dir(&dir)
            .spawn()
            .map_err(|source| VmError::Spawn {
                program: program.display().to_string(),
                source,
            })?;
        child.wait().map_err(VmError::Wait)
    }

    /// Prepares the VM's directory and starts QEMU.
    pub fn boot(self) -> Result<RunningVm, VmError> {
        let this = self.with_image_firmware();
        this.boot_prepared()
    }

    fn boot_prepared(self) -> Result<RunningVm, VmError> {
        let (tempdir, dir, layout) = self.prepare()?;
        let args = self.qemu_args(&layout);

        let serial_log = self
            .serial_log
            .clone()
            .unwrap_or_else(|| dir.join("serial.log"));
        if let Some(parent) = serial_log.parent() {
            fs::create_dir_all(parent).map_err(|source| VmError::CreateFile {
                path: parent.to_owned(),
                source,
            })?;
        }
        let log = File::create(&serial_log).map_err(|source| VmError::CreateFile {
            path: serial_log.clone(),
            source,
        })?;
        let stderr_path = dir.join("qemu.stderr");
        let stderr = File::create(&stderr_path).map_err(|source| VmError::CreateFile {
            path: stderr_path.clone(),
            source,
        })?;

        let program = self
            .qemu
            .clone()
            .unwrap_or_else(|| PathBuf::from(self.arch.qemu_binary()));
        tracing::info!(vm = %self.name, "{} {}", program.display(), args.join(" "));
        let start = Instant::now();
        let mut child = Command::new(&program)
            .args(&args)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|source| VmError::Spawn {
                program: program.display().to_string(),
                source,
            })?;
        let console = Arc::new(Console::new(start));
        let reader = match child.stdout.take() {
            Some(stdout) => {
                let console = Arc::clone(&console);
                let spawned = thread::Builder::new()
                    .name(format!("serial-{}", self.name))
                    .spawn(move || console.read_from(stdout, Some(log)));
                match spawned {
                    Ok(handle) => Some(handle),
                    Err(e) => {
                        // Do not leave QEMU running without anyone reading its console.
                        let _ = child.kill();
                        let _ = child.wait();
                        return Err(VmError::ReaderThread(e));
                    }
                }
            }
            None => None,
        };
        Ok(RunningVm {
            name: self.name,
            arch: self.arch,
            child: Mutex::new(child),
            console,
            reader,
            start,
            dir,
            _tempdir: tempdir,
            serial_log,
            stderr_path,
            qmp_path: layout.qmp,
        })
    }
}

/// QEMU option values escape a comma by doubling it.
fn escape(value: &str) -> String {
    value.replace(',', ",,")
}

fn create_overlay(disk: &Disk, overlay: &Path) -> Result<(), VmError> {
    let backing = fs::canonicalize(&disk.path).map_err(|source| VmError::DiskMissing {
        path: disk.path.clone(),
        source,
    })?;
    let info = run_qemu_img(
        "inspect",
        &backing,
        &["info", "-U", "--output=json", &backing.to_string_lossy()],
    )?;
    let info: Value = serde_json::from_str(&info).map_err(|e| VmError::QemuImg {
        action: "inspect",
        path: backing.clone(),
        stderr: format!("unreadable JSON from qemu-img info: {e}"),
    })?;
    let format = info.get("format").and_then(Value::as_str).unwrap_or("raw");
    let backing_size = info
        .get("virtual-size")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let size = disk.size.unwrap_or(0).max(backing_size);
    // -u: the size is known, so qemu-img need not open (and lock) the backing file.
    run_qemu_img(
        "create an overlay over",
        &backing,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            format,
            "-b",
            &backing.to_string_lossy(),
            "-u",
            &overlay.to_string_lossy(),
            &size.to_string(),
        ],
    )?;
    Ok(())
}

fn run_qemu_img(action: &'static str, path: &Path, args: &[&str]) -> Result<String, VmError> {
    let output = Command::new(paths::QEMU_IMG)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| VmError::Spawn {
            program: paths::QEMU_IMG.to_owned(),
            source,
        })?;
    if !output.status.success() {
        return Err(VmError::QemuImg {
            action,
            path: path.to_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A started VM. Dropping it kills QEMU.
#[derive(Debug)]
pub struct RunningVm {
    name: String,
    arch: Arch,
    child: Mutex<Child>,
    console: Arc<Console>,
    reader: Option<JoinHandle<()>>,
    start: Instant,
    dir: PathBuf,
    _tempdir: Option<TempDir>,
    serial_log: PathBuf,
    stderr_path: PathBuf,
    qmp_path: PathBuf,
}

impl RunningVm {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn arch(&self) -> Arch {
        self.arch
    }

    /// The VM's temporary directory (overlays, firmware variables, QEMU stderr).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The timestamped serial log.
    pub fn serial_log(&self) -> &Path {
        &self.serial_log
    }

    /// Host time since QEMU was started.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Waits up to `deadline` (from now) for a console line matching `pattern`, searching
    /// every line since the VM started, and returns the first match. An unfinished line
    /// matches too once it has been unchanged for a moment (a prompt such as `Shell> `).
    pub fn wait_for_line<P: Pattern + ?Sized>(
        &self,
        pattern: &P,
        deadline: Duration,
    ) -> Result<Line, VmError> {
        self.wait_for_nth_line(pattern, 1, deadline)
    }

    /// Waits until `n` lines (counting from 1) match `pattern` and returns the `n`-th; for
    /// instance the second firmware banner after a reboot.
    pub fn wait_for_nth_line<P: Pattern + ?Sized>(
        &self,
        pattern: &P,
        n: usize,
        deadline: Duration,
    ) -> Result<Line, VmError> {
        let re = pattern.to_regex()?;
        let what = if n <= 1 {
            format!("a line matching `{re}`")
        } else {
            format!("{n} lines matching `{re}`")
        };
        let mut scanned = 0;
        let mut count = 0;
        self.wait(what, deadline, |state| {
            for line in &state.lines[scanned..] {
                if re.is_match(&line.text) {
                    count += 1;
                    if count >= n {
                        return Some(line.clone());
                    }
                }
            }
            scanned = state.lines.len();
            // Only a quiet unfinished line (a prompt): a line still being written would match
            // on its first bytes and hand the caller a truncated text.
            state
                .quiet_partial()
                .filter(|p| count + 1 >= n && re.is_match(&p.text))
                .cloned()
        })
    }

    /// Like [`RunningVm::wait_for_line`], but fails at once when a line matching `failure`
    /// comes first (see [`crate::markers::BOOT_FAILURE`]), instead of waiting out the
    /// deadline on a machine that will not get there.
    pub fn wait_for_line_or_fail<P, F>(
        &self,
        pattern: &P,
        failure: &F,
        deadline: Duration,
    ) -> Result<Line, VmError>
    where
        P: Pattern + ?Sized,
        F: Pattern + ?Sized,
    {
        let re = pattern.to_regex()?;
        let failure = failure.to_regex()?;
        let what = format!("a line matching `{re}`");
        let mut scanned = 0;
        let found = self.wait(what.clone(), deadline, |state| {
            for line in &state.lines[scanned..] {
                if re.is_match(&line.text) {
                    return Some(Ok(line.clone()));
                }
                if failure.is_match(&line.text) {
                    return Some(Err(line.clone()));
                }
            }
            scanned = state.lines.len();
            None
        })?;
        found.map_err(|line| VmError::Failed {
            what,
            line: line.to_log(),
            tail: self.tail(TAIL_LINES),
        })
    }

    /// Waits up to `deadline` until `found` returns a value for the complete lines so far.
    /// `what` names the condition in the error.
    pub fn wait_until<T>(
        &self,
        what: &str,
        deadline: Duration,
        mut found: impl FnMut(&[Line]) -> Option<T>,
    ) -> Result<T, VmError> {
        self.wait(what.to_owned(), deadline, |state| found(&state.lines))
    }

    fn wait<T>(
        &self,
        what: String,
        deadline: Duration,
        found: impl FnMut(&ConsoleState) -> Option<T>,
    ) -> Result<T, VmError> {
        tracing::debug!(vm = %self.name, "waiting up to {deadline:?} for {what}");
        match self.console.wait_until(deadline, found) {
            WaitOutcome::Found(value) => Ok(value),
            WaitOutcome::TimedOut => Err(VmError::Timeout {
                what,
                waited: deadline,
                tail: self.tail(TAIL_LINES),
            }),
            WaitOutcome::Closed => Err(self.exited(what)),
        }
    }

    fn exited(&self, what: String) -> VmError {
        let status = match self.wait_exit(Duration::from_secs(5)) {
            Ok(Some(status)) => status.to_string(),
            Ok(None) => "closed its console but is still running".to_owned(),
            Err(e) => format!("status unknown: {e}"),
        };
        VmError::Exited {
            what,
            status,
            stderr: self.qemu_stderr(),
            tail: self.tail(TAIL_LINES),
        }
    }

    /// The end of QEMU's stderr.
    pub fn qemu_stderr(&self) -> String {
        let read = || -> io::Result<String> {
            let mut file = File::open(&self.stderr_path)?;
            let len = file.metadata()?.len();
            file.seek(SeekFrom::Start(len.saturating_sub(STDERR_TAIL_BYTES)))?;
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes)?;
            Ok(String::from_utf8_lossy(&bytes).trim_end().to_owned())
        };
        match read() {
            Ok(text) if text.is_empty() => "(empty)".to_owned(),
            Ok(text) => text,
            Err(e) => format!("(cannot read {}: {e})", self.stderr_path.display()),
        }
    }

    /// A copy of every complete console line so far.
    pub fn lines(&self) -> Vec<Line> {
        self.console.lock().lines.clone()
    }

    /// The last `n` console lines, as the serial log shows them.
    pub fn tail(&self, n: usize) -> String {
        self.console.tail(n)
    }

    /// How many complete lines so far match `pattern`.
    pub fn count_matches<P: Pattern + ?Sized>(&self, pattern: &P) -> Result<usize, VmError> {
        let re = pattern.to_regex()?;
        Ok(self
            .console
            .lock()
            .lines
            .iter()
            .filter(|l| re.is_match(&l.text))
            .count())
    }

    /// The text of the first complete line so far that matches `pattern`, or an empty string.
    /// A `wait_for_line` match may come before the line's end arrived; this takes the line
    /// again once the console has it whole.
    pub fn first_complete_line<P: Pattern + ?Sized>(&self, pattern: &P) -> Result<String, VmError> {
        let re = pattern.to_regex()?;
        Ok(self
            .console
            .lock()
            .lines
            .iter()
            .find(|l| re.is_match(&l.text))
            .map(|l| l.text.clone())
            .unwrap_or_default())
    }

    /// Runs a QMP command and returns its result.
    pub fn qmp(&self, command: &str, arguments: Option<Value>) -> Result<Value, VmError> {
        let to_err = |source| VmError::Qmp {
            command: command.to_owned(),
            source,
        };
        let mut qmp = Qmp::connect(&self.qmp_path, Duration::from_secs(5)).map_err(to_err)?;
        qmp.execute(command, arguments).map_err(to_err)
    }

    fn child(&self) -> MutexGuard<'_, Child> {
        self.child.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// QEMU's exit status if it has exited.
    pub fn try_wait(&self) -> Result<Option<ExitStatus>, VmError> {
        self.child().try_wait().map_err(VmError::Wait)
    }

    /// Waits up to `deadline` for QEMU to exit by itself.
    pub fn wait_exit(&self, deadline: Duration) -> Result<Option<ExitStatus>, VmError> {
        let until = Instant::now() + deadline;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= until {
                return Ok(None);
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Presses the power button (QMP `system_powerdown`) and waits up to `deadline` for the
    /// guest to power off; then asks QEMU to quit; then kills it.
    pub fn power_off(&self, deadline: Duration) -> Result<PowerOff, VmError> {
        if let Some(status) = self.try_wait()? {
            return Ok(PowerOff::AlreadyExited(status));
        }
        let asked = Instant::now();
        match self.qmp("system_powerdown", None) {
            Ok(_) => {
                if let Some(status) = self.wait_exit(deadline)? {
                    return Ok(PowerOff::Guest {
                        after: asked.elapsed(),
                        status,
                    });
                }
                tracing::info!(vm = %self.name, "guest did not power off in {deadline:?}; quitting QEMU");
            }
            Err(e) => tracing::warn!(vm = %self.name, error = %e, "power button failed"),
        }
        // QEMU may close the socket before it answers `quit`; only the exit counts.
        if let Err(e) = self.qmp("quit", None) {
            tracing::debug!(vm = %self.name, error = %e, "QMP quit");
        }
        if self.wait_exit(Duration::from_secs(10))?.is_some() {
            return Ok(PowerOff::Quit);
        }
        self.kill()?;
        Ok(PowerOff::Killed)
    }

    /// Kills QEMU with SIGKILL at once, as a power cut would stop the machine, and reaps it.
    pub fn kill(&self) -> Result<ExitStatus, VmError> {
        let mut child = self.child();
        if let Some(status) = child.try_wait().map_err(VmError::Wait)? {
            return Ok(status);
        }
        child.kill().map_err(VmError::Kill)?;
        child.wait().map_err(VmError::Wait)
    }
}

impl Drop for RunningVm {
    fn drop(&mut self) {
        if let Err(e) = self.kill() {
            tracing::warn!(vm = %self.name, error = %e, "could not kill QEMU");
        }
        // QEMU is gone, so its stdout is closed and the reader finishes the log. Should
        // something else hold the pipe open, give up after a while rather than hang.
        let closed = self
            .console
            .wait_until(Duration::from_secs(5), |state| state.closed.then_some(()));
        if let (WaitOutcome::Found(()), Some(reader)) = (closed, self.reader.take()) {
            if reader.join().is_err() {
                tracing::warn!(vm = %self.name, "the serial console reader panicked");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout {
            vars: PathBuf::from("/tmp/vm/vars.fd"),
            overlays: vec![PathBuf::from("/tmp/vm/disk0.qcow2")],
            qmp: PathBuf::from("/tmp/vm/qmp.sock"),
        }
    }

    fn pairs(args: &[String]) -> Vec<(String, String)> {
        args.windows(2)
            .filter(|w| w[0].starts_with('-') && !w[1].starts_with('-'))
            .map(|w| (w[0].clone(), w[1].clone()))
            .collect()
    }

    fn has(args: &[String], flag: &str, value: &str) -> bool {
        pairs(args).contains(&(flag.to_owned(), value.to_owned()))
    }

    #[test]
    fn x86_64_uses_q35_ovmf_virtio_and_tcg() {
        // The vCPU default depends on the host and BERTH_QEMU_SLOTS (scenario::default_vcpus).
        let b = Vm::builder(Arch::X86_64)
            .cpus(2)
            .disk("/images/disk.qcow2")
            .memory_mib(2048)
            .fw_cfg_string("opt/org.berth/probe", "1")
            .fw_cfg_file("opt/org.berth/user-data", "/tmp/user,data.toml");
        let args = b.qemu_args(&layout());
        assert!(has(&args, "-machine", "q35"));
        assert!(has(&args, "-accel", "tcg,thread=multi"));
        assert!(has(&args, "-smp", "2"));
        assert!(has(&args, "-m", "2048M"));
        assert!(has(
            &args,
            "-drive",
            "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd"
        ));
        assert!(has(
            &args,
            "-drive",
            "if=pflash,format=raw,unit=1,file=/tmp/vm/vars.fd"
        ));
        assert!(has(
            &args,
            "-drive",
            "if=none,id=disk0,format=qcow2,file=/tmp/vm/disk0.qcow2"
        ));
        assert!(has(&args, "-device", "virtio-blk-pci,drive=disk0"));
        assert!(has(&args, "-serial", "chardev:serial0"));
        assert!(has(
            &args,
            "-qmp",
            "unix:/tmp/vm/qmp.sock,server=on,wait=off"
        ));
        assert!(has(&args, "-fw_cfg", "name=opt/org.berth/probe,string=1"));
        assert!(has(
            &args,
            "-fw_cfg",
            "name=opt/org.berth/user-data,file=/tmp/user,,data.toml"
        ));
        assert!(!args.iter().any(|a| a == "-netdev" || a == "-kernel"));
    }

    #[test]
    fn secure_boot_uses_the_secboot_firmware_smm_and_the_given_vars() {
        let args = Vm::builder(Arch::X86_64)
            .secure_boot("/build/uefi-vars.fd")
            .qemu_args(&layout());
        assert!(has(&args, "-machine", "q35,smm=on"));
        assert!(has(
            &args,
            "-global",
            "driver=cfi.pflash01,property=secure,value=on"
        ));
        assert!(has(
            &args,
            "-drive",
            "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.secboot.fd"
        ));
        let b = Vm::builder(Arch::Aarch64).secure_boot("/build/uefi-vars.fd");
        assert_eq!(b.firmware.1, PathBuf::from("/build/uefi-vars.fd"));
        let args = b.qemu_args(&layout());
        assert!(has(&args, "-machine", "virt"));
        assert!(has(
            &args,
            "-drive",
            "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/AAVMF/AAVMF_CODE.fd"
        ));
    }

    #[test]
    fn aarch64_uses_virt_aavmf_and_fast_pauth() {
        let args = Vm::builder(Arch::Aarch64)
            .net_user(["tcp:127.0.0.1:2222-:22"])
            .direct_kernel(
                "/boot/vmlinuz",
                Some(Path::new("/tmp/initrd.cpio")),
                "console=ttyAMA0 berth.slot=a",
            )
            .qemu_args(&layout());
        assert!(has(&args, "-kernel", "/boot/vmlinuz"));
        assert!(has(&args, "-initrd", "/tmp/initrd.cpio"));
        assert!(has(&args, "-append", "console=ttyAMA0 berth.slot=a"));
        assert!(has(&args, "-machine", "virt"));
        assert!(has(&args, "-cpu", "max,pauth-impdef=on"));
        assert!(has(
            &args,
            "-drive",
            "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/AAVMF/AAVMF_CODE.fd"
        ));
        assert!(has(
            &args,
            "-netdev",
            "user,id=net0,hostfwd=tcp:127.0.0.1:2222-:22"
        ));
    }

    /// Starts a fake QEMU: a shell script that prints a console transcript.
    fn fake_vm(script: &str) -> anyhow::Result<(tempfile::TempDir, RunningVm)> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir()?;
        let qemu = dir.path().join("fake-qemu");
        fs::write(&qemu, format!("#!/bin/sh\n{script}\n"))?;
        fs::set_permissions(&qemu, fs::Permissions::from_mode(0o755))?;
        let (code, vars) = (dir.path().join("code.fd"), dir.path().join("vars.fd"));
        fs::write(&code, b"")?;
        fs::write(&vars, b"")?;
        let vm = Vm::builder(Arch::X86_64)
            .qemu_binary(&qemu)
            .firmware(&code, &vars)
            .serial_log(dir.path().join("serial.log"))
            .boot()?;
        Ok((dir, vm))
    }

    #[test]
    fn lines_carry_their_arrival_time_and_prompts_match() -> anyhow::Result<()> {
        let (dir, vm) = fake_vm(
            "echo 'BdsDxe: loading Boot0001'; sleep 0.5; printf 'Linux version 6.12\\r\\n'\n\
             printf 'Linux version 6.12\\n'; printf 'Shell> '; exec sleep 30",
        )?;
        let kernel = vm.wait_for_line("Linux version", Duration::from_secs(10))?;
        assert_eq!(kernel.index, 1);
        assert!(kernel.elapsed >= Duration::from_millis(500), "{kernel:?}");
        let second = vm.wait_for_nth_line("Linux version", 2, Duration::from_secs(10))?;
        assert_eq!(second.index, 2);
        let prompt = vm.wait_for_line("^Shell> $", Duration::from_secs(10))?;
        assert_eq!(prompt.index, 3);
        let lines = vm.lines();
        assert!(lines[0].elapsed < kernel.elapsed);
        assert_eq!(vm.count_matches("Linux")?, 2);
        let status = vm.kill()?;
        assert!(!status.success());
        let err = vm
            .wait_for_line("never", Duration::from_secs(10))
            .expect_err("QEMU is gone");
        assert!(matches!(err, VmError::Exited { .. }), "{err}");
        drop(vm);
        let log = fs::read_to_string(dir.path().join("serial.log"))?;
        assert_eq!(log.lines().count(), 4, "{log}");
        assert!(
            log.lines().nth(3).is_some_and(|l| l.ends_with("] Shell>")),
            "{log}"
        );
        Ok(())
    }

    #[test]
    fn a_failure_line_ends_the_wait_at_once() -> anyhow::Result<()> {
        let (_dir, vm) = fake_vm(
            "echo 'early-init: slot a'; echo 'early-init: FATAL: mount root: EIO; rebooting'; exec sleep 30",
        )?;
        let started = Instant::now();
        let err = vm
            .wait_for_line_or_fail(
                crate::markers::MULTI_USER,
                crate::markers::BOOT_FAILURE,
                Duration::from_secs(20),
            )
            .expect_err("early-init failed");
        assert!(started.elapsed() < Duration::from_secs(10));
        let msg = err.to_string();
        assert!(
            msg.starts_with("the console showed a failure while waiting for a line matching"),
            "{msg}"
        );
        assert!(
            msg.contains("] early-init: FATAL: mount root: EIO; rebooting\n"),
            "{msg}"
        );
        Ok(())
    }

    #[test]
    fn timeout_shows_the_last_40_lines() -> anyhow::Result<()> {
        let (_dir, vm) = fake_vm(
            "i=0; while [ $i -lt 50 ]; do echo \"line $i\"; i=$((i+1)); done; exec sleep 30",
        )?;
        vm.wait_for_line("line 49", Duration::from_secs(10))?;
        let err = vm
            .wait_for_line("multi-user", Duration::from_millis(200))
            .expect_err("never printed");
        let VmError::Timeout { tail, .. } = &err else {
            anyhow::bail!("not a timeout: {err}");
        };
        assert_eq!(tail.lines().count(), 40);
        assert!(
            tail.lines()
                .next()
                .is_some_and(|l| l.ends_with("] line 10")),
            "{tail}"
        );
        assert!(err.to_string().starts_with(
            "timed out after 200ms waiting for a line matching `multi-user`; last serial lines:\n"
        ));
        Ok(())
    }

    #[test]
    fn early_exit_reports_qemu_stderr() -> anyhow::Result<()> {
        let (_dir, vm) =
            fake_vm("echo 'early line'; echo 'qemu: could not open disk' >&2; exit 1")?;
        let err = vm
            .wait_for_line("Linux version", Duration::from_secs(10))
            .expect_err("QEMU exits");
        let msg = err.to_string();
        assert!(
            msg.starts_with(
                "QEMU exited (exit status: 1) while waiting for a line matching `Linux version`"
            ),
            "{msg}"
        );
        assert!(msg.contains("qemu: could not open disk"), "{msg}");
        assert!(msg.contains("] early line"), "{msg}");
        Ok(())
    }

    #[test]
    fn patterns_compile_or_name_the_bad_one() {
        assert!("Reached target.*[Mm]ulti-[Uu]ser".to_regex().is_ok());
        let err = "([".to_regex().expect_err("unbalanced");
        assert_eq!(err.to_string(), "invalid pattern `([`");
    }
}
