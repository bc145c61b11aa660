//! The crate layering of DESIGN.md §7: lower layers never depend on higher ones.

use std::collections::BTreeMap;
use std::process::Command;

/// Layer of every `flotilla-*` crate; the harness crates (bench, testkit, tests, chaos) sit on
/// top.
fn layer(package: &str) -> Option<u8> {
    let name = package.strip_prefix("flotilla-")?;
    Some(match name {
        "api" | "util" | "pki" => 0,
        "rpc" | "store" | "scheduler" | "sys" | "gossip" => 1,
        "raft" | "runtime" => 2,
        "controllers" | "dns" | "proxy" | "tunnel" | "apiserver" | "agent" | "cluster" | "lab" => 3,
        "node" => 4,
        "bench" | "testkit" | "tests" | "chaos" => 5,
        other => {
            panic!("crate flotilla-{other} has no layer: add it to DESIGN.md's table and here")
        }
    })
}

/// The edges allowed between crates of one layer: anything else in a layer is a violation.
const SAME_LAYER: &[(&str, &str)] = &[
    // The wire format converts store commands and errors.
    ("flotilla-rpc", "flotilla-store"),
    // A member runs the leader-only loops.
    ("flotilla-cluster", "flotilla-controllers"),
    // The agent's loops are built on the informer and work queue.
    ("flotilla-agent", "flotilla-controllers"),
    // DNS and the proxy keep their tables from informers.
    ("flotilla-dns", "flotilla-controllers"),
    ("flotilla-proxy", "flotilla-controllers"),
    // The API server opens pods' streams through the tunnel; the agent serves them on it.
    ("flotilla-apiserver", "flotilla-tunnel"),
    ("flotilla-agent", "flotilla-tunnel"),
    // The harnesses share the cluster builder.
    ("flotilla-bench", "flotilla-testkit"),
    ("flotilla-tests", "flotilla-testkit"),
    ("flotilla-chaos", "flotilla-testkit"),
];

/// Edges to a lower layer that are cut all the same: loops that reconcile, serve or run pods
/// read and write through the store contract (`flotilla-store`), never Raft, so that each runs
/// against `MemoryStore` in its tests.
const FORBIDDEN: &[(&str, &str)] = &[
    ("flotilla-controllers", "flotilla-raft"),
    ("flotilla-agent", "flotilla-raft"),
    ("flotilla-dns", "flotilla-raft"),
    ("flotilla-proxy", "flotilla-raft"),
    ("flotilla-apiserver", "flotilla-raft"),
    ("flotilla-scheduler", "flotilla-raft"),
];

/// What is wrong with the edges (package → its `flotilla-*` dependencies).
fn violations(edges: &BTreeMap<String, Vec<String>>) -> Vec<String> {
    let mut found = Vec::new();
    for (package, deps) in edges {
        let Some(own) = layer(package) else { continue };
        for dep in deps {
            let theirs = layer(dep).expect("flotilla dependency");
            let edge = (package.as_str(), dep.as_str());
            if theirs > own {
                found.push(format!(
                    "{package} (layer {own}) depends on {dep} (layer {theirs})"
                ));
            } else if theirs == own && package != dep && !SAME_LAYER.contains(&edge) {
                found.push(format!(
                    "{package} depends on {dep} of its own layer {own} (not in SAME_LAYER)"
                ));
            } else if FORBIDDEN.contains(&edge) {
                found.push(format!(
                    "{package} depends on {dep}: it must use the store contract instead"
                ));
            }
        }
    }
    found
}

#[test]
fn the_rules_catch_each_kind_of_violation() {
    let edges = |list: &[(&str, &str)]| {
        let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (a, b) in list {
            m.entry(a.to_string()).or_default().push(b.to_string());
        }
        m
    };
    assert!(violations(&edges(&[("flotilla-controllers", "flotilla-store")])).is_empty());
    assert_eq!(
        violations(&edges(&[("flotilla-controllers", "flotilla-raft")])),
        ["flotilla-controllers depends on flotilla-raft: it must use the store contract instead"]
    );
    assert_eq!(
        violations(&edges(&[("flotilla-lab", "flotilla-controllers")])).len(),
        1
    );
    assert_eq!(
        violations(&edges(&[("flotilla-bench", "flotilla-tests")])).len(),
        1
    );
    assert_eq!(
        violations(&edges(&[("flotilla-store", "flotilla-raft")])).len(),
        1
    );
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
    let violations = violations(&edges);
    assert!(
        violations.is_empty(),
        "layering violations: {violations:#?}"
    );
}
