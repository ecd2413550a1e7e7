//! Command line (clap): `duet serve`, `duet check-config`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::config::{Config, LogFormat, Overrides, RawConfig};

/// Self-hosted call infrastructure for scheduled 1-on-1 video meetings.
#[derive(Parser, Debug)]
#[command(name = "duet", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Cmd,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Run the daemon. Without --config: the embedded all-loopback default (SQLite in ./duet-data).
    Serve(ConfigArgs),
    /// Parse and validate the configuration, print the effective settings (secrets hidden); exit 1 naming the
    /// field on error.
    CheckConfig(ConfigArgs),
}

/// Config file and overrides.
#[derive(Args, Debug)]
pub struct ConfigArgs {
    /// TOML configuration file (see config.toml.example).
    #[arg(long, short = 'c', env = "DUET_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory (database, generated secrets, api-key); overrides `data_dir`.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// HTTP listen address; overrides `http.listen`.
    #[arg(long)]
    pub http_listen: Option<String>,
    /// TURN/STUN UDP listen address; overrides `turn.listen_udp`.
    #[arg(long)]
    pub turn_listen: Option<String>,
    /// Admin (metrics, health) listen address; overrides `admin.listen`.
    #[arg(long)]
    pub admin_listen: Option<String>,
}

impl ConfigArgs {
    fn load(&self) -> Result<Config, crate::config::ConfigError> {
        let raw = match &self.config {
            Some(p) => RawConfig::from_file(p)?,
            None => RawConfig::default(),
        };
        raw.into_config(&Overrides {
            data_dir: self.data_dir.clone(),
            http_listen: self.http_listen.clone(),
            turn_listen: self.turn_listen.clone(),
            admin_listen: self.admin_listen.clone(),
        })
    }
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::CheckConfig(args) => match args.load() {
            Ok(c) => {
                println!("{c:#?}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::Serve(args) => {
            let config = match args.load() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            init_logging(&config);
            let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(serve(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn init_logging(config: &Config) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log_level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let deadline = config.drain_deadline;
    let running = crate::daemon::start(config).await?;
    if running.api_key_created {
        eprintln!("duet: generated an admin API key in {} (mode 0600)", running.api_key_file.display());
    } else {
        eprintln!("duet: admin API key in {}", running.api_key_file.display());
    }
    eprintln!(
        "duet: serving {} (API, join pages, WebSocket), TURN/STUN udp {:?}, admin http://{}/metrics",
        running.http, running.turn_udp, running.admin
    );
    // One machine-readable line on stdout for supervisors and tests.
    println!(
        "{}",
        serde_json::json!({
            "event": "ready",
            "http": running.http.to_string(),
            "turn_udp": running.turn_udp.first().map(|a| a.to_string()),
            "turn_tcp": running.turn_tcp.first().map(|a| a.to_string()),
            "turn_tls": running.turn_tls.first().map(|a| a.to_string()),
            "vy": running.vy.map(|a| a.to_string()),
            "admin": running.admin.to_string(),
            "api_key_file": running.api_key_file,
        })
    );
    notify(&[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status("serving")]);
    let mut watchdog_usec = 0u64;
    if sd_notify::watchdog_enabled(false, &mut watchdog_usec) {
        // Ping at half the interval systemd waits (sd_watchdog_enabled(3)).
        let every = std::time::Duration::from_micros(watchdog_usec / 2);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                notify(&[sd_notify::NotifyState::Watchdog]);
            }
        });
    }
    if wait_for_signal(&running.reload).await == Stop::Drain {
        drain(&running, deadline).await;
    }
    notify(&[sd_notify::NotifyState::Stopping]);
    tracing::info!("shutting down");
    running.hub.close_all();
    // Give the hub a moment to send the 1001 closes before the tasks stop.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    running.shutdown.cancel();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), running.tasks.wait()).await;
    Ok(())
}

/// Tells systemd (`Type=notify`) about the service state; a no-op outside systemd.
fn notify(states: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::debug!(error = %e, "sd_notify");
    }
}

/// How the daemon was asked to stop.
#[derive(Debug, PartialEq, Eq)]
enum Stop {
    /// SIGTERM: drain first.
    Drain,
    /// SIGINT: stop at once.
    Now,
}

/// Draining (DESIGN §7): `/readyz` 503 and new joins 503 at once; running calls (signaling sockets, TURN allocations)
/// go on until none is left or `deadline` passes; a second SIGTERM or a SIGINT ends the wait.
async fn drain(running: &crate::daemon::Running, deadline: std::time::Duration) {
    use tokio::signal::unix::{SignalKind, signal};
    running.draining.cancel();
    running.metrics.draining.set(1);
    notify(&[sd_notify::NotifyState::Status("draining")]);
    let (sockets, allocations) = running.activity();
    tracing::info!(sockets, allocations, deadline_s = deadline.as_secs(), "draining: waiting for running calls");
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let until = tokio::time::Instant::now() + deadline;
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let (sockets, allocations) = running.activity();
                if sockets == 0 && allocations == 0 {
                    tracing::info!("drained: no call left");
                    return;
                }
            }
            _ = tokio::time::sleep_until(until) => {
                tracing::info!("drain deadline reached");
                return;
            }
            _ = term.recv() => return,
            _ = tokio::signal::ctrl_c() => return,
        }
    }
}

/// Waits for SIGTERM (drain) or SIGINT (stop now); SIGHUP reloads the TURNS certificate and the TURN secrets
/// meanwhile.
async fn wait_for_signal(reload: &crate::daemon::Reload) -> Stop {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut hup = signal(SignalKind::hangup()).expect("installing a SIGHUP handler");
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Stop::Now,
            _ = term.recv() => return Stop::Drain,
            _ = hup.recv() => {
                // systemd >= 253 wants RELOADING=1 with MONOTONIC_USEC, then READY=1 (sd_notify(3)).
                let mut states = vec![sd_notify::NotifyState::Reloading];
                states.extend(sd_notify::NotifyState::monotonic_usec_now().ok());
                notify(&states);
                match reload.reload() {
                    Ok(()) => tracing::info!("reloaded certificates and TURN secrets"),
                    Err(e) => tracing::error!("reload failed, keeping the running settings: {e:#}"),
                }
                notify(&[sd_notify::NotifyState::Ready]);
            }
        }
    }
}
