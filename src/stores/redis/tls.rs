//! TLS to Redis (`rediss://` URLs): the files of `REDIS_TLS_*` as the redis crate takes them,
//! the same for one server and for every node of a cluster, and what a handshake refused over
//! a certificate says to check.
//!
//! The crate's rustls backend parses the PEM (certificates, then an unencrypted PKCS#8, PKCS#1
//! or SEC1 key), replaces the system's roots by the CA file when one is given, and checks that
//! the server's certificate names the host of the URL (unless the URL ends in `#insecure`).

use std::io;
use std::path::Path;
use std::sync::{Arc, Once};

use redis::cluster::ClusterClientBuilder;
use redis::{ClientTlsConfig, ErrorKind, RedisError, RedisResult, TlsCertificates};
use rustls::{AlertDescription, CertificateError};

use crate::config::RedisTls;

/// What every connection to Redis checks the servers with and presents to them.
#[derive(Clone, Default)]
pub(super) struct Tls {
    /// `None`: on `rediss://` URLs, the system's roots and no client certificate.
    certificates: Option<TlsCertificates>,
}

impl Tls {
    /// Reads the files of `settings` (checked at start-up: failing here, a file changed since).
    pub(super) fn load(settings: &RedisTls) -> RedisResult<Self> {
        install_crypto_provider();
        if !settings.is_set() {
            return Ok(Tls::default());
        }
        let root_cert = match &settings.ca_file {
            Some(ca_file) => Some(read("REDIS_TLS_CA_FILE", ca_file)?),
            None => None,
        };
        let client_tls = match (&settings.cert_file, &settings.key_file) {
            (Some(cert_file), Some(key_file)) => Some(ClientTlsConfig {
                client_cert: read("REDIS_TLS_CERT_FILE", cert_file)?,
                client_key: read("REDIS_TLS_KEY_FILE", key_file)?,
            }),
            _ => None,
        };
        Ok(Tls {
            certificates: Some(TlsCertificates {
                client_tls,
                root_cert,
            }),
        })
    }

    /// A client of the server at `url`.
    pub(super) fn client(&self, url: &str) -> RedisResult<redis::Client> {
        match &self.certificates {
            Some(certificates) => redis::Client::build_with_tls(url, certificates.clone()),
            None => redis::Client::open(url),
        }
    }

    /// `builder` (of a cluster's seed nodes) with the same certificates for every node.
    pub(super) fn cluster(&self, builder: ClusterClientBuilder) -> ClusterClientBuilder {
        match &self.certificates {
            Some(certificates) => builder.certs(certificates.clone()),
            None => builder,
        }
    }
}

fn read(setting: &'static str, file: &Path) -> RedisResult<Vec<u8>> {
    std::fs::read(file).map_err(|e| {
        RedisError::from((
            ErrorKind::InvalidClientConfig,
            "cannot read a TLS file",
            format!("{setting} {}: {e}", file.display()),
        ))
    })
}

/// rustls 0.23 needs a process-wide crypto provider; the crate enables none, this one `ring`.
fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // An error: the process installed a provider already, which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A TLS handshake refused over a certificate, by the service or by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsRefusal {
    /// The server's certificate does not chain to the CAs the service trusts.
    UntrustedServer,
    /// The server's certificate does not name the host of the URL.
    WrongHost,
    /// The server wants a client certificate and got none.
    ClientCertificateRequired,
    /// The server does not accept the client certificate.
    ClientCertificateRefused,
}

impl TlsRefusal {
    /// The refusal `error` comes from, if any.
    pub fn of(error: &RedisError) -> Option<Self> {
        use AlertDescription as Alert;
        match tls_error(error)? {
            rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            ) => Some(TlsRefusal::WrongHost),
            rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer
                | CertificateError::BadSignature
                | CertificateError::UnsupportedSignatureAlgorithmContext { .. },
            ) => Some(TlsRefusal::UntrustedServer),
            rustls::Error::AlertReceived(Alert::CertificateRequired) => {
                Some(TlsRefusal::ClientCertificateRequired)
            }
            rustls::Error::AlertReceived(
                Alert::BadCertificate
                | Alert::UnsupportedCertificate
                | Alert::CertificateRevoked
                | Alert::CertificateExpired
                | Alert::CertificateUnknown
                | Alert::UnknownCA,
            ) => Some(TlsRefusal::ClientCertificateRefused),
            _ => None,
        }
    }

    /// What happened, naming the settings to check.
    pub fn describe(self) -> &'static str {
        match self {
            TlsRefusal::UntrustedServer => {
                "cannot connect to Redis: the server's certificate is not trusted (REDIS_TLS_CA_FILE)"
            }
            TlsRefusal::WrongHost => {
                "cannot connect to Redis: the server's certificate does not name the host of the URL (REDIS_URL)"
            }
            TlsRefusal::ClientCertificateRequired => {
                "cannot connect to Redis: the server requires a client certificate (REDIS_TLS_CERT_FILE, REDIS_TLS_KEY_FILE)"
            }
            TlsRefusal::ClientCertificateRefused => {
                "cannot connect to Redis: the server refused the client certificate (REDIS_TLS_CERT_FILE, REDIS_TLS_KEY_FILE)"
            }
        }
    }
}

/// The rustls error behind `error`. The crate keeps the `io::Error` the TLS stream made of it
/// in an `Arc<dyn Error>`, which is its `source`; neither that `Arc` nor the `io::Error` give
/// the rustls error as their own `source` (they pass on its source), so each is opened here.
fn tls_error(error: &RedisError) -> Option<&rustls::Error> {
    type Shared = Arc<dyn std::error::Error + Send + Sync>;
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = next {
        let opened: &(dyn std::error::Error + 'static) = match current.downcast_ref::<Shared>() {
            Some(shared) => &**shared,
            None => current,
        };
        if let Some(tls) = opened.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        let inner = opened
            .downcast_ref::<io::Error>()
            .and_then(io::Error::get_ref)
            .and_then(|inner| inner.downcast_ref::<rustls::Error>());
        if inner.is_some() {
            return inner;
        }
        next = opened.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn through_io(error: rustls::Error) -> RedisError {
        io::Error::new(io::ErrorKind::InvalidData, error).into()
    }

    #[test]
    fn certificate_refusals_name_the_setting_to_check() {
        let cases = [
            (
                rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
                TlsRefusal::UntrustedServer,
                "REDIS_TLS_CA_FILE",
            ),
            (
                rustls::Error::InvalidCertificate(CertificateError::NotValidForName),
                TlsRefusal::WrongHost,
                "REDIS_URL",
            ),
            (
                rustls::Error::AlertReceived(AlertDescription::CertificateRequired),
                TlsRefusal::ClientCertificateRequired,
                "REDIS_TLS_CERT_FILE",
            ),
            (
                rustls::Error::AlertReceived(AlertDescription::UnknownCA),
                TlsRefusal::ClientCertificateRefused,
                "REDIS_TLS_CERT_FILE",
            ),
        ];
        for (error, refusal, setting) in cases {
            let found = TlsRefusal::of(&through_io(error.clone()));
            assert_eq!(found, Some(refusal), "{error}");
            assert!(refusal.describe().contains(setting), "{refusal:?}");
        }
    }

    #[test]
    fn other_failures_are_no_certificate_refusal() {
        let refused: RedisError = io::Error::from(io::ErrorKind::ConnectionRefused).into();
        assert_eq!(TlsRefusal::of(&refused), None);
        let alert = rustls::Error::AlertReceived(AlertDescription::HandshakeFailure);
        assert_eq!(TlsRefusal::of(&through_io(alert)), None);
        let auth: RedisError = (ErrorKind::AuthenticationFailed, "WRONGPASS").into();
        assert_eq!(TlsRefusal::of(&auth), None);
    }
}
