//! Generates the gRPC code of `proto/` with the vendored protoc (no system package needed):
//! `messagebroker.proto` (the predecessor's interface), `ingest.proto` and `send.proto`
//! (ferry's own).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // Payloads become `bytes::Bytes`, sliced from the request buffer without a copy.
    config.bytes(["."]);
    let descriptors =
        std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("ferry_descriptor.bin");
    tonic_prost_build::configure()
        .emit_rerun_if_changed(false)
        // For gRPC server reflection (grpcurl and friends).
        .file_descriptor_set_path(descriptors)
        .compile_with_config(
            config,
            &[
                "proto/messagebroker.proto",
                "proto/ingest.proto",
                "proto/send.proto",
            ],
            &["proto"],
        )?;
    Ok(())
}
