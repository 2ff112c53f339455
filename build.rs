//! Compiles `proto/` with protox (pure Rust, no system `protoc`) and writes the
//! descriptor set that the broker's server reflection serves.
use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/argsbroker/v1/args.proto"];
    let fds = protox::compile(protos, ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(
        out.join("argsbroker_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        // Args.json as Bytes, shared per revision instead of copied (see src/wire.rs).
        .extern_path(".argsbroker.v1.Args", "crate::wire::Args")
        .compile_fds(fds)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
