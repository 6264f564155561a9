//! The control plane's certificates and keys, as kubeadm lays them out: one CA that signs
//! the API server's serving certificate and every client certificate, and the
//! service-account signing key. ECDSA P-256 throughout. Generated fresh for every control
//! plane; nothing here is ever trusted outside it.
use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// A certificate and its key, PEM.
#[derive(Clone, Debug)]
pub(crate) struct CertKey {
    pub cert: String,
    pub key: String,
}

pub(crate) struct Pki {
    pub dir: PathBuf,
    pub ca: CertKey,
    /// The CA's key, parsed, to sign more client certificates.
    ca_issuer: Issuer<'static, KeyPair>,
}

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name
        .push(DnType::CommonName, "flowpol test cluster CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

fn write(dir: &Path, name: &str, text: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

impl Pki {
    /// Creates the CA, the API server's serving certificate (valid for loopback, `addresses`
    /// and the in-cluster names) and the service-account key pair in `dir`.
    pub(crate) fn create(dir: &Path, addresses: &[IpAddr]) -> Result<Pki> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let ca_key = KeyPair::generate()?;
        let ca_cert = ca_params().self_signed(&ca_key)?;
        let ca = CertKey {
            cert: ca_cert.pem(),
            key: ca_key.serialize_pem(),
        };
        write(dir, "ca.crt", &ca.cert)?;
        write(dir, "ca.key", &ca.key)?;
        let pki = Pki {
            dir: dir.to_owned(),
            ca,
            ca_issuer: Issuer::new(ca_params(), ca_key),
        };
        let mut names: Vec<String> = vec![
            "127.0.0.1".into(),
            "::1".into(),
            "localhost".into(),
            "kubernetes".into(),
            "kubernetes.default".into(),
            "kubernetes.default.svc".into(),
            "kubernetes.default.svc.cluster.local".into(),
        ];
        names.extend(addresses.iter().map(IpAddr::to_string));
        let serving = pki.sign(
            "kube-apiserver",
            None,
            names,
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        write(dir, "apiserver.crt", &serving.cert)?;
        write(dir, "apiserver.key", &serving.key)?;
        let sa = KeyPair::generate()?;
        write(dir, "sa.key", &sa.serialize_pem())?;
        write(dir, "sa.pub", &sa.public_key_pem())?;
        Ok(pki)
    }

    /// A client certificate for user `name` in `group` (the API server reads the common
    /// name as the user and the organization as the group), signed by the CA.
    pub(crate) fn client(&self, name: &str, group: Option<&str>) -> Result<CertKey> {
        self.sign(name, group, Vec::new(), ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn sign(
        &self,
        common_name: &str,
        organization: Option<&str>,
        subject_alt_names: Vec<String>,
        usage: ExtendedKeyUsagePurpose,
    ) -> Result<CertKey> {
        let mut p = CertificateParams::new(subject_alt_names)?;
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, common_name);
        if let Some(o) = organization {
            p.distinguished_name.push(DnType::OrganizationName, o);
        }
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![usage];
        p.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &self.ca_issuer)?;
        Ok(CertKey {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}
