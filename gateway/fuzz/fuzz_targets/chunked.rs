//! The chunked decoder on any bytes, fed in one piece and in two at a split the input
//! chooses: the same verdict and the same data either way, and never past the input.
#![no_main]
use libfuzzer_sys::fuzz_target;
use weft_gateway::proto::h1::chunked::ChunkedParser;

fn whole(input: &[u8]) -> Option<(usize, bool, Vec<u8>)> {
    let mut p = ChunkedParser::new(4096);
    let mut data = Vec::new();
    let prog = p.feed(input, |r| data.extend_from_slice(&input[r])).ok()?;
    assert!(prog.consumed <= input.len());
    Some((prog.consumed, prog.done, data))
}

fn split(input: &[u8], at: usize) -> Option<(usize, bool, Vec<u8>)> {
    let mut p = ChunkedParser::new(4096);
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
    let at = if input.is_empty() { 0 } else { pick as usize % input.len() };
    let one = whole(input);
    let two = split(input, at);
    match (&one, &two) {
        (Some(a), Some(b)) if a.1 => assert_eq!(a, b),
        (None, Some(b)) => assert!(!b.1 || b.0 <= at, "{one:?} {two:?}"),
        _ => {}
    }
});
