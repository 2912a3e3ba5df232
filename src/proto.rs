//! The generated protobuf types and gRPC stubs of `proto/messagebroker.proto`.

#![allow(missing_docs, clippy::all)]

tonic::include_proto!("messagebroker");

/// The encoded descriptors of `proto/messagebroker.proto`, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("messagebroker_descriptor");
