//! `berth-updater`: see `berth-updater --help` and docs/updates.md.
//!
//! Exit codes (the settings API maps them to HTTP statuses, so keep them stable):
//! 0 success, 2 another updater command holds the lock (HTTP 423), 3 the command is not
//! allowed in the current update state (HTTP 409), 1 anything else (HTTP 500), including a
//! command line clap refuses.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use updater::cli::{Cli, Command};
use updater::state::StateError;
use updater::UpdaterError;

/// Another updater command holds `<state-dir>/lock`.
const EXIT_BUSY: u8 = 2;
/// The command is not allowed in the current update state.
const EXIT_NOT_ALLOWED: u8 = 3;
/// Anything else.
const EXIT_FAILURE: u8 = 1;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            // clap exits with 2 on a bad command line, which would read as "lock held".
            let _ = err.print();
            return ExitCode::from(parse_error_code(&err));
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    // Under systemd, journald adds the time.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().init();
    } else {
        builder.init();
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // The settings API reads these two line prefixes to build its error message.
            eprintln!("berth-updater: error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::from(exit_code(&err))
        }
    }
}

/// `--help` and `--version` succeed; every other refusal of the command line is a plain
/// failure.
fn parse_error_code(err: &clap::Error) -> u8 {
    if err.use_stderr() {
        EXIT_FAILURE
    } else {
        0
    }
}

/// The exit code for a failed command: see the module documentation.
fn exit_code(err: &anyhow::Error) -> u8 {
    // Walk the whole chain, so context added around the updater's error keeps its code.
    for cause in err.chain() {
        let state = match cause.downcast_ref::<UpdaterError>() {
            // Nothing to roll back to is a conflict with the host's state, like a transition.
            Some(UpdaterError::NoOtherSlot { .. } | UpdaterError::BelowFloor { .. }) => {
                return EXIT_NOT_ALLOWED
            }
            Some(UpdaterError::State(state)) => Some(state),
            Some(_) => None,
            None => cause.downcast_ref::<StateError>(),
        };
        match state {
            Some(StateError::Busy { .. }) => return EXIT_BUSY,
            Some(StateError::Transition { .. }) => return EXIT_NOT_ALLOWED,
            _ => {}
        }
    }
    EXIT_FAILURE
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let host = Path::new("/");
    let runtime = tokio::runtime::Runtime::new()?;
    let status = match cli.command {
        Command::Check(args) => runtime.block_on(updater::check(&args.config(host)?))?,
        Command::Prepare(args) => runtime.block_on(updater::prepare(&args.config(host)?))?,
        Command::Activate(args) => runtime.block_on(updater::activate(&args.config(host)?))?,
        Command::Deactivate(args) => runtime.block_on(updater::deactivate(&args.config(host)?))?,
        Command::Apply(args) => runtime.block_on(updater::apply(&args.config(host)?))?,
        Command::HealthGate(args) => {
            let units = ::host::systemd::DbusSystemd::connect()?;
            updater::health::run(&args.gate(host), &units)?
        }
        Command::Rollback { state_dir, esp } => {
            updater::rollback(&state_dir, &esp, &updater::host::version(host)?)?
        }
        Command::ResetClock { state_dir } => {
            updater::reset_clock(&state_dir)?;
            updater::status(&state_dir)?
        }
        Command::Status { state_dir } => updater::status(&state_dir)?,
    };
    println!("{}", serde_json::to_string_pretty(&status)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;
    use updater::state::{CommandName, Lock, Status, UpdateState};

    fn args(command: &str, state_dir: &Path) -> Vec<String> {
        [
            "berth-updater",
            command,
            "--metadata-url",
            "file:///nonexistent/metadata/",
            "--targets-url",
            "file:///nonexistent/targets/",
            "--seed=42",
            "--variant",
            "qemu",
            "--running-version",
            "1.0.0",
            "--slot=b",
            "--state-dir",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([state_dir.display().to_string()])
        .collect()
    }

    #[test]
    fn a_held_lock_exits_2() {
        let dir = tempfile::tempdir().unwrap();
        let _held = Lock::take(dir.path()).unwrap();
        let cli = Cli::try_parse_from(args("check", dir.path())).unwrap();
        let err = run(cli).unwrap_err();
        assert!(err.to_string().contains("another updater command"), "{err}");
        assert_eq!(exit_code(&err), EXIT_BUSY);
    }

    #[test]
    fn a_command_the_state_does_not_allow_exits_3() {
        let dir = tempfile::tempdir().unwrap();
        // Idle: nothing staged to activate.
        let cli = Cli::try_parse_from(args("activate", dir.path())).unwrap();
        let err = run(cli).unwrap_err();
        assert_eq!(exit_code(&err), EXIT_NOT_ALLOWED, "{err:#}");
        let status = Status::load(dir.path()).unwrap();
        assert_eq!(status.state, UpdateState::Idle);
        let last = status.most_recent_command.unwrap();
        assert_eq!(last.command, CommandName::Activate);
        assert!(!last.ok);
    }

    #[test]
    fn codes_survive_added_context_and_other_errors_exit_1() {
        let busy = anyhow::Error::from(UpdaterError::State(StateError::Busy {
            path: "/x/lock".into(),
        }));
        assert_eq!(exit_code(&busy.context("running check")), EXIT_BUSY);
        let bare: Result<(), StateError> = Err(StateError::Transition {
            command: CommandName::Deactivate,
            state: UpdateState::Idle,
            needs: "ready",
        });
        let err = bare.context("deactivating").unwrap_err();
        assert_eq!(exit_code(&err), EXIT_NOT_ALLOWED);
        assert_eq!(
            exit_code(&anyhow::Error::from(UpdaterError::NothingChosen)),
            EXIT_FAILURE
        );
        // A repository that cannot be read is a plain failure, not "busy".
        let dir = tempfile::tempdir().unwrap();
        let cli = Cli::try_parse_from(args("check", dir.path())).unwrap();
        let err = run(cli).unwrap_err();
        assert_eq!(exit_code(&err), EXIT_FAILURE, "{err:#}");
    }

    #[test]
    fn a_bad_command_line_exits_1_not_2() {
        let err = Cli::try_parse_from(["berth-updater", "check"]).unwrap_err();
        assert_eq!(parse_error_code(&err), EXIT_FAILURE);
        let err = Cli::try_parse_from(["berth-updater", "--help"]).unwrap_err();
        assert_eq!(parse_error_code(&err), 0);
    }

    /// The settings API passes `settings.updates.ignore-waves` as `true` or `false` in
    /// `BERTH_UPDATES_IGNORE_WAVES`; clap's SetTrue flag reads both spellings from the
    /// environment. The only test in this binary that touches the variable.
    #[test]
    fn ignore_waves_reads_true_and_false_from_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let parse = || {
            let cli = Cli::try_parse_from(args("check", dir.path())).unwrap();
            let Command::Check(args) = cli.command else {
                panic!("not check")
            };
            args.ignore_waves
        };
        std::env::set_var("BERTH_UPDATES_IGNORE_WAVES", "true");
        assert!(parse());
        std::env::set_var("BERTH_UPDATES_IGNORE_WAVES", "false");
        assert!(!parse());
        std::env::set_var("BERTH_UPDATES_IGNORE_WAVES", "yes");
        let err = Cli::try_parse_from(args("check", dir.path())).unwrap_err();
        assert!(err.to_string().contains("ignore-waves"), "{err}");
        std::env::remove_var("BERTH_UPDATES_IGNORE_WAVES");
        assert!(!parse());
    }
}
