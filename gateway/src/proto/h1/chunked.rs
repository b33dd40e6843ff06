//! Incremental parser of the chunked transfer coding (RFC 9112 §7.1).
//!
//! weft forwards chunked bodies as they came (chunk boundaries and trailers included)
//! while this state machine walks them, so it knows exactly where the body ends and
//! refuses anything malformed before forwarding it. It is fed whatever bytes arrived,
//! in any split, and never buffers: it only counts. The encoders write the chunked
//! coding for bodies that arrive unframed (HTTP/2 DATA frames).

use std::fmt::Write as _;

use bytes::{Bytes, BytesMut};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkError {
    BadSize,
    BadLineEnd,
    LineTooLong,
    TrailersTooLarge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size,
    /// After the size: optional whitespace and `;ext`, up to CR.
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerStart,
    TrailerLine,
    TrailerLf,
    FinalLf,
    Done,
}

/// `data` as one chunk of the chunked coding.
pub fn encode_chunk(data: &[u8]) -> Bytes {
    let mut framed = BytesMut::with_capacity(data.len() + 16);
    let _ = write!(framed, "{:x}\r\n", data.len());
    framed.extend_from_slice(data);
    framed.extend_from_slice(b"\r\n");
    framed.freeze()
}

/// The last chunk, carrying `trailers` (HTTP/2 trailers become the trailer section).
pub fn last_chunk(trailers: Option<&http::HeaderMap>) -> Bytes {
    let mut last = BytesMut::from(&b"0\r\n"[..]);
    for (name, value) in trailers.into_iter().flatten() {
        last.extend_from_slice(name.as_str().as_bytes());
        last.extend_from_slice(b": ");
        last.extend_from_slice(value.as_bytes());
        last.extend_from_slice(b"\r\n");
    }
    last.extend_from_slice(b"\r\n");
    last.freeze()
}

/// Limits guard against a peer that streams an endless size line or trailer.
const MAX_SIZE_LINE: usize = 4096;

#[derive(Debug, Clone)]
pub struct ChunkedParser {
    state: State,
    size: u64,
    size_digits: usize,
    line_len: usize,
    trailer_bytes: usize,
    max_trailer_bytes: usize,
}

/// What one `feed` call found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Bytes of the input that belong to the body (all of it unless `done`).
    pub consumed: usize,
    pub done: bool,
}

impl ChunkedParser {
    pub fn new(max_trailer_bytes: usize) -> ChunkedParser {
        ChunkedParser {
            state: State::Size,
            size: 0,
            size_digits: 0,
            line_len: 0,
            trailer_bytes: 0,
            max_trailer_bytes,
        }
    }

    /// Walks `input`; `on_data` gets the ranges (within `input`) of chunk data, for
    /// callers that need the decoded body rather than the raw coding.
    pub fn feed(
        &mut self,
        input: &[u8],
        on_data: impl FnMut(std::ops::Range<usize>),
    ) -> Result<Progress, ChunkError> {
        self.feed_with_trailers(input, on_data, |_| {})
    }

    /// Like `feed`, also handing over the trailer section's bytes (its field lines,
    /// CRLFs included) as they pass.
    pub fn feed_with_trailers(
        &mut self,
        input: &[u8],
        mut on_data: impl FnMut(std::ops::Range<usize>),
        mut on_trailer: impl FnMut(u8),
    ) -> Result<Progress, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                State::Size => match hex(b) {
                    Some(v) => {
                        self.size_digits += 1;
                        if self.size_digits > 15 {
                            return Err(ChunkError::BadSize);
                        }
                        self.size = self.size * 16 + v as u64;
                    }
                    None if self.size_digits == 0 => return Err(ChunkError::BadSize),
                    None if b == b'\r' => self.state = State::SizeLf,
                    None if b == b';' || b == b' ' || b == b'\t' => self.state = State::Extension,
                    None => return Err(ChunkError::BadSize),
                },
                State::Extension => {
                    self.line_len += 1;
                    if self.line_len > MAX_SIZE_LINE {
                        return Err(ChunkError::LineTooLong);
                    }
                    if b == b'\r' {
                        self.state = State::SizeLf;
                    } else if b == b'\n' || (b < b' ' && b != b'\t') || b == 0x7f {
                        return Err(ChunkError::BadLineEnd);
                    }
                }
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkError::BadLineEnd);
                    }
                    self.line_len = 0;
                    self.size_digits = 0;
                    self.state = if self.size == 0 {
                        State::TrailerStart
                    } else {
                        State::Data
                    };
                }
                State::Data => {
                    let take = (self.size as usize).min(input.len() - i);
                    on_data(i..i + take);
                    self.size -= take as u64;
                    i += take;
                    if self.size == 0 {
                        self.state = State::DataCr;
                    }
                    continue;
                }
                State::DataCr => {
                    if b != b'\r' {
                        return Err(ChunkError::BadLineEnd);
                    }
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkError::BadLineEnd);
                    }
                    self.state = State::Size;
                }
                State::TrailerStart => {
                    if b == b'\r' {
                        self.state = State::FinalLf;
                    } else {
                        self.count_trailer()?;
                        on_trailer(b);
                        self.state = State::TrailerLine;
                    }
                }
                State::TrailerLine => {
                    self.count_trailer()?;
                    on_trailer(b);
                    if b == b'\r' {
                        self.state = State::TrailerLf;
                    } else if b == b'\n' || b == 0 {
                        return Err(ChunkError::BadLineEnd);
                    }
                }
                State::TrailerLf => {
                    if b != b'\n' {
                        return Err(ChunkError::BadLineEnd);
                    }
                    on_trailer(b);
                    self.state = State::TrailerStart;
                }
                State::FinalLf => {
                    if b != b'\n' {
                        return Err(ChunkError::BadLineEnd);
                    }
                    self.state = State::Done;
                    return Ok(Progress {
                        consumed: i + 1,
                        done: true,
                    });
                }
                State::Done => {
                    return Ok(Progress {
                        consumed: i,
                        done: true,
                    })
                }
            }
            i += 1;
        }
        Ok(Progress {
            consumed: i,
            done: self.state == State::Done,
        })
    }

    fn count_trailer(&mut self) -> Result<(), ChunkError> {
        self.trailer_bytes += 1;
        if self.trailer_bytes > self.max_trailer_bytes {
            return Err(ChunkError::TrailersTooLarge);
        }
        Ok(())
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_in_pieces(input: &[u8], piece: usize) -> Result<(Vec<u8>, usize), ChunkError> {
        let mut p = ChunkedParser::new(1024);
        let mut out = Vec::new();
        let mut total = 0;
        for part in input.chunks(piece) {
            let prog = p.feed(part, |r| out.extend_from_slice(&part[r]))?;
            total += prog.consumed;
            if prog.done {
                return Ok((out, total));
            }
        }
        Err(ChunkError::BadLineEnd)
    }

    #[test]
    fn decodes_across_any_split() {
        let body = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: yes\r\n\r\nNEXT";
        for piece in 1..body.len() {
            let (data, consumed) = decode_in_pieces(body, piece).unwrap();
            assert_eq!(data, b"hello world");
            assert_eq!(consumed, body.len() - 4, "piece {piece}");
        }
    }

    #[test]
    fn refuses_malformed_codings() {
        for bad in [
            &b"x\r\n"[..],
            b"5\r\nhelloXX",
            b"5\nhello\r\n",
            b"-1\r\n",
            b"fffffffffffffffff\r\n",
            b"\r\n",
        ] {
            let mut p = ChunkedParser::new(1024);
            assert!(
                p.feed(bad, |_| {}).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn trailers_are_bounded() {
        let mut p = ChunkedParser::new(8);
        assert_eq!(
            p.feed(b"0\r\nX-Long-Trailer: 1\r\n\r\n", |_| {}),
            Err(ChunkError::TrailersTooLarge)
        );
    }

    #[test]
    fn hands_over_the_trailer_section() {
        let body = b"3\r\nabc\r\n0\r\nx-sum: 1\r\nx-b: 2\r\n\r\n";
        let mut p = ChunkedParser::new(1024);
        let (mut data, mut trailers) = (Vec::new(), Vec::new());
        let progress = p
            .feed_with_trailers(
                body,
                |r| data.extend_from_slice(&body[r]),
                |b| trailers.push(b),
            )
            .unwrap();
        assert!(progress.done);
        assert_eq!(data, b"abc");
        assert_eq!(trailers, b"x-sum: 1\r\nx-b: 2\r\n");
    }
}
