//! A differential property test of the framing weft forwards: random valid and hostile
//! HTTP/1.1 requests (and upstream responses) go through weft's forwarding path
//! (`proxy::forwarded`), and what comes out is parsed by two parsers weft does not use,
//! a strict one (RFC 9112 to the letter) and a lenient one (bare LF ends a line, as
//! nginx reads), each of which must see exactly one message, ending where weft's does,
//! with the body weft decided. Request smuggling is any disagreement.

use weft_gateway::proto::h1::head::BodyFraming;
use weft_gateway::proxy::forwarded::{request, response, Outcome};
use weft_tests::recording::lenient_request;

/// One message read strictly: (head length, body), or `None` for anything RFC 9112
/// does not allow. `response`: a status line, and a body that may run to the end.
fn strict(data: &[u8], response: bool, head_request: bool) -> Option<(usize, Vec<u8>)> {
    fn line(data: &[u8], at: usize) -> Option<(&[u8], usize)> {
        let i = data[at..].windows(2).position(|w| w == b"\r\n")? + at;
        let l = &data[at..i];
        if l.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0) {
            return None;
        }
        Some((l, i + 2))
    }
    fn tchar(b: u8) -> bool {
        b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
    }
    let (start, mut at) = line(data, 0)?;
    if start.is_empty() {
        return None;
    }
    let status = if response {
        std::str::from_utf8(start.get(9..12)?)
            .ok()?
            .parse::<u16>()
            .ok()?
    } else {
        0
    };
    let (mut length, mut chunked, mut lengths) = (None, false, 0);
    loop {
        let (l, next) = line(data, at)?;
        at = next;
        if l.is_empty() {
            break;
        }
        let colon = l.iter().position(|&b| b == b':')?;
        let (name, value) = (&l[..colon], &l[colon + 1..]);
        if name.is_empty() || !name.iter().all(|&b| tchar(b)) {
            return None;
        }
        let value = String::from_utf8_lossy(value).trim().to_owned();
        let name = String::from_utf8_lossy(name).to_ascii_lowercase();
        if name == "content-length" {
            lengths += 1;
            if !value.bytes().all(|b| b.is_ascii_digit()) || value.is_empty() {
                return None;
            }
            length = Some(value.parse::<usize>().ok()?);
        }
        if name == "transfer-encoding" {
            if !value.eq_ignore_ascii_case("chunked") {
                return None;
            }
            chunked = true;
        }
    }
    if lengths > 1 || (chunked && length.is_some()) {
        return None;
    }
    let head_len = at;
    let no_body = head_request || status == 204 || status == 304 || (100..200).contains(&status);
    let mut body = Vec::new();
    if no_body {
    } else if chunked {
        loop {
            let (size_line, next) = line(data, at)?;
            at = next;
            let digits: &[u8] = size_line.split(|&b| b == b';').next()?;
            let digits = std::str::from_utf8(digits)
                .ok()?
                .trim_end_matches([' ', '\t']);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            let size = usize::from_str_radix(digits, 16).ok()?;
            if size == 0 {
                loop {
                    let (l, next) = line(data, at)?;
                    at = next;
                    if l.is_empty() {
                        break;
                    }
                    let colon = l.iter().position(|&b| b == b':')?;
                    if colon == 0 || !l[..colon].iter().all(|&b| tchar(b)) {
                        return None;
                    }
                }
                break;
            }
            body.extend_from_slice(data.get(at..at + size)?);
            at += size;
            if data.get(at..at + 2)? != b"\r\n" {
                return None;
            }
            at += 2;
        }
    } else if let Some(n) = length {
        body.extend_from_slice(data.get(at..at + n)?);
        at += n;
    } else if response {
        body.extend_from_slice(&data[at..]);
        at = data.len();
    }
    let _ = head_len;
    Some((at, body))
}

/// Pieces hostile and ordinary heads are made of.
const METHODS: [&str; 4] = ["GET", "POST", "PUT", "HEAD"];
const FIELDS: [&str; 24] = [
    "Content-Length: 5",
    "Content-Length: 5, 5",
    "Content-Length: 05",
    "Content-Length: +5",
    "Content-Length: 0",
    "Content-Length: 99999999999999999999",
    "Content-Length : 5",
    "Transfer-Encoding: chunked",
    "Transfer-Encoding: Chunked",
    "Transfer-Encoding: chunked, gzip",
    "Transfer-Encoding:  chunked",
    "Transfer_Encoding: chunked",
    "Connection: Content-Length",
    "Connection: close, Transfer-Encoding",
    "Connection: host, x-a",
    "Connection: keep-alive",
    "X-A: 1",
    "X-B: two words",
    " folded: continuation",
    "Trailer: x-sum",
    "TE: trailers",
    "Expect: 100-continue",
    "X-Bare-Lf: 1\n",
    "Host: other",
];
const BODIES: [&str; 12] = [
    "hello",
    "5\r\nhello\r\n0\r\n\r\n",
    "5\r\nhello\r\n0\r\n\n",
    "5\r\nhello\r\n0\r\nx-sum: 1\r\n\r\n",
    "5\r\nhello\r\n0\r\nContent-Length: 9\r\n\r\n",
    "5 zzz\r\nhello\r\n0\r\n\r\n",
    "5;a=b\r\nhello\r\n0\r\n\r\n",
    "5\nhello\n0\n\n",
    "0\r\n\r\n",
    "3\r\nabc\r\n0\r\n\n\r\n",
    "0\r\nX: a\nGET /admin HTTP/1.1\r\n\r\n",
    "",
];
const TAILS: [&str; 3] = ["", "GET /admin/secret HTTP/1.1\r\nHost: x\r\n\r\n", "\r\n"];

fn random_message(rng: &mut fastrand::Rng, response: bool) -> Vec<u8> {
    let mut out = if response {
        let status = [
            "200 OK",
            "200",
            "404 Not Found",
            "204 No Content",
            "304 Not Modified",
        ];
        format!(
            "HTTP/1.{} {}\r\n",
            rng.u8(0..2),
            status[rng.usize(..status.len())]
        )
    } else {
        let target = ["/", "/x", "http://h/x", "*"][rng.usize(..4)];
        format!(
            "{} {target} HTTP/1.{}\r\nHost: x\r\n",
            METHODS[rng.usize(..METHODS.len())],
            rng.u8(0..2)
        )
    };
    for _ in 0..rng.usize(0..5) {
        out.push_str(FIELDS[rng.usize(..FIELDS.len())]);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    out.push_str(BODIES[rng.usize(..BODIES.len())]);
    out.push_str(TAILS[rng.usize(..TAILS.len())]);
    out.into_bytes()
}

fn check(sent: &[u8], body: &[u8], framing: BodyFraming, input: &[u8], response: bool, head: bool) {
    let show = || {
        format!(
            "input {:?}\nsent {:?}",
            String::from_utf8_lossy(input),
            String::from_utf8_lossy(sent)
        )
    };
    let (end, strict_body) = strict(sent, response, head)
        .unwrap_or_else(|| panic!("a strict parser refuses what weft sent\n{}", show()));
    assert_eq!(
        end,
        sent.len(),
        "strict: bytes after the message\n{}",
        show()
    );
    assert_eq!(strict_body, body, "strict: another body\n{}", show());
    if framing == BodyFraming::UntilClose {
        return;
    }
    if !response {
        let (seen, used) = lenient_request(sent)
            .unwrap_or_else(|| panic!("the lenient parser sees no whole request\n{}", show()));
        assert_eq!(
            used,
            sent.len(),
            "lenient: a second request follows\n{}",
            show()
        );
        assert_eq!(seen.body, body, "lenient: another body\n{}", show());
    }
}

#[test]
fn every_forwarded_message_is_one_message_to_strict_and_lenient_parsers() {
    let mut rng = fastrand::Rng::with_seed(0x5eed_f00d);
    let (mut sent, mut refused) = (0, 0);
    for _ in 0..20_000 {
        let input = random_message(&mut rng, false);
        match request(&input) {
            Outcome::Sent {
                bytes,
                framing,
                body,
            } => {
                sent += 1;
                check(&bytes, &body, framing, &input, false, false);
            }
            Outcome::Rejected => refused += 1,
            Outcome::Incomplete => {}
        }
        let input = random_message(&mut rng, true);
        let head = rng.bool();
        if let Outcome::Sent {
            bytes,
            framing,
            body,
        } = response(&input, head)
        {
            sent += 1;
            check(&bytes, &body, framing, &input, true, head);
        }
    }
    // Both kinds of input were exercised.
    assert!(
        sent > 5_000 && refused > 1_000,
        "sent {sent}, refused {refused}"
    );
}
