//! TLS termination: the handshake (bounded by the listener's handshake timeout), then
//! the protocol ALPN chose, HTTP/2 or HTTP/1.1, over the TLS stream.
//!
//! rustls runs as tokio-rustls over monoio's poll-io (measured faster than
//! monoio-rustls for h2 on these machines); HTTP/1.1 reaches the request path through
//! `transport::PollStream`. The server config comes from the snapshot current at
//! accept, so new certificates take effect for the next handshake after a reload while
//! established connections keep theirs. Every failed handshake is closed and counted
//! by reason.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use monoio::io::IntoPollIo;
use monoio::net::TcpStream;
use rustls::ServerConfig;
use weft_mesh::snapshot::ListenerRole;

use super::connection::{ConnectionFacts, PeerIdentity, TlsFacts};
use super::{client_h1, client_h2};
use crate::observe::metrics::Family;
use crate::runtime::worker::{BoundListener, Worker};
use crate::transport::{Conn, PollStream};

/// A listener's TLS settings, as the snapshot at accept had them.
pub struct Settings {
    pub server: Arc<ServerConfig>,
    pub handshake_timeout: Duration,
    pub forward_client_cert: bool,
}

pub async fn serve(
    worker: Rc<Worker>,
    bound: BoundListener,
    stream: TcpStream,
    peer: SocketAddr,
    role: ListenerRole,
    settings: Settings,
) {
    let Settings {
        server: config,
        handshake_timeout: timeout,
        forward_client_cert,
    } = settings;
    let local = stream.local_addr().ok();
    let Ok(io) = stream.into_poll_io() else {
        return;
    };
    let refuses_http1 = !config.alpn_protocols.is_empty()
        && !config.alpn_protocols.iter().any(|p| p == b"http/1.1");
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let failed = |why: Failure| {
        worker.counters.bump(
            Family::TlsHandshakeFailures,
            [bound.slot as u64, why as u64, 0, 0],
            || {
                vec![
                    ("listener", bound.name.to_string()),
                    ("reason", why.label().to_string()),
                ]
            },
        );
    };
    let tls = match monoio::time::timeout(timeout, acceptor.accept(io)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            let why = Failure::of(&e);
            match why {
                // A caller without (or with the wrong) client certificate: the
                // operator of this side needs to hear it too, though not once per
                // connection.
                Failure::NoClientCertificate | Failure::BadClientCertificate
                    if client_warning_due() =>
                {
                    tracing::warn!(%peer, listener = %bound.name, "TLS client refused: {}", client_refusal(&e));
                }
                _ => tracing::debug!(%peer, listener = %bound.name, "TLS handshake failed: {e}"),
            }
            failed(why);
            return;
        }
        Err(_) => {
            failed(Failure::Timeout);
            return;
        }
    };
    let session = tls.get_ref().1;
    // A listener whose ALPN list leaves out `http/1.1` serves no HTTP/1.1, and a client
    // that offers no ALPN at all speaks HTTP/1.1 (HTTP/2 over TLS needs ALPN, RFC 9113
    // §3.2): it is refused as one whose offer matched nothing.
    if session.alpn_protocol().is_none() && refuses_http1 {
        tracing::debug!(%peer, listener = %bound.name, "TLS client offered no ALPN to an h2-only listener");
        failed(Failure::Alpn);
        return;
    }
    let peer_identity = match session.peer_certificates().and_then(|chain| chain.first()) {
        None => None,
        Some(leaf) => match PeerIdentity::of_leaf(leaf) {
            Ok(identity) => Some(identity),
            Err(why) => {
                // Verified by the CA, but not an identity weft can vouch for: no request
                // is served rather than one with half an identity.
                tracing::warn!(%peer, listener = %bound.name, "client certificate refused: {why}");
                failed(Failure::UnsafeIdentity);
                return;
            }
        },
    };
    let facts = TlsFacts {
        sni: session.server_name().map(str::to_owned),
        alpn: session.alpn_protocol().map(<[u8]>::to_vec),
        peer_identity,
        forward_client_cert,
    };
    let h2 = facts.alpn.as_deref() == Some(b"h2");
    let conn = Rc::new(ConnectionFacts {
        peer,
        local,
        listener: bound.name.clone(),
        role,
        scheme: "https",
        tls: Some(facts),
        rate_limits: Default::default(),
    });
    if h2 {
        client_h2::serve_io(worker, bound, tls, conn).await;
    } else {
        let client = Conn::new(PollStream(tls));
        client_h1::serve_conn(worker, bound, client, conn).await;
    }
}

/// At most one warning a second per worker about refused client certificates.
fn client_warning_due() -> bool {
    thread_local! {
        static LAST: std::cell::Cell<Option<std::time::Instant>> = const { std::cell::Cell::new(None) };
    }
    super::relay::once_a_second(&LAST)
}

/// What was wrong with a client's certificate, in words.
fn client_refusal(e: &std::io::Error) -> String {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::NoCertificatesPresented) => {
            "it presented no client certificate, and this listener requires one (tls.client_auth.mode = \"require\"); give the caller's cluster tls.cert and tls.key".to_owned()
        }
        Some(rustls::Error::InvalidCertificate(c)) => format!(
            "its client certificate is {} (this listener trusts tls.client_auth.ca)",
            crate::upstream::tls::certificate_problem(c)
        ),
        _ => e.to_string(),
    }
}

/// Why a handshake failed, as counted.
#[derive(Clone, Copy)]
enum Failure {
    Timeout,
    Eof,
    Io,
    BadClientCertificate,
    NoClientCertificate,
    /// Verified, but with a name weft cannot forward safely (`identity`).
    UnsafeIdentity,
    NotTls,
    Alpn,
    Incompatible,
    Alert,
    Refused,
    Other,
}

impl Failure {
    fn of(e: &std::io::Error) -> Failure {
        let Some(tls) = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        else {
            return if e.kind() == std::io::ErrorKind::UnexpectedEof {
                Failure::Eof
            } else {
                Failure::Io
            };
        };
        match tls {
            rustls::Error::InvalidCertificate(_) => Failure::BadClientCertificate,
            rustls::Error::NoCertificatesPresented => Failure::NoClientCertificate,
            rustls::Error::InvalidMessage(_) => Failure::NotTls,
            rustls::Error::NoApplicationProtocol => Failure::Alpn,
            rustls::Error::PeerIncompatible(_) => Failure::Incompatible,
            rustls::Error::AlertReceived(_) => Failure::Alert,
            rustls::Error::General(_) => Failure::Refused,
            _ => Failure::Other,
        }
    }

    /// The metric's `reason` label: short and stable.
    fn label(self) -> &'static str {
        match self {
            Failure::Timeout => "timeout",
            Failure::Eof => "eof",
            Failure::Io => "io",
            Failure::BadClientCertificate => "bad_client_certificate",
            Failure::NoClientCertificate => "no_client_certificate",
            Failure::UnsafeIdentity => "unsafe_identity",
            Failure::NotTls => "not_tls",
            Failure::Alpn => "alpn",
            Failure::Incompatible => "incompatible",
            Failure::Alert => "alert",
            Failure::Refused => "refused",
            Failure::Other => "other",
        }
    }
}
