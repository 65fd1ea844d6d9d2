//! berth-probe: prints read-only boot facts as `berth-probe: key=value`, then
//! `berth-probe: end`. Started by berth-probe.service in the QEMU tests.

use std::io::Write;
use std::path::Path;

fn main() {
    let dm = probe::dm::Control {
        path: Path::new("/dev/mapper/control"),
    };
    let facts = probe::facts(Path::new("/"), &dm);
    let mut out = std::io::stdout().lock();
    for (k, v) in facts {
        let _ = writeln!(out, "berth-probe: {k}={v}");
    }
    let _ = writeln!(out, "berth-probe: end");
    let _ = out.flush();
}
