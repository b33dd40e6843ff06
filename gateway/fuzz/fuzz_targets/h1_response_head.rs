//! Any bytes as an upstream's response head (the shape that once aborted weft): never a
//! panic, and every range lies inside the head.
#![no_main]
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use weft_gateway::proto::h1::head::{parse_response, Head};

fuzz_target!(|data: &[u8]| {
    for head_request in [false, true] {
        let mut buf = BytesMut::from(data);
        if let Ok(Some(head)) = parse_response(&mut buf, 64 * 1024, head_request) {
            assert!(head.reason.end <= head.raw.len());
            for f in &head.headers {
                let _ = (head.name(f), head.value(f));
            }
        }
    }
});
