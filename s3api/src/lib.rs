//! The S3 HTTP front end of Zonestore: routing (path-style and virtual-hosted-style), SigV4 and
//! SigV2 authentication, aws-chunked bodies with signed chunks and checksum trailers, S3's XML
//! and errors, over an [`store::ObjectStore`] that the server implements. Users see S3; they
//! never see zones or fabrics.

pub mod auth;
pub mod body;
pub mod checksum;
pub mod chunked;
pub mod error;
pub mod handlers;
pub mod http_util;
pub mod md5_lanes;
pub mod query;
pub mod service;
pub mod store;
pub mod time;
pub mod xml;

pub use error::S3Error;
pub use service::{Observer, RequestRecord, S3Config, S3Service};
