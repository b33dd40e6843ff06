//! hyper's HTTP/2 client over plain TCP (prior knowledge), as the tests use it.

use std::net::SocketAddr;

use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::task::JoinHandle;

/// Connects to `addr` and hands back the request sender and the task driving the
/// connection (it ends when the connection does).
pub async fn connect<B>(addr: SocketAddr) -> (SendRequest<B>, JoinHandle<hyper::Result<()>>)
where
    B: hyper::body::Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    (sender, tokio::spawn(conn))
}
