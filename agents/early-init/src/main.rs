//! early-init: PID 1 of the Berth initramfs. See docs/boot.md.

fn main() {
    if std::process::id() != 1 {
        eprintln!("early-init: must run as PID 1 of the initramfs (it mounts, formats and reboots); refusing");
        std::process::exit(2);
    }
    early_init::fatal::install_panic_hook();
    let err = match early_init::run() {
        Ok(never) => match never {},
        Err(err) => err,
    };
    if early_init::fatal::is_stop(&err) {
        early_init::fatal::poweroff_with(&early_init::fatal::stop_line(&err));
    }
    early_init::fatal::reboot_with(&early_init::fatal::fatal_line(&err));
}
