//! weft's control plane: what the data plane should do.
//!
//! Data flows one way: `config` (the TOML operators write, parsed with precise errors)
//! -> `snapshot` (validated and compiled once into lookup-ready tables, published
//! through arc-swap) -> the workers in `weft-gateway`, which only read snapshots.
//! Nothing in this crate runs on the request path except the lookups of a snapshot.

pub mod config;
pub mod fields;
pub mod host;
pub mod snapshot;
