//! Test certificates: a CA and the leaves it signs, made with the openssl CLI in a
//! temporary directory (never committed keys).

use std::path::PathBuf;
use std::process::Command;

/// A test CA and leaf certificates it signs, in a temporary directory.
pub struct Pki {
    pub dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        let pki = Pki {
            dir: tempfile::tempdir().unwrap(),
        };
        pki.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=weft test CA",
        ]);
        pki
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn openssl(&self, args: &[&str]) {
        let o = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    /// A leaf `name.crt`/`name.key` for `sans` (e.g. "DNS:a.test"), signed by the CA,
    /// for `usage` ("serverAuth", "clientAuth" or both, comma-separated).
    pub fn leaf(&self, name: &str, cn: &str, sans: &str, usage: &str) {
        self.leaf_for_days(name, cn, sans, usage, 1);
    }

    /// `leaf` valid for `days` from now (0: it expires within the second).
    pub fn leaf_for_days(&self, name: &str, cn: &str, sans: &str, usage: &str, days: u32) {
        let extensions = format!("subjectAltName={sans}\nextendedKeyUsage={usage}\n");
        self.leaf_with_extensions(name, cn, &extensions, days);
    }

    /// A leaf `name.crt`/`name.key` with exactly `extensions` (openssl's extension
    /// file syntax, one per line), valid for `days`.
    pub fn leaf_with_extensions(&self, name: &str, cn: &str, extensions: &str, days: u32) {
        std::fs::write(self.path(&format!("{name}.ext")), extensions).unwrap();
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={cn}"),
        ]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &format!("{name}.crt"),
            "-days",
            &days.to_string(),
            "-extfile",
            &format!("{name}.ext"),
        ]);
    }
}

pub const SERVER: &str = "serverAuth";
pub const CLIENT: &str = "clientAuth";
