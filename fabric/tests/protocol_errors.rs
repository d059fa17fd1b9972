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
use fabric::wire::status::Status;
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

/// A target exporting `device` as [`NQN`], listening on a loopback port.
async fn start_device(device: Arc<dyn ZonedDevice>) -> (Target, fabric::target::TargetHandle) {
    let target = Target::new(TargetConfig::default());
    target.add_subsystem(NQN, device, vec![]).unwrap();
    let handle = target.listen("127.0.0.1:0".parse().unwrap()).await.unwrap();
    (target, handle)
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
    initialize(TcpStream::connect(addr).await.unwrap()).await
}

/// `stream` after an ICReq/ICResp exchange on it.
async fn initialize(mut stream: TcpStream) -> TcpStream {
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
    let capsule = command(Sqe::new(0x06, 1));
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
    let capsule = command(Sqe::new(0x7f, 1));
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
    // Enabled, so that its keep-alive timer runs, then silent.
    let pdus = silent_host_torn_down("nqn.2026-01.io.zonestore:silent", true).await;
    assert!(
        pdus.len() >= 2,
        "Connect and Property Set completed: {pdus:?}"
    );
}

/// A host that connects its admin queue and dies before it enables the controller loses the
/// controller too (as the Linux target does): otherwise every such host would hold a controller
/// ID for ever.
#[tokio::test]
async fn a_host_silent_before_enabling_its_controller_loses_it_after_the_keep_alive_timeout() {
    let pdus = silent_host_torn_down("nqn.2026-01.io.zonestore:dies-early", false).await;
    assert!(
        matches!(pdus.first(), Some(Pdu::CapsuleResp(r)) if r.cqe.status().is_success()),
        "the Connect completed: {pdus:?}"
    );
}

/// Connects `host`'s admin queue with a 400 ms keep-alive (and enables the controller, if
/// `enable`), then says nothing: checks that the controller is torn down promptly for it, and
/// returns the PDUs the target sent.
async fn silent_host_torn_down(host: &str, enable: bool) -> Vec<Pdu> {
    let config = TargetConfig {
        keep_alive_grace: Duration::from_millis(100),
        ..TargetConfig::default()
    };
    let (_d, target, handle) = start(config).await;
    let mut stream = initialized(handle.local_addr()).await;
    send(
        &mut stream,
        connect_capsule(0, CNTLID_DYNAMIC, 31, 400, host),
    )
    .await;
    if enable {
        send(&mut stream, enable_capsule()).await;
    }
    let started = std::time::Instant::now();
    let pdus = read_all(&mut stream).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "torn down promptly"
    );
    assert_eq!(target.stats().keep_alive_timeouts, 1);
    pdus
}

/// Connects an admin queue of `sqsize` + 1 entries on an initialized connection and reads the
/// Connect's completion.
async fn admin_connected(stream: &mut TcpStream, sqsize: u16) {
    send(
        stream,
        connect_capsule(
            0,
            CNTLID_DYNAMIC,
            sqsize,
            0,
            "nqn.2026-01.io.zonestore:rude",
        ),
    )
    .await;
    match next_pdu(stream, &mut BytesMut::new()).await {
        Pdu::CapsuleResp(r) => assert!(r.cqe.status().is_success(), "{r:?}"),
        other => panic!("expected the Connect's completion, got {other:?}"),
    }
}

/// A Fabrics Connect of queue `qid` (of controller `cntlid`, or a new one for the admin
/// queue) with `sqsize` + 1 entries and keep-alive `kato_ms`, from `host`.
fn connect_capsule(qid: u16, cntlid: u16, sqsize: u16, kato_ms: u32, host: &str) -> Pdu {
    connect_capsule_to(NQN, qid, cntlid, sqsize, kato_ms, host)
}

/// [`connect_capsule`] to subsystem `subnqn`.
fn connect_capsule_to(
    subnqn: &str,
    qid: u16,
    cntlid: u16,
    sqsize: u16,
    kato_ms: u32,
    host: &str,
) -> Pdu {
    let (sqe, data) = Connect {
        recfmt: 0,
        qid,
        sqsize,
        cattr: 0,
        kato_ms,
        hostid: [2; 16],
        cntlid,
        subnqn: subnqn.into(),
        hostnqn: host.into(),
    }
    .encode(1);
    Pdu::CapsuleCmd(CapsuleCmd {
        sqe,
        data: Bytes::from(data),
        data_digest_error: false,
    })
}

/// A command capsule carrying no data.
fn command(sqe: Sqe) -> Pdu {
    Pdu::CapsuleCmd(CapsuleCmd {
        sqe,
        data: Bytes::new(),
        data_digest_error: false,
    })
}

/// A Property Set of CC that enables the controller.
fn enable_capsule() -> Pdu {
    let mut set = Sqe::new(0x7f, 2);
    set.put(4, &[0x00])
        .put(44, &property::CC.to_le_bytes())
        .put(48, &u64::from(0x0046_0061u32).to_le_bytes());
    command(set)
}

async fn send(stream: &mut TcpStream, pdu: Pdu) {
    stream
        .write_all(&encode(&pdu, Framing::INITIAL).to_bytes())
        .await
        .unwrap();
}

/// The next PDU from the target (within 5 s).
async fn next_pdu(stream: &mut TcpStream, buf: &mut BytesMut) -> Pdu {
    let decoder = Decoder::new(CONTROLLER_TO_HOST, 1 << 20);
    loop {
        if let Some(pdu) = decoder.decode(buf).unwrap() {
            return pdu;
        }
        let mut tmp = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut tmp))
            .await
            .expect("the target answered")
            .unwrap();
        assert!(n > 0, "the target closed the connection");
        buf.extend_from_slice(&tmp[..n]);
    }
}

/// A Write of one 4 KiB block at LBA 0 whose data comes through R2T.
fn write_needing_r2t(cid: u16) -> Pdu {
    let mut sqe = Sqe::new(0x01, cid);
    sqe.set_nsid(1).set_slba(0).set_sgl(4096, false);
    command(sqe)
}

/// A host with more commands outstanding than its queue holds, each a write waiting for its
/// data, is cut off with a C2HTermReq: the target does not stop reading while it waits for a
/// free slot (the data that would free one could then never arrive).
#[tokio::test]
async fn a_host_overrunning_its_queue_is_cut_off_not_left_hanging() {
    let (_d, target, handle) = start(TargetConfig::default()).await;
    let (_admin, _) = enabled_admin(handle.local_addr(), 31).await;
    let (mut stream, _) = io_connected(handle.local_addr(), 3).await;
    for cid in 10..40 {
        send(&mut stream, write_needing_r2t(cid)).await;
    }
    let pdus = read_all(&mut stream).await;
    assert_eq!(term_of(&pdus).0, Fes::PduSequenceError as u16);
    assert!(pdus.iter().any(|p| matches!(p, Pdu::R2t(_))), "{pdus:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(target.stats().connections_open, 1, "the admin queue stays");
}

/// The H2CData that completes what an R2T asked for must carry LAST_PDU.
#[tokio::test]
async fn the_h2c_data_completing_a_transfer_must_be_marked_last() {
    let (_d, _t, handle) = start(TargetConfig::default()).await;
    let (_admin, _) = enabled_admin(handle.local_addr(), 31).await;
    let (mut stream, _) = io_connected(handle.local_addr(), 31).await;
    send(&mut stream, write_needing_r2t(7)).await;
    let r2t = match next_pdu(&mut stream, &mut BytesMut::new()).await {
        Pdu::R2t(r2t) => r2t,
        other => panic!("expected an R2T, got {other:?}"),
    };
    send(
        &mut stream,
        Pdu::H2CData(fabric::wire::pdu::DataPdu {
            cccid: 7,
            ttag: r2t.ttag,
            datao: 0,
            last: false,
            success: false,
            data: Bytes::from(vec![0u8; r2t.r2tl as usize]),
            data_digest_error: false,
        }),
    )
    .await;
    assert_eq!(
        term_of(&read_all(&mut stream).await).0,
        Fes::PduSequenceError as u16
    );
}

/// Only writes of blocks are asked for their data: an admin command (even one that announces
/// data, as Set Features may), or an I/O command that uses none, gets no R2T (the target
/// would receive and hold data for nothing) and is answered at once.
#[tokio::test]
async fn only_block_writes_are_asked_for_their_data() {
    let (_d, _t, handle) = start(TargetConfig::default()).await;
    let (mut admin, mut admin_buf) = enabled_admin(handle.local_addr(), 31).await;
    let mut set_features = Sqe::new(0x09, 3);
    set_features.set_cdw(10, 0x0F).set_sgl(4096, false);
    send(&mut admin, command(set_features)).await;
    match next_pdu(&mut admin, &mut admin_buf).await {
        Pdu::CapsuleResp(r) => assert_eq!(r.cqe.cid(), 3),
        other => panic!("expected the Set Features completion, got {other:?}"),
    }
    let (mut io, mut buf) = io_connected(handle.local_addr(), 31).await;
    // Dataset Management (host to controller, not served) and Zone Management Send, which
    // takes no data: one that describes some is refused without running (as the Linux target
    // refuses it), not run with the data ignored; one that describes none runs.
    for (cid, opcode, sgl, want) in [
        (4u16, 0x09u8, 4096, Status::INVALID_OPCODE),
        (5, 0x79, 4096, Status::SGL_LENGTH_INVALID),
        (7, 0x79, 0, Status::SUCCESS),
    ] {
        let mut sqe = Sqe::new(opcode, cid);
        // Zone Management Send: Open of zone 0.
        sqe.set_nsid(1)
            .set_slba(0)
            .set_cdw(13, 0x03)
            .set_sgl(sgl, false);
        send(&mut io, command(sqe)).await;
        match next_pdu(&mut io, &mut buf).await {
            Pdu::CapsuleResp(r) => {
                let status = r.cqe.status();
                assert_eq!(
                    (r.cqe.cid(), status.sct, status.sc),
                    (cid, want.sct, want.sc)
                );
            }
            other => panic!("expected a completion for opcode {opcode:#x}, got {other:?}"),
        }
    }
    // A Write is asked for its data.
    send(&mut io, write_needing_r2t(6)).await;
    assert!(matches!(next_pdu(&mut io, &mut buf).await, Pdu::R2t(r) if r.cccid == 6));
}

/// A write that must fail whatever its data (a namespace that is not there, or a transfer
/// that is not the blocks it names) fails at once: the target does not ask for data it would
/// only throw away.
#[tokio::test]
async fn a_write_that_cannot_succeed_is_refused_before_its_data_is_asked_for() {
    let (_d, _t, handle) = start(TargetConfig::default()).await;
    let (_admin, _) = enabled_admin(handle.local_addr(), 31).await;
    let (mut io, mut buf) = io_connected(handle.local_addr(), 31).await;
    let mut wrong_namespace = Sqe::new(fabric::spec::opcode::io::WRITE, 4);
    wrong_namespace.set_nsid(2).set_slba(0).set_sgl(4096, false);
    let mut wrong_length = Sqe::new(fabric::spec::opcode::io::ZONE_APPEND, 5);
    wrong_length
        .set_nsid(1)
        .set_slba(0)
        .set_cdw(12, 1)
        .set_sgl(4096, false);
    for (sqe, want) in [
        (wrong_namespace, Status::INVALID_NAMESPACE),
        (wrong_length, Status::SGL_LENGTH_INVALID),
    ] {
        // (An R2T instead of the completion fails the test.)
        assert_eq!(status_of(&mut io, &mut buf, sqe).await.0, want);
    }
    // A good write on the same queue is still asked for its data.
    send(&mut io, write_needing_r2t(6)).await;
    assert!(matches!(next_pdu(&mut io, &mut buf).await, Pdu::R2t(r) if r.cccid == 6));
}

/// Fused commands are not supported, and PSDT must say SGL: Invalid Field, as Linux answers.
#[tokio::test]
async fn fused_commands_get_invalid_field() {
    let (_d, _t, handle) = start(TargetConfig::default()).await;
    let mut stream = initialized(handle.local_addr()).await;
    admin_connected(&mut stream, 31).await;
    let mut buf = BytesMut::new();
    for (cid, flags) in [(5u16, 0x41u8), (6, 0x00)] {
        let mut identify = Sqe::new(0x06, cid);
        identify.put(1, &[flags]).put(40, &[1]);
        send(&mut stream, command(identify)).await;
        match next_pdu(&mut stream, &mut buf).await {
            Pdu::CapsuleResp(r) => {
                assert_eq!(r.cqe.cid(), cid);
                let status = r.cqe.status();
                let expected = fabric::wire::status::Status::INVALID_FIELD;
                assert_eq!(
                    (status.sct, status.sc),
                    (expected.sct, expected.sc),
                    "FLAGS {flags:#x}"
                );
            }
            other => panic!("expected a completion, got {other:?}"),
        }
    }
}

/// Before a Connect, a PDU header announcing more than a Connect needs is refused at once:
/// the target does not wait for (and buffer) a megabyte from a peer that has not connected.
#[tokio::test]
async fn a_large_pdu_before_connect_is_refused_at_its_header() {
    let (_d, _t, handle) = start(TargetConfig::default()).await;
    let mut stream = initialized(handle.local_addr()).await;
    let plen = 72u32 + (1 << 20);
    let mut header = vec![0x04u8, 0, 72, 72];
    header.extend_from_slice(&plen.to_le_bytes());
    header.resize(72, 0);
    stream.write_all(&header).await.unwrap();
    assert_eq!(
        term_of(&read_all(&mut stream).await),
        (Fes::DataLimitExceeded as u16, 4)
    );
}

/// After Connect, an admin queue still takes no PDU larger than its in-capsule limit (it never
/// asks for data by R2T): a 2 MiB header there is refused at once, not read into a buffer.
#[tokio::test]
async fn a_large_pdu_on_an_admin_queue_is_refused_at_its_header() {
    let (_d, _t, handle) = start(TargetConfig::default()).await;
    let (mut admin, _buf) = enabled_admin(handle.local_addr(), 31).await;
    let plen = 72u32 + (2 << 20);
    let mut header = vec![0x04u8, 0, 72, 72];
    header.extend_from_slice(&plen.to_le_bytes());
    header.resize(72, 0);
    admin.write_all(&header).await.unwrap();
    assert_eq!(
        term_of(&read_all(&mut admin).await),
        (Fes::DataLimitExceeded as u16, 4)
    );
}

/// Before a Connect, a command whose data would come by R2T is refused (nothing may make the
/// target ask for and hold data from a peer that has not connected), and a peer that never
/// connects is closed.
#[tokio::test]
async fn before_connect_no_data_is_asked_for_and_silence_ends_the_connection() {
    let (_d, _t, handle) = start(TargetConfig::default()).await;
    let mut stream = initialized(handle.local_addr()).await;
    send(&mut stream, write_needing_r2t(9)).await;
    match next_pdu(&mut stream, &mut BytesMut::new()).await {
        Pdu::CapsuleResp(r) => {
            let status = r.cqe.status();
            let expected = fabric::wire::status::Status::COMMAND_SEQUENCE_ERROR;
            assert_eq!(
                (r.cqe.cid(), status.sct, status.sc),
                (9, expected.sct, expected.sc)
            );
        }
        other => panic!("expected a completion, not {other:?}"),
    }
    let started = std::time::Instant::now();
    let mut tmp = [0u8; 256];
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match stream.read(&mut tmp).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "a peer that never connects is closed");
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "but not at once"
    );
}

/// Identify returns one 4 KiB data structure and takes no other transfer length (as the Linux
/// target): a 64-byte command cannot make the target pad megabytes for its host.
#[tokio::test]
async fn identify_takes_exactly_one_data_structure() {
    let (_d, _t, handle) = start(TargetConfig::default()).await;
    let mut stream = initialized(handle.local_addr()).await;
    admin_connected(&mut stream, 31).await;
    let mut buf = BytesMut::new();
    send(&mut stream, enable_capsule()).await;
    assert!(
        matches!(next_pdu(&mut stream, &mut buf).await, Pdu::CapsuleResp(r) if r.cqe.status().is_success())
    );
    for (cid, len) in [(7u16, 2u32 << 20), (8, 4095), (9, 4096)] {
        let mut identify = Sqe::new(0x06, cid);
        identify.put(40, &[1]).set_sgl(len, false);
        send(&mut stream, command(identify)).await;
        let mut data = 0;
        let status = loop {
            match next_pdu(&mut stream, &mut buf).await {
                Pdu::C2HData(d) => {
                    data += d.data.len();
                    if d.success {
                        break fabric::wire::status::Status::SUCCESS;
                    }
                }
                Pdu::CapsuleResp(r) => break r.cqe.status(),
                other => panic!("expected data or a completion, got {other:?}"),
            }
        };
        if len == 4096 {
            assert!(status.is_success(), "{status:?}");
            assert_eq!(data, 4096);
        } else {
            let expected = fabric::wire::status::Status::SGL_LENGTH_INVALID;
            assert_eq!(
                (status.sct, status.sc),
                (expected.sct, expected.sc),
                "{len}"
            );
            assert_eq!(data, 0, "{len}");
        }
    }
}

/// A host that sends reads and never reads its socket gets no more read data held for it than
/// the connection's read budget (plus what the sockets buffer): further reads wait, rather than
/// the target holding every read's data in memory.
#[tokio::test]
async fn a_host_that_does_not_read_its_socket_holds_only_the_read_budget() {
    let (_dir, target, _handle, _admin, mut io, mut io_buf) = sixty_four_reads_unread().await;
    let queued = target.stats().bytes_read;
    assert!(queued >= 2 << 20, "reads ran: {queued}");
    only_the_budget_then_all_64(&target, &mut io, &mut io_buf).await;
}

/// Checks that of 64 commands reading 1 MiB each, whose host has read nothing yet, no more
/// than the read budget and what the sockets buffer was taken on; then, the host reading,
/// that every one completes and all 64 MiB go out.
async fn only_the_budget_then_all_64(target: &Target, stream: &mut TcpStream, buf: &mut BytesMut) {
    let queued = target.stats().bytes_read;
    assert!(
        queued <= 24 << 20,
        "no more than the budget and the sockets' buffers: {queued} bytes"
    );
    let mut completed = 0;
    while completed < 64 {
        match next_pdu(stream, buf).await {
            Pdu::CapsuleResp(r) => {
                assert!(r.cqe.status().is_success(), "{r:?}");
                completed += 1;
            }
            Pdu::C2HData(d) if d.success => completed += 1,
            Pdu::C2HData(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(target.stats().bytes_read, 64 << 20);
}

/// When a connection ends, its commands still waiting (here reads waiting for the read
/// budget) are stopped rather than run late: their host has failed them, and may send them
/// again on a new connection.
#[tokio::test]
async fn commands_still_waiting_when_their_connection_ends_are_not_run() {
    let (_dir, target, _handle, _admin, io, _io_buf) = sixty_four_reads_unread().await;
    drop(io);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let read = target.stats().bytes_read;
    assert!(
        read <= 32 << 20,
        "the waiting reads did not run once the connection was gone: {read} bytes"
    );
}

/// A target with a 2 MiB read budget, and an I/O queue on which 64 reads of 1 MiB were sent
/// and none of their data read: (drive directory, target, its handle, admin connection, I/O
/// connection, its receive buffer).
async fn sixty_four_reads_unread() -> (
    tempfile::TempDir,
    Target,
    fabric::target::TargetHandle,
    TcpStream,
    TcpStream,
    BytesMut,
) {
    let dir = tempfile::tempdir().unwrap();
    let drive = EmulatedZns::create(dir.path(), Geometry::new(2, 1 << 20)).unwrap();
    drive
        .append(0, Bytes::from(vec![7u8; 1 << 20]))
        .await
        .unwrap();
    let target = Target::new(TargetConfig {
        max_outstanding_read: 2 << 20,
        ..TargetConfig::default()
    });
    target.add_subsystem(NQN, Arc::new(drive), vec![]).unwrap();
    let handle = target.listen("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let host = "nqn.2026-01.io.zonestore:slow-reader";
    let connect = |qid: u16, cntlid: u16| connect_capsule(qid, cntlid, 127, 0, host);
    let mut admin = initialized(handle.local_addr()).await;
    let mut buf = BytesMut::new();
    send(&mut admin, connect(0, CNTLID_DYNAMIC)).await;
    let cntlid = match next_pdu(&mut admin, &mut buf).await {
        Pdu::CapsuleResp(r) if r.cqe.status().is_success() => r.cqe.dw0() as u16,
        other => panic!("expected the Connect's completion, got {other:?}"),
    };
    send(&mut admin, enable_capsule()).await;
    assert!(
        matches!(next_pdu(&mut admin, &mut buf).await, Pdu::CapsuleResp(r) if r.cqe.status().is_success())
    );

    let mut io = initialized(handle.local_addr()).await;
    let mut io_buf = BytesMut::new();
    send(&mut io, connect(1, cntlid)).await;
    assert!(
        matches!(next_pdu(&mut io, &mut io_buf).await, Pdu::CapsuleResp(r) if r.cqe.status().is_success())
    );
    // 64 reads of 1 MiB each, and the host reads none of it.
    for cid in 0..64u16 {
        let mut read = Sqe::new(0x02, cid);
        read.set_nsid(1)
            .set_slba(0)
            .set_cdw(12, 255)
            .set_sgl(1 << 20, false);
        send(&mut io, command(read)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    (dir, target, handle, admin, io, io_buf)
}

#[tokio::test]
async fn shut_down_closes_every_connection_before_it_returns() {
    let (_d, target, handle) = start(TargetConfig::default()).await;
    let addr = handle.local_addr();
    let mut streams = vec![initialized(addr).await, initialized(addr).await];
    // And one that never says ICReq (the target would wait 10 s for it).
    let _silent = TcpStream::connect(addr).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while target.stats().connections_open < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "connections not taken"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    handle.shut_down(Duration::from_secs(5)).await;
    assert_eq!(
        target.stats().connections_open,
        0,
        "shut_down returned before its connections ended"
    );
    for stream in &mut streams {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "a connection outlived the shutdown: {read:?}"
        );
    }
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the listener outlived the shutdown"
    );
}

/// An admin queue connected and enabled on a fresh connection to `address` (its receive
/// buffer returned with it), for a host that sends commands by hand.
async fn enabled_admin(address: std::net::SocketAddr, sqsize: u16) -> (TcpStream, BytesMut) {
    let mut admin = initialized(address).await;
    let mut buf = BytesMut::new();
    send(
        &mut admin,
        connect_capsule(
            0,
            CNTLID_DYNAMIC,
            sqsize,
            0,
            "nqn.2026-01.io.zonestore:greedy",
        ),
    )
    .await;
    assert!(
        matches!(next_pdu(&mut admin, &mut buf).await, Pdu::CapsuleResp(r) if r.cqe.status().is_success())
    );
    send(&mut admin, enable_capsule()).await;
    assert!(
        matches!(next_pdu(&mut admin, &mut buf).await, Pdu::CapsuleResp(r) if r.cqe.status().is_success())
    );
    (admin, buf)
}

/// I/O queue 1 of `sqsize` + 1 entries connected, on a fresh connection to `address`, to the
/// controller [`enabled_admin`] made there (the first, controller 1); with its receive buffer.
async fn io_connected(address: std::net::SocketAddr, sqsize: u16) -> (TcpStream, BytesMut) {
    let mut io = initialized(address).await;
    let mut buf = BytesMut::new();
    send(
        &mut io,
        connect_capsule(1, 1, sqsize, 0, "nqn.2026-01.io.zonestore:greedy"),
    )
    .await;
    assert!(
        matches!(next_pdu(&mut io, &mut buf).await, Pdu::CapsuleResp(r) if r.cqe.status().is_success())
    );
    (io, buf)
}

/// The read budget holds for every command whose data goes to the host, not only reads: a
/// host that asks for 64 log pages of 1 MiB on its admin queue (no namespace access needed;
/// the discovery controller takes anyone) and reads none of them has no more than the budget
/// (and what the sockets buffer) held for it.
#[tokio::test]
async fn log_pages_a_host_does_not_read_hold_only_the_read_budget() {
    let (_dir, target, handle) = start(TargetConfig {
        max_outstanding_read: 1 << 20,
        ..TargetConfig::default()
    })
    .await;
    let (mut admin, mut buf) = enabled_admin(handle.local_addr(), 127).await;
    let dwords = (1u32 << 20) / 4 - 1;
    for cid in 10..74u16 {
        let mut get_log = Sqe::new(0x02, cid);
        get_log
            .set_cdw(10, 0x01 | ((dwords & 0xFFFF) << 16))
            .set_cdw(11, dwords >> 16)
            .set_sgl(1 << 20, false);
        send(&mut admin, command(get_log)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    only_the_budget_then_all_64(&target, &mut admin, &mut buf).await;
}

/// Write data that comes in capsules counts against the connection's write budget: while the
/// drive has not written it, the target stops reading the connection rather than take in
/// every capsule a host sends.
#[tokio::test]
async fn in_capsule_writes_the_drive_has_not_taken_hold_only_the_write_budget() {
    let dir = tempfile::tempdir().unwrap();
    let g = Geometry::new(4, 16 << 20);
    let inner = Arc::new(EmulatedZns::create(dir.path(), g).unwrap());
    let stalled = Arc::new(tokio::sync::Semaphore::new(0));
    let mut drive = zns::testing::Intercepted::new(inner);
    drive.before_append = Box::new({
        let stalled = stalled.clone();
        move |_, _, _| {
            let stalled = stalled.clone();
            Box::pin(async move {
                let _ = stalled.acquire().await.map(|p| p.forget());
            })
        }
    });
    let target = Target::new(TargetConfig {
        in_capsule_data: 128 << 10,
        max_outstanding_r2t: 256 << 10,
        ..TargetConfig::default()
    });
    target.add_subsystem(NQN, Arc::new(drive), vec![]).unwrap();
    let handle = target.listen("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let (_admin, _) = enabled_admin(handle.local_addr(), 31).await;
    let (io, mut io_buf) = io_connected(handle.local_addr(), 127).await;
    let (mut rd, mut wr) = io.into_split();
    let sender = tokio::spawn(async move {
        for cid in 0..96u16 {
            let mut append = Sqe::new(0x7D, cid);
            append
                .set_nsid(1)
                .set_slba(0)
                .set_cdw(12, 31)
                .set_sgl(128 << 10, true);
            let pdu = Pdu::CapsuleCmd(CapsuleCmd {
                sqe: append,
                data: Bytes::from(vec![5u8; 128 << 10]),
                data_digest_error: false,
            });
            wr.write_all(&encode(&pdu, Framing::INITIAL).to_bytes())
                .await
                .unwrap();
        }
        wr
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let taken = target.stats().bytes_written;
    assert!(
        taken <= 256 << 10,
        "in-capsule data taken in while the drive writes none: {taken} bytes"
    );
    // Once the drive writes, every append completes.
    stalled.add_permits(1000);
    let _wr = sender.await.unwrap();
    let mut completed = 0;
    let mut tmp = vec![0u8; 65536];
    let decoder = Decoder::new(CONTROLLER_TO_HOST, 1 << 20);
    while completed < 96 {
        while let Some(pdu) = decoder.decode(&mut io_buf).unwrap() {
            match pdu {
                Pdu::CapsuleResp(r) => {
                    assert!(r.cqe.status().is_success(), "{r:?}");
                    completed += 1;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        if completed == 96 {
            break;
        }
        let n = tokio::time::timeout(Duration::from_secs(5), rd.read(&mut tmp))
            .await
            .expect("the target answered")
            .unwrap();
        assert!(n > 0, "the target closed the connection");
        io_buf.extend_from_slice(&tmp[..n]);
    }
    assert_eq!(target.stats().bytes_written, 96 * (128 << 10));
}

/// A discovery controller connected with no keep-alive timeout gets the Linux target's two
/// minutes (a host that vanishes does not keep it for ever); a ZNS subsystem's keeps what its
/// host asked for.
#[tokio::test]
async fn a_discovery_controller_without_keep_alive_gets_two_minutes() {
    let (_dir, _target, handle) = start(TargetConfig::default()).await;
    // A KATO that is no whole number of seconds is rounded up to KAS's granularity (1 s).
    for (subnqn, kato_ms, want) in [
        (fabric::spec::DISCOVERY_NQN, 0, 120_000),
        (NQN, 0, 0),
        (NQN, 400, 1000),
    ] {
        let mut admin = initialized(handle.local_addr()).await;
        let mut buf = BytesMut::new();
        let (sqe, data) = Connect {
            recfmt: 0,
            qid: 0,
            sqsize: 31,
            cattr: 0,
            kato_ms,
            hostid: [3; 16],
            cntlid: CNTLID_DYNAMIC,
            subnqn: subnqn.into(),
            hostnqn: "nqn.2026-01.io.zonestore:no-kato".into(),
        }
        .encode(1);
        let connect = Pdu::CapsuleCmd(CapsuleCmd {
            sqe,
            data: Bytes::from(data),
            data_digest_error: false,
        });
        send(&mut admin, connect).await;
        assert!(
            matches!(next_pdu(&mut admin, &mut buf).await, Pdu::CapsuleResp(r) if r.cqe.status().is_success())
        );
        send(&mut admin, enable_capsule()).await;
        assert!(
            matches!(next_pdu(&mut admin, &mut buf).await, Pdu::CapsuleResp(r) if r.cqe.status().is_success())
        );
        let mut get = Sqe::new(0x0A, 9);
        get.set_cdw(10, 0x0F);
        send(&mut admin, command(get)).await;
        match next_pdu(&mut admin, &mut buf).await {
            Pdu::CapsuleResp(r) => {
                assert!(r.cqe.status().is_success(), "{r:?}");
                assert_eq!(r.cqe.dw0(), want, "KATO of {subnqn}");
            }
            other => panic!("expected Get Features' completion, got {other:?}"),
        }
    }
}

/// Over fabrics MQES bounds the I/O queues only (as nvmet has it): a target configured for
/// queues of 16 entries still takes the 32-entry admin queue every Linux host asks for, and
/// refuses an I/O queue of 32.
#[tokio::test]
async fn mqes_bounds_io_queues_not_the_admin_queue() {
    let (_dir, _target, handle) = start(TargetConfig {
        max_queue_entries: 16,
        ..TargetConfig::default()
    })
    .await;
    let (_admin, _) = enabled_admin(handle.local_addr(), 31).await;
    let mut io = initialized(handle.local_addr()).await;
    let mut buf = BytesMut::new();
    send(
        &mut io,
        connect_capsule(1, 1, 31, 0, "nqn.2026-01.io.zonestore:greedy"),
    )
    .await;
    match next_pdu(&mut io, &mut buf).await {
        Pdu::CapsuleResp(r) => assert!(
            r.cqe.status().is(Status::CONNECT_INVALID_PARAMETERS),
            "{r:?}"
        ),
        other => panic!("expected the Connect's completion, got {other:?}"),
    }
}

/// A Fabrics command other than Connect on an I/O queue is an Invalid Command Opcode (as the
/// Linux target answers), not an Invalid Namespace read from its FCTYPE byte; so is Disconnect
/// on either queue (optional, and not offered: OFCS bit 0 is clear), not a Success that
/// deletes nothing.
#[tokio::test]
async fn fabrics_commands_on_an_io_queue_are_connect_only() {
    let (_dir, _target, handle) = start(TargetConfig::default()).await;
    let (mut admin, mut admin_buf) = enabled_admin(handle.local_addr(), 31).await;
    let (mut io, mut buf) = io_connected(handle.local_addr(), 31).await;
    for (fctype, want) in [
        (0x04u8, Status::INVALID_OPCODE),
        (0x00, Status::INVALID_OPCODE),
        (0x08, Status::INVALID_OPCODE),
    ] {
        let mut sqe = Sqe::new(0x7f, 5);
        sqe.put(4, &[fctype]);
        send(&mut io, command(sqe)).await;
        match next_pdu(&mut io, &mut buf).await {
            Pdu::CapsuleResp(r) => assert_eq!(r.cqe.status(), want, "FCTYPE {fctype:#x}"),
            other => panic!("expected a completion, got {other:?}"),
        }
    }
    let mut disconnect = Sqe::new(0x7f, 6);
    disconnect.put(4, &[0x08]);
    let (status, _) = status_of(&mut admin, &mut admin_buf, disconnect).await;
    assert_eq!(status, Status::INVALID_OPCODE);
}

/// A Zone Append (identifier `cid`) of one 4 KiB block to the first zone, its data in the
/// capsule.
fn one_block_append(cid: u16) -> Pdu {
    let mut append = Sqe::new(0x7D, cid);
    append
        .set_nsid(1)
        .set_slba(0)
        .set_cdw(12, 0)
        .set_sgl(4096, true);
    Pdu::CapsuleCmd(CapsuleCmd {
        sqe: append,
        data: Bytes::from(vec![1u8; 4096]),
        data_digest_error: false,
    })
}

/// A Property Set of CC with EN cleared (a Controller Level Reset): `value` with the entry
/// sizes and CSS as [`enable_capsule`] sets them.
fn set_cc(cid: u16, value: u32) -> Pdu {
    let mut set = Sqe::new(0x7f, cid);
    set.put(4, &[0x00])
        .put(44, &property::CC.to_le_bytes())
        .put(48, &u64::from(value).to_le_bytes());
    command(set)
}

/// An Asynchronous Event Request.
fn aer(cid: u16) -> Pdu {
    command(Sqe::new(0x0C, cid))
}

/// A Controller Level Reset in place (CC.EN 1 then 0, then 1 again, as a host that resets
/// without reconnecting does) aborts the Asynchronous Event Requests the controller holds:
/// each is answered, and their identifiers are free for the host's next ones, which the limit
/// counts afresh.
#[tokio::test]
async fn a_reset_in_place_aborts_held_event_requests() {
    let (_d, _t, handle) = start(TargetConfig::default()).await;
    let (mut admin, mut buf) = enabled_admin(handle.local_addr(), 31).await;
    for cid in 10..14 {
        send(&mut admin, aer(cid)).await;
    }
    let (status, _) = status_of(&mut admin, &mut buf, Sqe::new(0x0C, 14)).await;
    assert_eq!(status, Status::AER_LIMIT_EXCEEDED);
    send(&mut admin, set_cc(20, 0x0046_0060)).await;
    let mut aborted = Vec::new();
    loop {
        match next_pdu(&mut admin, &mut buf).await {
            Pdu::CapsuleResp(r) if r.cqe.cid() == 20 => break,
            Pdu::CapsuleResp(r) => {
                assert_eq!(r.cqe.status(), Status::ABORTED_SQ_DELETION, "{r:?}");
                aborted.push(r.cqe.cid());
            }
            other => panic!("expected completions, got {other:?}"),
        }
    }
    aborted.sort_unstable();
    assert_eq!(aborted, vec![10, 11, 12, 13]);
    send(&mut admin, enable_capsule()).await;
    assert!(
        matches!(next_pdu(&mut admin, &mut buf).await, Pdu::CapsuleResp(r) if r.cqe.status().is_success())
    );
    // The same identifiers again: held, not a Command ID Conflict; a fifth is over the limit.
    for cid in 10..14 {
        send(&mut admin, aer(cid)).await;
    }
    let (status, _) = status_of(&mut admin, &mut buf, Sqe::new(0x0C, 14)).await;
    assert_eq!(status, Status::AER_LIMIT_EXCEEDED);
}

/// A Controller Level Reset deletes the controller's I/O queues (NVMe Base §3.7.2): their
/// connections are closed, and once the controller is enabled again the host connects the
/// same queue anew. The number of queues is set before any I/O queue exists: with one
/// connected, Set Features Number of Queues is a Command Sequence Error.
#[tokio::test]
async fn a_reset_deletes_the_io_queues_which_the_host_connects_anew() {
    let (_d, _t, handle) = start(TargetConfig::default()).await;
    let (mut admin, mut buf) = enabled_admin(handle.local_addr(), 31).await;
    let (mut io, _) = io_connected(handle.local_addr(), 31).await;
    let mut set_queues = Sqe::new(0x09, 30);
    set_queues.set_cdw(10, 0x07).set_cdw(11, 0x0003_0003);
    let (status, _) = status_of(&mut admin, &mut buf, set_queues).await;
    assert_eq!(status, Status::COMMAND_SEQUENCE_ERROR);

    send(&mut admin, set_cc(20, 0x0046_0060)).await;
    assert!(
        matches!(next_pdu(&mut admin, &mut buf).await, Pdu::CapsuleResp(r) if r.cqe.cid() == 20 && r.cqe.status().is_success())
    );
    assert!(
        read_all(&mut io).await.is_empty(),
        "the I/O queue's connection is closed"
    );
    send(&mut admin, enable_capsule()).await;
    assert!(
        matches!(next_pdu(&mut admin, &mut buf).await, Pdu::CapsuleResp(r) if r.cqe.status().is_success())
    );
    let (mut io, mut io_buf) = io_connected(handle.local_addr(), 31).await;
    let mut flush = Sqe::new(0x00, 1);
    flush.set_nsid(1);
    let (status, _) = status_of(&mut io, &mut io_buf, flush).await;
    assert!(status.is_success(), "{status:?}");
}

/// An I/O queue's Connect names a QID within the queues Set Features Number of Queues granted
/// (Connect Invalid Parameters beyond them).
#[tokio::test]
async fn an_io_queue_beyond_the_queues_granted_is_refused() {
    let (_d, _t, handle) = start(TargetConfig::default()).await;
    let (mut admin, mut buf) = enabled_admin(handle.local_addr(), 31).await;
    // One submission and one completion queue (0's based).
    let mut set_queues = Sqe::new(0x09, 30);
    set_queues.set_cdw(10, 0x07).set_cdw(11, 0);
    let (status, granted) = status_of(&mut admin, &mut buf, set_queues).await;
    assert!(
        status.is_success() && granted == 0,
        "{status:?} {granted:#x}"
    );
    for (qid, allowed) in [(2, false), (1, true)] {
        let mut io = initialized(handle.local_addr()).await;
        let mut io_buf = BytesMut::new();
        send(
            &mut io,
            connect_capsule(qid, 1, 31, 0, "nqn.2026-01.io.zonestore:greedy"),
        )
        .await;
        match next_pdu(&mut io, &mut io_buf).await {
            Pdu::CapsuleResp(r) => {
                assert_eq!(r.cqe.status().is_success(), allowed, "QID {qid}: {r:?}")
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// A discovery controller holds one Asynchronous Event Request, as its Identify Controller
/// (AERL 0) says.
#[tokio::test]
async fn a_discovery_controller_holds_one_event_request() {
    let (_d, _t, handle) = start(TargetConfig::default()).await;
    let mut admin = initialized(handle.local_addr()).await;
    let mut buf = BytesMut::new();
    send(
        &mut admin,
        connect_capsule_to(
            fabric::spec::DISCOVERY_NQN,
            0,
            CNTLID_DYNAMIC,
            31,
            0,
            "nqn.2026-01.io.zonestore:curious",
        ),
    )
    .await;
    send(&mut admin, enable_capsule()).await;
    for _ in 0..2 {
        assert!(
            matches!(next_pdu(&mut admin, &mut buf).await, Pdu::CapsuleResp(r) if r.cqe.status().is_success())
        );
    }
    send(&mut admin, aer(10)).await;
    let (status, _) = status_of(&mut admin, &mut buf, Sqe::new(0x0C, 11)).await;
    assert_eq!(status, Status::AER_LIMIT_EXCEEDED);
}

/// Nothing follows a C2HTermReq: a controller torn down because its admin connection broke
/// the protocol does not answer the event requests it held on that connection.
#[tokio::test]
async fn nothing_follows_a_term_req() {
    let (_d, _t, handle) = start(TargetConfig::default()).await;
    let (mut admin, _) = enabled_admin(handle.local_addr(), 31).await;
    send(&mut admin, aer(10)).await;
    let mut bad = vec![0x04u8, 0, 60, 0, 72, 0, 0, 0];
    bad.resize(72, 0);
    admin.write_all(&bad).await.unwrap();
    let (fes, _) = term_of(&read_all(&mut admin).await);
    assert_eq!(fes, Fes::InvalidHeaderField as u16);
}

/// While a shutdown's flush runs, CSTS.SHST says shutdown processing is occurring (01b); then
/// complete (10b).
#[tokio::test]
async fn shutdown_status_reads_occurring_until_the_flush_ends() {
    let dir = tempfile::tempdir().unwrap();
    let drive = EmulatedZns::create(dir.path(), Geometry::new(2, 1 << 20)).unwrap();
    let mut device = zns::testing::Intercepted::new(Arc::new(drive));
    // The flush waits until the test has read CSTS.
    let release = Arc::new(tokio::sync::Notify::new());
    let gate = release.clone();
    device.before_flush = Box::new(move || {
        let gate = gate.clone();
        Box::pin(async move {
            gate.notified().await;
            Ok(())
        })
    });
    let (_target, handle) = start_device(Arc::new(device)).await;
    let (mut admin, mut buf) = enabled_admin(handle.local_addr(), 31).await;
    send(&mut admin, set_cc(3, 0x0046_0061 | 1 << 14)).await;
    let mut get = Sqe::new(0x7f, 4);
    get.put(4, &[0x04]).put(44, &property::CSTS.to_le_bytes());
    let (_, csts) = status_of(&mut admin, &mut buf, get.clone()).await;
    release.notify_one();
    assert_eq!(
        csts & property::CSTS_SHST_MASK,
        property::CSTS_SHST_OCCURRING,
        "CSTS {csts:#x}"
    );
    assert!(
        matches!(next_pdu(&mut admin, &mut buf).await, Pdu::CapsuleResp(r) if r.cqe.cid() == 3)
    );
    let (_, csts) = status_of(&mut admin, &mut buf, get).await;
    assert_eq!(
        csts & property::CSTS_SHST_MASK,
        property::CSTS_SHST_COMPLETE,
        "CSTS {csts:#x}"
    );
}

/// A shutdown takes no I/O command once it has begun (CSTS.RDY clear, as Linux's target has
/// it), and its flush waits for the commands already running: a write the drive finishes
/// after the flush would not be covered by a shutdown that reported everything durable.
#[tokio::test]
async fn a_shutdown_flushes_after_the_writes_running_when_it_began() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let drive = EmulatedZns::create(dir.path(), Geometry::new(2, 1 << 20)).unwrap();
    let mut device = zns::testing::Intercepted::new(Arc::new(drive));
    let stalled = Arc::new(tokio::sync::Semaphore::new(0));
    // Told when the append has reached the drive (and waits there).
    let reached = Arc::new(tokio::sync::Notify::new());
    device.before_append = Box::new({
        let (stalled, reached) = (stalled.clone(), reached.clone());
        move |_, _, _| {
            let (stalled, reached) = (stalled.clone(), reached.clone());
            Box::pin(async move {
                reached.notify_one();
                let _ = stalled.acquire().await.map(|p| p.forget());
            })
        }
    });
    let appended = Arc::new(AtomicBool::new(false));
    device.after_append = Box::new({
        let appended = appended.clone();
        move |_, result| {
            appended.store(true, Ordering::SeqCst);
            Box::pin(std::future::ready(result))
        }
    });
    let flushed_after_append = Arc::new(AtomicBool::new(false));
    device.before_flush = Box::new({
        let (appended, flushed_after_append) = (appended.clone(), flushed_after_append.clone());
        move || {
            flushed_after_append.store(appended.load(Ordering::SeqCst), Ordering::SeqCst);
            Box::pin(std::future::ready(Ok(())))
        }
    });
    let (_target, handle) = start_device(Arc::new(device)).await;
    let (mut admin, mut buf) = enabled_admin(handle.local_addr(), 31).await;
    let (mut io, mut io_buf) = io_connected(handle.local_addr(), 31).await;
    send(&mut io, one_block_append(1)).await;
    reached.notified().await;
    send(&mut admin, set_cc(3, 0x0046_0061 | 1 << 14)).await;
    let mut get = Sqe::new(0x7f, 4);
    get.put(4, &[0x04]).put(44, &property::CSTS.to_le_bytes());
    let (_, csts) = status_of(&mut admin, &mut buf, get.clone()).await;
    assert_eq!(
        csts & (property::CSTS_SHST_MASK | property::CSTS_RDY),
        property::CSTS_SHST_OCCURRING,
        "CSTS {csts:#x}"
    );
    let mut flush = Sqe::new(0x00, 2);
    flush.set_nsid(1);
    let (status, _) = status_of(&mut io, &mut io_buf, flush).await;
    assert_eq!(status, Status::COMMAND_SEQUENCE_ERROR, "no I/O is taken");

    stalled.add_permits(1);
    match next_pdu(&mut io, &mut io_buf).await {
        Pdu::CapsuleResp(r) => assert!(r.cqe.cid() == 1 && r.cqe.status().is_success(), "{r:?}"),
        other => panic!("unexpected {other:?}"),
    }
    assert!(
        matches!(next_pdu(&mut admin, &mut buf).await, Pdu::CapsuleResp(r) if r.cqe.cid() == 3)
    );
    assert!(
        flushed_after_append.load(Ordering::SeqCst),
        "the flush ran before the append it was to cover"
    );
    let (_, csts) = status_of(&mut admin, &mut buf, get).await;
    assert_eq!(
        csts & property::CSTS_SHST_MASK,
        property::CSTS_SHST_COMPLETE,
        "CSTS {csts:#x}"
    );
}

/// A command whose drive panics (a bug, not an input) is answered Internal Error (without Do
/// Not Retry: what it did is not known), not left for its host to time out with its
/// identifier taken: the same identifier is answered again.
#[tokio::test]
async fn a_command_whose_drive_panics_is_answered() {
    let dir = tempfile::tempdir().unwrap();
    let drive = EmulatedZns::create(dir.path(), Geometry::new(2, 1 << 20)).unwrap();
    let mut device = zns::testing::Intercepted::new(Arc::new(drive));
    device.before_flush = Box::new(|| {
        Box::pin(async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            panic!("a drive's bug");
        })
    });
    let (_target, handle) = start_device(Arc::new(device)).await;
    let (_admin, _) = enabled_admin(handle.local_addr(), 31).await;
    let (mut io, mut buf) = io_connected(handle.local_addr(), 31).await;
    for _ in 0..2 {
        let mut flush = Sqe::new(0x00, 7);
        flush.put(4, &1u32.to_le_bytes());
        let (status, _) = status_of(&mut io, &mut buf, flush).await;
        assert_eq!(status, Status::INTERNAL_ERROR.retryable());
    }
}

/// Sends `sqe` and returns its completion's status and DW0, passing over any data.
async fn status_of(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    sqe: Sqe,
) -> (fabric::wire::status::Status, u32) {
    send(stream, command(sqe)).await;
    loop {
        match next_pdu(stream, buf).await {
            Pdu::C2HData(d) if d.success => return (fabric::wire::status::Status::SUCCESS, 0),
            Pdu::C2HData(_) => {}
            Pdu::CapsuleResp(r) => return (r.cqe.status(), r.cqe.dw0()),
            other => panic!("expected data or a completion, got {other:?}"),
        }
    }
}

/// Admin commands asking about what is not there get the status the specification gives:
/// Identify of a namespace that is not a valid NSID, or of a command set the namespace does
/// not have; the capabilities of a feature the controller lacks. Async event notices the
/// controller cannot send cannot be turned on.
#[tokio::test]
async fn admin_commands_about_what_is_not_there_get_the_right_status() {
    use fabric::wire::status::Status;
    let (_d, _t, handle) = start(TargetConfig::default()).await;
    let (mut admin, mut buf) = enabled_admin(handle.local_addr(), 31).await;
    let identify = |cns: u8, nsid: u32, csi: u8| {
        let mut sqe = Sqe::new(0x06, 20);
        sqe.set_nsid(nsid)
            .set_cdw(10, u32::from(cns))
            .set_cdw(11, u32::from(csi) << 24)
            .set_sgl(4096, false);
        sqe
    };
    let features = |opcode: u8, cdw10: u32, cdw11: u32| {
        let mut sqe = Sqe::new(opcode, 21);
        sqe.set_cdw(10, cdw10).set_cdw(11, cdw11);
        sqe
    };
    for (what, sqe, want) in [
        (
            "Identify namespace 1",
            identify(0x00, 1, 0),
            Status::SUCCESS,
        ),
        (
            "Identify namespace 2",
            identify(0x00, 2, 0),
            Status::INVALID_NAMESPACE,
        ),
        (
            "ZNS Identify namespace 1",
            identify(0x05, 1, 0x02),
            Status::SUCCESS,
        ),
        (
            "KV Identify namespace 1",
            identify(0x05, 1, 0x01),
            Status::INVALID_FIELD,
        ),
        (
            "KV Identify namespace 2",
            identify(0x05, 2, 0x01),
            Status::INVALID_NAMESPACE,
        ),
        (
            "capabilities of FID 80h",
            features(0x0A, 0x80 | (3 << 8), 0),
            Status::INVALID_FIELD,
        ),
    ] {
        let (status, _) = status_of(&mut admin, &mut buf, sqe).await;
        assert_eq!((status.sct, status.sc), (want.sct, want.sc), "{what}");
    }
    for (fid, want) in [(0x0Fu32, 1 << 2), (0x06, 0)] {
        let (status, dw0) =
            status_of(&mut admin, &mut buf, features(0x0A, fid | (3 << 8), 0)).await;
        assert!(status.is_success(), "{fid:#x}: {status:?}");
        assert_eq!(dw0, want, "capabilities of FID {fid:#x}");
    }
    let (status, _) = status_of(&mut admin, &mut buf, features(0x09, 0x0B, 0xFFFF_FFFF)).await;
    assert!(status.is_success(), "{status:?}");
    let (_, aec) = status_of(&mut admin, &mut buf, features(0x0A, 0x0B, 0)).await;
    assert_eq!(
        aec,
        0xFF | 1 << 8,
        "only critical warnings and namespace attribute notices can be turned on"
    );
}

/// A command whose identifier is that of one still in flight on its queue (here a held
/// Asynchronous Event Request) gets Command ID Conflict, and the one in flight stays held; an
/// identifier is free again once its command completed.
#[tokio::test]
async fn a_command_reusing_an_identifier_in_flight_gets_command_id_conflict() {
    let (_d, _t, handle) = start(TargetConfig::default()).await;
    let (mut admin, mut buf) = enabled_admin(handle.local_addr(), 31).await;
    const AER: u8 = 0x0C;
    // Get Features, Number of Queues: no data either way.
    let get_features = |cid| {
        let mut sqe = Sqe::new(0x0A, cid);
        sqe.put(40, &[7]);
        command(sqe)
    };
    send(&mut admin, command(Sqe::new(AER, 9))).await;
    let status_of = |pdu: Pdu, cid: u16| match pdu {
        Pdu::CapsuleResp(r) => {
            assert_eq!(r.cqe.cid(), cid);
            let s = r.cqe.status();
            (s.sct, s.sc)
        }
        other => panic!("expected a completion, got {other:?}"),
    };
    let conflict = fabric::wire::status::Status::COMMAND_ID_CONFLICT;
    for _ in 0..2 {
        send(&mut admin, get_features(9)).await;
        let got = status_of(next_pdu(&mut admin, &mut buf).await, 9);
        assert_eq!(got, (conflict.sct, conflict.sc), "the AER holds CID 9");
    }
    for _ in 0..2 {
        send(&mut admin, get_features(10)).await;
        assert_eq!(
            status_of(next_pdu(&mut admin, &mut buf).await, 10),
            (0, 0),
            "CID 10 is free again once its command completed"
        );
    }
}

/// A host that sends all the data an R2T asks for in one H2CData PDU (Linux before it honoured
/// MAXH2CDATA did) gets its largest write through: MAXH2CDATA is at least the largest transfer
/// (MDTS), so no R2T asks for more than one PDU may carry.
#[tokio::test]
async fn a_whole_largest_write_fits_one_h2c_data_pdu() {
    let dir = tempfile::tempdir().unwrap();
    let drive = EmulatedZns::create(dir.path(), Geometry::new(2, 4 << 20)).unwrap();
    let config = TargetConfig::default();
    let largest = config.max_transfer;
    let target = Target::new(config);
    target.add_subsystem(NQN, Arc::new(drive), vec![]).unwrap();
    let handle = target.listen("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let (_admin, _) = enabled_admin(handle.local_addr(), 31).await;
    let (mut io, mut buf) = io_connected(handle.local_addr(), 31).await;
    let mut write = Sqe::new(fabric::spec::opcode::io::WRITE, 5);
    write
        .set_nsid(1)
        .set_slba(0)
        .set_cdw(12, largest / 4096 - 1)
        .set_sgl(largest, false);
    send(&mut io, command(write)).await;
    let r2t = match next_pdu(&mut io, &mut buf).await {
        Pdu::R2t(r2t) => r2t,
        other => panic!("expected an R2T, got {other:?}"),
    };
    assert_eq!(r2t.r2tl, largest);
    send(
        &mut io,
        Pdu::H2CData(fabric::wire::pdu::DataPdu {
            cccid: 5,
            ttag: r2t.ttag,
            datao: 0,
            last: true,
            success: false,
            data: Bytes::from(vec![7u8; largest as usize]),
            data_digest_error: false,
        }),
    )
    .await;
    match next_pdu(&mut io, &mut buf).await {
        Pdu::CapsuleResp(r) => assert!(r.cqe.status().is_success(), "{:?}", r.cqe.status()),
        other => panic!("expected the write's completion, got {other:?}"),
    }
}

/// Checks that a new connection to `address` is closed at once, not left waiting.
async fn a_third_is_closed_at_once(address: std::net::SocketAddr) {
    let mut third = TcpStream::connect(address).await.unwrap();
    let mut byte = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(5), third.read(&mut byte))
        .await
        .expect("the third connection was closed, not left waiting");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
}

/// Past its connection limit, a target closes a new connection at once; one closed frees its
/// place.
#[tokio::test]
async fn connections_past_the_limit_are_closed_at_once() {
    let (_d, _t, handle) = start(TargetConfig {
        max_connections: 2,
        ..TargetConfig::default()
    })
    .await;
    let first = initialized(handle.local_addr()).await;
    let _second = initialized(handle.local_addr()).await;
    a_third_is_closed_at_once(handle.local_addr()).await;
    drop(first);
    tokio::time::sleep(Duration::from_millis(200)).await;
    initialized(handle.local_addr()).await;
}

/// One host address gets at most its share of the target's connections: past it, its new
/// connections are closed at once, while another host's are served.
#[tokio::test]
async fn one_host_gets_at_most_its_share_of_connections() {
    let (_d, _t, handle) = start(TargetConfig {
        max_connections: 8,
        max_connections_per_host: 2,
        ..TargetConfig::default()
    })
    .await;
    let _first = initialized(handle.local_addr()).await;
    let _second = initialized(handle.local_addr()).await;
    a_third_is_closed_at_once(handle.local_addr()).await;
    // Another address of the loopback network is another host.
    let other = tokio::net::TcpSocket::new_v4().unwrap();
    other.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    initialize(other.connect(handle.local_addr()).await.unwrap()).await;
}

/// A drive's media error travels as the media status the spec names for the command:
/// Unrecovered Read Error for a read, Write Fault for an append (the Linux host reports these
/// as medium errors, not as a generic I/O error), each with Do Not Retry.
#[tokio::test]
async fn media_errors_travel_as_the_commands_media_status() {
    let dir = tempfile::tempdir().unwrap();
    let g = Geometry::new(2, 1 << 20);
    let inner = Arc::new(EmulatedZns::create(dir.path(), g).unwrap());
    let mut drive = zns::testing::Intercepted::new(inner);
    let bad = || zns::ZoneError::MediaError("bad block".into());
    drive.after_read = Box::new(move |_, _, _| Box::pin(std::future::ready(Err(bad()))));
    drive.after_append = Box::new(move |_, _| Box::pin(std::future::ready(Err(bad()))));
    let target = Target::new(TargetConfig::default());
    target.add_subsystem(NQN, Arc::new(drive), vec![]).unwrap();
    let handle = target.listen("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let (_admin, _) = enabled_admin(handle.local_addr(), 31).await;
    let (mut io, mut buf) = io_connected(handle.local_addr(), 31).await;
    let mut read = Sqe::new(0x02, 1);
    read.set_nsid(1)
        .set_slba(0)
        .set_cdw(12, 0)
        .set_sgl(4096, false);
    send(&mut io, command(read)).await;
    send(&mut io, one_block_append(2)).await;
    let mut statuses = std::collections::BTreeMap::new();
    while statuses.len() < 2 {
        match next_pdu(&mut io, &mut buf).await {
            Pdu::CapsuleResp(r) => {
                statuses.insert(r.cqe.cid(), r.cqe.status());
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let status = |cid: u16| {
        let s = statuses[&cid];
        (s.sct, s.sc, s.dnr)
    };
    assert_eq!(status(1), (2, 0x81, true), "a read's media error");
    assert_eq!(status(2), (2, 0x80, true), "an append's media error");
    // The SMART / Health log counts media errors, not every failed command.
    let stats = target.stats();
    assert_eq!(stats.media_errors, 2);
    // An invalid command fails without being a media error.
    send(&mut io, command(Sqe::new(0xEE, 3))).await;
    assert!(
        matches!(next_pdu(&mut io, &mut buf).await, Pdu::CapsuleResp(r) if !r.cqe.status().is_success())
    );
    assert_eq!(target.stats().media_errors, 2);
}

/// A shutdown notification whose flush fails reports a fatal controller status, never a
/// completed shutdown (the host would take everything it wrote as durable).
#[tokio::test]
async fn a_shutdown_whose_flush_fails_is_not_reported_complete() {
    let dir = tempfile::tempdir().unwrap();
    let drive = EmulatedZns::create(dir.path(), Geometry::new(2, 1 << 20)).unwrap();
    let mut device = zns::testing::Intercepted::new(Arc::new(drive));
    device.before_flush = Box::new(|| {
        Box::pin(async {
            Err(zns::ZoneError::MediaError(
                "the cache cannot be written".into(),
            ))
        })
    });
    let target = Target::new(TargetConfig::default());
    target.add_subsystem(NQN, Arc::new(device), vec![]).unwrap();
    let handle = target.listen("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let mut stream = initialized(handle.local_addr()).await;
    admin_connected(&mut stream, 31).await;
    let mut buf = BytesMut::new();
    send(&mut stream, enable_capsule()).await;
    assert!(matches!(
        next_pdu(&mut stream, &mut buf).await,
        Pdu::CapsuleResp(_)
    ));
    // CC with SHN = normal shutdown.
    let mut set = Sqe::new(0x7f, 3);
    set.put(4, &[0x00])
        .put(44, &property::CC.to_le_bytes())
        .put(48, &u64::from(0x0046_0061u32 | 1 << 14).to_le_bytes());
    send(&mut stream, command(set)).await;
    assert!(matches!(
        next_pdu(&mut stream, &mut buf).await,
        Pdu::CapsuleResp(_)
    ));
    let mut get = Sqe::new(0x7f, 4);
    get.put(4, &[0x04]).put(44, &property::CSTS.to_le_bytes());
    send(&mut stream, command(get)).await;
    let Pdu::CapsuleResp(r) = next_pdu(&mut stream, &mut buf).await else {
        panic!("no answer to the Property Get");
    };
    let csts = r.cqe.dw0();
    assert_ne!(csts & property::CSTS_CFS, 0, "CSTS {csts:#x}");
    assert_ne!(
        csts & (0x3 << 2),
        property::CSTS_SHST_COMPLETE,
        "CSTS {csts:#x}"
    );
}
