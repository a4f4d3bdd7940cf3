//! The client side of TLS: whom to trust and which certificate to show.

use std::sync::Arc;

use super::error::ClientError;
use super::options::TlsOptions;
use crate::server::tls::{read_certificates, read_private_key, read_roots};

/// A rustls client configuration for these options.
pub(crate) fn client_config(tls: &TlsOptions) -> Result<Arc<rustls::ClientConfig>, ClientError> {
    let fail = |e: String| ClientError::Tls(e);
    let roots = match &tls.ca {
        Some(ca) => read_roots(ca).map_err(fail)?,
        None => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_native_certs::load_native_certs().certs {
                // Unusable system anchors are skipped, as browsers do.
                let _ = roots.add(cert);
            }
            roots
        }
    };
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| fail(e.to_string()))?
    .with_root_certificates(roots);
    let config = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(
                read_certificates(cert).map_err(fail)?,
                read_private_key(key).map_err(fail)?,
            )
            .map_err(|e| fail(e.to_string()))?,
        (None, None) => builder.with_no_client_auth(),
        _ => return Err(fail("a client certificate needs both cert and key".into())),
    };
    Ok(Arc::new(config))
}
