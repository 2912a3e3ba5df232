//! The generated protobuf types and gRPC stubs: `messagebroker` (the predecessor's
//! interface, re-exported at this module's root) and `ferry::v1` (the streaming ingress and
//! the `Send` service with routes and metadata).

#![allow(missing_docs, clippy::all)]

/// `proto/messagebroker.proto`.
pub mod messagebroker {
    tonic::include_proto!("messagebroker");
}

pub use messagebroker::*;

/// ferry's own services.
pub mod ferry {
    /// `proto/ingest.proto` and `proto/send.proto`.
    pub mod v1 {
        tonic::include_proto!("ferry.v1");
    }
}

/// The encoded descriptors of every file in `proto/`, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("ferry_descriptor");
