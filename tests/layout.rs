//! The crate graph the architecture promises (docs/ARCHITECTURE.md): no service crate depends
//! on another service crate (they share the data path through `sluice-router`), and the test
//! kit is never a dependency of product code.

use std::collections::BTreeMap;

#[test]
fn services_depend_on_libraries_only_and_testkit_on_nothing_in_product() {
    let out = std::process::Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("cargo metadata runs");
    assert!(out.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&out.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON");
    let packages = meta["packages"].as_array().expect("packages");
    // Workspace crates by name, with whether each is a service.
    let service: BTreeMap<String, bool> = packages
        .iter()
        .map(|p| {
            let path = p["manifest_path"].as_str().unwrap_or_default();
            (p["name"].as_str().unwrap_or_default().to_string(), path.contains("/services/"))
        })
        .collect();
    assert!(service.values().filter(|s| **s).count() >= 4, "the services are found: {service:?}");
    let mut bad = Vec::new();
    for p in packages {
        let name = p["name"].as_str().unwrap_or_default();
        for d in p["dependencies"].as_array().into_iter().flatten() {
            let dep = d["name"].as_str().unwrap_or_default();
            let normal = d["kind"].is_null();
            if service[name] && service.get(dep).copied().unwrap_or(false) {
                bad.push(format!("service {name} depends on service {dep}"));
            }
            if dep == "sluice-testkit" && normal && name != "sluice-tests" {
                bad.push(format!("{name} depends on the test kit outside its tests"));
            }
        }
    }
    assert!(bad.is_empty(), "{bad:#?}");
}
