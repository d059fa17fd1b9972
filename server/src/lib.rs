//! The Zonestore server: the object engine over zoned drives and the pieces of the `zonestore`
//! binary (configuration, drive attachment, S3 and admin serving, metrics, recovery).

pub mod admin;
pub mod config;
pub mod data_lock;
pub mod discovered;
pub mod durable_file;
pub mod engine;
pub mod fd_limit;
pub mod http;
pub mod metrics;
pub mod recover;
pub mod s3;
pub mod serve;
pub mod size;
pub mod storage_node;
pub mod targets;
pub mod write_stall;
