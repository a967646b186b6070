//! A client in a second language, generated from `proto/` at test time: the Python client in
//! `clients/python` (grpcio-tools from PyPI, in `.tools/venv`, installed by
//! `scripts/ensure-deps.sh`) drives admin, a produce stream, fetch streams under the credit
//! rules and a consumer-group member against a real cluster of three partition nodes.

use std::path::PathBuf;
use std::time::Duration;

use sluice_tests::cluster_spec;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generated_python_client_produces_fetches_and_commits() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = std::env::var_os("SLUICE_TOOLS_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".tools/venv/bin/python"));
    assert!(python.exists(), "{} is missing: run scripts/ensure-deps.sh", python.display());
    let (c, _dir) = cluster_spec(3, 1, &[]).await;
    c.wait_coordinator().await.expect("a coordinator is active");
    let run = tokio::process::Command::new(&python)
        .args(["-m", "unittest", "-v", "test_client"])
        .current_dir(root.join("clients/python"))
        .env("SLUICE_GATEWAY", c.gateway())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .expect("the Python client finished within 180 s")
        .expect("python runs");
    let report = String::from_utf8_lossy(&out.stderr);
    eprintln!("{report}");
    assert!(out.status.success(), "the Python client's checks failed:\n{report}");
    assert!(report.contains("Ran 6 tests") && report.contains("OK"), "{report}");
}
