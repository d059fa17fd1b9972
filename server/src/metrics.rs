//! Prometheus metrics: requests by operation and status, latency histograms, bytes in and out
//! (recorded as requests finish), and gauges computed when scraped: zones by state and free
//! space per drive, GC work and write amplification, NVMe/TCP commands, queue depth, errors and
//! reconnects per target.

use s3api::RequestRecord;
use std::sync::atomic::Ordering;

use fabric::host::NvmeTcpHost;
use fabric::target::Target;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::engine::Engine;
use crate::engine::placement::ZoneUse;

type Labels = Vec<(String, String)>;

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_25, 2.0, 18))
}

/// The server's metrics.
pub struct Metrics {
    registry: parking_lot::Mutex<Registry>,
    requests: Family<Labels, Counter>,
    payloads: Family<Labels, Counter>,
    latency: Family<Labels, Histogram, fn() -> Histogram>,
    bytes_in: Counter,
    bytes_out: Counter,
    zones: Family<Labels, Gauge>,
    free_bytes: Family<Labels, Gauge>,
    drive_foreign: Family<Labels, Gauge>,
    gc_relocated: Gauge,
    zones_reset: Gauge,
    user_written: Gauge,
    gc_written: Gauge,
    write_amplification_milli: Gauge,
    read_failovers: Gauge,
    under_replicated: Gauge,
    repair_copied: Gauge,
    scrub_checked: Gauge,
    scrub_bad: Gauge,
    scrub_repaired: Gauge,
    crc_errors: Gauge,
    nvme_commands: Family<Labels, Gauge>,
    nvme_errors: Family<Labels, Gauge>,
    nvme_in_flight: Family<Labels, Gauge>,
    nvme_reconnects: Family<Labels, Gauge>,
    nvme_connected: Family<Labels, Gauge>,
    target_commands: Family<Labels, Gauge>,
    target_bytes: Family<Labels, Gauge>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("zonestore");
        let m = Metrics {
            registry: parking_lot::Mutex::new(Registry::default()),
            requests: Family::default(),
            payloads: Family::default(),
            latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            bytes_in: Counter::default(),
            bytes_out: Counter::default(),
            zones: Family::default(),
            free_bytes: Family::default(),
            drive_foreign: Family::default(),
            gc_relocated: Gauge::default(),
            zones_reset: Gauge::default(),
            user_written: Gauge::default(),
            gc_written: Gauge::default(),
            write_amplification_milli: Gauge::default(),
            read_failovers: Gauge::default(),
            under_replicated: Gauge::default(),
            repair_copied: Gauge::default(),
            scrub_checked: Gauge::default(),
            scrub_bad: Gauge::default(),
            scrub_repaired: Gauge::default(),
            crc_errors: Gauge::default(),
            nvme_commands: Family::default(),
            nvme_errors: Family::default(),
            nvme_in_flight: Family::default(),
            nvme_reconnects: Family::default(),
            nvme_connected: Family::default(),
            target_commands: Family::default(),
            target_bytes: Family::default(),
        };
        r.register(
            "s3_request_payloads",
            "S3 requests by body protection (sha256, unsigned, streaming-signed[-trailer], streaming-unsigned-trailer)",
            m.payloads.clone(),
        );
        r.register(
            "s3_requests",
            "S3 requests by operation and HTTP status",
            m.requests.clone(),
        );
        r.register(
            "s3_request_duration_seconds",
            "S3 request latency by operation",
            m.latency.clone(),
        );
        r.register(
            "s3_received_bytes",
            "Request body bytes received",
            m.bytes_in.clone(),
        );
        r.register(
            "s3_sent_bytes",
            "Response body bytes sent",
            m.bytes_out.clone(),
        );
        r.register("zones", "Zones by drive and use", m.zones.clone());
        r.register(
            "free_bytes",
            "Free (empty-zone) bytes by drive",
            m.free_bytes.clone(),
        );
        r.register(
            "drive_foreign",
            "1 while a different drive answers under the drive's name (it is left out)",
            m.drive_foreign.clone(),
        );
        r.register(
            "gc_relocated_bytes",
            "Live bytes moved by GC",
            m.gc_relocated.clone(),
        );
        r.register("gc_zones_reset", "Zones reset by GC", m.zones_reset.clone());
        r.register(
            "user_written_bytes",
            "Bytes appended for client writes (all copies)",
            m.user_written.clone(),
        );
        r.register(
            "gc_written_bytes",
            "Bytes appended by GC",
            m.gc_written.clone(),
        );
        r.register(
            "write_amplification_milli",
            "Write amplification x 1000",
            m.write_amplification_milli.clone(),
        );
        r.register(
            "read_failovers",
            "Reads that moved to another copy",
            m.read_failovers.clone(),
        );
        r.register(
            "crc_errors",
            "Records whose CRC did not match",
            m.crc_errors.clone(),
        );
        r.register(
            "nvme_host_commands",
            "NVMe/TCP commands completed by the host, per target",
            m.nvme_commands.clone(),
        );
        r.register(
            "nvme_host_errors",
            "NVMe/TCP commands that failed, per target",
            m.nvme_errors.clone(),
        );
        r.register(
            "nvme_host_in_flight",
            "NVMe/TCP commands in flight (queue depth), per target",
            m.nvme_in_flight.clone(),
        );
        r.register(
            "nvme_host_reconnects",
            "NVMe/TCP reconnections, per target",
            m.nvme_reconnects.clone(),
        );
        r.register(
            "nvme_host_connected",
            "Whether the target is connected (1) or not (0)",
            m.nvme_connected.clone(),
        );
        r.register(
            "nvme_target_commands",
            "Commands served by the embedded NVMe/TCP targets",
            m.target_commands.clone(),
        );
        r.register(
            "nvme_target_bytes",
            "Data bytes moved by the embedded NVMe/TCP targets",
            m.target_bytes.clone(),
        );
        r.register(
            "under_replicated_bytes",
            "Bytes of records with fewer than R healthy copies (as of the last repair pass)",
            m.under_replicated.clone(),
        );
        r.register(
            "repair_copied_bytes",
            "Bytes copied by repair and drain",
            m.repair_copied.clone(),
        );
        r.register(
            "scrub_checked_copies",
            "Record copies read and checked by scrub",
            m.scrub_checked.clone(),
        );
        r.register(
            "scrub_bad_copies",
            "Record copies scrub found damaged",
            m.scrub_bad.clone(),
        );
        r.register(
            "scrub_repaired_copies",
            "Bad copies scrub replaced from a good one",
            m.scrub_repaired.clone(),
        );
        *m.registry.lock() = r;
        m
    }

    /// Renders the Prometheus text format, refreshing the computed gauges first.
    pub fn render(
        &self,
        engine: &Engine,
        hosts: &[(String, NvmeTcpHost)],
        targets: &[(String, Target)],
    ) -> String {
        let stats = engine.stats();
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed) as i64;
        self.user_written.set(load(&stats.user_written));
        self.gc_written.set(load(&stats.gc_written));
        self.zones_reset.set(load(&stats.zones_reset));
        self.gc_relocated
            .set(engine.gc().status().bytes_relocated as i64);
        self.write_amplification_milli
            .set((stats.write_amplification() * 1000.0) as i64);
        self.read_failovers.set(load(&stats.read_failovers));
        self.crc_errors.set(load(&stats.crc_errors));
        let repair = engine.repair().status();
        self.under_replicated
            .set(repair.under_replicated_bytes as i64);
        self.repair_copied.set(repair.bytes_copied as i64);
        self.scrub_checked.set(repair.scrub_checked as i64);
        self.scrub_bad.set(repair.scrub_bad as i64);
        self.scrub_repaired.set(repair.scrub_repaired as i64);
        let mut per_drive: std::collections::HashMap<(String, &'static str), i64> =
            std::collections::HashMap::new();
        let mut free: std::collections::HashMap<String, i64> = std::collections::HashMap::new();
        for row in engine.zone_table() {
            let state = match row.usage {
                ZoneUse::Free => "free",
                ZoneUse::Active(_) => "open",
                ZoneUse::Closing | ZoneUse::Sealed => "sealed",
                ZoneUse::Collecting => "collecting",
                ZoneUse::Bad => "bad",
            };
            *per_drive.entry((row.drive.clone(), state)).or_default() += 1;
            if row.usage == ZoneUse::Free {
                *free.entry(row.drive.clone()).or_default() += row.capacity_bytes as i64;
            }
        }
        // Every state of every drive, so that a state no zone is in any more reads 0.
        for drive in engine.drives().all() {
            for state in ["free", "open", "sealed", "collecting", "bad"] {
                let n = per_drive
                    .get(&(drive.name.clone(), state))
                    .copied()
                    .unwrap_or(0);
                self.zones
                    .get_or_create(&vec![
                        ("drive".into(), drive.name.clone()),
                        ("state".into(), state.into()),
                    ])
                    .set(n);
            }
        }
        for drive in engine.drives().all() {
            let labels = vec![("drive".into(), drive.name.clone())];
            self.free_bytes
                .get_or_create(&labels)
                .set(free.get(&drive.name).copied().unwrap_or(0));
            let foreign = drive.foreign.load(Ordering::Relaxed)
                || hosts
                    .iter()
                    .any(|(name, h)| *name == drive.name && h.finds_another_drive());
            self.drive_foreign
                .get_or_create(&labels)
                .set(i64::from(foreign));
        }
        for (name, host) in hosts {
            let labels = vec![("target".to_string(), name.clone())];
            let s = host.stats();
            self.nvme_commands
                .get_or_create(&labels)
                .set(s.commands.load(Ordering::Relaxed) as i64);
            self.nvme_errors
                .get_or_create(&labels)
                .set(s.errors.load(Ordering::Relaxed) as i64);
            self.nvme_in_flight
                .get_or_create(&labels)
                .set(s.in_flight.load(Ordering::Relaxed) as i64);
            self.nvme_reconnects
                .get_or_create(&labels)
                .set(s.reconnects.load(Ordering::Relaxed) as i64);
            self.nvme_connected
                .get_or_create(&labels)
                .set(i64::from(host.is_connected()));
        }
        for (name, target) in targets {
            let labels = vec![("target".to_string(), name.clone())];
            let s = target.stats();
            self.target_commands
                .get_or_create(&labels)
                .set(s.commands as i64);
            self.target_bytes
                .get_or_create(&labels)
                .set((s.bytes_read + s.bytes_written) as i64);
        }
        let mut out = String::new();
        if encode(&mut out, &self.registry.lock()).is_err() {
            out.push_str("# encoding failed\n");
        }
        out
    }
}

impl s3api::Observer for Metrics {
    fn observe(&self, r: RequestRecord) {
        self.requests
            .get_or_create(&vec![
                ("operation".into(), r.operation.into()),
                ("status".into(), r.status.to_string()),
            ])
            .inc();
        self.payloads
            .get_or_create(&vec![("payload".into(), r.payload.into())])
            .inc();
        self.latency
            .get_or_create(&vec![("operation".into(), r.operation.into())])
            .observe(r.elapsed.as_secs_f64());
        self.bytes_in.inc_by(r.bytes_in);
        self.bytes_out.inc_by(r.bytes_out);
    }
}
