//! Support for weft's end-to-end tests: the real `weft` binary as a child process,
//! test upstreams (hyper on tokio, and raw sockets that misbehave on purpose), and
//! helpers for raw HTTP/1.1 on a socket.
//!
//! Every process and server started here is stopped when its handle drops, including
//! when the test panics, and every port is picked fresh (weft uses SO_REUSEPORT, so a
//! leftover process on a shared port would silently take traffic).

pub mod background;
pub mod consul;
pub mod grpc;
pub mod h2c;
pub mod h2frames;
pub mod pki;
pub mod process;
pub mod raw;
pub mod recording;
pub mod scripted;
pub mod upstream;

pub use process::{curl_status, free_addr, free_port, weft_bin, Weft};
