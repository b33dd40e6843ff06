//! One header policy for both client protocols: the same request headers sent over
//! HTTP/1.1 (raw) and HTTP/2 (curl, prior knowledge) reach the upstream as the same
//! set, hop-by-hop fields (`proxy-authorization` and `trailer` included) dropped on both.

use std::collections::BTreeSet;
use std::process::Command;

use weft_tests::raw::RawClient;
use weft_tests::recording::RecordingUpstream;
use weft_tests::{free_addr, Weft};

const SENT: [(&str, &str); 6] = [
    ("Proxy-Authorization", "Basic c2VjcmV0"),
    ("Trailer", "x-sum"),
    ("TE", "trailers"),
    ("X-Forwarded-Client-Cert", "URI=spiffe://forged"),
    ("X-App", "kept"),
    ("Accept", "*/*"),
];

fn names(head: &str) -> BTreeSet<String> {
    head.lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, _)| n.trim().to_ascii_lowercase())
        .collect()
}

#[test]
fn both_client_protocols_forward_the_same_headers() {
    let origin = RecordingUpstream::start();
    let (listen, admin) = (free_addr(), free_addr());
    let config = format!(
        "[admin]\naddress = \"{admin}\"\n\n[[listeners]]\nname = \"l\"\naddress = \"{listen}\"\nroutes = [ {{ match = {{ path_prefix = \"/\" }}, cluster = \"o\" }} ]\n\n[clusters.o]\nendpoints = [\"{}\"]\n",
        origin.addr
    );
    let _weft = Weft::start("ingress", &config, admin);

    let mut h1 = RawClient::new(listen);
    let mut request = String::from("GET /h1 HTTP/1.1\r\nHost: svc\r\nUser-Agent: t\r\n");
    for (n, v) in SENT {
        request.push_str(&format!("{n}: {v}\r\n"));
    }
    request.push_str("\r\n");
    h1.send(request.as_bytes());
    assert_eq!(h1.read_response().0, 200);

    let mut curl = Command::new("curl");
    curl.args([
        "-s",
        "-o",
        "/dev/null",
        "--http2-prior-knowledge",
        "-A",
        "t",
    ]);
    curl.args(["-H", "Host: svc"]);
    for (n, v) in SENT {
        curl.args(["-H", &format!("{n}: {v}")]);
    }
    let out = curl
        .arg(format!("http://{listen}/h2"))
        .output()
        .expect("curl");
    assert!(out.status.success());

    let seen = origin.requests.lock().expect("lock").clone();
    let by_path = |p: &str| {
        seen.iter()
            .find(|r| r.line.ends_with(p))
            .unwrap_or_else(|| panic!("no {p} at the upstream: {seen:?}"))
            .head
            .clone()
    };
    let (h1_head, h2_head) = (by_path("/h1"), by_path("/h2"));
    assert_eq!(
        names(&h1_head),
        names(&h2_head),
        "\nh1: {h1_head}\nh2: {h2_head}"
    );
    for gone in ["proxy-authorization", "trailer"] {
        assert!(!names(&h1_head).contains(gone), "{gone}: {h1_head}");
    }
    assert!(!h1_head.contains("forged") && !h2_head.contains("forged"));
    assert!(
        h2_head.contains("x-app: kept") || h2_head.contains("X-App: kept"),
        "{h2_head}"
    );
}
