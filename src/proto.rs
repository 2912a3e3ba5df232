//! The generated protobuf types and gRPC stubs of `proto/messagebroker.proto`.

#![allow(missing_docs, clippy::all)]

tonic::include_proto!("messagebroker");
