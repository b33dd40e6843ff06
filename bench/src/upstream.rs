//! The bench's upstream: a minimal monoio HTTP/1.1 server answering every request with
//! a fixed body, fast enough that it is never what a benchmark measures.
//!
//! Keep-alive and pipelining are honoured; request bodies (Content-Length only) are
//! read and discarded. One thread per `--threads`, each with its own SO_REUSEPORT
//! socket, optionally pinned.

use std::net::SocketAddr;

use bytes::BytesMut;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};

pub struct UpstreamOpts {
    pub listen: SocketAddr,
    pub body_size: usize,
    pub threads: usize,
    pub cpus: Vec<usize>,
}

pub fn run(opts: UpstreamOpts) -> std::io::Result<()> {
    let mut response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n",
        opts.body_size
    )
    .into_bytes();
    response.extend((0..opts.body_size).map(|i| b'a' + (i % 26) as u8));
    let response: &'static [u8] = Box::leak(response.into_boxed_slice());
    let mut handles = Vec::new();
    for t in 0..opts.threads.max(1) {
        let socket = crate::net::bind_reuseport(opts.listen)?;
        let cpu = opts.cpus.get(t % opts.cpus.len().max(1)).copied();
        handles.push(std::thread::spawn(move || {
            if let Some(cpu) = cpu {
                crate::net::pin(cpu);
            }
            let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = TcpListener::from_std(socket).expect("listener");
                while let Ok((stream, _)) = listener.accept().await {
                    let _ = stream.set_nodelay(true);
                    monoio::spawn(serve(stream, response));
                }
            });
        }));
    }
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

async fn serve(mut stream: TcpStream, response: &'static [u8]) {
    let mut buf = BytesMut::with_capacity(8192);
    let mut out = Vec::with_capacity(response.len() * 4);
    let mut skip_body = 0usize;
    loop {
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(8192);
        }
        let len = buf.len();
        let cap = buf.capacity();
        let (res, slice) = stream.read(buf.slice_mut(len..cap)).await;
        buf = slice.into_inner();
        match res {
            Ok(n) if n > 0 => {}
            _ => return,
        }
        loop {
            if skip_body > 0 {
                let take = skip_body.min(buf.len());
                let _ = buf.split_to(take);
                skip_body -= take;
                if skip_body > 0 {
                    break;
                }
            }
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&buf) {
                Ok(httparse::Status::Complete(n)) => {
                    skip_body = req
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                        .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
                        .unwrap_or(0);
                    let _ = buf.split_to(n);
                    out.extend_from_slice(response);
                }
                Ok(httparse::Status::Partial) => break,
                Err(_) => return,
            }
        }
        if !out.is_empty() {
            let (res, back) = stream.write_all(out).await;
            out = back;
            out.clear();
            if res.is_err() {
                return;
            }
        }
    }
}
