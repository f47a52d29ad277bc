//! The contract crate links neither side's heavy parts: no libtorch, no HTTP server, no
//! Prometheus registry, no terminal UI. Checked on the resolved dependency graph that
//! `cargo metadata` reports, so a new transitive dependency is caught too.

use std::collections::{BTreeSet, HashMap};
use std::process::Command;

use serde_json::Value;

/// Crates (by name) that must not be in the contract crate's build.
const FORBIDDEN: &[&str] = &[
    "tch",
    "torch-sys",
    "axum",
    "hyper",
    "prometheus",
    "indicatif",
    "ratatui",
    "crossterm",
    "tessera-coordinator",
    "tessera-worker",
    "tessera-model",
    // Cluster mode's etcd client belongs to the coordinator (store, registry), not the contract.
    "etcd-client",
];

fn metadata() -> Value {
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--manifest-path"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
        .output()
        .expect("run cargo metadata");
    assert!(out.status.success(), "cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON")
}

/// Names of every crate the package named `root` needs to build (normal and build
/// dependencies, transitively; dev-dependencies excluded).
fn build_closure(meta: &Value, root: &str) -> BTreeSet<String> {
    let names: HashMap<&str, &str> =
        meta["packages"].as_array().unwrap().iter().map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap())).collect();
    let nodes: HashMap<&str, &Value> =
        meta["resolve"]["nodes"].as_array().unwrap().iter().map(|n| (n["id"].as_str().unwrap(), n)).collect();
    let start = names.iter().find(|(_, n)| **n == root).map(|(id, _)| *id).unwrap_or_else(|| panic!("{root} is not in the workspace"));
    let mut seen = BTreeSet::new();
    let mut stack = vec![start];
    while let Some(id) = stack.pop() {
        if !seen.insert(id) {
            continue;
        }
        for dep in nodes[id]["deps"].as_array().unwrap() {
            let kinds = dep["dep_kinds"].as_array().unwrap();
            if kinds.iter().any(|k| k["kind"].as_str() != Some("dev")) {
                stack.push(dep["pkg"].as_str().unwrap());
            }
        }
    }
    seen.into_iter().map(|id| names[id].to_string()).collect()
}

#[test]
fn the_contract_crate_links_no_libtorch_http_server_metrics_or_terminal_ui() {
    let meta = metadata();
    let closure = build_closure(&meta, "tessera-protocol");
    let found: Vec<&&str> = FORBIDDEN.iter().filter(|f| closure.contains(**f)).collect();
    assert!(found.is_empty(), "tessera-protocol's build pulls in {found:?}");
    // The check can fail: the coordinator's closure has the HTTP server and Prometheus, and the
    // worker's has libtorch.
    let coordinator = build_closure(&meta, "tessera-coordinator");
    assert!(
        coordinator.contains("axum")
            && coordinator.contains("prometheus")
            && coordinator.contains("etcd-client")
            && !coordinator.contains("tch"),
        "{coordinator:?}"
    );
    let worker = build_closure(&meta, "tessera-worker");
    assert!(worker.contains("tch") && !worker.contains("tessera-coordinator") && !worker.contains("axum"), "{worker:?}");
}
