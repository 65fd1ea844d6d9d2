//! The image's SELinux policy (docs/selinux.md): the variant's CIL sources compiled with
//! `secilc` into `/etc/selinux/berth/policy/policy.<version>`, its contexts files, and
//! `/etc/selinux/config`, which systemd reads to load the policy early at boot.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::variant::{Selinux, SelinuxMode};

/// `SELINUXTYPE=`: the policy's folder under /etc/selinux.
pub const POLICY_NAME: &str = "berth";

/// Binary policy version written: the highest Debian's kernel (6.12) loads. libselinux
/// picks the highest `policy.N` the running kernel accepts.
pub const POLICY_VERSION: u32 = 33;

#[derive(Debug, thiserror::Error)]
pub enum SelinuxError {
    #[error("cannot run secilc (apt-get install secilc)")]
    Spawn(#[source] std::io::Error),
    #[error("secilc refused the SELinux policy ({files}): {stderr}")]
    Compile { files: String, stderr: String },
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> SelinuxError + 'a {
    move |source| SelinuxError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// Compiles the CIL files into a binary policy at `out` (secilc, MLS as the policy says,
/// unknown kernel classes handled as the policy's `handleunknown` says).
pub fn compile(policy: &[PathBuf], out: &Path) -> Result<(), SelinuxError> {
    let scratch = tempfile::tempdir().map_err(io("create a temporary folder for", out))?;
    let output = Command::new("secilc")
        .arg(format!("--policyvers={POLICY_VERSION}"))
        .arg("--output")
        .arg(out)
        // secilc also writes the file contexts of `filecon` statements; Berth keeps its
        // contexts in a file of their own.
        .arg("--filecontext")
        .arg(scratch.path().join("file_contexts"))
        .args(policy)
        .output()
        .map_err(SelinuxError::Spawn)?;
    if !output.status.success() {
        let files = policy
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let mut stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        if stderr.is_empty() {
            stderr = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        }
        return Err(SelinuxError::Compile { files, stderr });
    }
    Ok(())
}

/// Where the policy's file contexts are in the image (also handed to mkfs.erofs).
pub fn file_contexts_path(root: &Path) -> PathBuf {
    root.join(format!(
        "etc/selinux/{POLICY_NAME}/contexts/files/file_contexts"
    ))
}

/// Installs the compiled policy, its contexts and `/etc/selinux/config` into `root`.
pub fn install(root: &Path, selinux: &Selinux) -> Result<(), SelinuxError> {
    let dir = root.join("etc/selinux").join(POLICY_NAME);
    let policy_dir = dir.join("policy");
    std::fs::create_dir_all(&policy_dir).map_err(io("create", &policy_dir))?;
    compile(
        &selinux.policy,
        &policy_dir.join(format!("policy.{POLICY_VERSION}")),
    )?;
    let contexts = file_contexts_path(root);
    let contexts_dir = contexts.parent().expect("file_contexts has a parent");
    std::fs::create_dir_all(contexts_dir).map_err(io("create", contexts_dir))?;
    std::fs::copy(&selinux.file_contexts, &contexts).map_err(io("copy", &selinux.file_contexts))?;
    if let Some(lxc) = &selinux.lxc_contexts {
        let dest = dir.join("contexts/lxc_contexts");
        std::fs::copy(lxc, &dest).map_err(io("copy", lxc))?;
    }
    let config = root.join("etc/selinux/config");
    std::fs::write(&config, config_text(selinux.mode)).map_err(io("write", &config))
}

/// `/etc/selinux/config`.
pub fn config_text(mode: SelinuxMode) -> String {
    let mode = match mode {
        SelinuxMode::Enforcing => "enforcing",
        SelinuxMode::Permissive => "permissive",
    };
    format!(
        "# Written by os-build from the variant's [selinux] table (docs/selinux.md).\n\
         SELINUX={mode}\nSELINUXTYPE={POLICY_NAME}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::Arch;

    fn workspace() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    fn has(tool: &str) -> bool {
        crate::hosttools::find(tool)
    }

    /// The policy of variants/shared/selinux.toml (base.toml includes it).
    fn shipped() -> Selinux {
        crate::variant::load(&workspace().join("variants"), "qemu", Arch::X86_64)
            .unwrap()
            .selinux
            .expect("qemu has an SELinux policy")
    }

    /// Every variant, on both arches, is enforcing and starts the SELinux LSM (CIS 1.5.1):
    /// Debian's kernel starts AppArmor otherwise, and the two exclude each other.
    #[test]
    fn every_variant_enforces_and_enables_the_selinux_lsm() {
        let variants = workspace().join("variants");
        let names = crate::variant::list(&variants);
        assert!(names.len() > 1, "{names:?}");
        for name in &names {
            for arch in [Arch::X86_64, Arch::Aarch64] {
                let variant = crate::variant::load(&variants, name, arch).unwrap();
                let selinux = variant
                    .selinux
                    .as_ref()
                    .unwrap_or_else(|| panic!("{name} {arch:?} has no [selinux] table"));
                assert_eq!(selinux.mode, SelinuxMode::Enforcing, "{name}");
                let lsm: Vec<&str> = variant
                    .cmdline
                    .iter()
                    .filter_map(|a| a.strip_prefix("lsm="))
                    .flat_map(|l| l.split(','))
                    .collect();
                assert!(lsm.contains(&"selinux"), "{name}: {:?}", variant.cmdline);
                assert!(!lsm.contains(&"apparmor"), "{name}: {:?}", variant.cmdline);
                // CIS 1.5.2 (lockdown) needs its LSM too.
                assert!(lsm.contains(&"lockdown"), "{name}: {:?}", variant.cmdline);
            }
        }
    }

    #[test]
    fn config_names_mode_and_type() {
        let text = config_text(SelinuxMode::Enforcing);
        assert!(text.contains("\nSELINUX=enforcing\n"), "{text}");
        assert!(text.contains("\nSELINUXTYPE=berth\n"), "{text}");
        assert!(config_text(SelinuxMode::Permissive).contains("SELINUX=permissive"));
    }

    #[test]
    fn bad_cil_is_refused_with_the_file_named() {
        if !has("secilc") {
            eprintln!("skipped: secilc is not installed (scripts/host-deps.sh)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.cil");
        std::fs::write(&bad, "(allow nobody_t nothing_t (file (read)))\n").unwrap();
        let err = compile(&[bad], &dir.path().join("policy")).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("bad.cil"), "{text}");
    }

    /// The shipped policy compiles, and `sesearch` (setools) shows the rules docs/selinux.md
    /// promises: containers reach neither the API socket nor the datastore, other host
    /// domains only read the datastore, apiserver writes it.
    #[test]
    fn shipped_policy_compiles_and_confines() {
        if !has("secilc") || !has("sesearch") {
            eprintln!("skipped: secilc or sesearch is not installed (scripts/host-deps.sh)");
            return;
        }
        let selinux = shipped();
        let root = tempfile::tempdir().unwrap();
        install(root.path(), &selinux).unwrap();
        let policy = root
            .path()
            .join(format!("etc/selinux/berth/policy/policy.{POLICY_VERSION}"));
        assert!(policy.is_file());
        assert!(file_contexts_path(root.path()).is_file());
        let search = |args: &[&str]| {
            let out = Command::new("sesearch")
                .args(args)
                .arg(&policy)
                .output()
                .unwrap();
            assert!(out.status.success(), "sesearch {args:?}: {out:?}");
            String::from_utf8(out.stdout).unwrap()
        };
        let allowed = |args: &[&str]| !search(args).trim().is_empty();
        // Containers: nothing on the API socket, the datastore, /private or the host's /etc.
        for target in [
            "api_socket_t",
            "api_data_t",
            "private_t",
            "etc_t",
            "security_t",
        ] {
            for class in ["file", "dir", "sock_file"] {
                assert!(
                    !allowed(&["-A", "-s", "container_t", "-t", target, "-c", class]),
                    "container_t reaches {target}:{class}"
                );
            }
        }
        assert!(!allowed(&[
            "-A",
            "-s",
            "container_t",
            "-t",
            "api_t",
            "-c",
            "unix_stream_socket",
            "-p",
            "connectto"
        ]));
        // ... while they do run (they may use their own files and read the OS).
        assert!(allowed(&[
            "-A",
            "-s",
            "container_t",
            "-t",
            "container_file_t",
            "-c",
            "file",
            "-p",
            "write"
        ]));
        assert!(allowed(&[
            "-A",
            "-s",
            "container_t",
            "-t",
            "os_t",
            "-c",
            "file",
            "-p",
            "execute"
        ]));
        // The datastore: api_t writes, system_t reads only.
        assert!(allowed(&[
            "-A",
            "-s",
            "api_t",
            "-t",
            "api_data_t",
            "-c",
            "file",
            "-p",
            "write"
        ]));
        assert!(!allowed(&[
            "-A",
            "-s",
            "system_t",
            "-t",
            "api_data_t",
            "-c",
            "file",
            "-p",
            "write"
        ]));
        assert!(allowed(&[
            "-A",
            "-s",
            "system_t",
            "-t",
            "api_data_t",
            "-c",
            "file",
            "-p",
            "read"
        ]));
        // Host services may use the API.
        assert!(allowed(&[
            "-A",
            "-s",
            "system_t",
            "-t",
            "api_t",
            "-c",
            "unix_stream_socket",
            "-p",
            "connectto"
        ]));
        // systemd's services run in system_t, apiserver in api_t.
        let transitions = search(&["-T", "-s", "init_t", "-c", "process"]);
        assert!(
            transitions.contains("os_t:process system_t"),
            "{transitions}"
        );
        assert!(
            transitions.contains("api_exec_t:process api_t"),
            "{transitions}"
        );
    }

    /// Every type the contexts files name exists in the policy (a label the policy does not
    /// know makes systemd fail at boot in enforcing mode).
    #[test]
    fn contexts_name_types_of_the_policy() {
        let selinux = shipped();
        let cil: String = selinux
            .policy
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect();
        let mut files = vec![selinux.file_contexts.clone()];
        files.extend(selinux.lxc_contexts.clone());
        let mut checked = 0;
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for context in text
                .split(|c: char| c.is_whitespace() || c == '"')
                .filter(|w| w.starts_with("system_u:"))
            {
                let fields: Vec<&str> = context.split(':').collect();
                assert!(fields.len() >= 4, "{}: {context}", file.display());
                let declared = format!("(type {})", fields[2]);
                assert!(
                    cil.contains(&declared),
                    "{}: {context}: no {declared} in the policy",
                    file.display()
                );
                checked += 1;
            }
        }
        assert!(checked > 10, "only {checked} contexts found");
    }
}
