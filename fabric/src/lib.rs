//! NVMe over Fabrics with the TCP transport, byte for byte as the NVMe/TCP Transport
//! Specification and the Linux kernel define it: the PDU codec ([`wire`]), the admin and fabrics
//! data structures ([`spec`]), a target that exports any [`zns::ZonedDevice`] as a Zoned
//! Namespace with a discovery controller ([`target`]), and a host that is itself a
//! `ZonedDevice` backed by a remote namespace ([`host`]).

pub mod host;
pub mod spec;
pub mod target;
pub mod transport;
pub mod wire;
