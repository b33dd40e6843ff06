//! The admin listener: /ready, /live, /config, /metrics.
//!
//! Runs on its own plain thread with blocking std sockets, one request per connection,
//! so nothing it does can stall a worker. It reads only what workers publish for it:
//! the `Control` flags, the snapshot, and the per-worker counters.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::Control;

pub fn start(listener: TcpListener, control: Arc<Control>) -> io::Result<()> {
    std::thread::Builder::new()
        .name("weft-admin".into())
        .spawn(move || {
            super::defer_to_workers();
            for stream in listener.incoming() {
                match stream {
                    Ok(s) => {
                        if let Err(e) = serve(s, &control) {
                            tracing::debug!("admin request failed: {e}");
                        }
                    }
                    Err(e) => {
                        tracing::warn!("admin accept failed: {e}");
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
        })?;
    Ok(())
}

fn serve(mut stream: TcpStream, control: &Control) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let (method, path) = loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                break (
                    req.method.unwrap_or_default().to_owned(),
                    req.path.unwrap_or_default().to_owned(),
                );
            }
            Ok(httparse::Status::Partial) if buf.len() < 16 * 1024 => {}
            _ => return respond(&mut stream, 400, "text/plain", "bad request\n"),
        }
    };
    if method != "GET" && method != "HEAD" {
        return respond(&mut stream, 405, "text/plain", "only GET\n");
    }
    let path = path.split('?').next().unwrap_or_default();
    match path {
        "/live" => respond(&mut stream, 200, "text/plain", "live\n"),
        "/ready" => {
            if control.ready() {
                respond(&mut stream, 200, "text/plain", "ready\n")
            } else if control.draining.load(Ordering::Acquire) {
                respond(&mut stream, 503, "text/plain", "draining\n")
            } else {
                respond(&mut stream, 503, "text/plain", "starting\n")
            }
        }
        "/config" => {
            let snap = control.publisher.load();
            let last_error = control
                .reloads
                .last_error
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            let body = serde_json::json!({
                "version": snap.version,
                "reloads": {
                    "succeeded": control.reloads.succeeded.load(Ordering::Relaxed),
                    "failed": control.reloads.failed.load(Ordering::Relaxed),
                    "last_error": last_error,
                },
                "discovery": control.discovery.status(),
                "content_hash": format!("{:016x}", snap.content_hash),
                "file": snap.source_file.display().to_string(),
                "role": format!("{:?}", snap.role).to_lowercase(),
                "config": redacted(&snap.source_text),
            });
            let text = serde_json::to_string_pretty(&body)
                .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
            respond(&mut stream, 200, "application/json", &(text + "\n"))
        }
        "/metrics" => {
            let version = control.version.load(Ordering::Acquire) as i64;
            let ready = control.ready() as i64;
            let workers = control.workers as i64;
            let reloaded = control.reloads.succeeded.load(Ordering::Relaxed) as i64;
            let refused = control.reloads.failed.load(Ordering::Relaxed) as i64;
            let body = control.registry.render(&[
                (
                    "weft_config_reloads_total",
                    "Reloads that published a new config.",
                    "counter",
                    reloaded,
                ),
                (
                    "weft_config_reload_failures_total",
                    "Reloads refused (invalid config, bind failure); the running config stayed.",
                    "counter",
                    refused,
                ),
                (
                    "weft_config_version",
                    "Version of the config snapshot being served.",
                    "gauge",
                    version,
                ),
                (
                    "weft_ready",
                    "1 when every listener is bound on every worker and not draining.",
                    "gauge",
                    ready,
                ),
                ("weft_workers", "Worker threads.", "gauge", workers),
            ]);
            let body = body + &discovery_metrics(&control.discovery.status());
            respond(&mut stream, 200, "text/plain; version=0.0.4", &body)
        }
        _ => respond(
            &mut stream,
            404,
            "text/plain",
            "not found: try /ready /live /config /metrics\n",
        ),
    }
}

/// The config as JSON-ready TOML, with secrets (`consul.token`) replaced.
fn redacted(text: &str) -> toml::Value {
    let Ok(mut value) = toml::from_str::<toml::Value>(text) else {
        return toml::Value::String("<config text not shown: it did not parse>".into());
    };
    if let Some(token) = value.get_mut("consul").and_then(|c| c.get_mut("token")) {
        *token = toml::Value::String("<redacted>".into());
    }
    value
}

/// Per-cluster discovery series: whether the served endpoints are stale, errors, updates.
fn discovery_metrics(
    status: &std::collections::BTreeMap<String, super::discovery::SourceStatus>,
) -> String {
    if status.is_empty() {
        return String::new();
    }
    let mut out = String::new();
    let families: [(&str, &str, &str, fn(&super::discovery::SourceStatus) -> u64); 4] = [
        (
            "weft_discovery_stale",
            "1 when a cluster's discovery source failed and its last good endpoints are served.",
            "gauge",
            |s| u64::from(s.stale),
        ),
        (
            "weft_discovery_errors_total",
            "Failed discovery reads, by cluster.",
            "counter",
            |s| s.errors,
        ),
        (
            "weft_discovery_updates_total",
            "Discovery answers applied, by cluster.",
            "counter",
            |s| s.updates,
        ),
        (
            "weft_discovery_endpoints",
            "Endpoints the last good discovery answer listed, by cluster.",
            "gauge",
            |s| s.endpoints as u64,
        ),
    ];
    for (name, help, kind, value) in families {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (cluster, s) in status {
            let cluster = cluster.replace('\\', "\\\\").replace('"', "\\\"");
            out.push_str(&format!("{name}{{cluster=\"{cluster}\"}} {}\n", value(s)));
        }
    }
    out
}

fn respond(stream: &mut TcpStream, status: u16, content_type: &str, body: &str) -> io::Result<()> {
    let reason = crate::proto::h1::reason(status);
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    stream.flush()
}
