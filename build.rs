//! Compiles the vendored Milvus protos (see `proto/README.md`) with a pure-Rust
//! protobuf compiler, so the build needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/common.proto",
        "proto/schema.proto",
        "proto/feder.proto",
        "proto/msg.proto",
        "proto/milvus.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        // `MilvusService` has an rpc named `Connect`, which clashes with the
        // generated `connect` constructor; clients are built from a `Channel`.
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
