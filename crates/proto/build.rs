//! Compiles `proto/sluice/v1/*.proto` into Rust, plus a file descriptor set for
//! gRPC reflection.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read when the script runs, not when it was compiled: a build script binary shared between
    // checkouts (one target directory) must find the protos of the checkout being built.
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files: Vec<PathBuf> =
        ["common", "admin", "broker", "partition_node", "groups", "transactions", "connect", "sql"]
            .iter()
            .map(|f| root.join(format!("sluice/v1/{f}.proto")))
            .collect();
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("sluice_descriptor.bin"))
        .bytes(".")
        .compile_protos(&files, &[root])?;
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    Ok(())
}
