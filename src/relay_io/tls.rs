//! TLS for TURNS listeners (RFC 8656 §3.1, rustls with the `ring` provider, TLS 1.2 and 1.3 only). The certificate
//! and key are PEM files from the config; [`TlsConfig::reload`] swaps them at run time (SIGHUP) without dropping
//! established connections: each new handshake uses the current pair. A key file that group or others may access is
//! refused at load and at reload (chmod 600).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// A reloadable TLS server configuration.
#[derive(Clone)]
pub struct TlsConfig {
    cert: PathBuf,
    key: PathBuf,
    current: Arc<RwLock<TlsAcceptor>>,
}

fn load(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    let certs = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading certificate {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing certificate {}", cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{}: no certificate found", cert.display());
    }
    crate::data_dir::check_private(key).context("TLS private key")?;
    let key = PrivateKeyDer::from_pem_file(key).with_context(|| format!("reading private key {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("certificate and key do not match")?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

impl TlsConfig {
    /// Loads a PEM certificate chain and private key. Errors: a missing or unparsable file, a key that does not match
    /// the certificate, a key file that group or others may access.
    pub fn load(cert: &Path, key: &Path) -> anyhow::Result<TlsConfig> {
        let acceptor = load(cert, key)?;
        Ok(TlsConfig { cert: cert.to_path_buf(), key: key.to_path_buf(), current: Arc::new(RwLock::new(acceptor)) })
    }

    /// Re-reads the files; on error the previous pair stays in use and the error is returned.
    pub fn reload(&self) -> anyhow::Result<()> {
        let acceptor = load(&self.cert, &self.key)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = acceptor;
        Ok(())
    }

    /// A configuration from a ready rustls server configuration (tests: a custom certificate resolver). It has no
    /// files: [`TlsConfig::reload`] fails and keeps it.
    #[cfg(test)]
    pub(crate) fn from_server_config(config: Arc<rustls::ServerConfig>) -> TlsConfig {
        TlsConfig {
            cert: PathBuf::new(),
            key: PathBuf::new(),
            current: Arc::new(RwLock::new(TlsAcceptor::from(config))),
        }
    }

    /// The acceptor for a new connection.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
