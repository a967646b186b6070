//! The Helm chart (`helm/sluice`), the compose file and the Dockerfile, checked offline by
//! `deploy/tests/test_chart.py`: rendered with default and custom values, linted strictly,
//! every manifest validated against the Kubernetes schemas. The Python tools live in
//! `.tools/venv`, installed by `scripts/ensure-deps.sh` (which `scripts/test.sh` runs).

use std::path::PathBuf;
use std::process::Command;

#[test]
fn the_chart_renders_lints_and_validates() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = std::env::var_os("SLUICE_TOOLS_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".tools/venv/bin/python"));
    assert!(
        python.exists(),
        "{} is missing: run scripts/ensure-deps.sh (or scripts/test.sh) to install the chart test tools",
        python.display()
    );
    let out = Command::new(&python)
        .args(["-m", "unittest", "-v", "deploy/tests/test_chart.py"])
        .current_dir(&root)
        .output()
        .expect("run the chart tests");
    let report = String::from_utf8_lossy(&out.stderr);
    eprintln!("{report}");
    assert!(out.status.success(), "the chart tests failed:\n{report}");
    assert!(report.contains("Ran ") && report.contains("OK"), "{report}");
}

/// Every key the chart writes into a service's config file is one the services know (a
/// misspelt key would otherwise be ignored silently), and the files load with the services'
/// own loader.
#[test]
fn the_chart_config_files_load_in_the_services() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = std::env::var_os("SLUICE_TOOLS_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".tools/venv/bin/python"));
    let dir = tempfile::tempdir().unwrap();
    let script = r#"
import sys, helm_python as helm, yaml
out = helm.Chart.load(sys.argv[1]).render(yaml.safe_load(open(sys.argv[3])), name="demo", namespace="ns", is_install=True)
for path, text in out.items():
    if path.endswith("NOTES.txt"):
        continue
    for d in yaml.safe_load_all(text):
        if d and d.get("kind") == "ConfigMap":
            open(sys.argv[2] + "/" + d["metadata"]["name"] + ".toml", "w").write(d["data"]["sluice.toml"])
"#;
    let status = Command::new(&python)
        .args(["-c", script])
        .arg(root.join("helm/sluice"))
        .arg(dir.path())
        .arg(root.join("helm/sluice/ci/custom-values.yaml"))
        .status()
        .expect("render the chart");
    assert!(status.success(), "rendering failed (run scripts/ensure-deps.sh for the tools)");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert_eq!(files.len(), 5, "{files:?}");
    for f in files {
        let s: sluice_runtime::Settings =
            sluice_core::settings::load(Some(&f)).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert_eq!(s.listen, "0.0.0.0:7070");
        assert_eq!(s.etcd.endpoints.len(), 5, "{}", f.display());
        assert_eq!(s.telemetry.otlp_endpoint, "http://otel-collector.observability:4317");
        let known = serde_json::to_value(&s).unwrap();
        let written: serde_json::Value = config::Config::builder()
            .add_source(config::File::from(f.as_path()))
            .build()
            .unwrap()
            .try_deserialize()
            .unwrap();
        assert_known(&written, &known, &f.display().to_string());
    }
}

fn assert_known(written: &serde_json::Value, known: &serde_json::Value, path: &str) {
    if let (Some(w), Some(k)) = (written.as_object(), known.as_object()) {
        for (key, v) in w {
            let inner = k.get(key).unwrap_or_else(|| panic!("{path}: key '{key}' is unknown to the services"));
            assert_known(v, inner, &format!("{path}.{key}"));
        }
    }
}
