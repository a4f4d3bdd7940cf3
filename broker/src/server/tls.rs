//! TLS for the broker's amqps listener (rustls with ring): certificates from files, or a
//! self-signed one made at first start, and the user named by a client certificate.

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use sha2::{Digest, Sha256};

/// The IANA port of AMQP over TLS.
pub const TLS_PORT: u16 = 5671;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate in a PEM file.
///
/// # Errors
/// An unreadable file or one without certificates.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut BufReader::new(file))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate found", path.display()));
    }
    Ok(certs)
}

/// Reads the first private key in a PEM file.
///
/// # Errors
/// An unreadable file or one without a key.
pub fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    rustls_pemfile::private_key(&mut BufReader::new(file))
        .map_err(|e| format!("{}: {e}", path.display()))?
        .ok_or_else(|| format!("{}: no private key found", path.display()))
}

/// A trust store of the certificates in a PEM file.
///
/// # Errors
/// Unreadable files and certificates rustls cannot use as anchors.
pub fn read_roots(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in read_certificates(path)? {
        roots
            .add(cert)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(roots)
}

/// The server side: its certificate chain and key, and, with `client_ca`, client
/// certificates verified against that CA (optional: a client without one can still log in
/// with a password; one with a valid certificate may use EXTERNAL).
///
/// # Errors
/// Unreadable or mismatched files.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match client_ca {
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(read_roots(ca)?), provider())
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| format!("client CA {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(read_certificates(cert)?, read_private_key(key)?)
        .map_err(|e| format!("{} and {}: {e}", cert.display(), key.display()))?;
    Ok(Arc::new(config))
}

/// A certificate made at first start: where it is and whether it was just made.
#[derive(Debug, Clone)]
pub struct SelfSigned {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM, mode 0600).
    pub key: PathBuf,
    /// Made now rather than found.
    pub created: bool,
}

/// The self-signed certificate in `dir` (`tls-cert.pem`, `tls-key.pem`), made on first use
/// for `localhost` and `127.0.0.1`.
///
/// # Errors
/// I/O errors and certificate generation failures.
pub fn ensure_self_signed(dir: &Path) -> Result<SelfSigned, String> {
    let cert = dir.join("tls-cert.pem");
    let key = dir.join("tls-key.pem");
    if cert.exists() && key.exists() {
        return Ok(SelfSigned {
            cert,
            key,
            created: false,
        });
    }
    let made = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .map_err(|e| format!("cannot make a certificate: {e}"))?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // Key first, certificate last, each synced: the certificate's presence means both are
    // whole, even after a crash in between.
    write_synced(&key, made.signing_key.serialize_pem().as_bytes(), 0o600)?;
    write_synced(&cert, made.cert.pem().as_bytes(), 0o644)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(SelfSigned {
        cert,
        key,
        created: true,
    })
}

fn write_synced(path: &Path, data: &[u8], mode: u32) -> Result<(), String> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    file.write_all(data)
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// The SHA-256 fingerprint of a certificate, as `AB:CD:...`.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    Sha256::digest(cert.as_ref())
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The user a client certificate names: its subject's common name.
pub fn certificate_user(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_is_made_once_and_loads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = ensure_self_signed(dir.path()).expect("make");
        assert!(first.created);
        let again = ensure_self_signed(dir.path()).expect("find");
        assert!(!again.created);
        server_config(&first.cert, &first.key, None).expect("config");
        let cert = &read_certificates(&first.cert).expect("read")[0];
        assert_eq!(fingerprint(cert).len(), 32 * 3 - 1);
        assert_eq!(
            certificate_user(cert).as_deref(),
            Some("rcgen self signed cert")
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&first.key)
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn missing_files_are_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let nowhere = dir.path().join("nope.pem");
        assert!(server_config(&nowhere, &nowhere, None).is_err());
    }
}
