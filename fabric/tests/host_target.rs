//! The NVMe/TCP host against the NVMe/TCP target over loopback: the same random operation
//! sequences as the drive's own property test give identical answers through the fabric,
//! including error statuses; concurrent appends; reconnect after the target goes away; refused
//! connections; digests; discovery.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use fabric::host::discovery::discover;
use fabric::host::{HostConfig, HostError, NvmeTcpHost};
use fabric::spec::DISCOVERY_NQN;
use fabric::target::{Target, TargetConfig, TargetHandle};
use fabric::wire::digest::Digests;
use fabric::wire::status::Status;
use proptest::prelude::*;
use zns::testing::{Backdoor, Model, apply, arb_geometry, arb_op, pattern};
use zns::{EmulatedZns, Geometry, ReportFilter, WriteHint, ZoneError, ZoneErrorKind, ZonedDevice};

const NQN: &str = "nqn.2026-01.io.zonestore:test";

struct Rig {
    _dir: tempfile::TempDir,
    drive: EmulatedZns,
    target: Target,
    handle: TargetHandle,
}

async fn rig(geometry: Geometry, allowed: Vec<String>) -> Rig {
    rig_with(geometry, allowed, TargetConfig::default()).await
}

async fn rig_with(geometry: Geometry, allowed: Vec<String>, config: TargetConfig) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let drive = EmulatedZns::create(dir.path(), geometry).unwrap();
    let target = Target::new(config);
    target
        .add_subsystem(NQN, Arc::new(drive.clone()), allowed)
        .unwrap();
    let handle = target.listen("127.0.0.1:0".parse().unwrap()).await.unwrap();
    Rig {
        _dir: dir,
        drive,
        target,
        handle,
    }
}

fn host_config(addr: SocketAddr) -> HostConfig {
    let mut config = HostConfig::new(addr, NQN);
    config.reconnect_wait = Duration::from_secs(5);
    config.command_timeout = Duration::from_secs(10);
    config
}

/// The target listening on `addr` again in 300 ms (its connections were closed).
fn listen_again_soon(target: &Target, addr: SocketAddr) -> tokio::task::JoinHandle<TargetHandle> {
    let target = target.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        target.listen(addr).await.unwrap()
    })
}

/// Waits (up to 10 s: the host learns of it from its reader task) until `host` has seen its
/// connection end.
async fn until_disconnected(host: &NvmeTcpHost) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while host.is_connected() {
        assert!(
            std::time::Instant::now() < deadline,
            "the host never saw the target go away"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Every answer through host and target equals the model's, as the local drive's do.
    #[test]
    fn fabric_matches_the_model(g in arb_geometry().prop_filter("power-of-two zones", |g| g.zone_size.is_power_of_two()),
                                ops in prop::collection::vec(arb_op(true), 1..120)) {
        let rt = runtime();
        rt.block_on(async {
            let rig = rig(g, vec![]).await;
            let host = NvmeTcpHost::connect(host_config(rig.handle.local_addr())).await.unwrap();
            prop_assert_eq!(host.geometry(), g);
            let mut model = Model::new(g);
            for (i, op) in ops.iter().enumerate() {
                let got = apply(&host, &rig.drive, op).await;
                let want = model.apply(op);
                prop_assert_eq!(got, want, "step {} {:?}", i, op);
            }
            host.close().await;
            Ok(())
        })?;
    }
}

#[test]
fn geometry_arrives_intact_with_short_capacity_and_limits() {
    let rt = runtime();
    rt.block_on(async {
        let mut g = Geometry::new(8, 4 << 20);
        g.zone_capacity = g.zone_size - 100;
        g.max_open = Some(3);
        g.max_active = None;
        let rig = rig(g, vec![]).await;
        let host = NvmeTcpHost::connect(host_config(rig.handle.local_addr()))
            .await
            .unwrap();
        assert_eq!(host.geometry(), g);
        host.close().await;
    });
}

#[test]
fn many_concurrent_appends_to_one_zone_through_the_fabric() {
    let rt = runtime();
    rt.block_on(async {
        let g = Geometry::new(4, 16 << 20);
        let rig = rig(g, vec![]).await;
        let host = Arc::new(
            NvmeTcpHost::connect(host_config(rig.handle.local_addr()))
                .await
                .unwrap(),
        );
        let mut tasks = Vec::new();
        for i in 0..256u64 {
            let host = host.clone();
            tasks.push(tokio::spawn(async move {
                // Mix in-capsule (small) and R2T (large) transfers.
                let blocks = if i % 5 == 0 { 64 } else { 1 + i % 3 };
                let data = pattern(&g, 0, blocks, i as u8);
                (
                    host.append(g.zone_size, Bytes::from(data)).await.unwrap(),
                    blocks,
                    i as u8,
                )
            }));
        }
        let mut placed = Vec::new();
        for t in tasks {
            placed.push(t.await.unwrap());
        }
        let mut ranges: Vec<_> = placed.iter().map(|&(lba, n, _)| (lba, lba + n)).collect();
        ranges.sort();
        assert_eq!(ranges[0].0, g.zone_size);
        for w in ranges.windows(2) {
            assert_eq!(w[0].1, w[1].0, "appends are disjoint and contiguous");
        }
        for (lba, blocks, seed) in placed {
            let data = host.read(lba, blocks as u32).await.unwrap();
            assert_eq!(&data[..], &pattern(&g, 0, blocks, seed)[..]);
        }
        let stats = rig.target.stats();
        assert!(stats.commands >= 512, "the target saw the I/O: {stats:?}");
        host.close().await;
    });
}

#[test]
fn host_reconnects_after_the_target_restarts() {
    let rt = runtime();
    rt.block_on(async {
        let g = Geometry::new(4, 4 << 20);
        let rig = rig(g, vec![]).await;
        let addr = rig.handle.local_addr();
        let host = NvmeTcpHost::connect(host_config(addr)).await.unwrap();
        let data = Bytes::from(pattern(&g, 0, 4, 1));
        let lba = host.append(0, data.clone()).await.unwrap();
        host.flush().await.unwrap();
        // The target goes away: every connection closes.
        rig.handle.shut_down(Duration::from_secs(10)).await;
        until_disconnected(&host).await;
        // It comes back on the same port; a command issued meanwhile waits and then succeeds.
        let restart = listen_again_soon(&rig.target, addr);
        let read = host.read(lba, 4).await.unwrap();
        assert_eq!(read, data);
        assert!(host.is_connected());
        assert!(
            host.stats()
                .reconnects
                .load(std::sync::atomic::Ordering::Relaxed)
                >= 1
        );
        let _handle = restart.await.unwrap();
        host.close().await;
    });
}

/// An append sent while the connection is down runs in the session that comes next: it is
/// counted in that one (a flush there makes it durable), not in the lost one.
#[test]
fn a_write_sent_while_reconnecting_counts_in_the_session_it_runs_in() {
    let rt = runtime();
    rt.block_on(async {
        let g = Geometry::new(4, 4 << 20);
        let rig = rig(g, vec![]).await;
        let addr = rig.handle.local_addr();
        let host = NvmeTcpHost::connect(host_config(addr)).await.unwrap();
        let first = host.session();
        rig.handle.shut_down(Duration::from_secs(10)).await;
        until_disconnected(&host).await;
        let noted = host.session();
        assert_ne!(noted, first, "the lost session's writes may be gone");
        let restart = listen_again_soon(&rig.target, addr);
        host.append(0, Bytes::from(pattern(&g, 0, 1, 7)))
            .await
            .unwrap();
        host.flush().await.unwrap();
        assert_eq!(
            host.session(),
            noted,
            "it ran, and was flushed, in the session noted"
        );
        let _handle = restart.await.unwrap();
        host.close().await;
    });
}

#[test]
fn a_different_drive_behind_the_same_address_and_nqn_is_refused() {
    let rt = runtime();
    rt.block_on(async {
        let g = Geometry::new(4, 4 << 20);
        let rig = rig(g, vec![]).await;
        let addr = rig.handle.local_addr();
        let mut config = host_config(addr);
        config.reconnect_wait = Duration::from_millis(1500);
        let host = NvmeTcpHost::connect(config).await.unwrap();
        assert_eq!(
            host.identity(),
            rig.drive.identity(),
            "the NGUID is the drive's"
        );
        // The storage node comes back with a fresh drive (say its disk was not mounted): same
        // address, same NQN, same geometry, none of the data.
        rig.handle.shut_down(Duration::from_secs(10)).await;
        until_disconnected(&host).await;
        let dir = tempfile::tempdir().unwrap();
        let impostor = EmulatedZns::create(dir.path(), g).unwrap();
        let target = Target::new(TargetConfig::default());
        target
            .add_subsystem(NQN, Arc::new(impostor), vec![])
            .unwrap();
        let _handle = target.listen(addr).await.unwrap();
        let err = host.read(0, 1).await.unwrap_err();
        assert_eq!(err.kind(), ZoneErrorKind::Unavailable, "{err}");
        assert!(err.to_string().contains("different drive"), "{err}");
        assert!(!host.is_connected());
        assert!(host.finds_another_drive());
        assert_eq!(host.identity(), rig.drive.identity());
        host.close().await;
    });
}

#[test]
fn commands_fail_clearly_when_the_target_stays_away() {
    let rt = runtime();
    rt.block_on(async {
        let g = Geometry::new(4, 4 << 20);
        let rig = rig(g, vec![]).await;
        let mut config = host_config(rig.handle.local_addr());
        config.reconnect_wait = Duration::from_millis(300);
        let host = NvmeTcpHost::connect(config).await.unwrap();
        drop(rig.handle);
        let err = host.read(0, 1).await.unwrap_err();
        assert_eq!(err.kind(), ZoneErrorKind::Unavailable, "{err}");
        assert!(
            err.to_string().contains("unreachable") || err.to_string().contains("disconnected"),
            "{err}"
        );
        // Failed for want of a session (none on the wire), a command counts as an error too.
        until_disconnected(&host).await;
        let errors = || {
            host.stats()
                .errors
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        let before = errors();
        assert!(host.read(0, 1).await.is_err());
        assert_eq!(errors(), before + 1);
        host.close().await;
    });
}

/// A host dropped without `close` leaves no connection behind (its keep-alive would
/// otherwise hold the session up for as long as the target lives).
#[test]
fn a_dropped_host_closes_its_connections() {
    let rt = runtime();
    rt.block_on(async {
        let g = Geometry::new(4, 4 << 20);
        let rig = rig(g, vec![]).await;
        let host = NvmeTcpHost::connect(host_config(rig.handle.local_addr()))
            .await
            .unwrap();
        host.read(0, 1).await.unwrap();
        // (Long enough for the host's tasks to be waiting, not starting.)
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(rig.target.stats().connections_open >= 2);
        drop(host);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while rig.target.stats().connections_open > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "{} connections still open",
                rig.target.stats().connections_open
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
}

/// A `close` whose caller stops waiting at once (a timeout) still shuts the controller down
/// and closes the connections, with the host kept alive: they are not left open behind a host
/// that says it is closed.
#[test]
fn an_abandoned_close_still_closes_the_connections() {
    let rt = runtime();
    rt.block_on(async {
        let g = Geometry::new(4, 4 << 20);
        let rig = rig(g, vec![]).await;
        let host = NvmeTcpHost::connect(host_config(rig.handle.local_addr()))
            .await
            .unwrap();
        host.read(0, 1).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(rig.target.stats().connections_open >= 2);
        // Polled once, then dropped.
        assert!(
            futures::FutureExt::now_or_never(host.close()).is_none(),
            "a close is done in one poll"
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while rig.target.stats().connections_open > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "{} connections still open",
                rig.target.stats().connections_open
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            host.read(0, 1).await.is_err(),
            "a closed host reads nothing"
        );
    });
}

#[test]
fn hosts_outside_the_allow_list_are_refused_with_invalid_host() {
    let rt = runtime();
    rt.block_on(async {
        let rig = rig(
            Geometry::new(2, 1 << 20),
            vec!["nqn.2026-01.io.zonestore:allowed".into()],
        )
        .await;
        let mut config = host_config(rig.handle.local_addr());
        config.hostnqn = "nqn.2026-01.io.zonestore:intruder".into();
        match NvmeTcpHost::connect(config.clone()).await {
            Err(HostError::Refused { status, detail, .. }) => {
                assert_eq!(status, Status::CONNECT_INVALID_HOST);
                assert_eq!(detail, 0x0001_0200, "IATTR/IPO point at HOSTNQN");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        config.hostnqn = "nqn.2026-01.io.zonestore:allowed".into();
        let host = NvmeTcpHost::connect(config).await.unwrap();
        host.close().await;
    });
}

#[test]
fn unknown_subsystems_are_refused_with_invalid_parameters() {
    let rt = runtime();
    rt.block_on(async {
        let rig = rig(Geometry::new(2, 1 << 20), vec![]).await;
        let mut config = host_config(rig.handle.local_addr());
        config.subnqn = "nqn.2026-01.io.zonestore:nope".into();
        match NvmeTcpHost::connect(config).await {
            Err(HostError::Refused { status, detail, .. }) => {
                assert_eq!(status, Status::CONNECT_INVALID_PARAMETERS);
                assert_eq!(detail, 0x0001_0100, "IATTR/IPO point at SUBNQN");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    });
}

#[test]
fn header_and_data_digests_carry_data_intact() {
    let rt = runtime();
    rt.block_on(async {
        let g = Geometry::new(2, 4 << 20);
        let rig = rig(g, vec![]).await;
        let mut config = host_config(rig.handle.local_addr());
        config.digests = Digests {
            header: true,
            data: true,
        };
        let host = NvmeTcpHost::connect(config).await.unwrap();
        for blocks in [1u64, 8, 200] {
            let data = Bytes::from(pattern(&g, 0, blocks, blocks as u8));
            let lba = host.append(0, data.clone()).await.unwrap();
            assert_eq!(host.read(lba, blocks as u32).await.unwrap(), data);
        }
        host.close().await;
    });
}

/// A proxy between a host and the target at `target` that flips a byte of the data of the
/// next `damage` C2HData PDUs (as a bad NIC or middlebox would); returns its address.
async fn damaging_proxy(
    target: SocketAddr,
    damage: Arc<std::sync::atomic::AtomicUsize>,
) -> SocketAddr {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((host_side, _)) = listener.accept().await {
            let target_side = tokio::net::TcpStream::connect(target).await.unwrap();
            let (mut from_host, mut to_host) = host_side.into_split();
            let (mut from_target, mut to_target) = target_side.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut from_host, &mut to_target).await;
            });
            let damage = damage.clone();
            tokio::spawn(async move {
                loop {
                    let mut pdu = vec![0u8; 8];
                    if from_target.read_exact(&mut pdu).await.is_err() {
                        return;
                    }
                    let plen = u32::from_le_bytes([pdu[4], pdu[5], pdu[6], pdu[7]]) as usize;
                    pdu.resize(plen, 0);
                    if from_target.read_exact(&mut pdu[8..]).await.is_err() {
                        return;
                    }
                    const C2H_DATA: u8 = 0x07;
                    if pdu[0] == C2H_DATA
                        && damage
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                            .is_ok()
                    {
                        // The last byte of data, before the data digest.
                        pdu[plen - 5] ^= 0xff;
                    }
                    if to_host.write_all(&pdu).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    address
}

/// A read whose data was damaged on the way (its data digest does not match) is read again:
/// it is not the drive's fault, and a media error would have a good copy taken for bad.
#[test]
fn a_read_damaged_on_the_way_is_read_again() {
    let rt = runtime();
    rt.block_on(async {
        let g = Geometry::new(2, 4 << 20);
        let rig = rig(g, vec![]).await;
        let damage = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let proxy = damaging_proxy(rig.handle.local_addr(), damage.clone()).await;
        let mut config = host_config(proxy);
        config.digests = Digests {
            header: true,
            data: true,
        };
        let host = NvmeTcpHost::connect(config).await.unwrap();
        let data = Bytes::from(pattern(&g, 0, 8, 3));
        let lba = host.append(0, data.clone()).await.unwrap();
        damage.store(1, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(host.read(lba, 8).await.unwrap(), data);
        assert_eq!(
            damage.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "it was damaged"
        );
        // Damaged twice running: an error that says the transport failed, not the media.
        damage.store(2, std::sync::atomic::Ordering::SeqCst);
        let err = host.read(lba, 8).await.unwrap_err();
        assert_eq!(err.kind(), ZoneErrorKind::Unavailable, "{err}");
        assert_eq!(host.read(lba, 8).await.unwrap(), data);
        host.close().await;
    });
}

/// Against a controller that cannot disable SQ flow control (it refuses such a Connect with
/// Connect Invalid Parameters), the host connects again with flow control on, and reads and
/// appends, many at once, complete with their data (completions then come as CapsuleResps
/// after the C2HData).
#[test]
fn a_target_that_keeps_sq_flow_control_is_used_with_it() {
    let rt = runtime();
    rt.block_on(async {
        let g = Geometry::new(4, 4 << 20);
        let plain = rig(g, vec![]).await;
        let strict = rig_with(
            g,
            vec![],
            TargetConfig {
                sq_flow_control_disable: false,
                ..TargetConfig::default()
            },
        )
        .await;
        let mut hosts = Vec::new();
        for r in [&plain, &strict] {
            hosts.push(
                NvmeTcpHost::connect(host_config(r.handle.local_addr()))
                    .await
                    .unwrap(),
            );
        }
        assert_eq!(
            strict.target.stats().connections,
            plain.target.stats().connections + 1,
            "one refused admin Connect, then the same queues"
        );
        let host = &hosts[1];
        let mut lbas = Vec::new();
        for i in 0..64u64 {
            let data = Bytes::from(pattern(&g, 0, 2, i as u8));
            lbas.push((
                host.append(g.zone_start((i % 4) as u32), data.clone())
                    .await
                    .unwrap(),
                data,
            ));
        }
        let reads = lbas.iter().map(|(lba, _)| host.read(*lba, 2));
        for (got, (_, want)) in futures::future::join_all(reads)
            .await
            .into_iter()
            .zip(&lbas)
        {
            assert_eq!(&got.unwrap(), want);
        }
        for h in hosts {
            h.close().await;
        }
    });
}

#[test]
fn discovery_lists_the_subsystems() {
    let rt = runtime();
    rt.block_on(async {
        let rig = rig(Geometry::new(2, 1 << 20), vec![]).await;
        let addr = rig.handle.local_addr();
        let entries = discover(
            addr,
            &fabric::host::default_hostnqn(),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        let nqns: Vec<&str> = entries.iter().map(|e| e.subnqn.as_str()).collect();
        assert_eq!(nqns, vec![DISCOVERY_NQN, NQN]);
        assert_eq!(entries[1].trsvcid, addr.port().to_string());
        assert_eq!(entries[1].traddr, "127.0.0.1");
    });
}

/// A target listening on every IPv6 and IPv4 address (`[::]`) tells an IPv4 host the IPv4
/// address it reached, not its IPv4-mapped IPv6 form (which `nvme connect-all` would dial as
/// IPv6). Skipped where the machine has no IPv6.
#[test]
fn discovery_over_a_dual_stack_listener_names_the_ipv4_address() {
    let rt = runtime();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let drive = EmulatedZns::create(dir.path(), Geometry::new(2, 1 << 20)).unwrap();
        let target = Target::new(TargetConfig::default());
        target.add_subsystem(NQN, Arc::new(drive), vec![]).unwrap();
        let Ok(handle) = target.listen("[::]:0".parse().unwrap()).await else {
            eprintln!("skipped: this machine cannot listen on IPv6");
            return;
        };
        let addr: SocketAddr = ([127, 0, 0, 1], handle.local_addr().port()).into();
        // (An IPv6 listener takes no IPv4 connection where net.ipv6.bindv6only is set.)
        let Ok(entries) = discover(
            addr,
            &fabric::host::default_hostnqn(),
            Duration::from_secs(5),
        )
        .await
        else {
            eprintln!("skipped: this machine's IPv6 listeners take no IPv4 connections");
            return;
        };
        assert_eq!(entries[1].subnqn, NQN);
        assert_eq!(entries[1].traddr, "127.0.0.1");
        assert_eq!(entries[1].adrfam, 1);
    });
}

#[test]
fn appends_beyond_the_limit_are_invalid_fields() {
    let rt = runtime();
    rt.block_on(async {
        let g = Geometry::new(2, 4 << 20);
        let rig = rig(g, vec![]).await;
        let host = NvmeTcpHost::connect(host_config(rig.handle.local_addr()))
            .await
            .unwrap();
        let too_big = Bytes::from(vec![0u8; g.max_append_bytes() as usize + 4096]);
        let err = host.append(0, too_big).await.unwrap_err();
        assert!(matches!(err, ZoneError::InvalidField(_)), "{err}");
        let report = host.report_zones(0, ReportFilter::All, 10).await.unwrap();
        assert_eq!(report.zones.len(), 2);
        host.close().await;
    });
}

/// The zns test backdoor works on the drive behind the target.
struct DriveBackdoor(EmulatedZns);

#[async_trait]
impl Backdoor for DriveBackdoor {
    async fn make_read_only(&self, zslba: u64) -> Result<(), ZoneError> {
        self.0.make_zone_read_only(zslba).await
    }
    async fn make_offline(&self, zslba: u64) -> Result<(), ZoneError> {
        self.0.make_zone_offline(zslba).await
    }
    async fn power_loss(&self) {
        self.0.simulate_power_loss().await
    }
}

#[test]
fn read_only_zones_reject_writes_through_the_fabric() {
    let rt = runtime();
    rt.block_on(async {
        let g = Geometry::new(2, 4 << 20);
        let rig = rig(g, vec![]).await;
        let host = NvmeTcpHost::connect(host_config(rig.handle.local_addr()))
            .await
            .unwrap();
        DriveBackdoor(rig.drive.clone())
            .make_read_only(0)
            .await
            .unwrap();
        let err = host
            .append(0, Bytes::from(vec![0u8; 4096]))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ZoneErrorKind::ZoneIsReadOnly);
        host.close().await;
    });
}

#[test]
fn write_hints_travel_in_the_dataset_management_field() {
    let rt = runtime();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let g = Geometry::new(4, 4 << 20);
        // A drive that remembers the write hint of every append it is given.
        let hints = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut recorder =
            zns::testing::Intercepted::new(Arc::new(EmulatedZns::create(dir.path(), g).unwrap()));
        recorder.before_append = Box::new({
            let hints = hints.clone();
            move |_, hint, _| {
                hints.lock().unwrap().push(hint);
                Box::pin(std::future::ready(()))
            }
        });
        let target = Target::new(TargetConfig::default());
        target
            .add_subsystem(NQN, Arc::new(recorder), vec![])
            .unwrap();
        let handle = target.listen("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let host = NvmeTcpHost::connect(host_config(handle.local_addr()))
            .await
            .unwrap();
        // In-capsule and R2T transfers alike.
        for blocks in [1u64, 64] {
            for hint in [WriteHint::InfrequentReads, WriteHint::None] {
                let data = Bytes::from(pattern(&g, 0, blocks, blocks as u8));
                let lba = host.append_hinted(0, data.clone(), hint).await.unwrap();
                assert_eq!(host.read(lba, blocks as u32).await.unwrap(), data);
            }
        }
        host.append(0, Bytes::from(pattern(&g, 0, 1, 9)))
            .await
            .unwrap();
        use WriteHint::{InfrequentReads, None};
        assert_eq!(
            *hints.lock().unwrap(),
            vec![InfrequentReads, None, InfrequentReads, None, None]
        );
        host.close().await;
    });
}

/// A target with a drive behind it that `tamper` configures, and a host connected to it with
/// `depth` entries per I/O queue.
async fn tampered_rig(
    dir: &std::path::Path,
    g: Geometry,
    depth: u16,
    tamper: impl FnOnce(&mut zns::testing::Intercepted),
) -> (NvmeTcpHost, fabric::target::TargetHandle) {
    let mut drive = zns::testing::Intercepted::new(Arc::new(EmulatedZns::create(dir, g).unwrap()));
    tamper(&mut drive);
    let target = Target::new(TargetConfig::default());
    target.add_subsystem(NQN, Arc::new(drive), vec![]).unwrap();
    let handle = target.listen("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let mut config = host_config(handle.local_addr());
    config.io_queues = 1;
    config.queue_depth = depth;
    let host = NvmeTcpHost::connect(config).await.unwrap();
    (host, handle)
}

/// Where a Zone Append landed is what the index records: a target naming an LBA outside the
/// zone is not believed.
#[test]
fn an_append_placed_outside_its_zone_is_an_error() {
    let rt = runtime();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let g = Geometry::new(4, 1 << 20);
        let (host, _handle) = tampered_rig(dir.path(), g, 32, |d| {
            d.after_append = Box::new(move |_, result| {
                Box::pin(std::future::ready(result.map(|lba| lba + 2 * g.zone_size)))
            });
        })
        .await;
        let err = host
            .append(0, Bytes::from(pattern(&g, 0, 1, 1)))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ZoneErrorKind::MediaError, "{err}");
        host.close().await;
    });
}

/// A drive behind the target that answers a read with less data than asked for makes the read
/// fail, never return short data (GC and rebuild work out record addresses from positions in
/// what they read). The host refuses short data from a target too (see the queue's tests).
#[test]
fn a_short_read_is_an_error_not_short_data() {
    let rt = runtime();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let g = Geometry::new(4, 1 << 20);
        let (host, _handle) = tampered_rig(dir.path(), g, 32, |d| {
            d.after_read = Box::new(|_, _, result| {
                Box::pin(std::future::ready(result.map(|b| b.slice(..b.len() / 2))))
            });
        })
        .await;
        host.append(0, Bytes::from(pattern(&g, 0, 2, 1)))
            .await
            .unwrap();
        assert!(
            host.read(0, 2).await.is_err(),
            "half the data is not a read"
        );
        host.close().await;
    });
}

/// Appends a block to zone 0, then sets `slow` and starts 8 reads of it: with the rig's one
/// queue of two entries, two are sent (and stall), six wait for a queue entry. Returns the
/// block and the reads.
async fn eight_reads_stalled(
    g: &Geometry,
    host: &Arc<NvmeTcpHost>,
    slow: &std::sync::atomic::AtomicBool,
) -> (Bytes, Vec<tokio::task::JoinHandle<zns::ZoneResult<Bytes>>>) {
    let data = Bytes::from(pattern(g, 0, 1, 5));
    host.append(0, data.clone()).await.unwrap();
    slow.store(true, std::sync::atomic::Ordering::SeqCst);
    let reads = (0..8)
        .map(|_| {
            let host = host.clone();
            tokio::spawn(async move { host.read(0, 1).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    (data, reads)
}

/// How many of `reads` failed (as unavailable); those that succeeded read `data`.
async fn failed_reads(
    reads: Vec<tokio::task::JoinHandle<zns::ZoneResult<Bytes>>>,
    data: &Bytes,
) -> usize {
    let mut failed = 0;
    for read in reads {
        match read.await.unwrap() {
            Ok(block) => assert_eq!(&block, data),
            Err(e) => {
                assert_eq!(e.kind(), ZoneErrorKind::Unavailable, "{e}");
                failed += 1;
            }
        }
    }
    failed
}

/// Commands waiting for a queue entry when the session fails were never sent: they wait for
/// the next session and run there (as a command issued while the host is down does), rather
/// than fail with those the target had.
#[test]
fn commands_waiting_for_a_queue_entry_when_the_session_fails_run_in_the_next() {
    let rt = runtime();
    rt.block_on(async {
        let g = Geometry::new(4, 1 << 20);
        let StallingRig {
            _dir,
            slow,
            target,
            handle,
            addr,
            host,
            ..
        } = stalling_rig(g).await;
        let (data, reads) = eight_reads_stalled(&g, &host, &slow).await;
        slow.store(false, std::sync::atomic::Ordering::SeqCst);
        handle.shut_down(Duration::from_millis(100)).await;
        let restart = listen_again_soon(&target, addr);
        let sent_and_lost = failed_reads(reads, &data).await;
        assert!(
            sent_and_lost <= 2,
            "{sent_and_lost} of 8 reads failed; at most the 2 the queue held were sent"
        );
        let _handle = restart.await.unwrap();
        host.close().await;
    });
}

/// A command never sent waits for the next session however many fail under it (within its
/// one reconnect wait): with the target restarted twice while reads wait for queue entries,
/// only those each session had sent fail.
#[test]
fn commands_waiting_through_two_failed_sessions_run_in_the_third() {
    let rt = runtime();
    rt.block_on(async {
        let g = Geometry::new(4, 1 << 20);
        let StallingRig {
            _dir,
            slow,
            target,
            handle,
            addr,
            host,
            ..
        } = stalling_rig(g).await;
        let (data, reads) = eight_reads_stalled(&g, &host, &slow).await;
        handle.shut_down(Duration::from_millis(100)).await;
        // The second session: two of the six reads left are sent to it (and stall), four wait.
        let second = listen_again_soon(&target, addr).await.unwrap();
        // Until two of the reads are running on it (stalled).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !(host.is_connected() && target.stats().in_flight >= 2) {
            assert!(
                std::time::Instant::now() < deadline,
                "no reads reached the second session ({:?})",
                target.stats()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        second.shut_down(Duration::from_millis(100)).await;
        slow.store(false, std::sync::atomic::Ordering::SeqCst);
        let restart = listen_again_soon(&target, addr);
        let sent_and_lost = failed_reads(reads, &data).await;
        assert!(
            sent_and_lost <= 4,
            "{sent_and_lost} of 8 reads failed; at most the 2 each session's queue held were sent"
        );
        let _handle = restart.await.unwrap();
        host.close().await;
    });
}

/// An append bound to a session (`append_in_session`) that waits for a queue entry when that
/// session fails is not sent in the next one: the target may have restarted and lost the
/// zone's unflushed tail, so the zone's write pointer is no longer where the caller counts on.
/// Nothing reaches the drive; an append bound to the new session goes out.
#[test]
fn an_append_bound_to_a_session_is_not_sent_in_the_next() {
    let rt = runtime();
    rt.block_on(async {
        let g = Geometry::new(4, 1 << 20);
        let StallingRig {
            _dir,
            slow,
            inner,
            target,
            handle,
            addr,
            host,
        } = stalling_rig(g).await;
        let data = Bytes::from(pattern(&g, 0, 1, 5));
        host.append(0, data.clone()).await.unwrap();
        host.flush().await.unwrap();
        let first = host.session();
        // Two reads the drive holds take the queue's entries: the append waits for one.
        slow.store(true, std::sync::atomic::Ordering::SeqCst);
        let reads: Vec<_> = (0..2)
            .map(|_| {
                let host = host.clone();
                tokio::spawn(async move { host.read(0, 1).await })
            })
            .collect();
        let in_flight_reach = |n: u64| {
            let host = host.clone();
            async move {
                let deadline = std::time::Instant::now() + Duration::from_secs(10);
                while host
                    .stats()
                    .in_flight
                    .load(std::sync::atomic::Ordering::SeqCst)
                    < n
                {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "{n} commands never ran"
                    );
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        };
        in_flight_reach(2).await;
        // (The reads reach the drive, which holds them.)
        tokio::time::sleep(Duration::from_millis(100)).await;
        let bound = {
            let (host, data) = (host.clone(), data.clone());
            tokio::spawn(async move {
                host.append_in_session(0, data, WriteHint::None, first)
                    .await
            })
        };
        in_flight_reach(3).await;
        slow.store(false, std::sync::atomic::Ordering::SeqCst);
        handle.shut_down(Duration::from_millis(100)).await;
        let restart = listen_again_soon(&target, addr);
        assert!(
            bound.await.unwrap().is_none(),
            "the append went out in another session than the one it was bound to"
        );
        for read in reads {
            let _ = read.await.unwrap();
        }
        let now = host.session();
        assert_ne!(now, first);
        let wp = |report: zns::ZoneReport| report.zones[0].wp;
        let before = wp(inner.report_zones(0, ReportFilter::All, 1).await.unwrap());
        assert_eq!(before, 1, "only the first append reached the drive");
        let lba = host
            .append_in_session(0, data.clone(), WriteHint::None, now)
            .await
            .expect("sent in the session it was bound to")
            .unwrap();
        assert_eq!(lba, 1);
        let _handle = restart.await.unwrap();
        host.close().await;
    });
}

/// A target whose drive holds every read while `slow` is set, and a host of one I/O queue of
/// two entries connected to it.
struct StallingRig {
    _dir: tempfile::TempDir,
    slow: Arc<std::sync::atomic::AtomicBool>,
    inner: EmulatedZns,
    target: Target,
    handle: TargetHandle,
    addr: SocketAddr,
    host: Arc<NvmeTcpHost>,
}

async fn stalling_rig(g: Geometry) -> StallingRig {
    let dir = tempfile::tempdir().unwrap();
    let slow = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let inner = EmulatedZns::create(dir.path(), g).unwrap();
    let mut drive = zns::testing::Intercepted::new(Arc::new(inner.clone()));
    let stalled = slow.clone();
    drive.before_read = Box::new(move |_, _| {
        let stall = stalled.load(std::sync::atomic::Ordering::SeqCst);
        Box::pin(async move {
            if stall {
                std::future::pending::<()>().await;
            }
        })
    });
    let target = Target::new(TargetConfig::default());
    target.add_subsystem(NQN, Arc::new(drive), vec![]).unwrap();
    let handle = target.listen("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = handle.local_addr();
    let mut config = host_config(addr);
    config.io_queues = 1;
    config.queue_depth = 2;
    let host = Arc::new(NvmeTcpHost::connect(config).await.unwrap());
    StallingRig {
        _dir: dir,
        slow,
        inner,
        target,
        handle,
        addr,
        host,
    }
}

/// Callers that stop waiting (a timeout, a client gone) while the target is slow give their
/// queue entries back only when the target answers: more abandoned commands than the queue
/// holds neither panic the host nor hand one command's answer to another.
#[test]
fn commands_abandoned_while_the_target_is_slow_do_not_break_the_queue() {
    let rt = runtime();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let g = Geometry::new(4, 1 << 20);
        let slow = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // A gate, opened once for good: a read that saw `slow` but has not begun to wait when
        // it opens goes through as well.
        let go = Arc::new(tokio::sync::Semaphore::new(0));
        let (host, _handle) = tampered_rig(dir.path(), g, 4, |d| {
            let (slow, go) = (slow.clone(), go.clone());
            d.before_read = Box::new(move |_, _| {
                let stall = slow.load(std::sync::atomic::Ordering::SeqCst);
                let go = go.clone();
                Box::pin(async move {
                    if stall {
                        let _ = go.acquire().await;
                    }
                })
            });
        })
        .await;
        let data = Bytes::from(pattern(&g, 0, 4, 3));
        host.append(0, data.clone()).await.unwrap();
        slow.store(true, std::sync::atomic::Ordering::SeqCst);
        for _ in 0..12 {
            let abandoned =
                tokio::time::timeout(std::time::Duration::from_millis(20), host.read(0, 4));
            assert!(
                abandoned.await.is_err(),
                "the read waits for the slow target"
            );
        }
        slow.store(false, std::sync::atomic::Ordering::SeqCst);
        go.add_permits(1);
        for lba in 0..4 {
            let block = host.read(lba, 1).await.unwrap();
            assert_eq!(
                block,
                data.slice(lba as usize * 4096..(lba as usize + 1) * 4096)
            );
        }
        host.close().await;
    });
}

/// A proxy between a host and the target at `target` that passes everything on until `frozen`
/// is set, then nothing more (in either direction) while it stays set, holding its connections
/// open: a target process stopped, or a network dropping every packet. Returns its address.
async fn freezing_proxy(
    target: SocketAddr,
    frozen: Arc<std::sync::atomic::AtomicBool>,
) -> SocketAddr {
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
    async fn pump(
        mut from: impl AsyncRead + Unpin,
        mut to: impl AsyncWrite + Unpin,
        frozen: Arc<std::sync::atomic::AtomicBool>,
    ) {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            while frozen.load(std::sync::atomic::Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            if to.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((host_side, _)) = listener.accept().await {
            let Ok(target_side) = tokio::net::TcpStream::connect(target).await else {
                continue;
            };
            let (from_host, to_host) = host_side.into_split();
            let (from_target, to_target) = target_side.into_split();
            tokio::spawn(pump(from_host, to_target, frozen.clone()));
            tokio::spawn(pump(from_target, to_host, frozen.clone()));
        }
    });
    address
}

/// A target that stops answering without closing its connections is told from a slow one in
/// moments, not at the next unanswered Keep Alive (a minute away here): the command waiting
/// fails (its caller can go to another drive), and once the target answers again the host
/// reconnects.
#[test]
fn a_target_that_stops_answering_fails_its_commands_in_moments() {
    let rt = runtime();
    rt.block_on(async {
        let g = Geometry::new(2, 4 << 20);
        let rig = rig(g, vec![]).await;
        let frozen = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let proxy = freezing_proxy(rig.handle.local_addr(), frozen.clone()).await;
        let mut config = host_config(proxy);
        config.keep_alive = Duration::from_secs(120);
        config.command_timeout = Duration::from_secs(120);
        let host = NvmeTcpHost::connect(config).await.unwrap();
        let data = Bytes::from(pattern(&g, 0, 8, 3));
        let lba = host.append(0, data.clone()).await.unwrap();
        frozen.store(true, std::sync::atomic::Ordering::SeqCst);
        let read = tokio::time::timeout(Duration::from_secs(20), host.read(lba, 8))
            .await
            .expect("the read ends long before the keep-alive or command timeout");
        let err = read.unwrap_err();
        assert_eq!(err.kind(), ZoneErrorKind::Unavailable, "{err}");
        assert!(err.to_string().contains("stopped answering"), "{err}");
        frozen.store(false, std::sync::atomic::Ordering::SeqCst);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            match host.read(lba, 8).await {
                Ok(back) => {
                    assert_eq!(back, data);
                    break;
                }
                Err(e) => assert!(
                    std::time::Instant::now() < deadline,
                    "the host did not reconnect: {e}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        host.close().await;
    });
}

/// A target that is alive but whose drive is slow (a flush taking seconds, nothing else
/// answered meanwhile) answers the probe on its admin queue: the host waits for the drive.
#[test]
fn a_slow_drive_behind_a_live_target_is_waited_for() {
    let rt = runtime();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let g = Geometry::new(4, 1 << 20);
        let (host, handle) = tampered_rig(dir.path(), g, 4, |d| {
            d.before_flush = Box::new(|| {
                Box::pin(async {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    Ok(())
                })
            });
        })
        .await;
        host.append(0, Bytes::from(pattern(&g, 0, 1, 1)))
            .await
            .unwrap();
        host.flush().await.expect("the slow flush is waited for");
        assert!(host.is_connected(), "the session was kept");
        host.close().await;
        // Without a keep-alive timer the controller refuses Keep Alive: an answer all the same.
        let mut config = host_config(handle.local_addr());
        config.keep_alive = Duration::ZERO;
        let host = NvmeTcpHost::connect(config).await.unwrap();
        host.flush().await.expect("the slow flush is waited for");
        assert!(host.is_connected(), "the session was kept");
        host.close().await;
    });
}

/// A drive whose first zone is offline (its descriptor's capacity says nothing: 0 here) is
/// still of the geometry its usable zones give: the host connects, and learns the capacity
/// from the first usable zone.
#[test]
fn a_drive_whose_first_zone_is_offline_is_still_reachable() {
    let rt = runtime();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let g = Geometry::new(4, 1 << 20);
        let drive = EmulatedZns::create(dir.path(), g).unwrap();
        let mut device = zns::testing::Intercepted::new(Arc::new(drive));
        device.after_report = Box::new(|result| {
            result.map(|mut report| {
                for zone in report.zones.iter_mut().filter(|z| z.zslba == 0) {
                    zone.state = zns::ZoneState::Offline;
                    zone.zcap = 0;
                }
                report
            })
        });
        let target = Target::new(TargetConfig::default());
        target.add_subsystem(NQN, Arc::new(device), vec![]).unwrap();
        let handle = target.listen("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let host = NvmeTcpHost::connect(host_config(handle.local_addr()))
            .await
            .unwrap();
        assert_eq!(host.geometry().zone_capacity, g.zone_capacity);
        host.close().await;
    });
}
