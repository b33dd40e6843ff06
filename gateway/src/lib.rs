//! weft's data plane: the thread-per-core engine that carries requests.
//!
//! Layout, in the order data flows:
//! - `runtime`: start workers (one pinned monoio runtime per core), signals, reload.
//! - `proxy`: the request path of one client connection (route, answer, forward).
//! - `upstream`: per-worker connection pools and load balancers.
//! - `proto`: wire codecs (HTTP/1.1 heads, chunked coding, body streaming).
//! - `transport`: a socket with its read buffer; idle connections hold no buffer.
//! - `observe`: per-worker metrics summed at scrape time.
//! - `admin`: the admin listener (/ready /live /config /metrics) on its own thread.
//!
//! The control plane (config, validation, snapshots) is the `weft-mesh` crate.

pub mod admin;
pub mod observe;
pub mod proto;
pub mod proxy;
pub mod runtime;
pub mod transport;
pub mod upstream;
