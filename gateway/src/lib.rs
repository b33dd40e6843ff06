//! weft's data plane: the thread-per-core engine that carries requests.
//!
//! Layout, in the order data flows:
//! - `runtime`: start workers (one pinned monoio runtime per core), signals, drain.
//! - `listen`: SO_REUSEPORT listening sockets and CPU affinity.
//! - `control`: the control plane's threads: reload, discovery (files, Consul), the
//!   admin listener, and the state they publish to workers.
//! - `proxy`: the request path: client sides, the one lifecycle, the relays.
//! - `upstream`: per-worker connection pools and load balancers.
//! - `proto`: wire codecs (HTTP/1.1 heads, chunked coding, body streaming).
//! - `transport`: a socket with its read buffer; idle connections hold no buffer.
//! - `observe`: per-worker metrics summed at scrape time.
//! - `keyhash`: the fast hasher of per-request maps whose keys weft makes itself.
//!
//! What the config means (schema, validation, compiled snapshots) is the `weft-mesh`
//! crate.

pub mod control;
mod keyhash;
pub mod listen;
pub mod observe;
pub mod proto;
pub mod proxy;
pub mod runtime;
pub mod transport;
pub mod upstream;
