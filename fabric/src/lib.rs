//! NVMe over Fabrics with the TCP transport, byte for byte as the NVMe/TCP Transport
//! Specification and the Linux kernel define it: the PDU codec ([`wire`]), the admin and fabrics
//! data structures ([`spec`]), and a target that exports any [`zns::ZonedDevice`] as a Zoned
//! Namespace with a discovery controller ([`target`]).

pub mod spec;
pub mod target;
pub mod transport;
pub mod wire;
