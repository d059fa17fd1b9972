//! The emulated drive against an independent model of the ZNS specification: random operation
//! sequences (including fault injection and power loss) must give identical answers, states,
//! write pointers, data and errors; and many appends in flight to one zone never overlap.

use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use zns::testing::{Model, Op, Outcome, apply, arb_geometry, arb_op, pattern};
use zns::{EmulatedZns, Geometry, ReportFilter, ZoneErrorKind, ZoneState, ZonedDevice};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn emulated_drive_matches_the_model(g in arb_geometry(), direct in any::<bool>(), ops in prop::collection::vec(arb_op(true), 1..160)) {
        let rt = runtime();
        let dir = tempfile::tempdir().unwrap();
        let drive = EmulatedZns::create(dir.path(), g).unwrap();
        drive.set_direct_writes(direct);
        let mut model = Model::new(g);
        for (i, op) in ops.iter().enumerate() {
            let got = rt.block_on(apply(&drive, &drive, op));
            let want = model.apply(op);
            prop_assert_eq!(got, want, "step {} {:?}", i, op);
        }
        // Reopening the files is a power loss: the durable state must be what the model kept.
        drop(drive);
        let drive = EmulatedZns::open(dir.path()).unwrap();
        drive.set_direct_writes(direct);
        model.apply(&Op::PowerLoss);
        for zone in 0..g.zone_count {
            let report = Op::Report { zone, filter: ReportFilter::All, max: 1 };
            let read = Op::Read { zone, offset: 0, blocks: g.zone_size as u8 };
            for op in [report, read] {
                let got = rt.block_on(apply(&drive, &drive, &op));
                prop_assert_eq!(got, model.apply(&op), "after reopen: {:?}", op);
            }
        }
    }
}

#[test]
fn concurrent_appends_to_one_zone_never_overlap() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let g = Geometry::new(4, 4 << 20);
    let drive = Arc::new(EmulatedZns::create(dir.path(), g).unwrap());
    let placed = rt.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..200u64 {
            let drive = drive.clone();
            tasks.push(tokio::spawn(async move {
                let blocks = 1 + i % 4;
                let data = pattern(&g, 0, blocks, i as u8);
                let lba = drive.append(g.zone_size, Bytes::from(data)).await.unwrap();
                (lba, blocks, i as u8)
            }));
        }
        let mut placed = Vec::new();
        for t in tasks {
            placed.push(t.await.unwrap());
        }
        placed
    });
    let mut ranges: Vec<(u64, u64)> = placed.iter().map(|&(lba, n, _)| (lba, lba + n)).collect();
    ranges.sort();
    assert_eq!(
        ranges[0].0, g.zone_size,
        "first append lands at the zone start"
    );
    for pair in ranges.windows(2) {
        assert_eq!(pair[0].1, pair[1].0, "appends are contiguous and disjoint");
    }
    rt.block_on(async {
        for (lba, blocks, seed) in placed {
            let data = drive.read(lba, blocks as u32).await.unwrap();
            assert_eq!(
                &data[..],
                &pattern(&g, 0, blocks, seed)[..],
                "data of the append at {lba}"
            );
        }
    });
}

#[test]
fn unflushed_appends_vanish_on_power_loss_and_flushed_ones_stay() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let g = Geometry::new(4, 1 << 20);
    let drive = EmulatedZns::create(dir.path(), g).unwrap();
    rt.block_on(async {
        let kept = Bytes::from(pattern(&g, 0, 2, 1));
        drive.append(0, kept.clone()).await.unwrap();
        drive.flush().await.unwrap();
        drive
            .append(0, Bytes::from(pattern(&g, 0, 3, 2)))
            .await
            .unwrap();
        drive.simulate_power_loss().await;
        let report = drive.report_zones(0, ReportFilter::All, 1).await.unwrap();
        assert_eq!(report.zones[0].state, ZoneState::Closed);
        assert_eq!(report.zones[0].wp, 2);
        assert_eq!(drive.read(0, 2).await.unwrap(), kept);
        assert!(drive.read(2, 3).await.unwrap().iter().all(|&b| b == 0));
    });
}

#[test]
fn injected_io_failures_then_recovery() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let g = Geometry::new(2, 1 << 20);
    let drive = EmulatedZns::create(dir.path(), g).unwrap();
    rt.block_on(async {
        drive.fail_next_ios(2);
        let data = Bytes::from(pattern(&g, 0, 1, 0));
        let err = drive.append(0, data.clone()).await.unwrap_err();
        assert_eq!(err.kind(), ZoneErrorKind::MediaError);
        assert!(drive.read(0, 1).await.is_err());
        assert_eq!(drive.append(0, data).await.unwrap(), 0);
    });
}

#[test]
fn a_second_process_cannot_open_a_drive_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let _drive = EmulatedZns::create(dir.path(), Geometry::new(2, 1 << 20)).unwrap();
    let err = EmulatedZns::open(dir.path()).unwrap_err();
    assert!(err.to_string().contains("in use"), "{err}");
}

#[test]
fn reopening_with_another_geometry_names_both() {
    let dir = tempfile::tempdir().unwrap();
    drop(EmulatedZns::create(dir.path(), Geometry::new(2, 1 << 20)).unwrap());
    let err = EmulatedZns::open_or_create(dir.path(), Geometry::new(4, 1 << 20)).unwrap_err();
    assert!(
        err.to_string().contains("2 zones") && err.to_string().contains("4 zones"),
        "{err}"
    );
}

#[test]
fn outcome_reports_mismatch_readably() {
    // The harness itself must be able to fail: a model that saw different data disagrees.
    let g = Geometry::new(2, 1 << 20);
    let mut model = Model::new(g);
    let write = Op::Append {
        zone: 0,
        misaligned: false,
        blocks: 1,
        seed: 3,
    };
    assert_eq!(model.apply(&write), Outcome::Placed(0));
    let read = Op::Read {
        zone: 0,
        offset: 0,
        blocks: 1,
    };
    assert_ne!(model.apply(&read), Outcome::Data(pattern(&g, 0, 1, 4)));
}

#[test]
fn a_drive_keeps_its_identity_for_life_and_no_two_share_one() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let g = Geometry::new(2, 1 << 20);
    let first = EmulatedZns::create(a.path(), g).unwrap();
    let identity = first.identity().expect("an emulated drive has an identity");
    drop(first);
    assert_eq!(
        EmulatedZns::open(a.path()).unwrap().identity(),
        Some(identity)
    );
    let other = EmulatedZns::create(b.path(), g).unwrap();
    assert_ne!(other.identity(), Some(identity));
}

/// Bytes 64..84 of the metadata header: the identity and its CRC.
fn rewrite_identity_bytes(dir: &std::path::Path, bytes: impl FnOnce(&mut [u8])) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.join("zns.meta"))
        .unwrap();
    let mut raw = [0u8; 20];
    file.read_exact_at(&mut raw, 64).unwrap();
    bytes(&mut raw);
    file.write_all_at(&raw, 64).unwrap();
}

#[test]
fn a_drive_made_before_identities_gets_one_when_opened_and_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    drop(EmulatedZns::create(dir.path(), Geometry::new(2, 1 << 20)).unwrap());
    rewrite_identity_bytes(dir.path(), |raw| raw.fill(0));
    let given = EmulatedZns::open(dir.path()).unwrap().identity().unwrap();
    assert_ne!(given, [0; 16]);
    assert_eq!(
        EmulatedZns::open(dir.path()).unwrap().identity(),
        Some(given)
    );
}

#[test]
fn a_damaged_identity_is_refused_rather_than_replaced() {
    let dir = tempfile::tempdir().unwrap();
    drop(EmulatedZns::create(dir.path(), Geometry::new(2, 1 << 20)).unwrap());
    rewrite_identity_bytes(dir.path(), |raw| raw[3] ^= 0x40);
    let err = EmulatedZns::open(dir.path()).unwrap_err();
    assert!(err.to_string().contains("identity checksum"), "{err}");
}
