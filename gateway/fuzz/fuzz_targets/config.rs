//! Any text as a config file: parse and compile never panic; errors name a key.
#![no_main]
use libfuzzer_sys::fuzz_target;
use weft_mesh::config::{self, Role};
use weft_mesh::snapshot;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for role in [Role::Ingress, Role::Sidecar] {
        if let Ok(loaded) = config::parse(std::path::Path::new("/nonexistent/fuzz.toml"), text, role) {
            let _ = snapshot::compile(&loaded);
        }
    }
});
