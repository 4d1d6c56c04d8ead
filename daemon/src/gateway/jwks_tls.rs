//! The TLS a gateway authorizer's `https://` JWKS is fetched over: rustls
//! (ring), verifying the server's certificate chain and name against
//! Mozilla's public web roots (webpki-roots), or, when the authorizer sets
//! `jwks_ca_file`, against that file's CA certificates only (a private
//! CA). Whoever can serve the JWKS can mint tokens for every tenant, so
//! any TLS failure refuses the JWKS (the authorizer fails closed).

use std::path::Path;
use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

/// A `jwks_ca_file` that cannot be used (the message names the file).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("jwks_ca_file {path}: {reason}")]
pub struct CaFileError {
    /// The file.
    pub path: String,
    /// Why it cannot be used.
    pub reason: String,
}

/// The TLS client configuration for a JWKS: trusting `ca_file`'s
/// certificates (PEM, at least one) if given, else the public web roots.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, CaFileError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Some(path) => {
            let err = |reason: String| CaFileError {
                path: path.display().to_string(),
                reason,
            };
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| err(e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| err(e.to_string()))?;
            if certs.is_empty() {
                return Err(err("no PEM certificate in it".into()));
            }
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| err(format!("not a usable CA certificate: {e}")))?;
            }
        }
    }
    // ring, as the rest of the daemon's TLS (hyper-rustls, ureq): rustls
    // 0.23.48 deprecates it for lacking post-quantum key exchange, which
    // protects confidentiality, not the authenticity a public JWKS needs;
    // aws-lc-rs would add a C and cmake build.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| CaFileError {
            path: String::new(),
            reason: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// The TLS failure behind a fetch error, if it is one (a certificate not
/// issued by a trusted CA, for another name, expired, a failed handshake).
pub fn tls_cause(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<rustls::Error>() {
            return Some(t.to_string());
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if let Some(t) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return Some(t.to_string());
            }
        }
        cur = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn web_roots_by_default_and_a_ca_file_must_hold_a_certificate() {
        assert!(client_config(None).is_ok());
        let dir = std::env::temp_dir().join(format!("silo-jwks-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = client_config(Some(&empty)).unwrap_err();
        assert!(e.to_string().contains("no PEM certificate"), "{e}");
        let e = client_config(Some(&dir.join("missing.pem"))).unwrap_err();
        assert!(e.to_string().contains("missing.pem"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
