//! Test certificates: a CA, a server and a client certificate it signed, and another CA
//! with a client certificate of its own, as PEM files.

#![allow(dead_code, missing_docs, clippy::expect_used, clippy::unwrap_used)]

/// A CA, and certificates it signed, for a RabbitMQ TLS listener and ferry's client.
pub struct Pki {
    /// Where the PEM files are.
    pub dir: std::path::PathBuf,
}

impl Pki {
    /// Writes `ca.pem`, `server.pem`/`server.key` (for 127.0.0.1), `client.pem`/`client.key`
    /// (signed by the CA), `other-ca.pem` (another CA) and `stranger.pem`/`stranger.key` (a
    /// client certificate with the same subject, signed by the other CA) under `dir`.
    pub fn generate(dir: std::path::PathBuf) -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
            KeyUsagePurpose,
        };
        std::fs::create_dir_all(&dir).unwrap();
        // Each certificate has a name of its own: one whose subject equals its issuer's
        // looks self-signed to a verifier.
        let params = |names: Vec<String>, common_name: &str| {
            let mut params = CertificateParams::new(names).unwrap();
            params
                .distinguished_name
                .push(DnType::CommonName, common_name);
            params
        };
        let ca_params = |common_name: &str| {
            let mut params = params(Vec::new(), common_name);
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            params
        };
        let ca =
            CertifiedIssuer::self_signed(ca_params("ferry test CA"), KeyPair::generate().unwrap())
                .unwrap();
        let other =
            CertifiedIssuer::self_signed(ca_params("another CA"), KeyPair::generate().unwrap())
                .unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.join("other-ca.pem"), other.pem()).unwrap();
        // A client certificate the other CA signed: a stranger to a daemon trusting `ca`.
        let key = KeyPair::generate().unwrap();
        let stranger = params(vec!["ferry".to_owned()], "client")
            .signed_by(&key, &other)
            .unwrap();
        std::fs::write(dir.join("stranger.pem"), stranger.pem()).unwrap();
        std::fs::write(dir.join("stranger.key"), key.serialize_pem()).unwrap();
        for (name, names) in [
            ("server", vec!["127.0.0.1".to_owned()]),
            ("client", vec!["ferry".to_owned()]),
        ] {
            let key = KeyPair::generate().unwrap();
            let cert = params(names, name).signed_by(&key, &ca).unwrap();
            std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
            std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
        }
        Self { dir }
    }

    /// The path of file `name`, as a string.
    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }
}
