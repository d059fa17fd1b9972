//! What the target does with a misbehaving peer, seen from a raw socket: malformed PDUs get a
//! C2HTermReq with the right FES/FEI and only that connection closes; a controller whose host
//! stops sending keep-alives is torn down; garbage never stops the target serving others.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use fabric::host::{HostConfig, NvmeTcpHost};
use fabric::spec::connect::{CNTLID_DYNAMIC, Connect};
use fabric::spec::property;
use fabric::target::{Target, TargetConfig};
use fabric::wire::command::Sqe;
use fabric::wire::digest::Digests;
use fabric::wire::pdu::{
    CONTROLLER_TO_HOST, CapsuleCmd, Decoder, Fes, Framing, IcReq, Pdu, encode,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use zns::{EmulatedZns, Geometry, ZonedDevice};

const NQN: &str = "nqn.2026-01.io.zonestore:proto";

async fn start(config: TargetConfig) -> (tempfile::TempDir, Target, fabric::target::TargetHandle) {
    let dir = tempfile::tempdir().unwrap();
    let drive = EmulatedZns::create(dir.path(), Geometry::new(2, 1 << 20)).unwrap();
    let target = Target::new(config);
    target.add_subsystem(NQN, Arc::new(drive), vec![]).unwrap();
    let handle = target.listen("127.0.0.1:0".parse().unwrap()).await.unwrap();
    (dir, target, handle)
}

/// Reads PDUs until the target closes the connection; returns them.
async fn read_all(stream: &mut TcpStream) -> Vec<Pdu> {
    let mut buf = BytesMut::new();
    let mut tmp = [0u8; 65536];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut tmp)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => buf.extend_from_slice(&tmp[..n]),
            Err(_) => panic!("the target neither answered nor closed the connection"),
        }
    }
    let decoder = Decoder::new(CONTROLLER_TO_HOST, 1 << 20);
    let mut pdus = Vec::new();
    while let Ok(Some(pdu)) = decoder.decode(&mut buf) {
        pdus.push(pdu);
    }
    pdus
}

async fn initialized(addr: std::net::SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let ic = IcReq {
        pfv: 0,
        hpda: 0,
        dgst: Digests::NONE,
        maxr2t: 0,
    };
    stream
        .write_all(&encode(&Pdu::IcReq(ic), Framing::INITIAL).to_bytes())
        .await
        .unwrap();
    let mut resp = [0u8; 128];
    stream.read_exact(&mut resp).await.unwrap();
    assert_eq!(resp[0], 0x01, "ICResp");
    stream
}

fn term_of(pdus: &[Pdu]) -> (u16, u32) {
    match pdus.last() {
        Some(Pdu::C2HTermReq(t)) => (t.fes, t.fei),
        other => panic!("expected a C2HTermReq last, got {other:?}"),
    }
}

#[tokio::test]
async fn a_bad_hlen_gets_a_term_req_pointing_at_hlen() {
    let (_d, target, handle) = start(TargetConfig::default()).await;
    let mut stream = initialized(handle.local_addr()).await;
    let mut bad = vec![0x04u8, 0, 60, 0, 72, 0, 0, 0];
    bad.resize(72, 0);
    stream.write_all(&bad).await.unwrap();
    let (fes, fei) = term_of(&read_all(&mut stream).await);
    assert_eq!((fes, fei), (Fes::InvalidHeaderField as u16, 2));
    assert_eq!(target.stats().protocol_errors, 1);
}

#[tokio::test]
async fn an_unknown_pdu_type_gets_a_term_req_pointing_at_the_type() {
    let (_d, _t, handle) = start(TargetConfig::default()).await;
    let mut stream = initialized(handle.local_addr()).await;
    stream
        .write_all(&[
            0x0e, 0, 24, 0, 24, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ])
        .await
        .unwrap();
    assert_eq!(
        term_of(&read_all(&mut stream).await),
        (Fes::InvalidHeaderField as u16, 0)
    );
}

#[tokio::test]
async fn a_first_pdu_other_than_icreq_is_a_sequence_error() {
    let (_d, _t, handle) = start(TargetConfig::default()).await;
    let mut stream = TcpStream::connect(handle.local_addr()).await.unwrap();
    let capsule = Pdu::CapsuleCmd(CapsuleCmd {
        sqe: Sqe::new(0x06, 1),
        data: Bytes::new(),
        data_digest_error: false,
    });
    stream
        .write_all(&encode(&capsule, Framing::INITIAL).to_bytes())
        .await
        .unwrap();
    assert_eq!(
        term_of(&read_all(&mut stream).await).0,
        Fes::PduSequenceError as u16
    );
}

#[tokio::test]
async fn a_header_digest_mismatch_gets_fes_3() {
    let (_d, _t, handle) = start(TargetConfig::default()).await;
    let mut stream = TcpStream::connect(handle.local_addr()).await.unwrap();
    let dgst = Digests {
        header: true,
        data: false,
    };
    let ic = IcReq {
        pfv: 0,
        hpda: 0,
        dgst,
        maxr2t: 0,
    };
    stream
        .write_all(&encode(&Pdu::IcReq(ic), Framing::INITIAL).to_bytes())
        .await
        .unwrap();
    let mut resp = [0u8; 128];
    stream.read_exact(&mut resp).await.unwrap();
    assert_eq!(resp[11], 0x01, "ICResp echoes the header digest");
    let capsule = Pdu::CapsuleCmd(CapsuleCmd {
        sqe: Sqe::new(0x7f, 1),
        data: Bytes::new(),
        data_digest_error: false,
    });
    let mut bytes = encode(
        &capsule,
        Framing {
            digests: dgst,
            pda: 0,
        },
    )
    .to_bytes()
    .to_vec();
    bytes[72] ^= 0xff;
    stream.write_all(&bytes).await.unwrap();
    assert_eq!(
        term_of(&read_all(&mut stream).await).0,
        Fes::HeaderDigestError as u16
    );
}

#[tokio::test]
async fn an_unsupported_pdu_version_is_an_unsupported_parameter() {
    let (_d, _t, handle) = start(TargetConfig::default()).await;
    let mut stream = TcpStream::connect(handle.local_addr()).await.unwrap();
    let ic = IcReq {
        pfv: 7,
        hpda: 0,
        dgst: Digests::NONE,
        maxr2t: 0,
    };
    stream
        .write_all(&encode(&Pdu::IcReq(ic), Framing::INITIAL).to_bytes())
        .await
        .unwrap();
    assert_eq!(
        term_of(&read_all(&mut stream).await),
        (Fes::UnsupportedParameter as u16, 8)
    );
}

#[tokio::test]
async fn garbage_on_one_connection_leaves_others_working() {
    let (_d, _t, handle) = start(TargetConfig::default()).await;
    let host = NvmeTcpHost::connect(HostConfig::new(handle.local_addr(), NQN))
        .await
        .unwrap();
    for seed in 0..32u8 {
        let mut stream = TcpStream::connect(handle.local_addr()).await.unwrap();
        let junk: Vec<u8> = (0..200u32)
            .map(|i| (i as u8).wrapping_mul(seed).wrapping_add(seed))
            .collect();
        let _ = stream.write_all(&junk).await;
        drop(stream);
    }
    host.flush().await.unwrap();
    assert_eq!(
        host.report_zones(0, zns::ReportFilter::All, 4)
            .await
            .unwrap()
            .zones
            .len(),
        2
    );
    host.close().await;
}

#[tokio::test]
async fn a_silent_host_loses_its_controller_after_the_keep_alive_timeout() {
    let config = TargetConfig {
        keep_alive_grace: Duration::from_millis(100),
        ..TargetConfig::default()
    };
    let (_d, target, handle) = start(config).await;
    let mut stream = initialized(handle.local_addr()).await;
    let connect = Connect {
        recfmt: 0,
        qid: 0,
        sqsize: 31,
        cattr: 0,
        kato_ms: 400,
        hostid: [1; 16],
        cntlid: CNTLID_DYNAMIC,
        subnqn: NQN.into(),
        hostnqn: "nqn.2026-01.io.zonestore:silent".into(),
    };
    let (sqe, data) = connect.encode(1);
    let capsule = Pdu::CapsuleCmd(CapsuleCmd {
        sqe,
        data: Bytes::from(data),
        data_digest_error: false,
    });
    stream
        .write_all(&encode(&capsule, Framing::INITIAL).to_bytes())
        .await
        .unwrap();
    // Enable the controller so that its keep-alive timer runs, then say nothing.
    let mut set = Sqe::new(0x7f, 2);
    set.put(4, &[0x00])
        .put(44, &property::CC.to_le_bytes())
        .put(48, &u64::from(0x0046_0061u32).to_le_bytes());
    let capsule = Pdu::CapsuleCmd(CapsuleCmd {
        sqe: set,
        data: Bytes::new(),
        data_digest_error: false,
    });
    stream
        .write_all(&encode(&capsule, Framing::INITIAL).to_bytes())
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let pdus = read_all(&mut stream).await;
    assert!(
        pdus.len() >= 2,
        "Connect and Property Set completed: {pdus:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "torn down promptly"
    );
    assert_eq!(target.stats().keep_alive_timeouts, 1);
}
