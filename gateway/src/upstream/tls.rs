//! The TLS handshake with an upstream, and why one failed, in words an operator can act
//! on.
//!
//! A TLS 1.3 server checks the client's certificate after the client has finished its
//! side of the handshake, so a server that requires a certificate and got none refuses
//! with an alert that arrives on the first read, not in the handshake. So the relays
//! ask `refusal_in` of a failed first read too, and a missing client certificate is
//! said as such rather than as an upstream that closed the connection.

use std::io;

use monoio::net::TcpStream;
use rustls::{AlertDescription, CertificateError};
use weft_mesh::snapshot::tls::ClusterTls;

use super::ConnectError;

/// Why an upstream refused, or was refused, in the TLS handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsRefusal {
    /// The upstream requires a client certificate and the cluster presents none.
    ClientCertificateRequired,
    /// The upstream refused the cluster's client certificate.
    ClientCertificateRefused,
    /// The upstream's certificate is not signed by a CA of the cluster's `tls.ca`.
    UnknownIssuer,
    /// The upstream's certificate does not name the cluster's `tls.sni`.
    WrongName,
    /// The upstream's certificate is expired or not yet valid.
    Expired,
    /// The upstream's certificate is refused for another reason.
    BadCertificate,
    /// Anything else (protocol versions, ciphers, a malformed message).
    Other,
}

impl TlsRefusal {
    /// The `x-weft-error` text.
    pub fn reason(self) -> &'static str {
        match self {
            TlsRefusal::ClientCertificateRequired => {
                "upstream TLS handshake failed: the peer requires a client certificate"
            }
            TlsRefusal::ClientCertificateRefused => {
                "upstream TLS handshake failed: the peer refused this proxy's client certificate"
            }
            TlsRefusal::UnknownIssuer => {
                "upstream TLS handshake failed: its certificate is not signed by the cluster's CA"
            }
            TlsRefusal::WrongName => {
                "upstream TLS handshake failed: its certificate does not name the cluster's SNI"
            }
            TlsRefusal::Expired => {
                "upstream TLS handshake failed: its certificate is expired or not yet valid"
            }
            TlsRefusal::BadCertificate => {
                "upstream TLS handshake failed: its certificate is refused"
            }
            TlsRefusal::Other => "upstream TLS handshake failed",
        }
    }

    /// What the operator can do about it, for the warning.
    pub fn hint(self) -> &'static str {
        match self {
            TlsRefusal::ClientCertificateRequired => {
                "give the cluster tls.cert and tls.key, signed by a CA the upstream trusts"
            }
            TlsRefusal::ClientCertificateRefused => {
                "the upstream does not trust tls.cert: check its client CA"
            }
            TlsRefusal::UnknownIssuer => {
                "set tls.ca to the CA that signed the upstream's certificate"
            }
            TlsRefusal::WrongName => "set tls.sni to a name in the upstream's subjectAltName",
            TlsRefusal::Expired => "renew the upstream's certificate (or check this host's clock)",
            TlsRefusal::BadCertificate | TlsRefusal::Other => "see the detail",
        }
    }
}

/// A refusal and its detail (the alert, the certificate's problem) for the log.
#[derive(Clone, Debug)]
pub struct TlsFailure {
    pub refusal: TlsRefusal,
    pub detail: String,
}

impl std::fmt::Display for TlsFailure {
    /// `REASON (DETAIL); HINT`, one line for the warning.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}); {}",
            self.refusal.reason(),
            self.detail,
            self.hint()
        )
    }
}

impl TlsFailure {
    fn hint(&self) -> &'static str {
        self.refusal.hint()
    }
}

/// The TLS handshake with an upstream, verifying its certificate for the cluster's name.
pub async fn connect(
    tls: &ClusterTls,
    stream: TcpStream,
) -> Result<crate::transport::TlsToUpstream, ConnectError> {
    use monoio::io::IntoPollIo;
    let io = stream.into_poll_io().map_err(ConnectError::Io)?;
    tokio_rustls::TlsConnector::from(tls.client.clone())
        .connect(tls.server_name.clone(), io)
        .await
        .map_err(|e| {
            ConnectError::Tls(failure_in(&e).unwrap_or(TlsFailure {
                refusal: TlsRefusal::Other,
                detail: e.to_string(),
            }))
        })
}

/// The TLS failure an I/O error of an upstream TLS connection carries, if any.
pub fn failure_in(e: &io::Error) -> Option<TlsFailure> {
    let tls = e.get_ref()?.downcast_ref::<rustls::Error>()?;
    Some(failure(tls))
}

fn failure(e: &rustls::Error) -> TlsFailure {
    let (refusal, detail) = match e {
        rustls::Error::AlertReceived(alert) => {
            let refusal = match alert {
                AlertDescription::CertificateRequired => TlsRefusal::ClientCertificateRequired,
                AlertDescription::BadCertificate
                | AlertDescription::UnsupportedCertificate
                | AlertDescription::CertificateRevoked
                | AlertDescription::CertificateExpired
                | AlertDescription::CertificateUnknown
                | AlertDescription::UnknownCA
                | AlertDescription::AccessDenied => TlsRefusal::ClientCertificateRefused,
                _ => TlsRefusal::Other,
            };
            (
                refusal,
                format!("the upstream sent the alert {}", alert_name(*alert)),
            )
        }
        rustls::Error::InvalidCertificate(c) => {
            let refusal = match c {
                CertificateError::UnknownIssuer => TlsRefusal::UnknownIssuer,
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => TlsRefusal::WrongName,
                CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. } => TlsRefusal::Expired,
                _ => TlsRefusal::BadCertificate,
            };
            (
                refusal,
                format!("the upstream's certificate: {}", certificate_problem(c)),
            )
        }
        other => (TlsRefusal::Other, other.to_string()),
    };
    TlsFailure { refusal, detail }
}

/// A certificate's problem in words (rustls' own text is its debug form for some).
pub fn certificate_problem(e: &CertificateError) -> String {
    match e {
        CertificateError::UnknownIssuer => "not signed by a trusted CA".into(),
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            "not valid for the name asked for".into()
        }
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired".into(),
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "not valid yet".into()
        }
        CertificateError::Revoked => "revoked".into(),
        CertificateError::BadEncoding => "not well-formed DER".into(),
        CertificateError::BadSignature => "its signature does not verify".into(),
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            "not for this use (extended key usage)".into()
        }
        CertificateError::Other(other) => {
            weft_mesh::snapshot::tls::certificate_problem(&other.to_string())
        }
        other => other.to_string(),
    }
}

/// The alert's name as TLS spells it (`certificate_required`).
pub fn alert_name(alert: AlertDescription) -> String {
    let name = match alert {
        AlertDescription::CloseNotify => "close_notify",
        AlertDescription::UnexpectedMessage => "unexpected_message",
        AlertDescription::BadRecordMac => "bad_record_mac",
        AlertDescription::HandshakeFailure => "handshake_failure",
        AlertDescription::BadCertificate => "bad_certificate",
        AlertDescription::UnsupportedCertificate => "unsupported_certificate",
        AlertDescription::CertificateRevoked => "certificate_revoked",
        AlertDescription::CertificateExpired => "certificate_expired",
        AlertDescription::CertificateUnknown => "certificate_unknown",
        AlertDescription::IllegalParameter => "illegal_parameter",
        AlertDescription::UnknownCA => "unknown_ca",
        AlertDescription::AccessDenied => "access_denied",
        AlertDescription::DecodeError => "decode_error",
        AlertDescription::DecryptError => "decrypt_error",
        AlertDescription::ProtocolVersion => "protocol_version",
        AlertDescription::InsufficientSecurity => "insufficient_security",
        AlertDescription::InternalError => "internal_error",
        AlertDescription::UnrecognisedName => "unrecognized_name",
        AlertDescription::CertificateRequired => "certificate_required",
        AlertDescription::NoApplicationProtocol => "no_application_protocol",
        other => return format!("number {}", u8::from(other)),
    };
    name.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_client_certificate_is_said_so() {
        let e = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(AlertDescription::CertificateRequired),
        );
        let f = failure_in(&e).expect("a TLS failure");
        assert_eq!(f.refusal, TlsRefusal::ClientCertificateRequired);
        assert_eq!(f.detail, "the upstream sent the alert certificate_required");
        assert!(failure_in(&io::Error::from(io::ErrorKind::ConnectionReset)).is_none());
    }

    #[test]
    fn certificate_problems_are_words_not_debug_forms() {
        let e = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        assert_eq!(failure(&e).refusal, TlsRefusal::UnknownIssuer);
        assert!(
            !failure(&e).detail.contains("UnknownIssuer"),
            "{}",
            failure(&e).detail
        );
        assert_eq!(alert_name(AlertDescription::UnknownCA), "unknown_ca");
    }
}
