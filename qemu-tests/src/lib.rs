//! QEMU harness for Berth images and the boot scenarios built on it.
//!
//! The harness boots an image under TCG (this project's CI has no KVM) with UEFI firmware,
//! reads the serial console line by line with a host timestamp per line, and lets a test wait
//! for a line with a deadline. A failed wait reports the last serial lines, and QEMU's own
//! stderr when QEMU exited early.
//!
//! ```no_run
//! use std::time::Duration;
//! use qemu_tests::{Arch, Image, Vm};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let image = Image::locate("qemu", Arch::X86_64)?;
//! let vm = Vm::builder(Arch::X86_64)
//!     .disk(&image.qcow2)
//!     .fw_cfg_string("opt/org.berth/probe", "1")
//!     .boot()?;
//! let line = vm.wait_for_line(qemu_tests::markers::MULTI_USER, Duration::from_secs(180))?;
//! println!("multi-user after {:?}", line.elapsed);
//! vm.power_off(Duration::from_secs(60))?;
//! # Ok(())
//! # }
//! ```
//!
//! Scenario tests call [`scenario::begin`] first: it skips (with a message saying why) unless
//! `BERTH_QEMU_TESTS=1`, and it serialises VMs across test processes so that two TCG guests
//! do not share the two CI cores and miss their deadlines.

pub mod api;
mod arch;
pub mod boot_times;
pub mod checks;
mod console;
pub mod fault;
pub mod file_server;
pub mod gpt;
pub mod image;
pub mod imds;
pub mod loopback;
pub mod markers;
pub mod paths;
pub mod probe;
mod qmp;
pub mod restart;
pub mod scenario;
pub mod tamper;
pub mod vm;

pub use arch::Arch;
pub use boot_times::BootTimes;
pub use checks::Checks;
pub use console::Line;
pub use image::Image;
pub use probe::ProbeReport;
pub use qmp::QmpError;
pub use restart::{BootOutcome, RestartDetector};
pub use vm::{Pattern, PowerOff, RunningVm, Vm, VmBuilder, VmError};
