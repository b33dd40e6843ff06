//! Traffic splits and the sidecar's inbound and outbound paths.

use weft_tests::raw::{self, RawClient};
use weft_tests::upstream::TestUpstream;
use weft_tests::{free_addr, Weft};

#[test]
fn split_90_10_and_weighted_round_robin() {
    let (v1, v2) = (
        TestUpstream::start("shop-v1"),
        TestUpstream::start("shop-v2"),
    );
    let (a, b) = (TestUpstream::start("api-a"), TestUpstream::start("api-b"));
    let (listen, admin) = (free_addr(), free_addr());
    let config = format!(
        r#"
[admin]
address = "{admin}"

[[listeners]]
name = "public"
address = "{listen}"

  [[listeners.routes]]
  match = {{ path_prefix = "/api/" }}
  cluster = "api"

  [[listeners.routes]]
  match = {{ host = "shop.example.com", path_prefix = "/" }}
  split = [ {{ cluster = "shop-v1", weight = 90 }}, {{ cluster = "shop-v2", weight = 10 }} ]

[clusters.api]
endpoints = ["{}", {{ address = "{}", weight = 3 }}]
lb = "round_robin"

[clusters.shop-v1]
endpoints = ["{}"]

[clusters.shop-v2]
endpoints = ["{}"]
"#,
        a.addr, b.addr, v1.addr, v2.addr
    );
    let weft = Weft::start("ingress", &config, admin);
    let mut c = RawClient::new(listen);
    let (mut n1, mut n2) = (0, 0);
    for _ in 0..2000 {
        c.send(b"GET /buy HTTP/1.1\r\nHost: shop.example.com\r\n\r\n");
        let (status, _, body) = c.read_response();
        assert_eq!(status, 200);
        let body = String::from_utf8_lossy(&body);
        if body.starts_with("upstream=shop-v1\n") {
            n1 += 1;
        } else if body.starts_with("upstream=shop-v2\n") {
            n2 += 1;
        } else {
            panic!("unexpected upstream: {body}");
        }
    }
    // 10% of 2000 = 200; binomial sd ~13.4, so +-60 is > 4 sd.
    assert!((140..=260).contains(&n2), "v1={n1} v2={n2}");
    assert_eq!(n1 + n2, 2000);
    assert_eq!(
        weft.metric(&["weft_requests_total", "cluster=\"shop-v2\""]) as usize,
        n2
    );

    // Smooth weighted round robin is exact per worker: 1:3 over whole cycles.
    let (mut na, mut nb) = (0, 0);
    for _ in 0..400 {
        c.send(b"GET /api/x HTTP/1.1\r\nHost: a\r\n\r\n");
        let (_, _, body) = c.read_response();
        if body.starts_with(b"upstream=api-a\n") {
            na += 1;
        } else {
            nb += 1;
        }
    }
    assert_eq!((na, nb), (100, 300));
}

#[test]
fn sidecar_inbound_and_outbound() {
    let app = TestUpstream::start("local-app");
    let billing = TestUpstream::start("billing");
    let (inbound, outbound, admin) = (free_addr(), free_addr(), free_addr());
    let config = format!(
        r#"
[admin]
address = "{admin}"

[sidecar.inbound]
address = "{inbound}"
app = "{}"

[sidecar.outbound]
address = "{outbound}"

[clusters.billing]
endpoints = ["{}"]
"#,
        app.addr, billing.addr
    );
    let _weft = Weft::start("sidecar", &config, admin);
    // Mesh -> app: anything arriving inbound goes to the local app.
    let text = raw::exchange(
        inbound,
        b"GET /orders/7 HTTP/1.1\r\nHost: orders.svc\r\nConnection: close\r\n\r\n",
    );
    assert!(
        text.contains("upstream=local-app\n") && text.contains("target=/orders/7\n"),
        "{text}"
    );
    // App -> mesh: the Host names the service; absolute-form works the same way.
    let text = raw::exchange(
        outbound,
        b"GET /invoices?id=1 HTTP/1.1\r\nHost: billing\r\nConnection: close\r\n\r\n",
    );
    assert!(
        text.contains("upstream=billing\n") && text.contains("target=/invoices?id=1\n"),
        "{text}"
    );
    let text = raw::exchange(
        outbound,
        b"GET http://billing:80/invoices HTTP/1.1\r\nHost: billing:80\r\nConnection: close\r\n\r\n",
    );
    assert!(
        text.contains("upstream=billing\n") && text.contains("target=/invoices\n"),
        "{text}"
    );
    // An unknown service is a 404 from the sidecar, not a hang.
    let text = raw::exchange(
        outbound,
        b"GET / HTTP/1.1\r\nHost: nosuch\r\nConnection: close\r\n\r\n",
    );
    assert!(text.starts_with("HTTP/1.1 404"), "{text}");
}
