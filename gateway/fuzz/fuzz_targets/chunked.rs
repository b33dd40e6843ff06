//! The chunked decoder on any bytes, fed in one piece and in two at a split the input
//! chooses: the same verdict and the same data either way, and never past the input.
//! The input's first byte picks the split and whose trailer rules apply (a request's
//! or a response's).
#![no_main]
use libfuzzer_sys::fuzz_target;
use weft_gateway::proto::h1::chunked::ChunkedParser;
use weft_mesh::fields::Trailers;

fn whole(input: &[u8], kind: Trailers) -> Option<(usize, bool, Vec<u8>)> {
    let mut p = ChunkedParser::new(4096, kind);
    let mut data = Vec::new();
    let prog = p.feed(input, |r| data.extend_from_slice(&input[r])).ok()?;
    assert!(prog.consumed <= input.len());
    Some((prog.consumed, prog.done, data))
}

fn split(input: &[u8], at: usize, kind: Trailers) -> Option<(usize, bool, Vec<u8>)> {
    let mut p = ChunkedParser::new(4096, kind);
    let mut data = Vec::new();
    let (a, b) = input.split_at(at);
    let first = p.feed(a, |r| data.extend_from_slice(&a[r])).ok()?;
    if first.done {
        return Some((first.consumed, true, data));
    }
    let second = p.feed(b, |r| data.extend_from_slice(&b[r])).ok()?;
    Some((a.len() + second.consumed, second.done, data))
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, input)) = data.split_first() else {
        return;
    };
    let at = if input.is_empty() { 0 } else { (pick & 0x7f) as usize % input.len() };
    let kind = if pick & 0x80 != 0 { Trailers::Request } else { Trailers::Response };
    let one = whole(input, kind);
    let two = split(input, at, kind);
    match (&one, &two) {
        (Some(a), Some(b)) if a.1 => assert_eq!(a, b),
        (None, Some(b)) => assert!(!b.1 || b.0 <= at, "{one:?} {two:?}"),
        _ => {}
    }
});
