//! Command line (clap): `duet serve`, `duet check-config`, `duet tenant create|list`, `duet api-key
//! create|list|rotate|revoke`. The tenant and key commands work on the database the daemon uses (`--config`,
//! `--data-dir`; SQLite or PostgreSQL), also while it runs: changes take effect from the next request.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::api_key::{ADMIN_KEY_ID, AdminKey, Scope};
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
    /// Create, list, rotate or revoke API keys (without a key id, rotate and revoke act on the admin key
    /// `key_admin` in `<data_dir>/api-key`); works while the daemon runs, effective at once.
    #[command(subcommand)]
    ApiKey(ApiKeyCmd),
    /// Create or list tenants.
    #[command(subcommand)]
    Tenant(TenantCmd),
    /// Erase one person (by `--ref` or `--email`) across every booking, webhook delivery, email, call report and
    /// host profile of a tenant, as `POST /v1/data-subjects/erase` does; prints the counts as JSON. Works on the
    /// database while the daemon runs: the person's links answer 404 at once (a call already running ends at its
    /// hard end; the API also closes it).
    Erase(EraseArgs),
}

/// `duet erase …`.
#[derive(Args, Debug)]
pub struct EraseArgs {
    /// The tenant (`ten_…`).
    #[arg(long)]
    pub tenant: String,
    /// The person's `ref`.
    #[arg(long = "ref", conflicts_with = "email", required_unless_present = "email")]
    pub reference: Option<String>,
    /// The person's email address (matched case-insensitively).
    #[arg(long)]
    pub email: Option<String>,
    /// Where the data directory and database are.
    #[command(flatten)]
    pub target: DataDirArgs,
}

/// `duet tenant …`.
#[derive(Subcommand, Debug)]
pub enum TenantCmd {
    /// Create a tenant; prints its id (`ten_…`).
    Create {
        /// Display name (1 to 100 characters).
        name: String,
        /// Where the data directory and database are.
        #[command(flatten)]
        target: DataDirArgs,
        /// Print the tenant as JSON (`{id, name, created_at}`).
        #[arg(long)]
        json: bool,
    },
    /// List the tenants: id, name, creation.
    List {
        /// Where the data directory and database are.
        #[command(flatten)]
        target: DataDirArgs,
        /// Print JSON (`{"tenants": [...]}`, as `GET /v1/admin/tenants`).
        #[arg(long)]
        json: bool,
    },
}

/// `duet api-key …`.
#[derive(Subcommand, Debug)]
pub enum ApiKeyCmd {
    /// Create a key for a tenant; prints the key once on stdout (it is stored only as a hash).
    Create {
        /// Owning tenant id (`ten_default` is the embedded default).
        #[arg(long)]
        tenant: String,
        /// Comma-separated scopes: `bookings:read`, `bookings:write`, `admin` (`admin`: default tenant only).
        #[arg(long, value_delimiter = ',', required = true)]
        scopes: Vec<Scope>,
        /// Expiry: RFC 3339 with an offset (`2027-01-01T00:00:00Z`) or a duration from now (`90d`, `12h`).
        #[arg(long)]
        expires: Option<String>,
        /// Label (1 to 100 characters).
        #[arg(long)]
        name: Option<String>,
        /// Where the data directory and database are.
        #[command(flatten)]
        target: DataDirArgs,
        /// Print the key row and the key as JSON (as `POST /v1/admin/api-keys`).
        #[arg(long)]
        json: bool,
    },
    /// List keys: id, tenant, name, scopes, created, expires, revoked (never keys or hashes).
    List {
        /// Only the keys of this tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// Where the data directory and database are.
        #[command(flatten)]
        target: DataDirArgs,
        /// Print JSON (`{"api_keys": [...]}`, as `GET /v1/admin/api-keys`).
        #[arg(long)]
        json: bool,
    },
    /// Issue a new key for KEY_ID (default: the admin key, written to `<data_dir>/api-key` (0600)); the old key is
    /// refused from the next request on and a revoked key is live again. Other keys are printed on stdout.
    Rotate {
        /// Key id (`key_…`); default `key_admin`.
        key_id: Option<String>,
        /// Where the data directory and database are.
        #[command(flatten)]
        target: DataDirArgs,
        /// Also print the new admin key on stdout (keep it off shared logs).
        #[arg(long)]
        print: bool,
    },
    /// Revoke KEY_ID (401 from the next request on). Default: the admin key, whose `api-key` file is removed;
    /// restarts keep it revoked until `duet api-key rotate` issues a new key.
    Revoke {
        /// Key id (`key_…`); default `key_admin`.
        key_id: Option<String>,
        /// Where the data directory and database are.
        #[command(flatten)]
        target: DataDirArgs,
    },
}

/// The data directory and database, from the config file and/or `--data-dir`.
#[derive(Args, Debug)]
pub struct DataDirArgs {
    /// TOML configuration file whose `data_dir` and `[database]` to use (see config.toml.example).
    #[arg(long, short = 'c', env = "DUET_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory; overrides `data_dir`.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
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
        Cmd::ApiKey(cmd) => match store_command(StoreCmd::ApiKey(cmd)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Cmd::Erase(args) => match store_command(StoreCmd::Erase(args)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Cmd::Tenant(cmd) => match store_command(StoreCmd::Tenant(cmd)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
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

/// A command that works on the store.
enum StoreCmd {
    ApiKey(ApiKeyCmd),
    Tenant(TenantCmd),
    Erase(EraseArgs),
}

/// Runs `duet api-key …` or `duet tenant …` against the data directory and the database (`[database]`: SQLite in
/// the data directory, or PostgreSQL) of the config. The data directory must exist: the daemon creates it on first
/// start.
fn store_command(cmd: StoreCmd) -> anyhow::Result<()> {
    use anyhow::Context;
    let target = match &cmd {
        StoreCmd::ApiKey(
            ApiKeyCmd::Create { target, .. }
            | ApiKeyCmd::List { target, .. }
            | ApiKeyCmd::Rotate { target, .. }
            | ApiKeyCmd::Revoke { target, .. },
        )
        | StoreCmd::Tenant(TenantCmd::Create { target, .. } | TenantCmd::List { target, .. })
        | StoreCmd::Erase(EraseArgs { target, .. }) => target,
    };
    let raw = match &target.config {
        Some(p) => RawConfig::from_file(p)?,
        None => RawConfig::default(),
    };
    let config = raw.into_config(&Overrides { data_dir: target.data_dir.clone(), ..Overrides::default() })?;
    let dir = &config.data_dir;
    // The daemon's first start creates the data directory (and, on SQLite, the database in it).
    let missing = match config.database {
        crate::config::DatabaseConfig::Sqlite { .. } => !dir.join("duet.sqlite3").is_file(),
        crate::config::DatabaseConfig::Postgres { .. } => !dir.is_dir(),
    };
    if missing {
        anyhow::bail!("no data directory or database in {}: run `duet serve` with it first", dir.display());
    }
    let data = crate::data_dir::DataDir::open(dir)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    rt.block_on(async {
        let store = crate::booking::store::Store::open_configured(&config.database, &data).await?;
        let result = match cmd {
            StoreCmd::ApiKey(cmd) => api_key_command(cmd, &data, &store).await,
            StoreCmd::Tenant(cmd) => tenant_command(cmd, &store).await,
            StoreCmd::Erase(args) => erase_command(args, &store).await,
        };
        store.close().await;
        result
    })
}

/// `--expires`: RFC 3339 with an offset, or a duration from `now` (`90d`, `12h`, `30m`), as Unix seconds.
fn parse_expires(v: &str, now: i64) -> anyhow::Result<i64> {
    use time::OffsetDateTime;
    use time::format_description::well_known::Rfc3339;
    if let Ok(t) = OffsetDateTime::parse(v, &Rfc3339) {
        return Ok(t.unix_timestamp());
    }
    let d = humantime::parse_duration(v).map_err(|_| {
        anyhow::anyhow!("--expires `{v}`: expected RFC 3339 with an offset (2027-01-01T00:00:00Z) or a duration (90d)")
    })?;
    Ok(now.saturating_add(i64::try_from(d.as_secs()).unwrap_or(i64::MAX)))
}

fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// `duet erase`: validates the selector as the API does, erases, prints `{"erased": {…}}`.
async fn erase_command(args: EraseArgs, store: &crate::booking::store::Store) -> anyhow::Result<()> {
    use crate::booking::personal_data::{ErasureView, SubjectSelector};
    if store.tenant(&args.tenant).await?.is_none() {
        anyhow::bail!("no tenant {}", args.tenant);
    }
    let subject = SubjectSelector { reference: args.reference, email: args.email }
        .validate()
        .map_err(|_| anyhow::anyhow!("give --ref (1 to 200 characters) or --email (an email address)"))?;
    let (erased, _) = store.erase_subject(&args.tenant, &subject, crate::app::unix_now()).await?;
    eprintln!("duet: erased {} participant rows and {} host profiles", erased.participants, erased.hosts);
    print_json(&ErasureView { erased })
}

async fn tenant_command(cmd: TenantCmd, store: &crate::booking::store::Store) -> anyhow::Result<()> {
    use crate::booking::admin_api::{TenantList, TenantView};
    match cmd {
        TenantCmd::Create { name, json, .. } => {
            let t = crate::api_key::create_tenant(store, &name, crate::app::unix_now()).await?;
            if json {
                print_json(&TenantView::from(&t))?;
            } else {
                eprintln!("duet: created tenant {} ({})", t.id, t.name);
                println!("{}", t.id);
            }
        }
        TenantCmd::List { json, .. } => {
            let tenants: Vec<TenantView> = store.tenants().await?.iter().map(TenantView::from).collect();
            if json {
                print_json(&TenantList { tenants })?;
            } else {
                println!("{:<40}  {:<20}  CREATED", "ID", "NAME");
                for t in tenants {
                    println!("{:<40}  {:<20}  {}", t.id, t.name, t.created_at);
                }
            }
        }
    }
    Ok(())
}

async fn api_key_command(
    cmd: ApiKeyCmd,
    data: &crate::data_dir::DataDir,
    store: &crate::booking::store::Store,
) -> anyhow::Result<()> {
    use crate::booking::admin_api::{ApiKeyList, ApiKeyView, CreatedApiKey};
    let now = crate::app::unix_now();
    match cmd {
        ApiKeyCmd::Create { tenant, scopes, expires, name, json, .. } => {
            let expires_at = expires.as_deref().map(|e| parse_expires(e, now)).transpose()?;
            let req = crate::api_key::KeyRequest { tenant_id: tenant, scopes, expires_at, name };
            let (row, key) = crate::api_key::create_key(store, req, now).await?;
            if json {
                print_json(&CreatedApiKey { view: ApiKeyView::from(&row), key })?;
            } else {
                eprintln!(
                    "duet: created API key {} for tenant {} ({}); the key is shown only this once:",
                    row.id,
                    row.tenant_id,
                    crate::api_key::scopes_to_text(&row.scopes)
                );
                println!("{key}");
            }
        }
        ApiKeyCmd::List { tenant, json, .. } => {
            let keys: Vec<ApiKeyView> = store.api_keys(tenant.as_deref()).await?.iter().map(ApiKeyView::from).collect();
            if json {
                print_json(&ApiKeyList { api_keys: keys })?;
            } else {
                println!(
                    "{:<36}  {:<36}  {:<16}  {:<34}  {:<20}  {:<20}  REVOKED",
                    "ID", "TENANT", "NAME", "SCOPES", "CREATED", "EXPIRES"
                );
                for k in keys {
                    let scopes: Vec<&str> = k.scopes.iter().map(|s| s.as_str()).collect();
                    println!(
                        "{:<36}  {:<36}  {:<16}  {:<34}  {:<20}  {:<20}  {}",
                        k.id,
                        k.tenant_id,
                        k.name.as_deref().unwrap_or("-"),
                        scopes.join(","),
                        k.created_at,
                        k.expires_at.as_deref().unwrap_or("-"),
                        k.revoked_at.as_deref().unwrap_or("-"),
                    );
                }
            }
        }
        ApiKeyCmd::Rotate { key_id, print, .. } if key_id.as_deref().is_none_or(|id| id == ADMIN_KEY_ID) => {
            let key = crate::api_key::rotate(data, store, now).await?;
            let note = format!(
                "duet: new admin API key written to {} (mode 0600); the previous key is refused from now on",
                data.api_key_file().display()
            );
            if print {
                eprintln!("{note}");
                println!("{key}");
            } else {
                println!("{note}");
            }
        }
        ApiKeyCmd::Rotate { key_id, .. } => {
            let id = key_id.unwrap_or_default();
            let key = crate::api_key::rotate_key(store, &id, now)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no API key has the id `{id}` (see `duet api-key list`)"))?;
            eprintln!("duet: new key for {id}; the previous key is refused from now on. It is shown only this once:");
            println!("{key}");
        }
        ApiKeyCmd::Revoke { key_id, .. } if key_id.as_deref().is_none_or(|id| id == ADMIN_KEY_ID) => {
            let changed = crate::api_key::revoke(data, store, now).await?;
            println!(
                "duet: admin API key {}; {} removed. The API answers 401 until `duet api-key rotate` (a restart \
                 does not create a new key).",
                if changed { "revoked" } else { "was already revoked" },
                data.api_key_file().display()
            );
        }
        ApiKeyCmd::Revoke { key_id, .. } => {
            let id = key_id.unwrap_or_default();
            let changed = store.revoke_api_key(&id, now).await?;
            if !changed && store.api_key(&id).await?.is_none() {
                anyhow::bail!("no API key has the id `{id}` (see `duet api-key list`)");
            }
            println!(
                "duet: API key {id} {}; it answers 401 from now on",
                if changed { "revoked" } else { "was already revoked" }
            );
        }
    }
    Ok(())
}

fn init_logging(config: &Config) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log_level));
    // Colours only on a terminal: journald, files and log shippers get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let deadline = config.drain_deadline;
    let running = crate::daemon::start(config).await?;
    // Handlers before the ready line: a SIGHUP sent as soon as the daemon says it is ready must reload, not kill it
    // (SIGHUP's default action is to terminate).
    let signals = Signals::install()?;
    let key_file = running.api_key_file.display();
    match running.api_key {
        AdminKey::Generated => eprintln!("duet: generated an admin API key in {key_file} (mode 0600)"),
        AdminKey::Loaded => eprintln!("duet: admin API key in {key_file}"),
        AdminKey::Elsewhere => eprintln!(
            "duet: the cluster's admin API key was made by another node; copy its api-key file to {key_file} to use it here"
        ),
        AdminKey::Revoked => {
            tracing::warn!("the admin API key is revoked: the API answers 401; `duet api-key rotate` issues a new key");
            eprintln!("duet: the admin API key is revoked; run `duet api-key rotate` to write a new one to {key_file}");
        }
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
    if wait_for_signal(signals, &running.reload).await == Stop::Drain {
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

/// The SIGTERM and SIGHUP streams of [`wait_for_signal`].
struct Signals {
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        use anyhow::Context;
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("installing a SIGTERM handler")?,
            hup: signal(SignalKind::hangup()).context("installing a SIGHUP handler")?,
        })
    }
}

/// Waits for SIGTERM (drain) or SIGINT (stop now); SIGHUP reloads the TLS certificates and keys, the TURN secrets and
/// the session keys meanwhile.
async fn wait_for_signal(signals: Signals, reload: &crate::daemon::Reload) -> Stop {
    let Signals { mut term, mut hup } = signals;
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
                    Ok(()) => tracing::info!("reloaded certificates, TURN secrets and session keys"),
                    Err(e) => tracing::error!("reload failed, keeping the running settings: {e:#}"),
                }
                notify(&[sd_notify::NotifyState::Ready]);
            }
        }
    }
}
