//! The Kubernetes manifests of scripts/k8s load as YAML (PyYAML, as `kubectl` would parse them)
//! and say what the README promises: a privileged DaemonSet mounting /mnt/eodata on the host
//! with Bidirectional propagation, credentials and the coordinator from a Secret, a Redis with a
//! password reachable only from the mount pods, and Dask workers that see the mount.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// Every document of a YAML file, as JSON values.
fn load(file: &str) -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts/k8s")
        .join(file);
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        ])
        .arg(&path)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{} does not load: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let docs: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!docs.is_empty(), "{file} is empty");
    for d in &docs {
        assert!(
            d["apiVersion"].is_string() && d["kind"].is_string(),
            "{file}: {d}"
        );
        assert!(d["metadata"]["name"].is_string(), "{file}: {d}");
    }
    docs
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

#[test]
fn the_daemonset_mounts_on_the_host_with_the_secret_and_the_coordinator() {
    let docs = load("daemonset.yaml");
    let ds = kind(&docs, "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(c["securityContext"]["privileged"], true);
    let mount = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == "/mnt/eodata")
        .expect("/mnt/eodata mounted");
    assert_eq!(mount["mountPropagation"], "Bidirectional");
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    assert_eq!(volume["hostPath"]["path"], "/mnt/eodata");
    let env = c["env"].as_array().unwrap();
    let coord = env
        .iter()
        .find(|e| e["name"] == "EODATA_COORDINATOR")
        .expect("the coordinator comes from the environment");
    assert_eq!(
        coord["valueFrom"]["secretKeyRef"]["name"],
        "eodata-credentials"
    );
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args[0], "/mnt/eodata");
    assert!(args.contains(&"--foreground"), "{args:?}");
    assert!(args.iter().any(|a| a.starts_with("--account-connections")));
    // Every flag the manifest passes is one the program knows.
    let help = Command::new(env!("CARGO_BIN_EXE_eodata-mount"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for a in args.iter().filter(|a| a.starts_with("--")) {
        let flag = a.split('=').next().unwrap();
        assert!(help.contains(flag), "{flag} is not a flag of eodata-mount");
    }
    // The credentials file is the Secret's, read-only.
    assert!(pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v["secret"]["secretName"] == "eodata-credentials"));
}

#[test]
fn redis_has_a_password_and_only_the_mounts_reach_it() {
    let docs = load("redis.yaml");
    let redis = kind(&docs, "Deployment");
    let args = redis["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(args.contains("--requirepass"), "{args}");
    assert_eq!(kind(&docs, "Service")["spec"]["ports"][0]["port"], 6379);
    let policy = kind(&docs, "NetworkPolicy");
    assert_eq!(
        policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]["app"],
        "eodata-mount"
    );
    let secret = load("secret.example.yaml");
    let data = &kind(&secret, "Secret")["stringData"];
    assert!(data["secrets.conf"].as_str().unwrap().contains("[login]"));
    assert!(data["coordinator"].as_str().unwrap().starts_with("redis"));
}

#[test]
fn dask_workers_see_the_mount() {
    let docs = load("dask-workers.yaml");
    let workers = docs
        .iter()
        .find(|d| d["metadata"]["name"] == "dask-worker")
        .unwrap();
    let m = &workers["spec"]["template"]["spec"]["containers"][0]["volumeMounts"][0];
    assert_eq!(m["mountPath"], "/mnt/eodata");
    assert_eq!(m["mountPropagation"], "HostToContainer");
}
