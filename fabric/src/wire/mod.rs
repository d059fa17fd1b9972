//! Wire formats of NVMe over Fabrics on TCP, each with its byte layout: PDUs and digests of the
//! TCP transport binding, submission and completion queue entries, status codes.

pub mod command;
pub mod digest;
pub mod pdu;
pub mod status;
