//! Generates the gRPC code of `proto/` with the vendored protoc (no system package needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // Payloads become `bytes::Bytes`, sliced from the request buffer without a copy.
    config.bytes(["."]);
    tonic_prost_build::configure()
        .emit_rerun_if_changed(false)
        .compile_with_config(config, &["proto/messagebroker.proto"], &["proto"])?;
    Ok(())
}
