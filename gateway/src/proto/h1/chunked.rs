//! Incremental parser of the chunked transfer coding (RFC 9112 §7.1).
//!
//! weft forwards chunked bodies as they came (chunk boundaries and trailers included)
//! while this state machine walks them, so it knows exactly where the body ends and
//! refuses anything malformed before forwarding it. It is fed whatever bytes arrived,
//! in any split, and never buffers: it only counts. The encoders write the chunked
//! coding for bodies that arrive unframed (HTTP/2 DATA frames).
//!
//! Because the bytes go on verbatim, what passes must end where every parser downstream
//! thinks it ends, strict or lenient (nginx accepts a bare LF as a line end): every
//! line ends in CRLF and nothing else, a trailer line is a field line (`token ":"
//! value`), and a trailer section cannot smuggle framing or routing (RFC 9110 §6.5.1).
//! A byte that would make two parsers disagree is an error, not a guess.

use std::fmt::Write as _;

use bytes::{Bytes, BytesMut};
use weft_mesh::fields::{self, Trailers};

use crate::proto::percent::hex_digit;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkError {
    BadSize,
    BadLineEnd,
    LineTooLong,
    TrailersTooLarge,
    /// A trailer line that is not a field line.
    BadTrailer,
    /// A trailer field that frames or routes the message (Content-Length, Host, ...),
    /// or in a request one weft vouches for (`fields::Trailers`).
    ForbiddenTrailer,
}

/// Longer trailer names than any the field rules name need no comparing.
const NAME_PREFIX: usize = fields::LONGEST_RULED_NAME;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size,
    /// Whitespace after the size: only more whitespace, `;` or CR may follow.
    SizeWs,
    /// A `;ext` after the size, up to CR.
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerStart,
    /// In a trailer field's name, up to `:`.
    TrailerName,
    /// In a trailer field's value, up to CR.
    TrailerValue,
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

/// The last chunk, carrying `trailers` (HTTP/2 trailers become the trailer section,
/// less any field a trailer section of this `kind` may not carry).
pub fn last_chunk(trailers: Option<&http::HeaderMap>, kind: Trailers) -> Bytes {
    let mut last = BytesMut::from(&b"0\r\n"[..]);
    for (name, value) in trailers.into_iter().flatten() {
        if fields::forbidden_trailer(name.as_str().as_bytes(), kind) {
            continue;
        }
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
    kind: Trailers,
    /// The lowercased start of the trailer name being read, and its length so far.
    name: [u8; NAME_PREFIX],
    name_len: usize,
}

/// What one `feed` call found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Bytes of the input that belong to the body (all of it unless `done`).
    pub consumed: usize,
    pub done: bool,
}

impl ChunkedParser {
    /// A parser of a body whose trailer section is of this `kind`.
    pub fn new(max_trailer_bytes: usize, kind: Trailers) -> ChunkedParser {
        ChunkedParser {
            kind,
            state: State::Size,
            size: 0,
            size_digits: 0,
            line_len: 0,
            trailer_bytes: 0,
            max_trailer_bytes,
            name: [0; NAME_PREFIX],
            name_len: 0,
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
                State::Size => match hex_digit(b) {
                    Some(v) => {
                        self.size_digits += 1;
                        if self.size_digits > 15 {
                            return Err(ChunkError::BadSize);
                        }
                        self.size = self.size * 16 + v as u64;
                    }
                    None if self.size_digits == 0 => return Err(ChunkError::BadSize),
                    None if b == b'\r' => self.state = State::SizeLf,
                    None if b == b';' => self.state = State::Extension,
                    None if b == b' ' || b == b'\t' => self.state = State::SizeWs,
                    None => return Err(ChunkError::BadSize),
                },
                State::SizeWs => {
                    self.line_len += 1;
                    if self.line_len > MAX_SIZE_LINE {
                        return Err(ChunkError::LineTooLong);
                    }
                    match b {
                        b' ' | b'\t' => {}
                        b';' => self.state = State::Extension,
                        b'\r' => self.state = State::SizeLf,
                        _ => return Err(ChunkError::BadSize),
                    }
                }
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
                    } else if is_tchar(b) {
                        // A bare LF here ends the message for a lenient parser and
                        // starts a "trailer" for a strict one: neither is guessed.
                        self.count_trailer()?;
                        on_trailer(b);
                        self.name_len = 0;
                        self.push_name(b);
                        self.state = State::TrailerName;
                    } else {
                        return Err(ChunkError::BadTrailer);
                    }
                }
                State::TrailerName => {
                    self.count_trailer()?;
                    on_trailer(b);
                    if b == b':' {
                        if self.name_is_forbidden() {
                            return Err(ChunkError::ForbiddenTrailer);
                        }
                        self.state = State::TrailerValue;
                    } else if is_tchar(b) {
                        self.push_name(b);
                    } else {
                        return Err(ChunkError::BadTrailer);
                    }
                }
                State::TrailerValue => {
                    self.count_trailer()?;
                    on_trailer(b);
                    match b {
                        b'\r' => self.state = State::TrailerLf,
                        b'\t' | b' '..=b'~' | 0x80..=0xff => {}
                        _ => return Err(ChunkError::BadTrailer),
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

    fn push_name(&mut self, b: u8) {
        if self.name_len < NAME_PREFIX {
            self.name[self.name_len] = b.to_ascii_lowercase();
        }
        self.name_len += 1;
    }

    fn name_is_forbidden(&self) -> bool {
        self.name_len <= NAME_PREFIX
            && fields::forbidden_trailer(&self.name[..self.name_len], self.kind)
    }

    fn count_trailer(&mut self) -> Result<(), ChunkError> {
        self.trailer_bytes += 1;
        if self.trailer_bytes > self.max_trailer_bytes {
            return Err(ChunkError::TrailersTooLarge);
        }
        Ok(())
    }
}

/// A `tchar` of RFC 9110 §5.6.2: what a field name is made of.
pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_in_pieces(input: &[u8], piece: usize) -> Result<(Vec<u8>, usize), ChunkError> {
        let mut p = ChunkedParser::new(1024, Trailers::Response);
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
            let mut p = ChunkedParser::new(1024, Trailers::Response);
            assert!(
                p.feed(bad, |_| {}).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    fn parse_all(input: &[u8]) -> Result<Progress, ChunkError> {
        ChunkedParser::new(1024, Trailers::Response).feed(input, |_| {})
    }

    #[test]
    fn a_bare_lf_never_ends_or_starts_a_trailer_section() {
        // nginx ends the message at `0\r\n\n`; a strict parser would read a trailer
        // line: both readings cannot be true, so the body is refused.
        assert_eq!(
            parse_all(b"5\r\nhello\r\n0\r\n\nGET /admin HTTP/1.1\r\nHost: x\r\n\r\n"),
            Err(ChunkError::BadTrailer)
        );
        assert_eq!(
            parse_all(b"0\r\nX-A: 1\nGET / HTTP/1.1\r\n\r\n"),
            Err(ChunkError::BadTrailer)
        );
        assert_eq!(parse_all(b"0\r\nX-A: 1\r\n\n"), Err(ChunkError::BadTrailer));
        assert_eq!(parse_all(b"0\r\n\r\r\n"), Err(ChunkError::BadLineEnd));
    }

    #[test]
    fn trailer_lines_are_field_lines_without_framing() {
        for bad in [
            &b"0\r\nno-colon\r\n\r\n"[..],
            b"0\r\n X-A: 1\r\n\r\n",
            b"0\r\nX A: 1\r\n\r\n",
            b"0\r\nX-A: a\x01b\r\n\r\n",
        ] {
            assert_eq!(parse_all(bad), Err(ChunkError::BadTrailer), "{bad:?}");
        }
        for framing in ["Content-Length", "transfer-encoding", "HOST", "Trailer"] {
            let body = format!("0\r\n{framing}: 5\r\n\r\n");
            assert_eq!(
                parse_all(body.as_bytes()),
                Err(ChunkError::ForbiddenTrailer),
                "{framing}"
            );
        }
        let fine = b"0\r\nx-checksum: abc\r\nGrpc-Status: 0\r\n\r\n";
        assert!(parse_all(fine).unwrap().done);
        let forbidden = |n: &[u8]| fields::forbidden_trailer(n, Trailers::Response);
        assert!(forbidden(b"Content-Length") && !forbidden(b"x-sum"));
        // A request's trailers carry nothing weft vouches for, whatever the spelling.
        let body = b"0\r\nX_Forwarded_Client_Cert: URI=spiffe://mesh/sa/admin\r\n\r\n";
        let mut p = ChunkedParser::new(1024, Trailers::Request);
        assert_eq!(p.feed(body, |_| {}), Err(ChunkError::ForbiddenTrailer));
        assert!(parse_all(body).unwrap().done);
    }

    #[test]
    fn size_lines_allow_only_whitespace_then_extensions() {
        assert_eq!(
            parse_all(b"5 zzz\r\nhello\r\n0\r\n\r\n"),
            Err(ChunkError::BadSize)
        );
        assert!(parse_all(b"5 ;a=b\r\nhello\r\n0\r\n\r\n").unwrap().done);
        assert!(parse_all(b"5\t\r\nhello\r\n0\r\n\r\n").unwrap().done);
    }

    #[test]
    fn trailers_are_bounded() {
        let mut p = ChunkedParser::new(8, Trailers::Response);
        assert_eq!(
            p.feed(b"0\r\nX-Long-Trailer: 1\r\n\r\n", |_| {}),
            Err(ChunkError::TrailersTooLarge)
        );
    }

    #[test]
    fn hands_over_the_trailer_section() {
        let body = b"3\r\nabc\r\n0\r\nx-sum: 1\r\nx-b: 2\r\n\r\n";
        let mut p = ChunkedParser::new(1024, Trailers::Response);
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
