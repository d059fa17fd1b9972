//! The `zonestore` binary: command line parsing and process lifecycle. Everything else lives in
//! the library.

/// `println!` that ignores a closed stdout (`zonestore serve | tee log` and Ctrl-C: the pipe
/// ends first, and a panic there would skip the orderly shutdown).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `eprintln!` that ignores a closed stderr (see [`say!`]).
macro_rules! say_err {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod admin_client;

/// jemalloc instead of the system allocator: uploads allocate and free record buffers from
/// many threads, and glibc's malloc kept hundreds of MiB of freed memory resident under that
/// pattern; jemalloc returns it to the system.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read at its start (the `_RJEM_MALLOC_CONF` environment variable still
/// overrides them). One arena rather than jemalloc's default of four per CPU: each arena keeps
/// the memory freed in it for a while, and with many uploads at once spread over many threads'
/// arenas, the server's peak memory (`tests/memory_bound.rs`) was 245-290 MiB against 200-225
/// with one, while throughput stayed within the noise (4 KiB GETs were faster). Threads still
/// allocate small objects from their own caches without the arena's lock.
#[unsafe(export_name = "_rjem_malloc_conf")]
static JEMALLOC_OPTIONS: &[u8] = b"narenas:1\0";

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use zonestore::config::{Config, TlsSection, User};
use zonestore::serve::Server;
use zonestore::size::parse_size;
use zonestore::storage_node::{StorageNode, StorageNodeConfig};

/// Zonestore: an S3-compatible object store on ZNS drives over NVMe/TCP.
#[derive(Parser, Debug)]
#[command(name = "zonestore", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve S3. With no flags: three emulated ZNS drives under ./zonestore-data, each behind
    /// a loopback NVMe/TCP target, reached through the NVMe/TCP host.
    Serve(ServeArgs),
    /// Run a storage node: one emulated ZNS drive exported over NVMe/TCP.
    Target(TargetArgs),
    /// Talk to a running server's admin API.
    Admin(admin_client::AdminArgs),
    /// Offline recovery of the index (the server must be stopped).
    Recover(RecoverArgs),
}

/// Which drives, and where the data lives (shared by `serve` and `recover`).
#[derive(Args, Debug)]
struct DriveArgs {
    /// Configuration file (TOML); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory (index, embedded drives, generated credentials), as `zonestore admin`
    /// takes it too.
    #[arg(long, env = "ZONESTORE_DATA")]
    data: Option<PathBuf>,
    /// Whether `data` came from ZONESTORE_DATA rather than the flag (see [`note_env_sources`]):
    /// a configuration file's `data_dir` is not overridden by the environment.
    #[arg(skip)]
    data_from_env: bool,
    /// Attach a drive instead of the embedded default: nvme-tcp://HOST:PORT/NQN,
    /// nvme-tcp://HOST:PORT (every subsystem its discovery controller lists) or
    /// zns-file://DIR (a local emulated drive, without the fabric). Repeatable.
    #[arg(long = "target")]
    targets: Vec<String>,
    /// Host NQN to connect to targets as.
    #[arg(long)]
    host_nqn: Option<String>,
    /// Embedded default: number of drives.
    #[arg(long)]
    drives: Option<usize>,
    /// Embedded default and zns-file drives: zones per drive.
    #[arg(long)]
    zones: Option<u32>,
    /// Embedded default and zns-file drives: zone size, e.g. 64M.
    #[arg(long)]
    zone_size: Option<String>,
    /// Embedded default and zns-file drives: write with O_DIRECT, bypassing the page cache
    /// (`--direct-writes=false` turns it off where the configuration file turns it on).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    direct_writes: Option<bool>,
    /// Replication factor R.
    #[arg(long)]
    replicas: Option<usize>,
    /// Write quorum W.
    #[arg(long)]
    write_quorum: Option<usize>,
}

#[derive(Args, Debug)]
struct ServeArgs {
    #[command(flatten)]
    drives: DriveArgs,
    /// S3 address [default: 127.0.0.1:9000].
    #[arg(long)]
    listen: Option<String>,
    /// Admin API and /metrics address [default: loopback, the S3 port + 1].
    #[arg(long)]
    admin_listen: Option<String>,
    /// Access key of a user (with --secret-key).
    #[arg(long, env = "ZONESTORE_ACCESS_KEY")]
    access_key: Option<String>,
    /// Secret key of that user.
    #[arg(long, env = "ZONESTORE_SECRET_KEY", hide_env_values = true)]
    secret_key: Option<String>,
    /// Whether the user came from ZONESTORE_ACCESS_KEY rather than the flag (see
    /// [`note_env_sources`]).
    #[arg(skip)]
    user_from_env: bool,
    /// PEM certificate chain for HTTPS (with --tls-key).
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// PEM private key for HTTPS.
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// GC policy: cost-benefit or greedy.
    #[arg(long)]
    gc_policy: Option<String>,
    /// Seconds to let requests in flight finish on shutdown.
    #[arg(long, default_value_t = 30)]
    drain_seconds: u64,
    /// Seconds between the shutdown signal and closing the S3 port, during which `/ready`
    /// answers 503 while requests are still served: time for a load balancer to notice.
    #[arg(long, default_value_t = 0)]
    unready_seconds: u64,
}

#[derive(Args, Debug)]
struct RecoverArgs {
    #[command(flatten)]
    drives: DriveArgs,
    /// Rebuild the whole index from a scan of the zones (the old index is kept aside).
    #[arg(long)]
    rebuild_index: bool,
    /// Rebuild from the drives that answer, leaving out those that cannot be reached (fewer
    /// than the write quorum W, so that every acknowledged write keeps a copy); repair gives
    /// the objects their other copies once the server runs.
    #[arg(long)]
    allow_missing_drives: bool,
}

#[derive(Args, Debug)]
struct TargetArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:4420")]
    listen: SocketAddr,
    /// Directory for the drive's files.
    #[arg(long)]
    data: PathBuf,
    /// Number of zones.
    #[arg(long, default_value_t = 64)]
    zones: u32,
    /// Zone size (power of two), e.g. 64M.
    #[arg(long, default_value = "64M", value_parser = parse_size)]
    zone_size: u64,
    /// Writable capacity of each zone (at most the zone size).
    #[arg(long, value_parser = parse_size)]
    zone_capacity: Option<u64>,
    /// Maximum open zones (0: unlimited).
    #[arg(long, default_value_t = 14)]
    max_open: u32,
    /// Maximum active zones (0: unlimited).
    #[arg(long, default_value_t = 14)]
    max_active: u32,
    /// Subsystem NQN.
    #[arg(long, default_value = "nqn.2026-01.io.zonestore:zns")]
    nqn: String,
    /// Host NQN allowed to connect (repeatable; none: any host).
    #[arg(long = "allow-host")]
    allow_host: Vec<String>,
    /// Write with O_DIRECT, bypassing the page cache as a real drive does (data is cached when
    /// it is read instead).
    #[arg(long)]
    direct_writes: bool,
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

/// The configuration: the file (if any) with the flags applied over it.
fn config_of(args: &DriveArgs) -> anyhow::Result<Config> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(data) = &args.data {
        // ZONESTORE_DATA (exported for `zonestore admin`, say) does not move a server whose
        // configuration file names its data directory onto another one.
        if args.data_from_env && config.file_sets("data_dir") {
            if config.data_dir != *data {
                say_err!(
                    "zonestore: warning: ZONESTORE_DATA ({}) is not used: the configuration file's data_dir ({}) is (--data overrides it)",
                    data.display(),
                    config.data_dir.display()
                );
            }
        } else {
            config.data_dir = data.clone();
            let source = if args.data_from_env {
                "ZONESTORE_DATA"
            } else {
                "--data"
            };
            config.set_by_flag("data_dir", source);
        }
    }
    if !args.targets.is_empty() {
        config.targets = args.targets.clone();
        config.set_by_flag("targets", "--target");
    }
    if let Some(nqn) = &args.host_nqn {
        config.host_nqn = Some(nqn.clone());
        config.set_by_flag("host_nqn", "--host-nqn");
    }
    if let Some(d) = args.drives {
        config.embedded.drives = d;
        config.set_by_flag("embedded.drives", "--drives");
    }
    if let Some(z) = args.zones {
        config.embedded.zones = z;
        config.set_by_flag("embedded.zones", "--zones");
    }
    if let Some(s) = &args.zone_size {
        config.embedded.zone_size = s.clone();
        config.set_by_flag("embedded.zone_size", "--zone-size");
    }
    if let Some(direct) = args.direct_writes {
        config.embedded.direct_writes = direct;
    }
    if let Some(r) = args.replicas {
        config.replication_factor = Some(r);
        config.set_by_flag("replication_factor", "--replicas");
    }
    if let Some(w) = args.write_quorum {
        config.write_quorum = Some(w);
        config.set_by_flag("write_quorum", "--write-quorum");
    }
    Ok(config)
}

fn serve_config(args: &ServeArgs) -> anyhow::Result<Config> {
    let mut config = config_of(&args.drives)?;
    if let Some(l) = &args.listen {
        config.listen = l.clone();
        config.set_by_flag("listen", "--listen");
    }
    if let Some(l) = &args.admin_listen {
        config.admin_listen = Some(l.clone());
        config.set_by_flag("admin_listen", "--admin-listen");
    }
    match (&args.access_key, &args.secret_key) {
        // As ZONESTORE_DATA does: a login exported into the environment (for a quick start, or
        // `zonestore admin`) must not add itself to, or change, the users a file gives.
        (Some(a), Some(_)) if args.user_from_env && config.file_sets("users") => {
            say_err!(
                "zonestore: warning: ZONESTORE_ACCESS_KEY ({a}) and ZONESTORE_SECRET_KEY are not used: the configuration file's users are (--access-key and --secret-key add or replace one)"
            );
        }
        (Some(a), Some(s)) => {
            // The flags' user takes the place of a file's user with the same key, or comes
            // after the file's users: a problem with a file's user names its place in the file.
            let user = User {
                access_key: a.clone(),
                secret_key: s.clone(),
            };
            let place = match config.users.iter().position(|u| u.access_key == *a) {
                Some(i) => {
                    config.users[i] = user;
                    i
                }
                None => {
                    config.users.push(user);
                    config.users.len() - 1
                }
            };
            let source = if args.user_from_env {
                "ZONESTORE_ACCESS_KEY, ZONESTORE_SECRET_KEY"
            } else {
                "--access-key, --secret-key"
            };
            config.set_by_flag(&format!("users[{place}]"), source);
        }
        (None, None) => {}
        _ => bail!(
            "--access-key and --secret-key (or ZONESTORE_ACCESS_KEY and ZONESTORE_SECRET_KEY) go together"
        ),
    }
    match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            config.tls = Some(TlsSection {
                cert: cert.clone(),
                key: key.clone(),
            });
            config.set_by_flag("tls.cert", "--tls-cert");
            config.set_by_flag("tls.key", "--tls-key");
        }
        (None, None) => {}
        _ => bail!("--tls-cert and --tls-key go together"),
    }
    if let Some(p) = &args.gc_policy {
        config.gc.policy = p.clone();
        config.set_by_flag("gc.policy", "--gc-policy");
    }
    Ok(config)
}

async fn run_serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = serve_config(&args)?;
    let mut signals = Signals::new()?;
    // A signal while starting (attaching drives, replaying a crash's tail) stops the start:
    // nothing has been acknowledged yet, and what a replay applied is durable or replayed again.
    let server = tokio::select! {
        started = Server::start(&config) => started?,
        status = signals.next() => {
            // Nothing was acknowledged: exiting is a crash before the first request.
            say_err!("stopped while starting");
            std::process::exit(status);
        }
    };
    let endpoint = server.endpoint();
    // The credentials printed are the command line's when it gave some.
    let user = args
        .access_key
        .as_ref()
        .and_then(|a| server.users.iter().find(|u| u.access_key == *a))
        .unwrap_or(&server.users[0]);
    say!("Zonestore is serving S3.");
    say!("endpoint: {endpoint}");
    say!(
        "admin: http://{} (/metrics, /health, /ready; `zonestore admin --server {} --data {}`)",
        server.admin_addr(),
        server.admin_addr(),
        config.data_dir.display()
    );
    say!(
        "admin token: in {} (`zonestore admin` needs it for /admin/...)",
        zonestore::serve::admin_token_path(&config.data_dir).display()
    );
    if server.embedded {
        say!(
            "drives: {} emulated ZNS drives under {}, each behind a loopback NVMe/TCP target",
            config.embedded.drives,
            config.data_dir.join("drives").display()
        );
    } else {
        say!("drives: {}", config.targets.join(", "));
    }
    say!("access_key: {}", user.access_key);
    if args.secret_key.is_some() {
        // Given by the operator: not repeated into logs.
        say!("secret_key: (as given with --secret-key or ZONESTORE_SECRET_KEY)");
    } else if server.credentials_generated {
        say!("secret_key: {}", user.secret_key);
    } else if config.users.is_empty() {
        say!(
            "secret_key: in {}",
            zonestore::serve::credentials_path(&config.data_dir).display()
        );
    } else {
        say!("secret_key: (in the configuration file)");
    }
    say!("Try:");
    say!(
        "  export AWS_ACCESS_KEY_ID={} AWS_SECRET_ACCESS_KEY=<secret_key> AWS_DEFAULT_REGION={}",
        user.access_key,
        config.region
    );
    say!("  aws --endpoint-url {endpoint} s3 mb s3://demo");
    signals.next().await;
    say!("zonestore serve: shutting down, letting requests finish (signal again to exit now)");
    tokio::select! {
        stopped = server.shut_down(
            Duration::from_secs(args.unready_seconds),
            Duration::from_secs(args.drain_seconds),
        ) => {
            stopped.context("stopping")?;
            say!("zonestore serve: stopped");
            Ok(())
        }
        status = signals.next() => {
            // Everything acknowledged is already durable: exiting now loses nothing.
            say_err!("zonestore serve: second signal, exiting now");
            std::process::exit(status);
        }
    }
}

async fn run_recover(args: RecoverArgs) -> anyhow::Result<()> {
    if !args.rebuild_index {
        bail!("say what to recover: --rebuild-index");
    }
    let config = config_of(&args.drives)?;
    zonestore::recover::rebuild_index(&config, args.allow_missing_drives, |line| {
        say_err!("{line}")
    })
    .await?;
    Ok(())
}

fn geometry_of(args: &TargetArgs) -> anyhow::Result<zns::Geometry> {
    if !args.zone_size.is_multiple_of(4096) {
        bail!(
            "--zone-size {} is not a multiple of 4096 bytes",
            args.zone_size
        );
    }
    let mut geometry = zns::Geometry::new(args.zones, args.zone_size);
    if let Some(capacity) = args.zone_capacity {
        if !capacity.is_multiple_of(4096) || capacity > args.zone_size || capacity == 0 {
            bail!(
                "--zone-capacity {capacity} must be a positive multiple of 4096 no larger than --zone-size {}",
                args.zone_size
            );
        }
        geometry.zone_capacity = capacity / 4096;
    }
    // What a Zonestore gateway needs of a drive, said here rather than by the gateway later.
    let capacity = args.zone_capacity.unwrap_or(args.zone_size);
    if capacity < 8192 {
        bail!(
            "a zone capacity of {capacity} bytes is too small for a gateway's records (at least 8 KiB): raise --zone-size or --zone-capacity"
        );
    }
    for (flag, value) in [
        ("--max-open", args.max_open),
        ("--max-active", args.max_active),
    ] {
        if value == 1 {
            bail!(
                "{flag} 1: a gateway keeps a zone open for client writes and another for GC at once, so it needs at least 2 (0 means no limit)"
            );
        }
    }
    let limit = |v: u32| (v != 0).then_some(v);
    geometry.max_open = limit(args.max_open);
    geometry.max_active = limit(args.max_active);
    // (Before the geometry's own checks: a zone size that is no power of two would otherwise be
    // named by a limit derived from it, such as the append limit.)
    if !geometry.zone_size.is_power_of_two() {
        bail!(
            "--zone-size {} is not a power of two, which NVMe hosts require",
            args.zone_size
        );
    }
    geometry.validate().map_err(|e| {
        anyhow::anyhow!("{e} (check --zones, --zone-size, --max-open, --max-active)")
    })?;
    Ok(geometry)
}

async fn run_target(args: TargetArgs) -> anyhow::Result<()> {
    let geometry = geometry_of(&args)?;
    if !args.listen.ip().is_loopback() && args.allow_host.is_empty() {
        say!(
            "warning: any host that reaches {} may connect and reset every zone (NVMe/TCP here has no authentication): name the object servers' host NQNs with --allow-host",
            args.listen
        );
    }
    let mut signals = Signals::new()?;
    let node = StorageNode::start(StorageNodeConfig {
        data_dir: args.data.clone(),
        geometry,
        nqn: args.nqn.clone(),
        allowed_hosts: args.allow_host.clone(),
        listen: args.listen,
        direct_writes: args.direct_writes,
        create: true,
    })
    .await
    .context("starting the storage node")?;
    say!(
        "zonestore target: serving {} ({}) on {}",
        node.nqn,
        geometry,
        node.local_addr()
    );
    signals.next().await;
    say!("zonestore target: shutting down (signal again to exit now)");
    let stop = async {
        node.handle.shut_down(Duration::from_secs(10)).await;
        zns::ZonedDevice::flush(&node.drive)
            .await
            .context("flushing the drive")
    };
    tokio::select! {
        stopped = stop => stopped,
        status = signals.next() => {
            // What hosts were told is durable was flushed at their asking: exiting now is a
            // crash the drive recovers from, losing nothing they count on.
            say_err!("zonestore target: second signal, exiting now");
            std::process::exit(status);
        }
    }
}

/// SIGTERM and Ctrl-C, as a stream.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("installing a SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing a SIGINT handler")?,
        })
    }

    /// Waits for the next SIGTERM or SIGINT; returns the exit status that tells a supervisor
    /// the process was stopped by it, should it exit at once (128 + the signal's number).
    async fn next(&mut self) -> i32 {
        tokio::select! {
            _ = self.term.recv() => 128 + 15,
            _ = self.int.recv() => 128 + 2,
        }
    }
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            say_err!("{}", error_report(&error));
            std::process::ExitCode::FAILURE
        }
    }
}

/// What a failed command prints: `zonestore: error: ` and the error, then each cause the
/// lines before do not already say (a cause is often repeated inside its context's message),
/// with no backtrace whatever `RUST_BACKTRACE` says: the message names the problem.
fn error_report(error: &anyhow::Error) -> String {
    let mut report = format!("zonestore: error: {error}");
    let mut said = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !said.contains(&cause) {
            report.push_str(&format!("\n  because: {cause}"));
            said.push_str(&cause);
        }
    }
    report
}

/// Warns when a secret was given as the command-line flag `flag`: every local user can read a
/// process's arguments (`ps`, `/proc/PID/cmdline`) as long as it runs; `env` is the variable
/// that keeps it out of sight.
fn warn_of_secret_in_arguments(flag: &str, env: &str) {
    let given = std::env::args_os().any(|a| {
        let a = a.as_encoded_bytes();
        a == flag.as_bytes() || a.starts_with(format!("{flag}=").as_bytes())
    });
    if given {
        say_err!(
            "zonestore: warning: {flag} on the command line can be read by every user of this machine while the process runs (ps, /proc); set {env} instead"
        );
    }
}

/// Notes which values of `cli` came from environment variables rather than flags (`matches`
/// being what it was parsed from).
fn note_env_sources(cli: &mut Cli, matches: &clap::ArgMatches) {
    let from_env = |command: &str, id: &str| {
        matches
            .subcommand_matches(command)
            .and_then(|m| m.value_source(id))
            == Some(clap::parser::ValueSource::EnvVariable)
    };
    match &mut cli.command {
        Command::Serve(args) => {
            args.drives.data_from_env = from_env("serve", "data");
            // (A login half from the environment, half from a flag, is the flags'.)
            args.user_from_env = from_env("serve", "access_key") && from_env("serve", "secret_key");
        }
        Command::Recover(args) => args.drives.data_from_env = from_env("recover", "data"),
        Command::Target(_) | Command::Admin(_) => {}
    }
}

fn run() -> anyhow::Result<()> {
    let matches = <Cli as clap::CommandFactory>::command().get_matches();
    let mut cli =
        <Cli as clap::FromArgMatches>::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    note_env_sources(&mut cli, &matches);
    warn_of_secret_in_arguments("--secret-key", "ZONESTORE_SECRET_KEY");
    warn_of_secret_in_arguments("--token", "ZONESTORE_ADMIN_TOKEN");
    init_logging();
    zonestore::fd_limit::raise();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => run_serve(args).await,
            Command::Target(args) => run_target(args).await,
            Command::Admin(args) => admin_client::run(args).await,
            Command::Recover(args) => run_recover(args).await,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::{Cli, Command, config_of, error_report, serve_config};
    use anyhow::Context;
    use clap::Parser;
    use std::path::Path;

    /// `--direct-writes` turns direct writes on, `--direct-writes=false` off, whatever the
    /// configuration file says; without it the file decides.
    #[test]
    fn the_direct_writes_flag_overrides_the_file_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("z.toml");
        let direct = |file_says: bool, flags: &[&str]| {
            std::fs::write(&file, format!("[embedded]\ndirect_writes = {file_says}\n")).unwrap();
            let mut argv = vec!["zonestore", "serve", "--config", file.to_str().unwrap()];
            argv.extend(flags);
            let Command::Serve(args) = Cli::try_parse_from(argv).unwrap().command else {
                panic!("not serve");
            };
            config_of(&args.drives).unwrap().embedded.direct_writes
        };
        assert!(direct(true, &[]));
        assert!(!direct(false, &[]));
        assert!(direct(false, &["--direct-writes"]));
        assert!(direct(false, &["--direct-writes", "--zones", "8"]));
        assert!(!direct(true, &["--direct-writes=false"]));
    }

    /// ZONESTORE_ACCESS_KEY and ZONESTORE_SECRET_KEY do not add a login to the users a
    /// configuration file gives (nor change one); they apply where the file gives none; the
    /// flags add or replace one.
    #[test]
    fn a_login_from_the_environment_yields_to_the_files_users() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("z.toml");
        let users = |file_says: &str, from_env: bool| {
            std::fs::write(&file, file_says).unwrap();
            let argv = [
                "zonestore",
                "serve",
                "--config",
                file.to_str().unwrap(),
                "--access-key",
                "ENVKEY",
                "--secret-key",
                "envsecret",
            ];
            let Command::Serve(mut args) = Cli::try_parse_from(argv).unwrap().command else {
                panic!("not serve");
            };
            args.user_from_env = from_env;
            serve_config(&args)
                .unwrap()
                .users
                .into_iter()
                .map(|u| (u.access_key, u.secret_key))
                .collect::<Vec<_>>()
        };
        let file_users = "[[users]]\naccess_key = \"FILEKEY\"\nsecret_key = \"filesecret\"\n";
        let from_file = vec![("FILEKEY".to_string(), "filesecret".to_string())];
        let env = ("ENVKEY".to_string(), "envsecret".to_string());
        assert_eq!(users(file_users, true), from_file);
        assert_eq!(
            users(file_users, false),
            [from_file[0].clone(), env.clone()]
        );
        assert_eq!(users("", true), [env]);
    }

    /// ZONESTORE_DATA (exported for `zonestore admin`, say) does not override a configuration
    /// file's data_dir (the server would start on other drives, with other credentials); it
    /// applies where the file names none; the flag overrides the file.
    #[test]
    fn the_data_directory_from_the_environment_yields_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("z.toml");
        let data_dir = |file_says: &str, flags: &[&str], from_env: bool| {
            std::fs::write(&file, file_says).unwrap();
            let mut argv = vec!["zonestore", "serve", "--config", file.to_str().unwrap()];
            argv.extend(flags);
            let Command::Serve(mut args) = Cli::try_parse_from(argv).unwrap().command else {
                panic!("not serve");
            };
            args.drives.data_from_env = from_env;
            config_of(&args.drives).unwrap().data_dir
        };
        let named = "data_dir = \"/srv/zs\"\n";
        assert_eq!(
            data_dir(named, &["--data", "/env"], true),
            Path::new("/srv/zs")
        );
        assert_eq!(
            data_dir(named, &["--data", "/flag"], false),
            Path::new("/flag")
        );
        assert_eq!(data_dir("", &["--data", "/env"], true), Path::new("/env"));
    }

    #[test]
    fn an_error_report_names_each_cause_once_and_no_backtrace() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let error = Err::<(), _>(io)
            .context("opening zns.meta: no such file")
            .context("embedded drive 0")
            .unwrap_err();
        assert_eq!(
            error_report(&error),
            "zonestore: error: embedded drive 0\n  because: opening zns.meta: no such file"
        );
        let single = anyhow::anyhow!("--zone-size 3 is not a multiple of 4096 bytes");
        assert_eq!(
            error_report(&single),
            "zonestore: error: --zone-size 3 is not a multiple of 4096 bytes"
        );
    }
}
