//! The crate layering of DESIGN.md §7: lower layers never depend on higher ones.

use std::collections::BTreeMap;
use std::process::Command;

/// Layer of every `flotilla-*` crate; the harness crates (bench, tests, chaos) sit on top.
fn layer(package: &str) -> Option<u8> {
    let name = package.strip_prefix("flotilla-")?;
    Some(match name {
        "api" | "util" | "pki" => 0,
        "rpc" | "store" | "scheduler" | "sys" | "gossip" => 1,
        "raft" | "runtime" => 2,
        "controllers" | "dns" | "proxy" | "tunnel" | "apiserver" | "agent" | "lab" => 3,
        "node" => 4,
        "bench" | "tests" | "chaos" => 5,
        other => {
            panic!("crate flotilla-{other} has no layer: add it to DESIGN.md's table and here")
        }
    })
}

#[test]
fn lower_layers_never_depend_on_higher_ones() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        // At run time: a test binary from the shared target cache may have been built in
        // another checkout.
        .current_dir(
            std::env::var("CARGO_MANIFEST_DIR").expect("cargo test sets CARGO_MANIFEST_DIR"),
        )
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    let mut edges: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for package in meta["packages"].as_array().expect("packages") {
        let name = package["name"].as_str().expect("package name").to_string();
        let deps = package["dependencies"]
            .as_array()
            .expect("dependencies")
            .iter()
            .filter_map(|d| d["name"].as_str())
            .filter(|d| d.starts_with("flotilla-"))
            .map(str::to_string)
            .collect();
        edges.insert(name, deps);
    }
    assert!(
        edges.len() >= 7,
        "expected the workspace's crates, got {:?}",
        edges.keys()
    );
    let mut violations = Vec::new();
    for (package, deps) in &edges {
        let Some(own) = layer(package) else { continue };
        for dep in deps {
            let theirs = layer(dep).expect("flotilla dependency");
            if theirs > own {
                violations.push(format!(
                    "{package} (layer {own}) depends on {dep} (layer {theirs})"
                ));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "layering violations: {violations:#?}"
    );
}
