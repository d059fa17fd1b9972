//! Fuzzes the NVMe/TCP PDU decoder with both directions and every digest setting: it must never
//! panic, whatever a peer sends. Run with `cargo fuzz run pdu_decoder` from `fuzz/`.
#![no_main]

use bytes::BytesMut;
use fabric::wire::digest::Digests;
use fabric::wire::pdu::{CONTROLLER_TO_HOST, Decoder, Framing, HOST_TO_CONTROLLER};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&settings, bytes)) = data.split_first() else { return };
    let accept = if settings & 0x80 != 0 { HOST_TO_CONTROLLER } else { CONTROLLER_TO_HOST };
    let mut decoder = Decoder::new(accept, 1 << 16);
    decoder.framing = Framing { digests: Digests::from_bits(settings & 0x3), pda: (settings >> 2) & 0x3 };
    let mut buf = BytesMut::from(bytes);
    while let Ok(Some(_)) = decoder.decode(&mut buf) {}
});
