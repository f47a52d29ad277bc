//! The Kubernetes manifests of `scripts/cluster/k8s/` (issue 18) are well-formed and consistent:
//! every document parses, names its kind and object, and every reference between them holds
//! (Secret, ConfigMap and claim names, workload selectors and Service selectors against pod
//! labels, Service target ports, the StatefulSet's Service, the workers' coordinator URL). No
//! Kubernetes cluster is started: this is what can be checked without one.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

/// Every document of every `*.yaml` file in the directory, by `(kind, name)`.
fn manifests() -> BTreeMap<(String, String), Value> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/cluster/k8s");
    let mut files: Vec<_> =
        std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "yaml")).collect();
    files.sort();
    let mut out = BTreeMap::new();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let yaml = <serde_yaml::Value as serde::Deserialize>::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let v: Value = serde_json::to_value(yaml).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let kind = v["kind"].as_str().unwrap_or_else(|| panic!("{}: a document without kind", path.display())).to_string();
            let name = v["metadata"]["name"].as_str().unwrap_or_else(|| panic!("{}: a {kind} without a name", path.display())).to_string();
            assert!(v["apiVersion"].is_string(), "{}: {kind} {name} has no apiVersion", path.display());
            assert!(out.insert((kind.clone(), name.clone()), v).is_none(), "{kind} {name} defined twice");
        }
    }
    out
}

fn has(m: &BTreeMap<(String, String), Value>, kind: &str, name: &str) -> bool {
    m.contains_key(&(kind.to_string(), name.to_string()))
}

/// Whether every `selector` entry is among `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let sel = selector.as_object().expect("a selector map");
    !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[test]
fn the_kubernetes_manifests_parse_and_their_references_hold() {
    let m = manifests();
    for (kind, name) in [
        ("ConfigMap", "tessera-config"),
        ("Secret", "tessera-token"),
        ("PersistentVolumeClaim", "tessera-shared"),
        ("Deployment", "tessera-coordinator"),
        ("Service", "tessera-coordinator"),
        ("StatefulSet", "tessera-worker"),
        ("Service", "tessera-workers"),
    ] {
        assert!(has(&m, kind, name), "no {kind} {name}: {:?}", m.keys().collect::<Vec<_>>());
    }
    let config = &m[&("ConfigMap".into(), "tessera-config".into())]["data"];
    assert!(config["TESSERA_ETCD"].as_str().unwrap().split(',').all(|u| u.starts_with("http://") || u.starts_with("https://")));
    assert!(m[&("Secret".into(), "tessera-token".into())]["stringData"]["token"].is_string());
    let pvc = &m[&("PersistentVolumeClaim".into(), "tessera-shared".into())];
    assert_eq!(pvc["spec"]["accessModes"][0], "ReadWriteMany", "every pod mounts the shared filesystem");

    let mut workloads = Vec::new();
    for ((kind, name), v) in &m {
        if kind != "Deployment" && kind != "StatefulSet" {
            continue;
        }
        let template = &v["spec"]["template"];
        assert!(
            selects(&v["spec"]["selector"]["matchLabels"], &template["metadata"]["labels"]),
            "{kind} {name}: selector vs template labels"
        );
        let pod = &template["spec"];
        for vol in pod["volumes"].as_array().unwrap() {
            if let Some(s) = vol["secret"]["secretName"].as_str() {
                assert!(has(&m, "Secret", s), "{name}: Secret {s}");
            }
            if let Some(c) = vol["persistentVolumeClaim"]["claimName"].as_str() {
                assert!(has(&m, "PersistentVolumeClaim", c), "{name}: claim {c}");
            }
        }
        let volumes: Vec<&str> = pod["volumes"].as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap()).collect();
        for c in pod["containers"].as_array().unwrap() {
            assert_eq!(c["command"][0], "tessera", "{name}");
            for mount in c["volumeMounts"].as_array().unwrap() {
                assert!(volumes.contains(&mount["name"].as_str().unwrap()), "{name}: mount {}", mount["name"]);
            }
            for from in c["envFrom"].as_array().into_iter().flatten() {
                let cm = from["configMapRef"]["name"].as_str().unwrap();
                assert!(has(&m, "ConfigMap", cm), "{name}: ConfigMap {cm}");
            }
            // Every $(VAR) in the arguments is defined for the container.
            let defined: Vec<String> = c["env"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| e["name"].as_str().unwrap().to_string())
                .chain(config.as_object().unwrap().keys().cloned())
                .collect();
            for arg in c["args"].as_array().unwrap() {
                if let Some(var) = arg.as_str().and_then(|a| a.strip_prefix("$(")).and_then(|a| a.strip_suffix(')')) {
                    assert!(defined.iter().any(|d| d == var), "{name}: $({var}) undefined");
                }
            }
        }
        workloads.push((kind.clone(), name.clone(), template["metadata"]["labels"].clone(), pod.clone()));
    }

    // Each Service selects exactly one workload's pods, on ports they expose.
    for ((kind, name), v) in &m {
        if kind != "Service" {
            continue;
        }
        let chosen: Vec<_> = workloads.iter().filter(|(_, _, labels, _)| selects(&v["spec"]["selector"], labels)).collect();
        assert_eq!(chosen.len(), 1, "Service {name} selects {:?}", chosen.iter().map(|w| &w.1).collect::<Vec<_>>());
        let ports: Vec<&Value> =
            chosen[0].3["containers"].as_array().unwrap().iter().flat_map(|c| c["ports"].as_array().into_iter().flatten()).collect();
        for p in v["spec"]["ports"].as_array().into_iter().flatten() {
            let target = &p["targetPort"];
            assert!(ports.iter().any(|cp| cp["name"] == *target || cp["containerPort"] == *target), "Service {name}: target port {target}");
        }
    }
    let workers = &m[&("StatefulSet".into(), "tessera-worker".into())];
    assert!(has(&m, "Service", workers["spec"]["serviceName"].as_str().unwrap()));

    // The workers reach the coordinator through its Service, on the port it listens on.
    let service = &m[&("Service".into(), "tessera-coordinator".into())];
    let port = service["spec"]["ports"][0]["port"].as_u64().unwrap();
    assert_eq!(config["TESSERA_COORDINATOR"].as_str().unwrap(), format!("http://tessera-coordinator:{port}"));
    let coordinator = &m[&("Deployment".into(), "tessera-coordinator".into())]["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<&str> = coordinator["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert_eq!(args[0], "coordinator");
    let listen = args.iter().position(|a| *a == "--listen").map(|i| args[i + 1]).unwrap();
    assert_eq!(listen.rsplit(':').next().unwrap(), coordinator["ports"][0]["containerPort"].to_string());
    let worker_args: Vec<&str> =
        workers["spec"]["template"]["spec"]["containers"][0]["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert_eq!(worker_args[0], "worker");
    for flag in ["--coordinator", "--token-file", "--name", "--advertise"] {
        assert!(worker_args.contains(&flag), "workers lack {flag}");
    }
}
