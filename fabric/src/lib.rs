//! NVMe over Fabrics with the TCP transport, byte for byte as the NVMe/TCP Transport
//! Specification and the Linux kernel define it: the PDU codec ([`wire`]) and the admin and
//! fabrics data structures ([`spec`]).

pub mod spec;
pub mod wire;
