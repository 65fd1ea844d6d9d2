//! Applying committed settings on a host: the configuration renderer (`boot-config render`)
//! runs for the affected services, off the request path, one run at a time.

use crate::key::Key;
use crate::server::Applier;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tracing::{error, info};

/// Runs `<program> render --services a,b` after each apply.
#[derive(Debug)]
pub struct CommandApplier {
    program: PathBuf,
    /// Serializes renderer runs so two quick commits restart in commit order.
    lock: Arc<Mutex<()>>,
}

impl CommandApplier {
    pub fn new(program: PathBuf) -> CommandApplier {
        CommandApplier {
            program,
            lock: Arc::new(Mutex::new(())),
        }
    }

    /// The renderer's arguments for `services`.
    pub fn args(services: &BTreeSet<String>) -> Vec<String> {
        vec![
            "render".to_string(),
            "--services".to_string(),
            services.iter().cloned().collect::<Vec<_>>().join(","),
        ]
    }
}

impl Applier for CommandApplier {
    fn apply(&self, keys: &[Key], services: &BTreeSet<String>) {
        if services.is_empty() {
            return;
        }
        info!(keys = keys.len(), services = ?services, "rendering configuration");
        let program = self.program.clone();
        let args = CommandApplier::args(services);
        let lock = Arc::clone(&self.lock);
        std::thread::spawn(move || {
            let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
            match std::process::Command::new(&program).args(&args).status() {
                Ok(status) if status.success() => info!(?args, "configuration applied"),
                Ok(status) => error!(?args, "{} failed ({status})", program.display()),
                Err(e) => error!(?args, "cannot run {}: {e}", program.display()),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asks_the_renderer_for_exactly_the_affected_services() {
        let services = BTreeSet::from(["motd".to_string(), "chronyd".to_string()]);
        assert_eq!(
            CommandApplier::args(&services),
            ["render", "--services", "chronyd,motd"]
        );
    }
}
