//! Every way one exchange can fail, as one typed value.
//!
//! A failure is named where it happens (a relay, the head reader, the connect) and
//! interpreted here, once: the HTTP status a client gets, the `x-weft-error` reason, the
//! gRPC status of a gRPC call, the metric label, the side at fault and whether the
//! request may be sent again. Nothing on the request path decides by matching a status
//! number or a reason string; it asks the error.
//!
//! Reasons are fixed texts: operators grep logs and alerts for them, and tests read
//! them from `x-weft-error`.

use h2::Reason;

use weft_mesh::snapshot::retry::Failure;

use super::grpc::Code;
use crate::proto::h1::head::HeadError;
pub use crate::upstream::Breaker;
use crate::upstream::{ConnectError, ConnectFailure, TlsRefusal};

/// Who made an exchange fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The client: a malformed or oversized request, a stall, a cancel.
    Client,
    /// The upstream: refused, reset, slow, broken, or not there.
    Upstream,
    /// Neither: this host (no descriptors) or the configuration (no route).
    Local,
}

/// When a failed attempt may be made again. Without a retry policy, only when the
/// upstream cannot have acted on the request; with one, also when the policy names the
/// failure (`retry::Retries` decides).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    Never,
    /// Once, on a fresh connection, when the failed one came from the pool: it had died
    /// while idle, before the request reached the upstream.
    IfReused,
    /// When nothing of the request body was taken from the client (the upstream refused
    /// the stream before doing any work on it, RFC 9113 §8.7), or as the policy says.
    IfUnsent,
    /// Only as a retry policy says, for this failure.
    Policy(Failure),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyError {
    /// The request head was refused by the parser.
    BadHead(HeadError),
    /// The request head did not arrive within `http.header_read_timeout`.
    HeadTimeout,
    /// A request target or authority weft refuses to route (userinfo, `*` outside
    /// OPTIONS).
    BadRequestTarget(&'static str),
    /// A request field HTTP/2 calls malformed (RFC 9113 §8.2.1), such as a value with
    /// leading or trailing whitespace: conditions on it would see another value than
    /// an HTTP/1.1 parser, which trims it.
    MalformedField,
    NoRoute,
    /// A gRPC call over HTTP/1.1: its status trailers cannot be carried reliably.
    GrpcNeedsHttp2,
    UpgradeToHttp2,
    /// An `Upgrade` to a protocol the route does not allow (`upgrades`).
    UpgradeNotAllowed,
    /// One of the cluster's circuit breakers is full: answered here, never sent, never
    /// retried.
    Overflow(Breaker),
    /// CONNECT from an HTTP/2 client: tunnels over HTTP/2 (extended CONNECT) are not
    /// built yet, and a CONNECT has no path to forward as an HTTP/1.1 request line.
    ConnectNotSupported,
    MethodNotValidForHttp2,
    TargetNotValidForHttp2,
    BodyTooLarge,
    MalformedBody,
    /// The client sent nothing of its body, or read nothing of the response, for the
    /// idle timeout.
    ClientStalled,
    /// The client closed its connection or reset its stream.
    ClientGone,
    NoEndpoints,
    /// Every endpoint failed its health checks, and the panic threshold is 0.
    NoHealthyUpstream,
    /// The connect failed on the endpoint's side (refused, unreachable, reset).
    ConnectFailed(ConnectFailure),
    /// No socket could be made here (out of descriptors or local ports).
    LocalShortage(ConnectFailure),
    ConnectTimeout,
    /// The TLS handshake with the upstream failed, and why (also a refusal that came
    /// on the first read: TLS 1.3 checks a client certificate after the handshake).
    UpstreamTls(TlsRefusal),
    UpstreamHandshake,
    /// The shared HTTP/2 connection failed while opening the stream.
    UpstreamConnectionFailed,
    /// A pooled connection was found closed before the upstream could have seen the
    /// request.
    StaleConnection,
    /// The upstream closed the connection without a response, possibly after acting on
    /// the request.
    ClosedBeforeResponse,
    ClosedDuringRequest,
    ClosedDuringResponseHead,
    /// The upstream stopped taking the request body.
    UpstreamNotReading,
    RefusedStream,
    /// The upstream's GOAWAY said it would not process the stream (its id was above the
    /// last-stream-id, RFC 9113 §6.8): like a refused stream, it may go again.
    StreamNotProcessed,
    /// The upstream reset the stream (before the head, or mid-body with `reason`).
    UpstreamReset(Reason),
    /// The request came back to this weft (its `Via` names this process): a cluster
    /// whose endpoint is weft itself, directly or through others.
    LoopDetected,
    ResponseTimeout,
    /// The attempt's `per_try_timeout` passed before its response head.
    PerTryTimeout,
    /// An answer the retry policy sends again: never shown to the client (the retry was
    /// decided, and its budget taken, before the relay returned this).
    RetriedAnswer {
        status: u16,
        grpc: Option<u16>,
    },
    /// The route's `fault` answered the request (never sent upstream): `status`, or a
    /// gRPC call's `grpc` status.
    FaultAbort {
        status: u16,
        grpc: Option<u16>,
    },
    /// A rate limit's bucket was empty: `status`, or a gRPC call's `grpc` status, with
    /// the bucket's size and the seconds to its next fill for `x-ratelimit-*`.
    RateLimited {
        status: u16,
        grpc: u16,
        limit: u32,
        reset_secs: u32,
    },
    /// A retry found the request body it needed not kept (an invariant of
    /// `retry::Retries`: never expected).
    BodyNotKept,
    GrpcDeadline,
    BadResponseHead,
    /// More interim (1xx) responses than `MAX_INTERIM_RESPONSES` before the final one.
    TooManyInterimResponses,
    ResponseHeadNotValidForHttp2,
    SwitchWithoutUpgrade,
    /// The upstream sent nothing of its response body for the cluster's read timeout.
    ResponseBodyStalled,
    /// The upstream's response body broke off (closed early, or malformed framing).
    ResponseBodyBroken,
}

impl ProxyError {
    /// The status a client gets when the error comes before any response.
    pub fn status(self) -> u16 {
        use ProxyError::*;
        match self {
            BadHead(HeadError::Malformed(_)) => 400,
            BadHead(HeadError::TooLarge) => 431,
            BadHead(HeadError::UnsupportedEncoding) => 501,
            BadHead(HeadError::UnsupportedExpectation) => 417,
            HeadTimeout | ClientStalled => 408,
            NoRoute => 404,
            GrpcNeedsHttp2 => 505,
            UpgradeToHttp2 | ConnectNotSupported => 501,
            UpgradeNotAllowed => 403,
            MethodNotValidForHttp2
            | TargetNotValidForHttp2
            | MalformedBody
            | BadRequestTarget(_)
            | MalformedField => 400,
            BodyTooLarge => 413,
            LoopDetected => 508,
            // Nobody reads it; what access logs show for a cancelled request (nginx 499).
            ClientGone => 499,
            NoEndpoints | NoHealthyUpstream | LocalShortage(_) | RefusedStream
            | StreamNotProcessed | Overflow(_) => 503,
            ConnectTimeout | UpstreamNotReading | ResponseTimeout | PerTryTimeout
            | GrpcDeadline | ResponseBodyStalled => 504,
            RetriedAnswer { status, .. }
            | FaultAbort { status, .. }
            | RateLimited { status, .. } => status,
            BodyNotKept => 502,
            ConnectFailed(_)
            | UpstreamTls(_)
            | UpstreamHandshake
            | UpstreamConnectionFailed
            | StaleConnection
            | ClosedBeforeResponse
            | ClosedDuringRequest
            | ClosedDuringResponseHead
            | UpstreamReset(_)
            | BadResponseHead
            | TooManyInterimResponses
            | ResponseHeadNotValidForHttp2
            | SwitchWithoutUpgrade
            | ResponseBodyBroken => 502,
        }
    }

    /// Header fields a weft-made answer to this error carries besides `x-weft-error`:
    /// `x-weft-overloaded: true` on a breaker's overflow (as Envoy's
    /// `x-envoy-overloaded`), so a client or a proxy in front tells it from an
    /// upstream's 503.
    pub fn answer_fields(self) -> &'static [(&'static str, &'static str)] {
        match self {
            ProxyError::Overflow(_) => &[("x-weft-overloaded", "true")],
            ProxyError::RateLimited { .. } => &[("x-weft-ratelimited", "true")],
            _ => &[],
        }
    }

    /// The short reason of a weft-made error (`x-weft-error` and the body).
    pub fn reason(self) -> &'static str {
        use ProxyError::*;
        match self {
            BadHead(HeadError::Malformed(why)) => why,
            BadHead(HeadError::TooLarge) => "request header section too large",
            BadHead(HeadError::UnsupportedEncoding) => "unsupported transfer coding",
            BadHead(HeadError::UnsupportedExpectation) => "unsupported expectation",
            HeadTimeout => "request head not received in time",
            BadRequestTarget(why) => why,
            MalformedField => "header value with leading or trailing whitespace",
            NoRoute => "no route for this request",
            GrpcNeedsHttp2 => "gRPC needs HTTP/2 (h2c prior knowledge, or TLS with ALPN h2)",
            UpgradeToHttp2 => "protocol upgrades cannot be forwarded to an HTTP/2 upstream",
            UpgradeNotAllowed => "this route does not allow an upgrade to that protocol",
            Overflow(_) => "overflow",
            ConnectNotSupported => "CONNECT over HTTP/2 is not supported",
            MethodNotValidForHttp2 => "method not valid for an HTTP/2 upstream",
            TargetNotValidForHttp2 => "request target not valid for an HTTP/2 upstream",
            BodyTooLarge => "request body larger than http.max_request_body_bytes",
            MalformedBody => "malformed chunked request body",
            ClientStalled => "request body not received in time",
            ClientGone => "client went away",
            NoEndpoints => "no healthy endpoints",
            NoHealthyUpstream => "no healthy upstream",
            ConnectFailed(_) => "upstream connection failed",
            LocalShortage(_) => "no local descriptor or port left to connect upstream",
            ConnectTimeout => "upstream connect timeout",
            UpstreamTls(refusal) => refusal.reason(),
            UpstreamHandshake => "upstream HTTP/2 handshake failed",
            UpstreamConnectionFailed => "upstream HTTP/2 connection failed",
            StaleConnection | ClosedBeforeResponse => {
                "upstream closed the connection before responding"
            }
            ClosedDuringRequest => "upstream closed the connection during the request",
            ClosedDuringResponseHead => "upstream closed the connection during its response head",
            UpstreamNotReading => "upstream stopped reading the request body",
            RefusedStream => "upstream refused the stream",
            StreamNotProcessed => "upstream went away (GOAWAY) without processing the stream",
            UpstreamReset(_) => "upstream reset the stream",
            LoopDetected => "request looped back to this weft (Via)",
            ResponseTimeout => "upstream response timeout",
            PerTryTimeout => "upstream per-try timeout",
            RetriedAnswer { .. } => "upstream answer retried",
            FaultAbort { .. } => "fault injected",
            RateLimited { .. } => "rate limited",
            BodyNotKept => "request body not kept for a retry",
            GrpcDeadline => "gRPC deadline exceeded",
            BadResponseHead => "invalid response head from upstream",
            TooManyInterimResponses => "upstream sent too many interim responses",
            ResponseHeadNotValidForHttp2 => "upstream response headers not valid in HTTP/2",
            SwitchWithoutUpgrade => "upstream switched protocols without an upgrade request",
            ResponseBodyStalled => "upstream stalled during the response body",
            ResponseBodyBroken => "upstream response body broke off",
        }
    }

    /// The gRPC status a gRPC client gets for this error (grpc/doc/statuscodes.md): no
    /// route is UNIMPLEMENTED, a limit RESOURCE_EXHAUSTED, a timeout DEADLINE_EXCEEDED,
    /// an unreachable or failing upstream UNAVAILABLE.
    pub fn grpc_code(self) -> Code {
        use ProxyError::*;
        match self {
            NoRoute => Code::Unimplemented,
            BadHead(HeadError::TooLarge) | BodyTooLarge => Code::ResourceExhausted,
            ClientGone => Code::Cancelled,
            HeadTimeout | ClientStalled | ConnectTimeout | UpstreamNotReading | ResponseTimeout
            | PerTryTimeout | GrpcDeadline | ResponseBodyStalled => Code::DeadlineExceeded,
            BadHead(_)
            | BadRequestTarget(_)
            | MalformedField
            | MethodNotValidForHttp2
            | TargetNotValidForHttp2
            | MalformedBody => Code::Internal,
            GrpcNeedsHttp2 | UpgradeToHttp2 | UpgradeNotAllowed | ConnectNotSupported => {
                Code::Unknown
            }
            LoopDetected => Code::Internal,
            _ => Code::Unavailable,
        }
    }

    /// The grpc-status a gRPC client gets: `grpc_code`'s, or an injected fault's own.
    pub fn grpc_status(self) -> u16 {
        match self {
            ProxyError::FaultAbort {
                grpc: Some(code), ..
            } => code,
            ProxyError::FaultAbort { status, .. } => super::grpc::code_for_http(status),
            ProxyError::RateLimited { grpc, .. } => grpc,
            _ => self.grpc_code() as u16,
        }
    }

    /// The `reason` label this error is counted under.
    pub fn label(self) -> &'static str {
        use ProxyError::*;
        match self {
            BadHead(_) => "bad_request_head",
            HeadTimeout => "request_head_timeout",
            BadRequestTarget(_) => "bad_request_target",
            MalformedField => "malformed_field",
            NoRoute => "no_route",
            GrpcNeedsHttp2 => "grpc_needs_http2",
            UpgradeToHttp2 => "upgrade_to_http2",
            UpgradeNotAllowed => "upgrade_not_allowed",
            Overflow(_) => "overflow",
            ConnectNotSupported => "connect_not_supported",
            MethodNotValidForHttp2 => "method_not_valid_for_http2",
            TargetNotValidForHttp2 => "target_not_valid_for_http2",
            BodyTooLarge => "body_too_large",
            MalformedBody => "malformed_body",
            ClientStalled => "client_stalled",
            ClientGone => "client_gone",
            NoEndpoints => "no_endpoints",
            NoHealthyUpstream => "no_healthy_upstream",
            ConnectFailed(f) | LocalShortage(f) => f.label(),
            ConnectTimeout => "timeout",
            UpstreamTls(_) => "tls",
            UpstreamHandshake => "handshake",
            UpstreamConnectionFailed => "connection_failed",
            StaleConnection => "stale_connection",
            ClosedBeforeResponse => "closed_before_response",
            ClosedDuringRequest => "closed_during_request",
            ClosedDuringResponseHead => "closed_during_response_head",
            UpstreamNotReading => "upstream_not_reading",
            RefusedStream => "refused_stream",
            StreamNotProcessed => "stream_not_processed",
            UpstreamReset(_) => "upstream_reset",
            LoopDetected => "loop_detected",
            ResponseTimeout => "response_timeout",
            PerTryTimeout => "per_try_timeout",
            RetriedAnswer { .. } => "retried_answer",
            FaultAbort { .. } => "fault_abort",
            RateLimited { .. } => "rate_limited",
            BodyNotKept => "body_not_kept",
            GrpcDeadline => "grpc_deadline",
            BadResponseHead => "bad_response_head",
            TooManyInterimResponses => "too_many_interim_responses",
            ResponseHeadNotValidForHttp2 => "response_head_not_valid_for_http2",
            SwitchWithoutUpgrade => "switch_without_upgrade",
            ResponseBodyStalled => "response_body_stalled",
            ResponseBodyBroken => "response_body_broken",
        }
    }

    pub fn side(self) -> Side {
        use ProxyError::*;
        match self {
            BadHead(_)
            | HeadTimeout
            | BadRequestTarget(_)
            | MalformedField
            | GrpcNeedsHttp2
            | UpgradeToHttp2
            | UpgradeNotAllowed
            | ConnectNotSupported
            | MethodNotValidForHttp2
            | TargetNotValidForHttp2
            | BodyTooLarge
            | MalformedBody
            | ClientStalled
            | ClientGone => Side::Client,
            NoRoute
            | LocalShortage(_)
            | LoopDetected
            | Overflow(_)
            | FaultAbort { .. }
            | RateLimited { .. } => Side::Local,
            _ => Side::Upstream,
        }
    }

    pub fn retry(self) -> Retry {
        use ProxyError::*;
        match self {
            StaleConnection => Retry::IfReused,
            RefusedStream | StreamNotProcessed => Retry::IfUnsent,
            ConnectFailed(_)
            | ConnectTimeout
            | UpstreamTls(_)
            | UpstreamHandshake
            | UpstreamConnectionFailed => Retry::Policy(Failure::ConnectFailure),
            // Before the response head (after it, the response has begun and nothing
            // is retried): the upstream gave no answer.
            ClosedBeforeResponse
            | ClosedDuringRequest
            | ClosedDuringResponseHead
            | UpstreamReset(_)
            | PerTryTimeout
            | BadResponseHead => Retry::Policy(Failure::Reset),
            // The route's whole timeout, a client's deadline, a breaker, no endpoint:
            // another attempt cannot help.
            _ => Retry::Never,
        }
    }

    /// A failure of the endpoint itself, as outlier detection counts it (a local-origin
    /// failure: it gave no usable answer). Not: the pool's dead connections, refused or
    /// unprocessed streams (an endpoint shedding load, retried elsewhere), a client's
    /// deadline, and whatever the client or this host caused.
    pub fn endpoint_fault(self) -> bool {
        use ProxyError::*;
        matches!(
            self,
            ConnectFailed(_)
                | ConnectTimeout
                | UpstreamTls(_)
                | UpstreamHandshake
                | UpstreamConnectionFailed
                | ClosedBeforeResponse
                | ClosedDuringRequest
                | ClosedDuringResponseHead
                | UpstreamNotReading
                | UpstreamReset(_)
                | ResponseTimeout
                | PerTryTimeout
                | BadResponseHead
                | TooManyInterimResponses
                | ResponseHeadNotValidForHttp2
                | SwitchWithoutUpgrade
                | ResponseBodyStalled
                | ResponseBodyBroken
        )
    }

    /// The `reason` label of `weft_upstream_connect_errors_total`, for a failed connect.
    pub fn connect_label(self) -> Option<&'static str> {
        use ProxyError::*;
        match self {
            NoEndpoints | ConnectFailed(_) | LocalShortage(_) | ConnectTimeout | UpstreamTls(_)
            | UpstreamHandshake => Some(self.label()),
            _ => None,
        }
    }

    /// The `phase` label of `weft_upstream_timeouts_total`, for an upstream timeout.
    pub fn timeout_phase(self) -> Option<&'static str> {
        match self {
            ProxyError::ConnectTimeout => Some("connect"),
            ProxyError::ResponseTimeout => Some("response"),
            ProxyError::PerTryTimeout => Some("per_try"),
            ProxyError::GrpcDeadline => Some("deadline"),
            ProxyError::ResponseBodyStalled => Some("read"),
            _ => None,
        }
    }

    /// A failure of the upstream's response stream itself, once it had begun: the
    /// client's stream ends the way it broke (a reset with the upstream's reason), not
    /// with a status weft makes up (gRPC status trailers are for weft's own errors,
    /// such as a deadline).
    pub fn breaks_response(self) -> bool {
        matches!(
            self,
            ProxyError::UpstreamReset(_)
                | ProxyError::ResponseBodyStalled
                | ProxyError::ResponseBodyBroken
        )
    }

    /// The reason an HTTP/2 client stream is reset with when this error comes after its
    /// response head: an upstream's own reset crosses weft unchanged.
    pub fn reset_reason(self) -> Reason {
        match self {
            ProxyError::UpstreamReset(r) => r,
            ProxyError::ClientStalled | ProxyError::ResponseBodyStalled => Reason::CANCEL,
            _ => Reason::INTERNAL_ERROR,
        }
    }
}

impl From<&ConnectError> for ProxyError {
    fn from(e: &ConnectError) -> ProxyError {
        match e {
            ConnectError::NoEndpoints => ProxyError::NoEndpoints,
            ConnectError::NoHealthy => ProxyError::NoHealthyUpstream,
            ConnectError::Io(err) => {
                let failure = ConnectFailure::of(err);
                if failure.is_local() {
                    ProxyError::LocalShortage(failure)
                } else {
                    ProxyError::ConnectFailed(failure)
                }
            }
            ConnectError::TimedOut => ProxyError::ConnectTimeout,
            ConnectError::Handshake(_) => ProxyError::UpstreamHandshake,
            ConnectError::Tls(f) => ProxyError::UpstreamTls(f.refusal),
            ConnectError::Overflow(breaker) => ProxyError::Overflow(*breaker),
        }
    }
}

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_failures_map_to_their_status_and_side() {
        let io = |code| ConnectError::Io(std::io::Error::from_raw_os_error(code));
        let refused = ProxyError::from(&io(libc::ECONNREFUSED));
        assert_eq!((refused.status(), refused.side()), (502, Side::Upstream));
        assert_eq!(refused.connect_label(), Some("refused"));
        let shortage = ProxyError::from(&io(libc::EMFILE));
        assert_eq!((shortage.status(), shortage.side()), (503, Side::Local));
        assert_eq!(shortage.connect_label(), Some("local_fd_limit"));
        let timeout = ProxyError::from(&ConnectError::TimedOut);
        assert_eq!(timeout.status(), 504);
        assert_eq!(timeout.timeout_phase(), Some("connect"));
        assert_eq!(timeout.grpc_code(), Code::DeadlineExceeded);
    }

    #[test]
    fn only_unseen_requests_are_retried() {
        assert_eq!(ProxyError::StaleConnection.retry(), Retry::IfReused);
        assert_eq!(ProxyError::RefusedStream.retry(), Retry::IfUnsent);
        for e in [
            ProxyError::ResponseTimeout,
            ProxyError::GrpcDeadline,
            ProxyError::NoEndpoints,
            ProxyError::ClientGone,
        ] {
            assert_eq!(e.retry(), Retry::Never, "{e:?}");
        }
        // Only a policy retries what may have reached the application, or a connect.
        assert_eq!(
            ProxyError::ClosedBeforeResponse.retry(),
            Retry::Policy(Failure::Reset)
        );
        assert_eq!(
            ProxyError::ConnectFailed(ConnectFailure::Refused).retry(),
            Retry::Policy(Failure::ConnectFailure)
        );
    }

    #[test]
    fn grpc_clients_get_the_documented_codes() {
        assert_eq!(ProxyError::NoRoute.grpc_code(), Code::Unimplemented);
        assert_eq!(
            ProxyError::BodyTooLarge.grpc_code(),
            Code::ResourceExhausted
        );
        assert_eq!(ProxyError::NoEndpoints.grpc_code(), Code::Unavailable);
        assert_eq!(ProxyError::RefusedStream.grpc_code(), Code::Unavailable);
        assert_eq!(ProxyError::GrpcDeadline.grpc_code(), Code::DeadlineExceeded);
        assert_eq!(ProxyError::ClientGone.grpc_code(), Code::Cancelled);
        // A breaker's overflow: UNAVAILABLE, made here, never sent again.
        let overflow = ProxyError::Overflow(Breaker::Requests);
        assert_eq!(overflow.grpc_code(), Code::Unavailable);
        assert_eq!(overflow.retry(), Retry::Never);
        assert_eq!(overflow.side(), Side::Local);
    }

    #[test]
    fn an_upstream_reset_crosses_with_its_reason() {
        let e = ProxyError::UpstreamReset(Reason::REFUSED_STREAM);
        assert_eq!(e.reset_reason(), Reason::REFUSED_STREAM);
        assert_eq!(
            ProxyError::ResponseBodyBroken.reset_reason(),
            Reason::INTERNAL_ERROR
        );
    }
}
