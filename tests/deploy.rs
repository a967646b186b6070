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
