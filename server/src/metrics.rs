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
    slow_writes: Family<Labels, Counter>,
    gc_relocated: Counter,
    zones_reset: Counter,
    user_written: Counter,
    gc_written: Counter,
    repair_written: Counter,
    connections_refused: Counter,
    write_amplification_milli: Gauge,
    read_failovers: Counter,
    read_hedges: Counter,
    uploads_expired: Counter,
    under_replicated: Gauge,
    repair_copied: Counter,
    scrub_checked: Counter,
    scrub_bad: Counter,
    scrub_repaired: Counter,
    crc_errors: Counter,
    nvme_commands: Family<Labels, Counter>,
    nvme_errors: Family<Labels, Counter>,
    nvme_in_flight: Family<Labels, Gauge>,
    nvme_reconnects: Family<Labels, Counter>,
    nvme_connected: Family<Labels, Gauge>,
    target_commands: Family<Labels, Counter>,
    target_bytes: Family<Labels, Counter>,
    /// What the counters that follow counts kept elsewhere last saw.
    followed: Followed,
    /// Held by one scrape at a time from reading the counts to encoding them: a scrape that
    /// read a count before another scrape recorded a larger one would take the smaller one for
    /// a count started again from zero and add all of it.
    rendering: parking_lot::Mutex<()>,
}

/// The last values seen of cumulative counts kept elsewhere (the engine's statistics, the
/// NVMe/TCP hosts' and targets'), by metric and labels: a counter advances by what its count
/// gained since, or by the whole count when the count started again from zero (a host or
/// target replaced), and so never goes down.
#[derive(Default)]
struct Followed(parking_lot::Mutex<std::collections::HashMap<(&'static str, Labels), u64>>);

impl Followed {
    fn follow(&self, metric: &'static str, labels: &Labels, counter: &Counter, count: u64) {
        let last = self
            .0
            .lock()
            .insert((metric, labels.clone()), count)
            .unwrap_or(0);
        counter.inc_by(if count >= last { count - last } else { count });
    }
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
            slow_writes: Family::default(),
            gc_relocated: Counter::default(),
            zones_reset: Counter::default(),
            user_written: Counter::default(),
            gc_written: Counter::default(),
            repair_written: Counter::default(),
            connections_refused: Counter::default(),
            write_amplification_milli: Gauge::default(),
            read_failovers: Counter::default(),
            read_hedges: Counter::default(),
            uploads_expired: Counter::default(),
            under_replicated: Gauge::default(),
            repair_copied: Counter::default(),
            scrub_checked: Counter::default(),
            scrub_bad: Counter::default(),
            scrub_repaired: Counter::default(),
            crc_errors: Counter::default(),
            nvme_commands: Family::default(),
            nvme_errors: Family::default(),
            nvme_in_flight: Family::default(),
            nvme_reconnects: Family::default(),
            nvme_connected: Family::default(),
            target_commands: Family::default(),
            target_bytes: Family::default(),
            followed: Followed::default(),
            rendering: parking_lot::Mutex::new(()),
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
            "S3 request latency by operation, until the response head is sent (a body streams on after)",
            m.latency.clone(),
        );
        r.register(
            "s3_received_bytes",
            "Request body bytes received",
            m.bytes_in.clone(),
        );
        r.register(
            "s3_sent_bytes",
            "Response body bytes, as each response's Content-Length says as its head is sent",
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
            "s3_connections_refused",
            "S3 connections refused for their client's share of the connections (answered 503 SlowDown)",
            m.connections_refused.clone(),
        );
        r.register(
            "repair_written_bytes",
            "Bytes appended by repair, drains and scrub (copies made again; not in the write amplification)",
            m.repair_written.clone(),
        );
        r.register(
            "write_amplification_milli",
            "Write amplification x 1000",
            m.write_amplification_milli.clone(),
        );
        r.register(
            "read_failovers",
            "Pieces of reads served by another copy after one failed",
            m.read_failovers.clone(),
        );
        r.register(
            "uploads_expired",
            "Multipart uploads aborted for being left unfinished past multipart.abort_after_hours",
            m.uploads_expired.clone(),
        );
        r.register(
            "read_hedges",
            "Pieces of reads for which a second copy was read because the first was slow",
            m.read_hedges.clone(),
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
            "slow_writes",
            "Appends and flushes not waited for because the drive was too slow (their copies were left out, for repair to make again), per drive",
            m.slow_writes.clone(),
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
        let _one_scrape_at_a_time = self.rendering.lock();
        let stats = engine.stats();
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let none = Labels::new();
        let follow = |metric, counter: &Counter, count| {
            self.followed.follow(metric, &none, counter, count);
        };
        follow(
            "user_written",
            &self.user_written,
            load(&stats.user_written),
        );
        follow("gc_written", &self.gc_written, load(&stats.gc_written));
        follow(
            "repair_written",
            &self.repair_written,
            load(&stats.repair_written),
        );
        follow(
            "connections_refused",
            &self.connections_refused,
            load(&crate::http::CONNECTIONS_REFUSED),
        );
        follow("zones_reset", &self.zones_reset, load(&stats.zones_reset));
        let relocated = engine.gc().status().bytes_relocated;
        follow("gc_relocated", &self.gc_relocated, relocated);
        self.write_amplification_milli
            .set((stats.write_amplification() * 1000.0) as i64);
        follow(
            "read_failovers",
            &self.read_failovers,
            load(&stats.read_failovers),
        );
        follow("read_hedges", &self.read_hedges, load(&stats.read_hedges));
        follow(
            "uploads_expired",
            &self.uploads_expired,
            load(&stats.uploads_expired),
        );
        follow("crc_errors", &self.crc_errors, load(&stats.crc_errors));
        let repair = engine.repair().status();
        self.under_replicated
            .set(repair.under_replicated_bytes as i64);
        follow("repair_copied", &self.repair_copied, repair.bytes_copied);
        follow("scrub_checked", &self.scrub_checked, repair.scrub_checked);
        follow("scrub_bad", &self.scrub_bad, repair.scrub_bad);
        follow(
            "scrub_repaired",
            &self.scrub_repaired,
            repair.scrub_repaired,
        );
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
            let slow = self.slow_writes.get_or_create(&labels);
            self.followed.follow(
                "slow_writes",
                &labels,
                &slow,
                load(&drive.slow_writes_total),
            );
        }
        for (name, host) in hosts {
            let labels = vec![("target".to_string(), name.clone())];
            let s = host.stats();
            let follow = |metric, family: &Family<Labels, Counter>, count| {
                let counter = family.get_or_create(&labels);
                self.followed.follow(metric, &labels, &counter, count);
            };
            follow("nvme_commands", &self.nvme_commands, load(&s.commands));
            follow("nvme_errors", &self.nvme_errors, load(&s.errors));
            follow(
                "nvme_reconnects",
                &self.nvme_reconnects,
                load(&s.reconnects),
            );
            self.nvme_in_flight
                .get_or_create(&labels)
                .set(s.in_flight.load(Ordering::Relaxed) as i64);
            self.nvme_connected
                .get_or_create(&labels)
                .set(i64::from(host.is_connected()));
        }
        for (name, target) in targets {
            let labels = vec![("target".to_string(), name.clone())];
            let s = target.stats();
            let commands = self.target_commands.get_or_create(&labels);
            self.followed
                .follow("target_commands", &labels, &commands, s.commands);
            let bytes = self.target_bytes.get_or_create(&labels);
            self.followed.follow(
                "target_bytes",
                &labels,
                &bytes,
                s.bytes_read + s.bytes_written,
            );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_followed_counter_never_goes_down_when_its_count_restarts() {
        let followed = Followed::default();
        let counter = Counter::<u64>::default();
        let labels = vec![("target".to_string(), "a".to_string())];
        for (count, expected) in [(5, 5), (9, 9), (9, 9), (2, 11), (4, 13)] {
            followed.follow("commands", &labels, &counter, count);
            assert_eq!(counter.get(), expected, "after a count of {count}");
        }
        // Another series keeps its own last value.
        let other = Counter::<u64>::default();
        followed.follow("commands", &vec![("target".into(), "b".into())], &other, 3);
        assert_eq!((counter.get(), other.get()), (13, 3));
    }
}
