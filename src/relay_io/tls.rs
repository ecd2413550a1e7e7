//! TLS for TURNS listeners (RFC 8656 §3.1, rustls with the `ring` provider, TLS 1.2 and 1.3 only). The certificate
//! and key are PEM files from the config; [`TlsConfig::reload`] swaps them at run time (SIGHUP) without dropping
//! established connections: each new handshake uses the current pair. A key file that group or others may access is
//! refused at load and at reload (chmod 600). The leaf certificate's notAfter is kept with each pair and, when
//! [`TlsConfig::export_expiry`] gave a gauge, exported as `duet_tls_certificate_expiry_timestamp_seconds{listener}`
//! (README "Operate": the certificate expiry alert).

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
    current: Arc<RwLock<Loaded>>,
    expiry: Option<prometheus::IntGauge>,
}

/// One loaded certificate and key.
struct Loaded {
    acceptor: TlsAcceptor,
    /// notAfter of the leaf (first) certificate, Unix seconds; `None` for a configuration without files (tests).
    not_after: Option<i64>,
}

/// notAfter of a DER certificate, Unix seconds.
fn not_after(der: &CertificateDer<'_>) -> anyhow::Result<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(cert.validity().not_after.timestamp())
}

fn load(cert: &Path, key: &Path) -> anyhow::Result<Loaded> {
    let certs = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading certificate {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing certificate {}", cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{}: no certificate found", cert.display());
    }
    let not_after =
        not_after(&certs[0]).with_context(|| format!("parsing the first certificate of {}", cert.display()))?;
    crate::data_dir::check_private(key).context("TLS private key")?;
    let key = PrivateKeyDer::from_pem_file(key).with_context(|| format!("reading private key {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("certificate and key do not match")?;
    Ok(Loaded { acceptor: TlsAcceptor::from(Arc::new(config)), not_after: Some(not_after) })
}

impl TlsConfig {
    /// Loads a PEM certificate chain and private key. Errors: a missing or unparsable file, a key that does not match
    /// the certificate, a key file that group or others may access.
    pub fn load(cert: &Path, key: &Path) -> anyhow::Result<TlsConfig> {
        let loaded = load(cert, key)?;
        Ok(TlsConfig {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: Arc::new(RwLock::new(loaded)),
            expiry: None,
        })
    }

    /// Re-reads the files; on error the previous pair stays in use and the error is returned. On success the expiry
    /// gauge (if any) shows the new certificate's notAfter.
    pub fn reload(&self) -> anyhow::Result<()> {
        let loaded = load(&self.cert, &self.key)?;
        let not_after = loaded.not_after;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = loaded;
        if let (Some(gauge), Some(t)) = (&self.expiry, not_after) {
            gauge.set(t);
        }
        Ok(())
    }

    /// notAfter of the leaf certificate in use, Unix seconds (`None` only for a configuration built without files).
    pub fn not_after(&self) -> Option<i64> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).not_after
    }

    /// Sets `gauge` to the notAfter (Unix seconds) of the certificate in use, and again after each successful
    /// [`TlsConfig::reload`]: `duet_tls_certificate_expiry_timestamp_seconds{listener}`.
    pub fn export_expiry(mut self, gauge: prometheus::IntGauge) -> TlsConfig {
        if let Some(t) = self.not_after() {
            gauge.set(t);
        }
        self.expiry = Some(gauge);
        self
    }

    /// A configuration from a ready rustls server configuration (tests: a custom certificate resolver). It has no
    /// files: [`TlsConfig::reload`] fails and keeps it.
    #[cfg(test)]
    pub(crate) fn from_server_config(config: Arc<rustls::ServerConfig>) -> TlsConfig {
        TlsConfig {
            cert: PathBuf::new(),
            key: PathBuf::new(),
            current: Arc::new(RwLock::new(Loaded { acceptor: TlsAcceptor::from(config), not_after: None })),
            expiry: None,
        }
    }

    /// The acceptor for a new connection.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.current.read().unwrap_or_else(|p| p.into_inner()).acceptor.clone()
    }
}
