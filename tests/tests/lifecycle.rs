//! The one request lifecycle: every request, over HTTP/1.1 or HTTP/2, forwarded,
//! answered locally or failed, ends in exactly one completion record, and the request
//! counters agree with the records. The record is read where an operator can see it:
//! the `weft::completion` trace line.

use std::time::{Duration, Instant};

use weft_tests::upstream::TestUpstream;
use weft_tests::{curl_status, free_addr, Weft};

/// The completion lines of the log, once `n` of them are there (or after 5 s).
fn records(weft: &Weft, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let lines: Vec<String> = weft
            .log()
            .lines()
            .filter(|l| l.contains("request complete"))
            .map(str::to_owned)
            .collect();
        if lines.len() >= n || Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn every_request_ends_in_one_completion_record_for_both_client_protocols() {
    let app = TestUpstream::start("app");
    let (listen, admin, dead) = (free_addr(), free_addr(), free_addr());
    let config = format!(
        "[admin]\naddress = \"{admin}\"\n\n[[listeners]]\nname = \"l\"\naddress = \"{listen}\"\n\
         routes = [\n\
           {{ name = \"up\", match = {{ path_prefix = \"/up\" }}, cluster = \"app\" }},\n\
           {{ name = \"down\", match = {{ path_prefix = \"/down\" }}, cluster = \"down\" }},\n\
           {{ name = \"local\", match = {{ path_prefix = \"/local\" }}, direct_response = {{ status = 204 }} }},\n\
         ]\n\n[clusters.app]\nendpoints = [\"{}\"]\n\n[clusters.down]\nendpoints = [\"{dead}\"]\n",
        app.addr
    );
    let weft = Weft::start_logging("ingress", &config, admin, "info,weft::completion=trace");
    let base = format!("http://{listen}");
    let h2 = "--http2-prior-knowledge";
    assert_eq!(curl_status(&[&format!("{base}/up/a")]), "200");
    assert_eq!(curl_status(&[h2, &format!("{base}/up/b")]), "200");
    assert_eq!(
        curl_status(&[h2, "--data-binary", "hello", &format!("{base}/up/c")]),
        "200"
    );
    assert_eq!(curl_status(&[&format!("{base}/local")]), "204");
    assert_eq!(curl_status(&[h2, &format!("{base}/nowhere")]), "404");
    assert_eq!(curl_status(&[&format!("{base}/down")]), "502");

    let lines = records(&weft, 6);
    assert_eq!(
        lines.len(),
        6,
        "one record per request:\n{}",
        lines.join("\n")
    );
    let find = |parts: &[&str]| {
        lines
            .iter()
            .find(|l| parts.iter().all(|p| l.contains(p)))
            .unwrap_or_else(|| panic!("no record with {parts:?} in:\n{}", lines.join("\n")))
    };
    // Forwarded, over each client protocol: route, cluster, endpoint, one attempt.
    let endpoint = format!("endpoint=Some({})", app.addr);
    for protocol in ["protocol=\"http1\"", "protocol=\"http2\""] {
        let r = find(&[protocol, "route=\"up\"", "status=200"]);
        assert!(
            r.contains("cluster=\"app\"") && r.contains(&endpoint),
            "{r}"
        );
        assert!(
            r.contains("attempts=1") && r.contains("first_byte=Some("),
            "{r}"
        );
    }
    // The request body is counted as it went upstream.
    find(&["protocol=\"http2\"", "route=\"up\"", "body_in=5"]);
    // Local answers and failures are records too, with the typed error's label.
    let local = find(&["route=\"local\"", "status=204"]);
    assert!(!local.contains("cluster="), "{local}");
    find(&["protocol=\"http2\"", "status=404", "error=\"no_route\""]);
    let down = find(&["route=\"down\"", "status=502", "error=\"refused\""]);
    assert!(down.contains("cluster=\"down\""), "{down}");

    // The counters are fed from the same records.
    assert_eq!(weft.metric(&["weft_requests_total"]), 6.0);
    assert_eq!(
        weft.metric(&[
            "weft_requests_total",
            "route=\"up\"",
            "status_class=\"2xx\""
        ]),
        3.0
    );
    assert_eq!(
        weft.metric(&[
            "weft_upstream_connect_errors_total",
            "cluster=\"down\"",
            "reason=\"refused\""
        ]),
        1.0
    );
}
