//! weft's Consul client, on the control side only: `GET /v1/health/service/<name>`
//! (blocking queries) for discovery, and a sidecar's own registration.
//!
//! Runs on the discovery thread's own monoio runtime (every watch is a task there, so
//! hundreds of services cost hundreds of small tasks, not threads): one request at a
//! time per distinct query, `Connection: close`, a read timeout above `wait + wait/16`
//! (Consul adds up to wait/16 of jitter). The ACL token travels in `X-Consul-Token` and is never logged.
//! Answers follow Consul's documented shapes: address from `Service.Address`, else
//! `Node.Address`; weights from `Service.Weights` (`{1, 1}` when absent), the Warning
//! weight for an instance whose worst check warns; critical instances never serve.

use std::net::ToSocketAddrs;
use std::time::Duration;

use monoio::io::{AsyncReadRent, AsyncWriteRentExt};

use serde_json::Value;
use weft_mesh::config::EndpointConfig;
use weft_mesh::fields::Trailers;
use weft_mesh::snapshot::{ConsulQuery, ConsulSettings, Registration};

use crate::transport::{PollStream, UpstreamStream};
use crate::upstream::tls::connect as tls_connect;

use crate::proto::h1::chunked::ChunkedParser;

#[derive(Debug)]
pub enum ConsulError {
    Connect(std::io::Error),
    Io(std::io::Error),
    /// A non-200 answer, with Consul's plain-text reason.
    Status(u16, String),
    /// The answer was not a health response (truncated, not JSON, ...).
    Malformed(String),
    /// The answer was larger than `consul.max_response_bytes` or listed more than
    /// `consul.max_entries` instances.
    TooLarge(String),
}

impl std::fmt::Display for ConsulError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConsulError::Connect(e) => write!(f, "cannot connect to the Consul agent: {e}"),
            ConsulError::Io(e) => write!(f, "Consul request failed: {e}"),
            ConsulError::Status(s, why) => write!(f, "Consul answered {s}: {why}"),
            ConsulError::Malformed(why) => write!(f, "Consul answer unusable: {why}"),
            ConsulError::TooLarge(why) => write!(f, "Consul answer refused: {why}"),
        }
    }
}

/// One answer: the blocking index it carries (0 if none) and the endpoints.
pub struct Answer {
    pub index: u64,
    pub endpoints: Vec<EndpointConfig>,
    /// `X-Consul-Results-Filtered-By-ACLs: true`: the token may not see everything.
    pub acl_filtered: bool,
}

/// Asks for the instances of `query`; with `index > 0`, blocks up to `wait` for a change.
pub async fn health(
    settings: &ConsulSettings,
    query: &ConsulQuery,
    index: u64,
    token: Option<&str>,
) -> Result<Answer, ConsulError> {
    let (agent, wait) = (settings.address.as_str(), settings.wait);
    let read_timeout = wait + wait / 16 + Duration::from_secs(5);
    let mut target = format!("/v1/health/service/{}?", encode(&query.service));
    if query.passing_only {
        target.push_str("passing&");
    }
    if index > 0 {
        target.push_str(&format!("index={index}&wait={}s&", wait.as_secs().max(1)));
    }
    if let Some(dc) = &query.datacenter {
        target.push_str(&format!("dc={}&", encode(dc)));
    }
    let mut filters: Vec<String> = query
        .tags
        .iter()
        .map(|t| format!("\"{}\" in Service.Tags", t.replace('"', "\\\"")))
        .collect();
    if let Some(f) = &query.filter {
        filters.push(format!("({f})"));
    }
    if !filters.is_empty() {
        target.push_str(&format!("filter={}&", encode(&filters.join(" and "))));
    }
    target.pop();
    let mut request = format!("GET {target} HTTP/1.1\r\nHost: {agent}\r\nConnection: close\r\n");
    if let Some(t) = token {
        request.push_str(&format!("X-Consul-Token: {t}\r\n"));
    }
    request.push_str("\r\n");
    let raw = exchange(settings, request, read_timeout).await?;

    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(&raw) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return Err(ConsulError::Malformed("incomplete response head".into())),
    };
    let status = resp.code.unwrap_or(0);
    let header = |name: &str| {
        resp.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_owned())
    };
    let new_index = header("x-consul-index")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let acl_filtered = header("x-consul-results-filtered-by-acls").as_deref() == Some("true");
    let chunked = header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    let length: Option<usize> = header("content-length").and_then(|v| v.parse().ok());
    let body = &raw[head_len..];
    let body = if chunked {
        let mut parser = ChunkedParser::new(64 * 1024, Trailers::Response);
        let mut out = Vec::new();
        let progress = parser
            .feed(body, |r| out.extend_from_slice(&body[r]))
            .map_err(|e| ConsulError::Malformed(format!("bad chunked body: {e:?}")))?;
        if !progress.done {
            return Err(ConsulError::Malformed("body cut short".into()));
        }
        out
    } else {
        match length {
            Some(n) if body.len() < n => {
                return Err(ConsulError::Malformed("body cut short".into()))
            }
            Some(n) => body[..n].to_vec(),
            None => body.to_vec(),
        }
    };
    if status != 200 {
        let why = String::from_utf8_lossy(&body).trim().to_owned();
        return Err(ConsulError::Status(status, why));
    }
    Ok(Answer {
        index: new_index,
        endpoints: decode_health(&body, settings.max_entries)?,
        acl_filtered,
    })
}

/// The endpoints of a `/v1/health/service/<name>` answer body: instances that must not
/// serve (critical, unusable address) are left out; more than `max_entries` is an error.
pub fn decode_health(body: &[u8], max_entries: usize) -> Result<Vec<EndpointConfig>, ConsulError> {
    let entries: Vec<Value> = serde_json::from_slice(body)
        .map_err(|e| ConsulError::Malformed(format!("not a JSON array: {e}")))?;
    if entries.len() > max_entries {
        return Err(ConsulError::TooLarge(format!(
            "{} instances, more than consul.max_entries = {max_entries}",
            entries.len()
        )));
    }
    Ok(entries.iter().filter_map(endpoint).collect())
}

/// The endpoint of one health entry, or `None` for one that must not serve.
fn endpoint(entry: &Value) -> Option<EndpointConfig> {
    let service = entry.get("Service")?;
    let address = service
        .get("Address")
        .and_then(Value::as_str)
        .filter(|a| !a.is_empty())
        .or_else(|| entry.get("Node")?.get("Address")?.as_str())?;
    let port = service.get("Port").and_then(Value::as_u64).unwrap_or(0);
    if port == 0 || port > u64::from(u16::MAX) {
        return None;
    }
    let worst = entry
        .get("Checks")
        .and_then(Value::as_array)
        .map(|checks| {
            checks
                .iter()
                .filter_map(|c| c.get("Status")?.as_str())
                .fold("passing", |worst, s| match (worst, s) {
                    (_, "critical") | ("critical", _) => "critical",
                    (_, "warning") | ("warning", _) => "warning",
                    _ => "passing",
                })
        })
        .unwrap_or("passing");
    let weights = service.get("Weights");
    let weight = |key: &str| {
        weights
            .and_then(|w| w.get(key))
            .and_then(Value::as_u64)
            .unwrap_or(1)
    };
    let weight = match worst {
        "critical" => return None,
        "warning" => weight("Warning"),
        _ => weight("Passing"),
    };
    if weight == 0 {
        return None;
    }
    let address = if address.contains(':') && !address.starts_with('[') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    };
    let tags = service
        .get("Tags")
        .and_then(Value::as_array)
        .map(|t| {
            t.iter()
                .filter_map(|v| Some(v.as_str()?.to_owned()))
                .collect()
        })
        .unwrap_or_default();
    let meta = service
        .get("Meta")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    Some(EndpointConfig {
        address,
        weight: weight.min(u64::from(u32::MAX)) as u32,
        tags,
        meta,
    })
}

/// Percent-encoding for query values and path segments: only unreserved characters
/// stay as they are.
fn encode(s: &str) -> String {
    crate::proto::percent::encode(s, |b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_consuls_documented_health_sample() {
        let text = include_str!("../../../tests/support/consul/health-service-redis.json");
        let entries: Vec<Value> = serde_json::from_str(text).unwrap();
        let endpoints: Vec<_> = entries.iter().filter_map(endpoint).collect();
        assert!(!endpoints.is_empty());
        assert!(
            endpoints.iter().all(|e| e.address.ends_with(":8000")),
            "{endpoints:?}"
        );
    }

    #[test]
    fn falls_back_to_the_node_address_and_weighs_warnings() {
        let entry: Value = serde_json::json!({
            "Node": {"Address": "10.0.0.9"},
            "Service": {"Address": "", "Port": 80, "Weights": {"Passing": 5, "Warning": 2}},
            "Checks": [{"Status": "passing"}, {"Status": "warning"}]
        });
        let e = endpoint(&entry).unwrap();
        assert_eq!((e.address.as_str(), e.weight), ("10.0.0.9:80", 2));
        let critical: Value = serde_json::json!({
            "Node": {"Address": "10.0.0.9"},
            "Service": {"Port": 80, "Weights": null},
            "Checks": [{"Status": "critical"}]
        });
        assert!(endpoint(&critical).is_none());
    }
}

/// Registers `reg` with the agent, with a TCP check on the registered address.
/// Blocking: called once at start-up, on the control thread.
pub fn register(
    settings: &ConsulSettings,
    reg: &Registration,
    token: Option<&str>,
) -> Result<(), ConsulError> {
    let secs = |d: Duration| format!("{}s", d.as_secs().max(1));
    let body = serde_json::json!({
        "ID": reg.id,
        "Name": reg.service,
        "Address": reg.address.to_string(),
        "Port": reg.port,
        "Tags": reg.tags,
        "Meta": reg.meta,
        "Check": {
            "TCP": std::net::SocketAddr::new(reg.address, reg.port).to_string(),
            "Interval": secs(reg.check_interval),
            "DeregisterCriticalServiceAfter": secs(reg.deregister_critical_after),
        },
    });
    put(
        settings,
        "/v1/agent/service/register",
        &body.to_string(),
        token,
    )
}

/// Removes the registration with this ID (on drain).
pub fn deregister(
    settings: &ConsulSettings,
    id: &str,
    token: Option<&str>,
) -> Result<(), ConsulError> {
    put(
        settings,
        &format!("/v1/agent/service/deregister/{}", encode(id)),
        "",
        token,
    )
}

/// A blocking `PUT` to the agent (on a runtime of its own); any 2xx is success.
fn put(
    settings: &ConsulSettings,
    path: &str,
    body: &str,
    token: Option<&str>,
) -> Result<(), ConsulError> {
    let mut request = format!(
        "PUT {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        settings.address,
        body.len()
    );
    if let Some(t) = token {
        request.push_str(&format!("X-Consul-Token: {t}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .map_err(ConsulError::Io)?;
    let raw = rt.block_on(exchange(settings, request, Duration::from_secs(10)))?;
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(&raw) {
        Ok(httparse::Status::Complete(n)) => match resp.code {
            Some(code) if (200..300).contains(&code) => Ok(()),
            Some(code) => Err(ConsulError::Status(
                code,
                String::from_utf8_lossy(&raw[n..]).trim().to_owned(),
            )),
            None => Err(ConsulError::Malformed("no status".into())),
        },
        _ => Err(ConsulError::Malformed("incomplete response head".into())),
    }
}

/// One request on a fresh connection to the agent (TLS when configured), and
/// everything it answered until it closed.
async fn exchange(
    settings: &ConsulSettings,
    request: String,
    timeout: Duration,
) -> Result<Vec<u8>, ConsulError> {
    let addr = settings
        .address
        .to_socket_addrs()
        .map_err(ConsulError::Connect)?
        .next()
        .ok_or_else(|| ConsulError::Connect(std::io::Error::other("no address")))?;
    let tcp = match monoio::time::timeout(
        Duration::from_secs(5),
        monoio::net::TcpStream::connect_addr(addr),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(ConsulError::Connect(e)),
        Err(_) => {
            return Err(ConsulError::Connect(std::io::Error::from(
                std::io::ErrorKind::TimedOut,
            )))
        }
    };
    let mut stream = match &settings.tls {
        None => UpstreamStream::Plain(tcp),
        Some(tls) => match tls_connect(tls, tcp).await {
            Ok(t) => UpstreamStream::Tls(Box::new(PollStream(t))),
            Err(e) => {
                return Err(ConsulError::Connect(std::io::Error::other(format!(
                    "TLS to the agent: {e}"
                ))))
            }
        },
    };
    // Whoever can answer as the agent must not be able to grow this process without
    // bound: the answer is read up to the cap, and a larger one is refused.
    let cap = settings.max_response_bytes;
    let talk = async {
        stream
            .write_all(request.into_bytes())
            .await
            .0
            .map_err(ConsulError::Io)?;
        let mut raw = Vec::new();
        loop {
            let buf = Vec::with_capacity(16 * 1024);
            let (res, buf) = stream.read(buf).await;
            if res.map_err(ConsulError::Io)? == 0 {
                return Ok(raw);
            }
            raw.extend_from_slice(&buf);
            if raw.len() as u64 > cap {
                return Err(ConsulError::TooLarge(format!(
                    "more than consul.max_response_bytes = {cap} bytes"
                )));
            }
        }
    };
    match monoio::time::timeout(timeout, talk).await {
        Ok(r) => r,
        Err(_) => Err(ConsulError::Io(std::io::Error::from(
            std::io::ErrorKind::TimedOut,
        ))),
    }
}
