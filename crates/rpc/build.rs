fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time, not with `env!`: the compiled build script is shared through the target
    // cache by every checkout of this workspace, wherever it lives.
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let proto_dir = format!("{manifest_dir}/../../proto");
    let file = format!("{proto_dir}/flotilla.proto");
    println!("cargo:rerun-if-changed={file}");
    // protox compiles the .proto in pure Rust, so no `protoc` is needed.
    let fds = protox::compile([&file], [&proto_dir])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
