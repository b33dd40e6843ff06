//! The bench harness must never rot: `weft-bench run --quick` runs every scenario
//! against every available system and reports zero errors. This asserts that the
//! harness works, never how fast anything is.

use std::path::Path;
use std::process::Command;

#[test]
fn quick_run_covers_every_scenario_without_errors() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let status = Command::new(env!("CARGO"))
        .args(["build", "-q", "-p", "weft-bench", "-p", "weft-gateway"])
        .current_dir(&root)
        .status()
        .unwrap();
    assert!(status.success());
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let out = tempfile::tempdir().unwrap();
    let o = Command::new(target.join("debug/weft-bench"))
        .args(["run", "--quick", "--out"])
        .arg(out.path())
        .arg("--weft-bin")
        .arg(target.join("debug/weft"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    // weft-bench exits non-zero when any run recorded an error.
    assert!(o.status.success(), "weft-bench failed:\n{stderr}");
    let table = String::from_utf8_lossy(&o.stdout);
    for scenario in [
        "h1-keepalive",
        "h2-multiplexed",
        "h2-multiplexed-h2load",
        "h2-local-response",
        "h1-fixed-rate",
        "h1-new-conn",
        "h1-large-body",
        "reload-under-load",
        "scale",
    ] {
        assert!(
            table.contains(&format!("| {scenario} |")),
            "{scenario} missing from:\n{table}"
        );
    }
    assert!(table.contains("idle keep-alive connections"), "{table}");
    assert!(table.contains("reload-swap: system"), "{table}");
    assert!(
        table.contains("| weft-io_uring | 1000 | loopback |"),
        "{table}"
    );
    let json: String = std::fs::read_to_string(out.path().join("results.json")).unwrap();
    assert!(
        json.contains("\"system\": \"weft-io_uring\"") && json.contains("\"system\": \"direct\"")
    );
    assert!(out.path().join("latency-h1-keepalive-c50.svg").is_file());
    assert!(out.path().join("scale.svg").is_file());
    // A smoke check says so, and leaves no private key (nor anything but results).
    assert!(table.starts_with("SMOKE CHECK (--quick)"), "{table}");
    let mut left = Vec::new();
    let mut dirs = vec![out.path().to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            if e.path().is_dir() {
                dirs.push(e.path());
            } else {
                left.push(e.path());
            }
        }
    }
    assert!(
        left.iter()
            .all(|p| !p.to_string_lossy().ends_with(".key")
                && !p.to_string_lossy().ends_with(".pem")),
        "{left:?}"
    );
}
