//! TLS termination with real clients: curl (OpenSSL) over HTTP/1.1 and HTTP/2 (ALPN),
//! `openssl s_client` for SNI, client certificates and a connection kept open across a
//! certificate reload. Certificates are made fresh by each test with the openssl CLI.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use weft_tests::pki::{Pki, CLIENT, SERVER};
use weft_tests::upstream::{big_body_byte, sha256_hex, TestUpstream};
use weft_tests::{free_addr, Weft};

fn tls_config(listen: SocketAddr, admin: SocketAddr, app: SocketAddr, extra_tls: &str) -> String {
    format!(
        r#"
[admin]
address = "{admin}"

[[listeners]]
name = "public-tls"
address = "{listen}"
tls = {{ certificates = [ {{ cert = "a.crt", key = "a.key" }}, {{ cert = "b.crt", key = "b.key" }} ], alpn = ["h2", "http/1.1"], handshake_timeout = "500ms" {extra_tls} }}
routes = [
  {{ match = {{ path = "/" }}, direct_response = {{ status = 200, body = "hello over tls\n" }} }},
  {{ match = {{ path = "/whoami", headers = [{{ name = "x-forwarded-client-cert", regex = ".*;URI=spiffe://test/client-1(;.*)?" }}] }}, direct_response = {{ status = 200, body = "client-1\n" }} }},
  {{ match = {{ path_prefix = "/api/" }}, cluster = "app" }},
  {{ match = {{ path = "/moved" }}, redirect = {{ status = 301, path = "/new-home" }} }},
]

[clusters.app]
endpoints = ["{app}"]
"#
    )
}

/// A redirect that keeps the request's scheme sends a TLS client to `https://`, over
/// HTTP/1.1 and HTTP/2 (it once defaulted to `http`).
#[test]
fn a_redirect_on_a_tls_listener_keeps_https() {
    let pki = Pki::new();
    let (_weft, listen, _app) = start(&pki, "");
    for flag in ["--http1.1", "--http2"] {
        let (ok, out) = curl(&pki, listen, "a.test", &[flag, "-sI"], "/moved");
        let want = format!("location: https://a.test:{}/new-home", listen.port());
        assert!(
            ok && out.to_ascii_lowercase().contains(&want),
            "{flag}: {out}"
        );
    }
}

/// weft with a TLS listener whose config file sits next to the certificates.
fn start(pki: &Pki, extra_tls: &str) -> (Weft, SocketAddr, TestUpstream) {
    pki.leaf("a", "a.test", "DNS:a.test,DNS:*.wild.test", SERVER);
    pki.leaf("b", "b.test", "DNS:b.test", SERVER);
    let app = TestUpstream::start("app");
    let (listen, admin) = (free_addr(), free_addr());
    let config = tls_config(listen, admin, app.addr, extra_tls);
    // Relative certificate paths resolve against the config file's directory.
    let weft = Weft::start_in(pki.dir.path(), "ingress", &config, admin);
    (weft, listen, app)
}

fn curl(pki: &Pki, listen: SocketAddr, host: &str, args: &[&str], path: &str) -> (bool, String) {
    let o = Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(pki.path("ca.crt"))
        .arg("--resolve")
        .arg(format!("{host}:{}:127.0.0.1", listen.port()))
        .args(args)
        .arg(format!("https://{host}:{}{path}", listen.port()))
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
    )
}

/// curl's arguments to present `name.crt`/`name.key` of `pki` as the client certificate.
fn cert_args(pki: &Pki, name: &str) -> Vec<String> {
    let file = |ext: &str| pki.path(&format!("{name}.{ext}")).display().to_string();
    vec!["--cert".into(), file("crt"), "--key".into(), file("key")]
}

/// The subject CN of the certificate weft serves for `sni`.
fn served_cn(listen: SocketAddr, sni: &str) -> String {
    let o = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &listen.to_string(),
            "-servername",
            sni,
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("subject=").map(|s| s.trim().to_owned()))
        .unwrap_or_default()
}

#[test]
fn https_over_http1_and_h2_with_sni_and_bodies() {
    let pki = Pki::new();
    let (weft, listen, _app) = start(&pki, "");
    for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let (ok, out) = curl(
            &pki,
            listen,
            "a.test",
            &[flag, "-w", "|%{http_version}"],
            "/",
        );
        assert!(ok, "{out}");
        assert_eq!(out, format!("hello over tls\n|{version}"));
    }
    // SNI picks the certificate: exact names, a wildcard, and the first as the default.
    assert!(served_cn(listen, "a.test").contains("a.test"));
    assert!(served_cn(listen, "b.test").contains("b.test"));
    assert!(served_cn(listen, "x.wild.test").contains("a.test"));
    assert!(served_cn(listen, "nobody.test").contains("a.test"));
    let (ok, out) = curl(&pki, listen, "b.test", &["--http2"], "/");
    assert!(ok, "verified against b's certificate: {out}");

    // Forwarded over both protocols, with a 10 MiB body each way; the upstream learns
    // the client spoke https.
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..10 * 1024 * 1024).map(big_body_byte).collect();
    let file = dir.path().join("up");
    std::fs::write(&file, &data).unwrap();
    for flag in ["--http1.1", "--http2"] {
        let upload = format!("@{}", file.display());
        let (ok, out) = curl(
            &pki,
            listen,
            "a.test",
            &[flag, "--data-binary", &upload],
            "/api/sha256",
        );
        assert!(ok, "{out}");
        assert_eq!(
            out,
            format!("{} {}", sha256_hex(&data), data.len()),
            "{flag}"
        );
        let o = Command::new("curl")
            .args(["-sS", flag, "--cacert"])
            .arg(pki.path("ca.crt"))
            .arg("--resolve")
            .arg(format!("a.test:{}:127.0.0.1", listen.port()))
            .arg(format!(
                "https://a.test:{}/api/big?n={}",
                listen.port(),
                data.len()
            ))
            .output()
            .unwrap();
        assert_eq!(sha256_hex(&o.stdout), sha256_hex(&data), "{flag} download");
        let (_, dump) = curl(&pki, listen, "a.test", &[flag], "/api/dump");
        assert!(dump.contains("x-forwarded-proto: https"), "{dump}");
    }
    drop(weft);
}

#[test]
fn bad_handshakes_close_cleanly_and_are_counted() {
    let pki = Pki::new();
    let (weft, listen, _app) = start(&pki, ", unknown_sni = \"reject\"");
    // Plain HTTP to the TLS port.
    let mut s = TcpStream::connect(listen).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(
        !String::from_utf8_lossy(&buf).contains("200"),
        "served plain HTTP"
    );
    // A client that stalls mid-handshake is cut off after handshake_timeout (500 ms).
    let started = Instant::now();
    let mut s = TcpStream::connect(listen).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).unwrap(); // a ClientHello's start
    let mut byte = [0u8; 1];
    assert!(matches!(s.read(&mut byte), Ok(0) | Err(_)));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // A handshake cut off half way.
    let mut s = TcpStream::connect(listen).unwrap();
    s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])
        .unwrap();
    drop(s);
    // An SNI no certificate covers is refused when so configured.
    let (ok, _) = curl(&pki, listen, "nobody.test", &["-k"], "/");
    assert!(!ok, "unknown SNI was served");
    // Each counted by reason; the listener still serves good clients.
    let (ok, out) = curl(&pki, listen, "a.test", &[], "/");
    assert!(ok, "{out}");
    std::thread::sleep(Duration::from_millis(200));
    let metrics = weft.admin_get("/metrics").1;
    for reason in ["not_tls", "timeout", "refused", "eof"] {
        assert!(
            metrics.contains(&format!(
                "weft_tls_handshake_failures_total{{listener=\"public-tls\",reason=\"{reason}\"}}"
            )),
            "{reason} missing:\n{metrics}"
        );
    }
}

#[test]
fn client_certificates_are_required_when_configured() {
    let pki = Pki::new();
    pki.leaf("client", "client-1", "URI:spiffe://test/client-1", CLIENT);
    let (weft, listen, _app) = start(
        &pki,
        ", client_auth = { ca = \"ca.crt\", mode = \"require\" }",
    );
    let (ok, out) = curl(&pki, listen, "a.test", &[], "/");
    assert!(!ok, "served without a client certificate: {out}");
    let owned = cert_args(&pki, "client");
    let with_cert: Vec<&str> = owned.iter().map(String::as_str).collect();
    let (ok, out) = curl(&pki, listen, "a.test", &with_cert, "/");
    assert!(ok, "{out}");
    assert_eq!(out, "hello over tls\n");
    // The verified identity routes, over both protocols, and goes upstream; a header
    // of that name sent by the client is never believed.
    for flag in ["--http1.1", "--http2"] {
        let mut args = with_cert.to_vec();
        args.push(flag);
        let (ok, out) = curl(&pki, listen, "a.test", &args, "/whoami");
        assert!(ok && out == "client-1\n", "{flag}: {out}");
        args.extend(["-H", "x-forwarded-client-cert: URI=spiffe://evil/admin"]);
        let (_, dump) = curl(&pki, listen, "a.test", &args, "/api/dump");
        assert!(
            dump.contains(";URI=spiffe://test/client-1"),
            "{flag}: {dump}"
        );
        assert!(!dump.contains("evil"), "{flag}: {dump}");
    }
    // An expired certificate is refused, and counted as a bad client certificate.
    pki.leaf_for_days(
        "expired",
        "client-1",
        "URI:spiffe://test/client-1",
        CLIENT,
        0,
    );
    std::thread::sleep(Duration::from_millis(1100));
    let owned = cert_args(&pki, "expired");
    let args: Vec<&str> = owned.iter().map(String::as_str).collect();
    let (ok, _) = curl(&pki, listen, "a.test", &args, "/");
    assert!(!ok, "an expired client certificate was accepted");
    std::thread::sleep(Duration::from_millis(100));
    let metrics = weft.admin_get("/metrics").1;
    assert!(
        metrics.contains("reason=\"bad_client_certificate\""),
        "{metrics}"
    );
    // A certificate from another CA is refused.
    let other = Pki::new();
    other.leaf("client", "stranger", "URI:spiffe://other/x", CLIENT);
    let owned = cert_args(&other, "client");
    let args: Vec<&str> = owned.iter().map(String::as_str).collect();
    let (ok, _) = curl(&pki, listen, "a.test", &args, "/");
    assert!(!ok, "a stranger's certificate was accepted");
}

#[test]
fn certificate_reload_serves_new_handshakes_and_keeps_old_connections() {
    let pki = Pki::new();
    let (weft, listen, _app) = start(&pki, "");
    // An established connection, kept open by openssl s_client.
    let mut old = Command::new("openssl")
        .args([
            "s_client",
            "-quiet",
            "-connect",
            &listen.to_string(),
            "-servername",
            "a.test",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut old_in = old.stdin.take().unwrap();
    let mut old_out = BufReader::new(old.stdout.take().unwrap());
    let ask = |w: &mut std::process::ChildStdin, r: &mut BufReader<std::process::ChildStdout>| {
        w.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
            .unwrap();
        let mut status = String::new();
        r.read_line(&mut status).unwrap();
        let mut line = String::new();
        while r.read_line(&mut line).unwrap() > 0 && line != "\r\n" {
            line.clear();
        }
        let mut body = [0u8; 15];
        r.read_exact(&mut body).unwrap();
        status
    };
    assert!(ask(&mut old_in, &mut old_out).starts_with("HTTP/1.1 200"));
    let before = served_cn(listen, "a.test");
    assert!(before.contains("a.test"), "{before}");

    // New certificate for a.test (a new CN shows which one is served), then SIGHUP.
    pki.leaf("a2", "a.test renewed", "DNS:a.test", SERVER);
    let text = std::fs::read_to_string(&weft.config_path).unwrap();
    std::fs::write(
        &weft.config_path,
        text.replace("\"a.crt\"", "\"a2.crt\"")
            .replace("\"a.key\"", "\"a2.key\""),
    )
    .unwrap();
    let version = weft.metric(&["weft_config_version"]);
    weft.signal(1);
    let deadline = Instant::now() + Duration::from_secs(5);
    while weft.metric(&["weft_config_version"]) <= version {
        assert!(Instant::now() < deadline, "reload not applied");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        served_cn(listen, "a.test").contains("renewed"),
        "new handshakes get the new certificate"
    );
    assert!(
        ask(&mut old_in, &mut old_out).starts_with("HTTP/1.1 200"),
        "the old connection still works"
    );

    // A key that does not match its certificate is refused; the running config stays.
    let text = std::fs::read_to_string(&weft.config_path).unwrap();
    std::fs::write(&weft.config_path, text.replace("\"a2.key\"", "\"b.key\"")).unwrap();
    weft.signal(1);
    let deadline = Instant::now() + Duration::from_secs(5);
    while weft.metric(&["weft_config_reload_failures_total"]) < 1.0 {
        assert!(Instant::now() < deadline, "bad reload not reported");
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = weft.admin_get("/config").1;
    assert!(status.contains("certificates[0]"), "{status}");
    assert!(served_cn(listen, "a.test").contains("renewed"));
    let _ = old.kill();
}

#[test]
fn weft_check_names_the_key_of_a_bad_certificate() {
    let pki = Pki::new();
    pki.leaf("a", "a.test", "DNS:a.test", SERVER);
    let config = format!(
        r#"
[[listeners]]
name = "tls"
address = "127.0.0.1:{}"
tls = {{ certificates = [ {{ cert = "a.crt", key = "missing.key" }} ], alpn = ["h3"], cipher_suites = ["TLS_RSA_WITH_RC4_128_MD5"] }}
routes = [ {{ match = {{ path = "/" }}, direct_response = {{ status = 200 }} }} ]
"#,
        free_addr().port()
    );
    let file = pki.path("bad.toml");
    std::fs::write(&file, config).unwrap();
    let o = weft_tests::process::weft_output(&["check", "--config", file.to_str().unwrap()]);
    let text =
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        text.contains("listeners[0].tls.certificates[0]") && text.contains("missing.key"),
        "{text}"
    );
    assert!(text.contains("listeners[0].tls.alpn[0]"), "{text}");
    assert!(text.contains("listeners[0].tls.cipher_suites[0]"), "{text}");
}

/// A rustls server config for a test upstream, optionally requiring client certificates
/// from the test CA.
fn upstream_tls(pki: &Pki, name: &str, require_client: bool) -> rustls::ServerConfig {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(pki.path(&format!("{name}.crt")))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
    let key = PrivateKeyDer::from_pem_file(pki.path(&format!("{name}.key"))).unwrap();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = if require_client {
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_file_iter(pki.path("ca.crt")).unwrap() {
            roots.add(ca.unwrap()).unwrap();
        }
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                .build()
                .unwrap();
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    builder.with_single_cert(chain, key).unwrap()
}

#[test]
fn tls_to_upstreams_over_http1_and_h2_with_mtls_and_bad_certificates() {
    let pki = Pki::new();
    pki.leaf("billing", "billing", "DNS:billing.internal", SERVER);
    pki.leaf("weft-client", "weft", "URI:spiffe://test/weft", CLIENT);
    let h1 = TestUpstream::start_tls("tls-h1", false, upstream_tls(&pki, "billing", false));
    let h2 = TestUpstream::start_tls("tls-h2", true, upstream_tls(&pki, "billing", false));
    let mtls = TestUpstream::start_tls("tls-mtls", false, upstream_tls(&pki, "billing", true));
    let other = Pki::new();
    let (listen, admin) = (free_addr(), free_addr());
    let config = format!(
        r#"
[admin]
address = "{admin}"

[[listeners]]
name = "plain"
address = "{listen}"
routes = [
  {{ match = {{ path_prefix = "/h1/" }}, cluster = "h1", prefix_rewrite = "/" }},
  {{ match = {{ path_prefix = "/h2/" }}, cluster = "h2", prefix_rewrite = "/" }},
  {{ match = {{ path_prefix = "/mtls/" }}, cluster = "mtls", prefix_rewrite = "/" }},
  {{ match = {{ path_prefix = "/no-cert/" }}, cluster = "no_cert", prefix_rewrite = "/" }},
  {{ match = {{ path_prefix = "/wrong-name/" }}, cluster = "wrong_name", prefix_rewrite = "/" }},
  {{ match = {{ path_prefix = "/untrusted/" }}, cluster = "untrusted", prefix_rewrite = "/" }},
]

[clusters.h1]
endpoints = ["{h1}"]
tls = {{ ca = "ca.crt", sni = "billing.internal" }}

[clusters.h2]
protocol = "http2"
endpoints = ["{h2}"]
tls = {{ ca = "ca.crt", sni = "billing.internal" }}

[clusters.mtls]
endpoints = ["{mtls}"]
tls = {{ ca = "ca.crt", sni = "billing.internal", cert = "weft-client.crt", key = "weft-client.key" }}

[clusters.no_cert]
endpoints = ["{mtls}"]
tls = {{ ca = "ca.crt", sni = "billing.internal" }}

[clusters.wrong_name]
endpoints = ["{h1}"]
tls = {{ ca = "ca.crt", sni = "payments.internal" }}

[clusters.untrusted]
endpoints = ["{h1}"]
tls = {{ ca = "{other_ca}", sni = "billing.internal" }}
"#,
        h1 = h1.addr,
        h2 = h2.addr,
        mtls = mtls.addr,
        other_ca = other.path("ca.crt").display(),
    );
    let _weft = Weft::start_in(pki.dir.path(), "ingress", &config, admin);
    let get = |path: &str, args: &[&str]| {
        let o = Command::new("curl")
            .args(["-sS", "-o", "-", "-w", "|%{http_code}"])
            .args(args)
            .arg(format!("http://{listen}{path}"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    for prefix in ["/h1", "/h2", "/mtls"] {
        let out = get(&format!("{prefix}/dump"), &[]);
        assert!(out.ends_with("|200"), "{prefix}: {out}");
        // The client's Host went upstream as the request authority.
        assert!(out.contains(&listen.to_string()), "{prefix}: {out}");
    }
    let h2_dump = get("/h2/dump", &[]);
    assert!(h2_dump.contains("version=HTTP/2.0"), "{h2_dump}");
    // #17 item 19: `:scheme` names the TLS leg.
    assert!(h2_dump.contains("target=https://"), "{h2_dump}");
    // h2 over TLS with a 10 MiB upload, and an h2c client in front.
    let data: Vec<u8> = (0..10 * 1024 * 1024).map(big_body_byte).collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("up");
    std::fs::write(&file, &data).unwrap();
    let upload = format!("@{}", file.display());
    for args in [vec!["--http1.1"], vec!["--http2-prior-knowledge"]] {
        let mut a = args.clone();
        a.extend(["--data-binary", upload.as_str()]);
        let out = get("/h2/sha256", &a);
        assert_eq!(
            out,
            format!("{} {}|200", sha256_hex(&data), data.len()),
            "{args:?}"
        );
    }
    // Without the client certificate the upstream refuses the connection (in TLS 1.3 it
    // says so after the client's side of the handshake is done): a 502. The pooled mTLS
    // connections to the same endpoint are never lent to this cluster.
    let o = Command::new("curl")
        .args(["-sS", "-D", "-", "-o", "/dev/null"])
        .arg(format!("http://{listen}/no-cert/dump"))
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&o.stdout);
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    // An upstream certificate that does not verify is a 502 with the reason.
    for path in ["/wrong-name/dump", "/untrusted/dump"] {
        let o = Command::new("curl")
            .args(["-sS", "-D", "-", "-o", "/dev/null"])
            .arg(format!("http://{listen}{path}"))
            .output()
            .unwrap();
        let head = String::from_utf8_lossy(&o.stdout);
        assert!(head.starts_with("HTTP/1.1 502"), "{path}: {head}");
        assert!(
            head.contains("x-weft-error: upstream TLS handshake failed"),
            "{path}: {head}"
        );
    }
}

/// The billing sidecar: its inbound requires a client certificate of the test CA and
/// hands calls to a test app. Returns it, its inbound address and the app.
fn billing_sidecar(pki: &Pki) -> (Weft, SocketAddr, TestUpstream) {
    let billing_app = TestUpstream::start("billing-app");
    let (b_in, b_out, b_admin) = (free_addr(), free_addr(), free_addr());
    let billing = Weft::start_in(
        pki.dir.path(),
        "sidecar",
        &format!(
            r#"
[admin]
address = "{b_admin}"

[sidecar.inbound]
address = "{b_in}"
app = "{}"
tls = {{ certificates = [ {{ cert = "billing.crt", key = "billing.key" }} ], client_auth = {{ ca = "ca.crt", mode = "require" }} }}

[sidecar.outbound]
address = "{b_out}"
"#,
            billing_app.addr
        ),
        b_admin,
    );
    (billing, b_in, billing_app)
}

/// The orders sidecar, whose `billing` cluster reaches `b_in` with `cluster_tls`.
/// Returns it and its outbound address.
fn orders_sidecar(pki: &Pki, b_in: SocketAddr, cluster_tls: &str) -> (Weft, SocketAddr) {
    let (o_in, o_out, o_admin) = (free_addr(), free_addr(), free_addr());
    let orders = Weft::start_in(
        pki.dir.path(),
        "sidecar",
        &format!(
            r#"
[admin]
address = "{o_admin}"

[sidecar.inbound]
address = "{o_in}"
app = "127.0.0.1:9"

[sidecar.outbound]
address = "{o_out}"

[clusters.billing]
endpoints = ["{b_in}"]
tls = {cluster_tls}
"#
        ),
        o_admin,
    );
    (orders, o_out)
}

#[test]
fn sidecars_talk_mtls_and_the_app_learns_the_caller() {
    let pki = Pki::new();
    // Each sidecar's certificate serves its inbound listener and its outbound calls.
    let both = "serverAuth,clientAuth";
    pki.leaf(
        "orders",
        "orders",
        "URI:spiffe://mesh/orders,DNS:orders.mesh",
        both,
    );
    pki.leaf(
        "billing",
        "billing",
        "URI:spiffe://mesh/billing,DNS:billing.mesh",
        both,
    );
    let (billing, b_in, _billing_app) = billing_sidecar(&pki);
    let (_orders, o_out) = orders_sidecar(
        &pki,
        b_in,
        r#"{ ca = "ca.crt", sni = "billing.mesh", cert = "orders.crt", key = "orders.key" }"#,
    );
    // The orders app calls http://billing/... on its outbound sidecar.
    let o = Command::new("curl")
        .args(["-sS", "-H", "host: billing"])
        .arg(format!("http://{o_out}/invoice/7"))
        .output()
        .unwrap();
    let dump = String::from_utf8_lossy(&o.stdout);
    assert!(dump.contains("upstream=billing-app"), "{dump}");
    assert!(
        dump.contains(";URI=spiffe://mesh/orders;DNS=orders.mesh")
            && dump.contains("x-forwarded-client-cert: Hash="),
        "{dump}"
    );
    // Without a client certificate the billing sidecar refuses the connection.
    let o = Command::new("curl")
        .args(["-sS", "-k", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("https://{b_in}/"))
        .output()
        .unwrap();
    assert_ne!(String::from_utf8_lossy(&o.stdout), "200");
    drop(billing);
}

#[test]
fn optional_client_certificates_and_chosen_cipher_suites() {
    let pki = Pki::new();
    pki.leaf("client", "client-1", "URI:spiffe://test/client-1", CLIENT);
    let (_weft, listen, _app) = start(
        &pki,
        ", client_auth = { ca = \"ca.crt\", mode = \"optional\" }, cipher_suites = [\"TLS13_CHACHA20_POLY1305_SHA256\", \"TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256\"]",
    );
    // Without a certificate: served, but the identity route does not match.
    let (ok, out) = curl(&pki, listen, "a.test", &[], "/");
    assert!(ok && out == "hello over tls\n", "{out}");
    let (_, out) = curl(
        &pki,
        listen,
        "a.test",
        &["-o", "/dev/null", "-w", "%{http_code}"],
        "/whoami",
    );
    assert_eq!(out, "404");
    let owned = cert_args(&pki, "client");
    let args: Vec<&str> = owned.iter().map(String::as_str).collect();
    let (ok, out) = curl(&pki, listen, "a.test", &args, "/whoami");
    assert!(ok && out == "client-1\n", "{out}");
    // Only the configured suites are offered.
    let suite = |ciphersuites: &str| {
        let o = Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &listen.to_string(),
                "-servername",
                "a.test",
            ])
            .args(["-tls1_3", "-ciphersuites", ciphersuites])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).contains("Cipher is ")
            && !String::from_utf8_lossy(&o.stdout).contains("Cipher is (NONE)")
    };
    assert!(suite("TLS_CHACHA20_POLY1305_SHA256"));
    assert!(!suite("TLS_AES_128_GCM_SHA256"));
}

/// A SIGHUP with the TOML unchanged once kept rotated certificates and a CA removed
/// from a bundle in service (`reload: config unchanged`): files are compared by content.
#[test]
fn a_reload_rereads_rotated_certificates_and_revoked_cas_with_the_text_unchanged() {
    let pki = Pki::new();
    let other = Pki::new();
    other.leaf("client2", "client-2", "URI:spiffe://test/client-2", CLIENT);
    // The bundle trusts both CAs at first.
    let bundle = |cas: &[&Pki]| {
        let text: String = cas
            .iter()
            .map(|p| std::fs::read_to_string(p.path("ca.crt")).unwrap())
            .collect();
        std::fs::write(pki.path("bundle.crt"), text).unwrap();
    };
    bundle(&[&pki, &other]);
    let (weft, listen, _app) = start(
        &pki,
        ", client_auth = { ca = \"bundle.crt\", mode = \"require\" }",
    );
    let client2 = cert_args(&other, "client2");
    let client2: Vec<&str> = client2.iter().map(String::as_str).collect();
    let (ok, out) = curl(&pki, listen, "a.test", &client2, "/");
    assert!(ok && out.contains("hello over tls"), "{out}");
    assert!(served_cn(listen, "a.test").contains("a.test"));

    let reload = || {
        let version = weft.metric(&["weft_config_version"]);
        weft.signal(1);
        let deadline = Instant::now() + Duration::from_secs(5);
        while weft.metric(&["weft_config_version"]) <= version {
            assert!(
                Instant::now() < deadline,
                "reload not published:\n{}",
                weft.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // Rotated in place: same file names, new certificate.
    pki.leaf("a", "a.test rotated", "DNS:a.test", SERVER);
    reload();
    assert!(served_cn(listen, "a.test").contains("rotated"));

    // The other CA is removed from the bundle: its client certificate is refused.
    bundle(&[&pki]);
    reload();
    let (ok, out) = curl(&pki, listen, "a.test", &client2, "/");
    assert!(!ok, "a client of a removed CA was still let in: {out}");
}

/// A cluster with `tls = { ca, sni }` but no client certificate, calling an inbound
/// that requires one: TLS 1.3 refuses after the handshake, on the first read. The
/// caller is told why (not "upstream closed the connection"), and both sides warn.
#[test]
fn a_missing_client_certificate_is_said_on_both_sides() {
    let pki = Pki::new();
    pki.leaf(
        "billing",
        "billing",
        "URI:spiffe://mesh/billing,DNS:billing.mesh",
        "serverAuth,clientAuth",
    );
    let (billing, b_in, _billing_app) = billing_sidecar(&pki);
    // No cert and key: the billing inbound requires them.
    let (orders, o_out) = orders_sidecar(&pki, b_in, r#"{ ca = "ca.crt", sni = "billing.mesh" }"#);
    let reason = "upstream TLS handshake failed: the peer requires a client certificate";
    // An HTTP/1.1 GET and POST, and an h2c client: the same reason each time.
    for (how, args) in [
        ("GET", ["-X", "GET"]),
        ("POST", ["-X", "POST"]),
        ("h2c", ["--http2-prior-knowledge", "-s"]),
    ] {
        let o = Command::new("curl")
            .args(["-sS", "-D", "-", "-o", "/dev/null", "-H", "host: billing"])
            .args(args)
            .arg(format!("http://{o_out}/invoice/7"))
            .output()
            .unwrap();
        let head = String::from_utf8_lossy(&o.stdout);
        let status = head.split_whitespace().nth(1);
        assert_eq!(status, Some("502"), "{how}: {head}");
        assert!(
            head.contains(&format!("x-weft-error: {reason}")),
            "{how}: {head}"
        );
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !billing.log().contains("presented no client certificate")
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        orders.log().contains(reason) && orders.log().contains("certificate_required"),
        "the caller warns, with the alert:\n{}",
        orders.log()
    );
    assert!(
        orders.log().contains("tls.cert and tls.key"),
        "and says what to set:\n{}",
        orders.log()
    );
    let warned = billing.log();
    assert!(
        warned.contains("WARN") && warned.contains("presented no client certificate"),
        "the receiving side warns:\n{warned}"
    );
    // At most once a second per worker, not once per connection.
    assert!(
        warned.matches("presented no client certificate").count() <= 4,
        "{warned}"
    );
}
