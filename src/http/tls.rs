//! TLS in the process (`--tls-cert`, `--tls-key`, `--tls-client-ca`): rustls on ring, no
//! OpenSSL on this path.
//!
//! - With `--tls-client-ca`, a client must present a certificate that chains to that CA
//!   (Tencent's mutual-authentication CA in production); a handshake without one, or with one
//!   from another CA, fails and is counted.
//! - The files are looked at every `--tls-reload-interval` and read again when one changed
//!   (cert-manager rotates them in place): a new handshake gets the new certificate, while an
//!   open connection keeps the session it has. A reload that fails (a half-written file, a key
//!   that does not match) keeps the last good configuration, and is logged and counted.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use super::metrics::{ListenerMetrics, Refusal};

/// Where the listener's certificate, key and client CA are, and how often to look at them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, PEM, leaf first.
    pub cert: PathBuf,
    /// The private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Client certificates must chain to one of these CA certificates (PEM); `None`: no client
    /// certificate is asked for.
    pub client_ca: Option<PathBuf>,
    pub reload_interval: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} holds no {what}")]
    Empty { path: PathBuf, what: &'static str },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// The current TLS configuration of the callback listener, and what the files looked like when
/// it was read.
pub struct Tls {
    files: TlsFiles,
    current: RwLock<(Stamp, TlsAcceptor)>,
}

/// What identifies a version of the files: each one's modification time, length and inode
/// (a Kubernetes secret volume swaps a symlink, which changes the inode).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp(Vec<Option<(SystemTime, u64, u64)>>);

impl Tls {
    /// Reads the files; fails when they do not make a usable configuration.
    pub fn load(files: TlsFiles) -> Result<Tls, TlsError> {
        let stamp = Stamp::of(&files);
        let acceptor = acceptor(&files)?;
        Ok(Tls {
            files,
            current: RwLock::new((stamp, acceptor)),
        })
    }

    /// The configuration new handshakes use.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.lock_read().1.clone()
    }

    /// Reads the files again if they changed since the last read: `Ok(true)` when the new
    /// configuration is in use, `Ok(false)` when nothing changed; on an error the last good
    /// configuration stays, and the same files are not tried again until they change.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let stamp = Stamp::of(&self.files);
        if self.lock_read().0 == stamp {
            return Ok(false);
        }
        let result = acceptor(&self.files);
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        current.0 = stamp;
        current.1 = result?;
        Ok(true)
    }

    /// Looks at the files every reload interval, for ever (the listener's task aborts it).
    pub async fn watch(self: Arc<Self>, metrics: ListenerMetrics) {
        let mut every = tokio::time::interval(self.files.reload_interval);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.tick().await;
        loop {
            every.tick().await;
            match self.reload_if_changed() {
                Ok(false) => {}
                Ok(true) => {
                    metrics.tls_reloaded(true);
                    tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
                }
                Err(err) => {
                    metrics.tls_reloaded(false);
                    tracing::error!(
                        error = %err,
                        "TLS files changed but cannot be used; still serving the previous certificate"
                    );
                }
            }
        }
    }

    fn lock_read(&self) -> std::sync::RwLockReadGuard<'_, (Stamp, TlsAcceptor)> {
        self.current.read().unwrap_or_else(|p| p.into_inner())
    }
}

impl Stamp {
    fn of(files: &TlsFiles) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        let paths = [
            Some(&files.cert),
            Some(&files.key),
            files.client_ca.as_ref(),
        ];
        Stamp(
            paths
                .into_iter()
                .flatten()
                .map(|path| {
                    let meta = std::fs::metadata(path).ok()?;
                    Some((meta.modified().ok()?, meta.len(), meta.ino()))
                })
                .collect(),
        )
    }
}

/// Why a handshake failed, from rustls's error.
pub(super) fn handshake_refusal(err: &io::Error) -> Refusal {
    match err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::NoCertificatesPresented) => Refusal::TlsNoClientCertificate,
        Some(rustls::Error::InvalidCertificate(_)) => Refusal::TlsBadClientCertificate,
        _ => Refusal::TlsHandshake,
    }
}

fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = certificates(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|err| pem_error(&files.key, err))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|err| invalid(&files.cert, err))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => builder.with_client_cert_verifier(client_verifier(ca, provider)?),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|err| invalid(&files.key, err))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn client_verifier(
    ca: &Path,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(ca)? {
        roots.add(cert).map_err(|err| invalid(ca, err))?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|err| invalid(ca, err))
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|err| pem_error(path, err))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| pem_error(path, err))?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            path: path.to_owned(),
            what: "PEM certificate",
        });
    }
    Ok(certs)
}

fn pem_error(path: &Path, err: rustls_pki_types::pem::Error) -> TlsError {
    match err {
        rustls_pki_types::pem::Error::Io(source) => TlsError::Read {
            path: path.to_owned(),
            source,
        },
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::Empty {
            path: path.to_owned(),
            what: "PEM item of the expected kind",
        },
        other => invalid(path, other),
    }
}

fn invalid(path: &Path, err: impl std::fmt::Display) -> TlsError {
    TlsError::Invalid {
        path: path.to_owned(),
        reason: err.to_string(),
    }
}
