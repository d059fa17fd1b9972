//! The `zonestore` binary: command line parsing and process lifecycle. Everything else lives in
//! the library.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
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
    /// Run a storage node: one emulated ZNS drive exported over NVMe/TCP.
    Target(TargetArgs),
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
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
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
    let limit = |v: u32| (v != 0).then_some(v);
    geometry.max_open = limit(args.max_open);
    geometry.max_active = limit(args.max_active);
    geometry.validate().map_err(|e| {
        anyhow::anyhow!("{e} (check --zones, --zone-size, --max-open, --max-active)")
    })?;
    if !geometry.zone_size.is_power_of_two() {
        bail!(
            "--zone-size {} is not a power of two, which NVMe hosts require",
            args.zone_size
        );
    }
    Ok(geometry)
}

async fn run_target(args: TargetArgs) -> anyhow::Result<()> {
    let geometry = geometry_of(&args)?;
    let node = StorageNode::start(StorageNodeConfig {
        data_dir: args.data.clone(),
        geometry,
        nqn: args.nqn.clone(),
        allowed_hosts: args.allow_host.clone(),
        listen: args.listen,
    })
    .await
    .context("starting the storage node")?;
    println!(
        "zonestore target: serving {} ({}) on {}",
        node.nqn,
        geometry,
        node.local_addr()
    );
    wait_for_shutdown().await;
    println!("zonestore target: shutting down");
    node.handle.shutdown();
    zns::ZonedDevice::flush(&node.drive)
        .await
        .context("flushing the drive")?;
    Ok(())
}

async fn wait_for_shutdown() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler succeeds in a normal process");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        match cli.command {
            Command::Target(args) => run_target(args).await,
        }
    })
}
