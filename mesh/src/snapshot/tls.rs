//! TLS settings compiled into rustls configs: certificates are read and checked here,
//! once per config load, so a bad file refuses the config (naming the key) and a good
//! one is in the snapshot, used by the next handshake after a reload.
//!
//! The crypto provider is aws-lc-rs, explicitly (never rustls' process default): it is
//! rustls' default provider, the fastest for the ECDSA P-256 and X25519 handshakes that
//! dominate, and its FIPS-capable build is what operators ask for. Only one provider is
//! compiled in.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::UpstreamProtocol;
use crate::config::{ClientAuthMode, ClusterTlsConfig, ListenerTlsConfig, UnknownSni};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;

/// The system CA bundle (Debian's ca-certificates), used when a cluster names no CA.
pub(crate) const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// TLS to a cluster's endpoints.
#[derive(Debug, Clone)]
pub struct ClusterTls {
    pub client: Arc<ClientConfig>,
    /// SNI and the name the upstream's certificate must carry.
    pub server_name: ServerName<'static>,
    /// Equal for equal TLS settings: connections are pooled per endpoint *and* this, so
    /// a connection made with one client certificate never serves another cluster.
    pub identity: u64,
}

/// Compiles a cluster's TLS; `first_host` is the host part of its first endpoint as
/// written (the default name to verify).
pub fn compile_cluster_tls(
    tls: &ClusterTlsConfig,
    protocol: UpstreamProtocol,
    first_host: &str,
    base: &Path,
    path: &str,
    error: &mut dyn FnMut(String, String),
) -> Option<ClusterTls> {
    let ca = tls
        .ca
        .as_deref()
        .map(|c| resolve(base, c))
        .unwrap_or_else(|| PathBuf::from(SYSTEM_ROOTS));
    let roots = match load_roots(&ca) {
        Ok(r) => r,
        Err(e) => {
            error(format!("{path}.ca"), e);
            return None;
        }
    };
    let name = tls.sni.as_deref().unwrap_or(first_host);
    let server_name = match ServerName::try_from(name.to_owned()) {
        Ok(n) => n,
        Err(_) => {
            error(
                format!("{path}.sni"),
                format!("`{name}` is not a DNS name or IP address"),
            );
            return None;
        }
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots));
    let builder = match builder {
        Ok(b) => b,
        Err(e) => {
            error(path.to_owned(), e.to_string());
            return None;
        }
    };
    let mut client = match (&tls.cert, &tls.key) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => {
            let loaded = load_chain_and_key(&resolve(base, cert), &resolve(base, key));
            match loaded.and_then(|(chain, private)| {
                // This proxy's own certificate: its problem is said as such, never as
                // a "peer certificate" (rustls' words for the chain it checks).
                webpki::EndEntityCert::try_from(&chain[0])
                    .map_err(|e| format!("{cert}: {}", certificate_problem(&e.to_string())))?;
                builder.with_client_auth_cert(chain, private).map_err(|e| {
                    format!("{cert} and {key}: {}", certificate_problem(&e.to_string()))
                })
            }) {
                Ok(c) => c,
                Err(e) => {
                    error(format!("{path}.cert"), e);
                    return None;
                }
            }
        }
        _ => {
            error(
                path.to_owned(),
                "mTLS needs both cert and key (or neither)".into(),
            );
            return None;
        }
    };
    client.alpn_protocols = vec![match protocol {
        UpstreamProtocol::Http1 => b"http/1.1".to_vec(),
        UpstreamProtocol::Http2 => b"h2".to_vec(),
    }];
    let identity = super::fnv1a(
        format!(
            "{}|{name}|{:?}|{:?}|{protocol:?}",
            ca.display(),
            tls.cert.as_deref().map(|c| resolve(base, c)),
            tls.key.as_deref().map(|k| resolve(base, k)),
        )
        .as_bytes(),
    )
    .max(1);
    Some(ClusterTls {
        client: Arc::new(client),
        server_name,
        identity,
    })
}

/// A listener's TLS termination, ready for handshakes.
#[derive(Debug)]
pub struct ListenerTls {
    pub server: Arc<ServerConfig>,
    pub handshake_timeout: Duration,
    pub forward_client_cert: bool,
    /// Client certificates: None when not asked for (for `weft check`).
    pub client_auth: Option<ClientAuthMode>,
    /// The SAN DNS names of the certificates, in order (for `weft check`).
    pub names: Vec<String>,
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Compiles `tls` (at key `path`); problems are reported through `error(key, problem)`.
pub fn compile_listener_tls(
    tls: &ListenerTlsConfig,
    base: &Path,
    path: &str,
    error: &mut dyn FnMut(String, String),
) -> Option<ListenerTls> {
    if tls.certificates.is_empty() {
        error(
            format!("{path}.certificates"),
            "a TLS listener needs at least one { cert, key }".into(),
        );
        return None;
    }
    let mut certs = Vec::new();
    for (i, c) in tls.certificates.iter().enumerate() {
        let key_path = format!("{path}.certificates[{i}]");
        match load_certified_key(&resolve(base, &c.cert), &resolve(base, &c.key)) {
            Ok(named) => certs.push(named),
            Err(e) => error(key_path, e),
        }
    }
    for (i, proto) in tls.alpn.iter().enumerate() {
        if proto != "h2" && proto != "http/1.1" {
            error(
                format!("{path}.alpn[{i}]"),
                format!("`{proto}` is not a protocol weft serves (\"h2\" or \"http/1.1\")"),
            );
        }
    }
    let versions: &[&'static rustls::SupportedProtocolVersion] = match tls.min_version.as_str() {
        "1.2" => &[&rustls::version::TLS13, &rustls::version::TLS12],
        "1.3" => &[&rustls::version::TLS13],
        other => {
            error(
                format!("{path}.min_version"),
                format!("`{other}` is not \"1.2\" or \"1.3\""),
            );
            return None;
        }
    };
    let verifier = match &tls.client_auth {
        None => None,
        Some(auth) => {
            let roots = match load_roots(&resolve(base, &auth.ca)) {
                Ok(r) => r,
                Err(e) => {
                    error(format!("{path}.client_auth.ca"), e);
                    return None;
                }
            };
            let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
            let builder = match auth.mode {
                ClientAuthMode::Require => builder,
                ClientAuthMode::Optional => builder.allow_unauthenticated(),
            };
            match builder.build() {
                Ok(v) => Some(v),
                Err(e) => {
                    error(format!("{path}.client_auth"), e.to_string());
                    return None;
                }
            }
        }
    };
    let mut chosen = provider();
    if let Some(names) = &tls.cipher_suites {
        let all = chosen.cipher_suites.clone();
        let mut suites = Vec::new();
        for (i, name) in names.iter().enumerate() {
            match all
                .iter()
                .find(|s| s.suite().as_str() == Some(name.as_str()))
            {
                Some(s) => suites.push(*s),
                None => error(
                    format!("{path}.cipher_suites[{i}]"),
                    format!("`{name}` is not a cipher suite rustls offers"),
                ),
            }
        }
        if suites.len() != names.len() || suites.is_empty() {
            return None;
        }
        Arc::make_mut(&mut chosen).cipher_suites = suites;
    }
    if certs.len() != tls.certificates.len() {
        return None;
    }
    let builder = match ServerConfig::builder_with_provider(chosen).with_protocol_versions(versions)
    {
        Ok(b) => b,
        Err(e) => {
            error(format!("{path}.min_version"), e.to_string());
            return None;
        }
    };
    let builder = match verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let names = certs.iter().flat_map(|c| c.names.iter().cloned()).collect();
    let mut server = builder.with_cert_resolver(Arc::new(SniResolver {
        certs,
        unknown: tls.unknown_sni,
    }));
    server.alpn_protocols = tls.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    // Stateless tickets: resumption without per-worker session caches to share.
    if let Some(ticketer) = process_ticketer() {
        server.ticketer = ticketer;
    }
    Some(ListenerTls {
        server: Arc::new(server),
        handshake_timeout: tls.handshake_timeout.0,
        forward_client_cert: tls.forward_client_cert,
        client_auth: tls.client_auth.as_ref().map(|a| a.mode),
        names,
    })
}

fn resolve(base: &Path, file: &str) -> PathBuf {
    let p = Path::new(file);
    if p.is_absolute() {
        p.to_owned()
    } else {
        base.join(p)
    }
}

/// A certificate chain and key, with the SNI names the leaf covers.
#[derive(Debug)]
struct NamedCert {
    key: Arc<CertifiedKey>,
    /// Lowercase SAN DNS names; `*.example.com` wildcards kept as written.
    names: Vec<String>,
}

/// A PEM certificate chain (leaf first) and its private key.
fn load_chain_and_key(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("cannot read certificate {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad PEM in {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("no certificate in {}", cert.display()));
    }
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read private key {}: {e}", key.display()))?;
    Ok((chain, private))
}

fn load_certified_key(cert: &Path, key: &Path) -> Result<NamedCert, String> {
    let (chain, private) = load_chain_and_key(cert, key)?;
    let leaf = &chain[0];
    let names = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| {
            format!(
                "{} is not a usable certificate: {}",
                cert.display(),
                certificate_problem(&e.to_string())
            )
        })?
        .valid_dns_names()
        .map(|n| n.to_ascii_lowercase())
        .collect();
    let certified = CertifiedKey::from_der(chain, private, &provider())
        .map_err(|e| format!("{} and {}: {e}", cert.display(), key.display()))?;
    Ok(NamedCert {
        key: Arc::new(certified),
        names,
    })
}

/// What is wrong with a certificate weft loads, in words and with the fix, from
/// webpki's error (whose text is its variant name, possibly wrapped by rustls:
/// `Other(OtherError(UnsupportedCertVersion))`).
pub fn certificate_problem(error: &str) -> String {
    const KNOWN: [(&str, &str); 8] = [
        (
            "UnsupportedCertVersion",
            "an X.509 v1 certificate: re-issue it as v3, with a subjectAltName (config/mesh/make-certs.sh shows how)",
        ),
        ("BadDerTime", "a validity time that is not well-formed"),
        ("BadDer", "not well-formed DER: is the file a PEM certificate?"),
        ("CertExpired", "expired: renew it"),
        ("CertNotValidYet", "not valid yet: check this host's clock"),
        (
            "UnsupportedCriticalExtension",
            "a critical extension weft cannot check: re-issue it without it",
        ),
        (
            "MissingOrMalformedExtensions",
            "its X.509 v3 extensions are missing or malformed",
        ),
        (
            "UnsupportedSignatureAlgorithm",
            "signed with an algorithm weft does not accept (use ECDSA P-256/P-384, RSA-PSS or RSA PKCS#1 with SHA-256 or better, or Ed25519)",
        ),
    ];
    KNOWN
        .iter()
        .find(|(name, _)| error.contains(name))
        .map(|(_, words)| (*words).to_owned())
        .unwrap_or_else(|| error.to_owned())
}

/// Trust anchors from a PEM bundle.
pub fn load_roots(file: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(file)
        .map_err(|e| format!("cannot read CA bundle {}: {e}", file.display()))?;
    for c in certs {
        let c = c.map_err(|e| format!("bad PEM in {}: {e}", file.display()))?;
        roots.add(c).map_err(|e| {
            format!(
                "bad CA certificate in {}: {}",
                file.display(),
                certificate_problem(&e.to_string())
            )
        })?;
    }
    if roots.is_empty() {
        return Err(format!("no CA certificate in {}", file.display()));
    }
    Ok(roots)
}

/// Picks the certificate by SNI: an exact SAN match first, then a wildcard one
/// (`*.example.com` covers one label), then the first certificate unless unknown
/// names are to be refused.
#[derive(Debug)]
struct SniResolver {
    certs: Vec<NamedCert>,
    unknown: UnknownSni,
}

impl SniResolver {
    fn find(&self, sni: &str) -> Option<&Arc<CertifiedKey>> {
        let sni = sni.to_ascii_lowercase();
        let exact = self
            .certs
            .iter()
            .find(|c| c.names.iter().any(|n| *n == sni));
        let wildcard = || {
            let (_, parent) = sni.split_once('.')?;
            self.certs
                .iter()
                .find(|c| c.names.iter().any(|n| n.strip_prefix("*.") == Some(parent)))
        };
        exact.or_else(wildcard).map(|c| &c.key)
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let found = hello.server_name().and_then(|sni| self.find(sni));
        match (found, self.unknown) {
            (Some(k), _) => Some(k.clone()),
            (None, UnknownSni::Default) => self.certs.first().map(|c| c.key.clone()),
            (None, UnknownSni::Reject) => None,
        }
    }
}

/// One ticketer for the process, shared by every TLS listener of every snapshot: a
/// ticketer made per compile (every reload) made every client's ticket useless after
/// each one, so all resumed with full handshakes. rustls rotates its keys on its own
/// (every 6 hours, the previous key still accepted).
fn process_ticketer() -> Option<Arc<dyn rustls::server::ProducesTickets>> {
    static TICKETER: std::sync::OnceLock<Option<Arc<dyn rustls::server::ProducesTickets>>> =
        std::sync::OnceLock::new();
    TICKETER
        .get_or_init(|| rustls::crypto::aws_lc_rs::Ticketer::new().ok())
        .clone()
}
