//! The thread-per-core engine: worker count and pinning from the affinity mask, forced
//! drivers, and the config shape the foundation issue promises.

use std::net::SocketAddr;

use weft_tests::process::weft_output;
use weft_tests::raw::{self, RawClient};
use weft_tests::upstream::{sha256_hex, TestUpstream};
use weft_tests::{free_addr, Weft};

fn simple_config(
    admin: SocketAddr,
    listen: SocketAddr,
    upstream: SocketAddr,
    runtime: &str,
) -> String {
    format!(
        r#"
[runtime]
{runtime}

[admin]
address = "{admin}"

[[listeners]]
name = "l"
address = "{listen}"
routes = [ {{ match = {{ path_prefix = "/" }}, cluster = "app" }} ]

[clusters.app]
endpoints = ["{upstream}"]
"#
    )
}

fn cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

#[test]
fn workers_follow_the_inherited_affinity_mask() {
    let app = TestUpstream::start("app");
    let (admin, listen) = (free_addr(), free_addr());
    let cpu = if cpus() > 1 { "1" } else { "0" };
    let weft = Weft::start_under(
        &["taskset", "-c", cpu],
        "ingress",
        &simple_config(admin, listen, app.addr, ""),
        admin,
        &[],
    );
    assert_eq!(
        weft.metric(&["weft_workers "]),
        1.0,
        "one CPU in the mask, one worker"
    );
    assert_eq!(
        weft.thread_cpus("weft-worker"),
        vec![("weft-worker-0".to_owned(), cpu.to_owned())]
    );
    let text = raw::exchange(
        listen,
        b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
}

#[test]
fn runtime_cpus_pins_each_worker() {
    let app = TestUpstream::start("app");
    let (admin, listen) = (free_addr(), free_addr());
    let weft = Weft::start_with(
        "ingress",
        &simple_config(admin, listen, app.addr, "workers = 2\ncpus = [0]"),
        admin,
        &[],
    );
    assert_eq!(
        weft.thread_cpus("weft-worker"),
        vec![
            ("weft-worker-0".to_owned(), "0".to_owned()),
            ("weft-worker-1".to_owned(), "0".to_owned())
        ]
    );
}

#[test]
fn epoll_driver_carries_the_same_traffic() {
    let app = TestUpstream::start("app");
    let (admin, listen) = (free_addr(), free_addr());
    let weft = Weft::start(
        "ingress",
        &simple_config(admin, listen, app.addr, "io = \"epoll\""),
        admin,
    );
    assert!(weft.log().contains("driver=epoll"), "{}", weft.log());
    let mut c = RawClient::new(listen);
    for _ in 0..3 {
        c.send(b"POST /sha256 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n");
        let (status, _, body) = c.read_response();
        assert_eq!(status, 200);
        assert_eq!(
            String::from_utf8_lossy(&body),
            format!("{} 3", sha256_hex(b"abc"))
        );
    }
    let (status, body) = weft.admin_get("/ready");
    assert_eq!((status, body.as_str()), (200, "ready\n"));
}

#[test]
fn io_uring_driver_is_the_default_when_the_kernel_allows_it() {
    let app = TestUpstream::start("app");
    let (admin, listen) = (free_addr(), free_addr());
    let weft = Weft::start(
        "ingress",
        &simple_config(admin, listen, app.addr, ""),
        admin,
    );
    let log = weft.log();
    // Either io_uring, or the one clear warning that explains the fallback.
    assert!(
        log.contains("driver=io_uring") || log.contains("falling back to the epoll driver"),
        "{log}"
    );
}

#[test]
fn the_issue_example_config_is_valid() {
    let example = r#"
[runtime]
workers = 2                 # default: one per core
io = "auto"                 # auto | io_uring | epoll

[admin]
address = "127.0.0.1:9901"

[[listeners]]
name = "public"
address = "127.0.0.1:8080"

  [[listeners.routes]]
  match = { path_prefix = "/api/" }
  cluster = "api"

  [[listeners.routes]]
  match = { host = "shop.example.com", path_prefix = "/" }
  split = [ { cluster = "shop-v1", weight = 90 }, { cluster = "shop-v2", weight = 10 } ]

  [[listeners.routes]]
  match = { path_prefix = "/" }
  direct_response = { status = 200, body = "hello from weft\n" }

[clusters.api]
endpoints = ["127.0.0.1:9000", { address = "127.0.0.1:9001", weight = 3 }]
lb = "round_robin"

[clusters.shop-v1]
endpoints = ["127.0.0.1:9100"]

[clusters.shop-v2]
endpoints = ["127.0.0.1:9200"]
"#;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("example.toml");
    std::fs::write(&path, example).unwrap();
    let o = weft_output(&["check", "--config", path.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("-> shop-v1=90, shop-v2=10"), "{out}");
    assert!(out.contains("127.0.0.1:9001 (weight 3)"), "{out}");
}

/// Disables io_uring system-wide for the duration of a test (root only), restoring the
/// previous setting on drop, even if the test fails.
struct UringDisabled(String);

impl UringDisabled {
    const PATH: &'static str = "/proc/sys/kernel/io_uring_disabled";

    fn set() -> Option<UringDisabled> {
        let before = std::fs::read_to_string(Self::PATH).ok()?;
        std::fs::write(Self::PATH, "2").ok()?;
        Some(UringDisabled(before.trim().to_owned()))
    }
}

impl Drop for UringDisabled {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::PATH, &self.0);
    }
}

#[test]
fn falls_back_to_epoll_with_one_warning_when_io_uring_is_unavailable() {
    let Some(_disabled) = UringDisabled::set() else {
        // Not root, or no such sysctl: the fallback cannot be provoked on this machine.
        eprintln!("skipped: cannot write {}", UringDisabled::PATH);
        return;
    };
    let app = TestUpstream::start("app");
    let (admin, listen) = (free_addr(), free_addr());
    let weft = Weft::start(
        "ingress",
        &simple_config(admin, listen, app.addr, ""),
        admin,
    );
    let log = weft.log();
    assert_eq!(
        log.matches("falling back to the epoll driver").count(),
        1,
        "{log}"
    );
    assert!(log.contains("driver=epoll"), "{log}");
    let text = raw::exchange(
        listen,
        b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
}
