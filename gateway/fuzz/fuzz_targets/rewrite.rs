//! The property request smuggling breaks: what weft forwards for any input re-parses,
//! by weft's own parser, as exactly one message with the framing and body weft decided.
//! Requests (through the request rewriter) and responses (through the response one).
#![no_main]
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use weft_gateway::proto::h1::chunked::ChunkedParser;
use weft_mesh::fields::Trailers;
use weft_gateway::proto::h1::head::{parse_request, parse_response, BodyFraming};
use weft_gateway::proxy::forwarded::{read_request, request, response, Outcome};

fuzz_target!(|data: &[u8]| {
    if let Outcome::Sent { bytes, framing, body } = request(data) {
        // What the next hop reads (forwarding it again here would meet weft's own `Via`).
        match read_request(&bytes) {
            Outcome::Sent { bytes: again, framing: f2, body: b2 } => {
                assert_eq!(framing, f2);
                assert_eq!(body, b2);
                // Nothing after the message: a second request would be smuggled.
                let mut buf = BytesMut::from(&bytes[..]);
                let head = parse_request(&mut buf, 64 * 1024, 200).unwrap().unwrap();
                let body_bytes = match head.framing {
                    BodyFraming::Length(n) => n as usize,
                    BodyFraming::Chunked => {
                        let mut p = ChunkedParser::new(64 * 1024, Trailers::Request);
                        let prog = p.feed(&buf, |_| {}).unwrap();
                        assert!(prog.done);
                        prog.consumed
                    }
                    _ => 0,
                };
                assert_eq!(body_bytes, buf.len(), "bytes after the forwarded message");
                assert_eq!(again, bytes, "the next hop reads the whole of what was sent");
            }
            other => panic!("forwarded request does not re-parse: {other:?}"),
        }
    }
    for head_request in [false, true] {
        if let Outcome::Sent { bytes, framing, body } = response(data, head_request) {
            let mut buf = BytesMut::from(&bytes[..]);
            let again = parse_response(&mut buf, 64 * 1024, head_request);
            let head = again.ok().flatten().expect("forwarded response re-parses");
            // Until-close bodies are sent as such; others keep their framing.
            assert_eq!(head.framing, framing);
            let _ = body;
        }
    }
});
