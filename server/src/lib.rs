//! The Zonestore server: the object engine over zoned drives and the pieces of the `zonestore`
//! binary.

pub mod engine;
pub mod size;
pub mod storage_node;
