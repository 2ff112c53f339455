//! Compiles `proto/floor.proto` with protox (pure Rust, no system `protoc`), as
//! the root build.rs does for the broker's proto.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fds = protox::compile(["floor.proto"], ["proto"])?;
    tonic_prost_build::configure()
        // `bytes` fields as bytes::Bytes: the server hands out a refcounted clone (no memcpy),
        // and the client reads the reply without copying it either.
        .bytes(".")
        // The load client calls through tonic::client::Grpc with these messages; no stub needed.
        .build_client(false)
        .compile_fds(fds)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
