//! The workspace's `rust-version` is the real minimum: no crate it builds (its own or a
//! dependency) asks for a newer Rust. (`.ci/run` checks the std APIs weft's own code
//! uses against it with clippy's `incompatible_msrv`.)

use std::process::Command;

fn version(v: &str) -> Vec<u64> {
    v.split('.').map(|p| p.parse().unwrap_or(0)).collect()
}

#[test]
fn rust_version_covers_every_dependency() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1"])
        .current_dir(root)
        .output()
        .expect("cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let packages = meta["packages"].as_array().expect("packages");
    let declared = packages
        .iter()
        .find(|p| p["name"] == "weft-gateway")
        .and_then(|p| p["rust_version"].as_str())
        .expect("weft-gateway declares a rust-version");
    for p in packages {
        if let Some(needs) = p["rust_version"].as_str() {
            assert!(
                version(needs) <= version(declared),
                "{} {} needs Rust {needs}, more than the declared {declared}",
                p["name"],
                p["version"]
            );
        }
    }
}
