//! The `berth` command line: one file per verb.

/// `println!` that ends berth quietly when stdout's reader went away (see `stdout`).
macro_rules! out {
    ($($t:tt)*) => {
        crate::cli::stdout::write(format!("{}\n", format_args!($($t)*)).as_bytes())
    };
}

/// `print!` likewise.
macro_rules! out_raw {
    ($($t:tt)*) => {
        crate::cli::stdout::write(format!($($t)*).as_bytes())
    };
}

mod admin;
mod cancel;
mod colour;
mod dev;
mod devdir;
mod logs;
mod manual;
mod reload;
mod run;
mod stdout;
mod submit;
mod tasks;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use admin::{AdminArgs, DrainArgs};
use dev::DevArgs;
use logs::LogsArgs;
use run::RunArgs;
use submit::SubmitArgs;

#[derive(Parser)]
#[command(
    name = "berth",
    version,
    about = "Self-hosted worker daemon: runs control-plane tasks in Docker containers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the worker daemon.
    Run(RunArgs),
    /// Validate the configuration and print the effective settings (secrets redacted).
    CheckConfig(run::CheckConfigArgs),
    /// Start the embedded control plane and a worker connected to it (try berth locally).
    Dev(DevArgs),
    /// Submit a task to a control plane's HTTP API, stream its transcript, wait for its outcome.
    Submit(SubmitArgs),
    /// Print a task's transcript from this host's spool (works while the daemon is down).
    Logs(LogsArgs),
    /// Show the running daemon's connection, slots, host and tasks (local API).
    Status(AdminArgs),
    /// Stop accepting tasks; running ones finish. With --wait, return once none is left.
    Drain(DrainArgs),
    /// Accept tasks again after a drain.
    Resume(AdminArgs),
    /// Reload the daemon's configuration (SIGHUP) and wait for its verdict (the unit's
    /// ExecReload: `systemctl reload` then fails when the reload was refused).
    Reload(reload::ReloadArgs),
    /// Recent tasks on this host: state, exit code, duration, image (local API, else journal).
    Tasks(tasks::TasksArgs),
    /// Stop a running task (local API; or a control plane's API with --server).
    Cancel(cancel::CancelArgs),
    /// Check the config, API key and URL (a real handshake), Docker, state dir and policy.
    Verify(verify::VerifyArgs),
    /// Print the version.
    Version {
        /// As JSON: {"version": …, "protocols": […]}.
        #[arg(long)]
        json: bool,
    },
    /// Write the man pages (berth.1, berth-run.1, …, berth.yaml.5) into a directory (packaging).
    #[command(hide = true)]
    Manpages {
        /// Output directory.
        dir: PathBuf,
    },
    /// Write shell completions to stdout (used by packaging).
    #[command(hide = true)]
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

fn host_env(k: &str) -> Option<String> {
    std::env::var(k).ok()
}

/// Parses the command line and runs the verb.
pub fn main() -> ExitCode {
    berth::control::tls::install_default_provider();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berth: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Version { json } => {
            if json {
                let v = serde_json::json!({
                    "version": env!("CARGO_PKG_VERSION"),
                    "protocols": ["oz/1", berth::protocol::BERTH_PROTOCOL_VERSION],
                });
                out!("{v}");
            } else {
                out!("berth {}", env!("CARGO_PKG_VERSION"));
            }
            ExitCode::SUCCESS
        }
        Command::Manpages { dir } => {
            use clap::CommandFactory;
            match manual::write(Cli::command(), &dir) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("berth: cannot write man pages to {}: {e}", dir.display());
                    ExitCode::FAILURE
                }
            }
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "berth", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::CheckConfig(a) => run::check_config(a),
        Command::Run(a) => run::run(&rt, a),
        Command::Dev(a) => {
            let _ = run::init_logging(&a.log_level, berth::config::LogFormat::Text);
            match rt.block_on(dev::dev(a)) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("berth: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Logs(a) => match rt.block_on(logs::logs(a)) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("berth: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Status(a) => admin_command(&rt, admin::admin_status(a)),
        Command::Drain(a) => admin_command(&rt, admin::admin_drain(a)),
        Command::Resume(a) => admin_command(&rt, admin::admin_resume(a)),
        Command::Reload(a) => admin_command(&rt, reload::reload(a)),
        Command::Tasks(a) => admin_command(&rt, tasks::tasks(a)),
        Command::Cancel(a) => admin_command(&rt, cancel::cancel(a)),
        Command::Verify(a) => admin_command(&rt, verify::verify(a)),
        Command::Submit(a) => match rt.block_on(submit::submit(a)) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("berth: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn admin_command(
    rt: &tokio::runtime::Runtime,
    f: impl std::future::Future<Output = anyhow::Result<ExitCode>>,
) -> ExitCode {
    match rt.block_on(f) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("berth: {e:#}");
            ExitCode::FAILURE
        }
    }
}
