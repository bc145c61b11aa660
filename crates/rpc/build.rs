fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../proto");
    let file = format!("{proto_dir}/flotilla.proto");
    println!("cargo:rerun-if-changed={file}");
    // protox compiles the .proto in pure Rust, so no `protoc` is needed.
    let fds = protox::compile([&file], [proto_dir])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
