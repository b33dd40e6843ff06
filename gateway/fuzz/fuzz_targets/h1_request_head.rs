//! Any bytes as an HTTP/1.1 request head: never a panic, and a head's ranges stay
//! inside its bytes.
#![no_main]
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use weft_gateway::proto::h1::head::{parse_request, Head};

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    if let Ok(Some(head)) = parse_request(&mut buf, 64 * 1024, 100) {
        let _ = (head.method(), head.target(), head.host());
        for f in &head.headers {
            let _ = (head.name(f), head.value(f));
        }
        for r in &head.connection.listed {
            assert!(r.end <= head.raw.len());
        }
    }
});
