//! The cluster CA and the certificates it issues.
//!
//! Every node certificate carries the DNS name [`NODE_SERVER_NAME`], which node-to-node clients
//! verify, plus the node's name and address for operators. Groups travel in the subject's
//! organisation, as Kubernetes does it: nodes are in [`NODES_GROUP`], the admin in
//! [`ADMINS_GROUP`].

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};

use crate::PkiError;

/// The server name every node certificate carries and every node-to-node client verifies.
pub const NODE_SERVER_NAME: &str = "flotilla-node";
/// The group (certificate organisation) of node certificates.
pub const NODES_GROUP: &str = "flotilla:nodes";
/// The group of cluster administrators (Kubernetes' name for it).
pub const ADMINS_GROUP: &str = "system:masters";

const CA_VALIDITY: Duration = Duration::days(3650);
const LEAF_VALIDITY: Duration = Duration::days(365);

/// A certificate and its private key, both PEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credential {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The SHA-256 of the CA certificate's DER encoding: what a join token pins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CaHash(pub [u8; 32]);

impl CaHash {
    pub fn of_der(der: &[u8]) -> CaHash {
        CaHash(Sha256::digest(der).into())
    }

    pub fn of_pem(pem: &str) -> Result<CaHash, PkiError> {
        Ok(CaHash::of_der(&first_der(pem)?))
    }
}

impl std::fmt::Display for CaHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// The cluster certificate authority.
pub struct Ca {
    credential: Credential,
    key: KeyPair,
    cert_der: Vec<u8>,
}

impl Ca {
    /// A new self-signed CA for the cluster `cluster_id`.
    pub fn generate(cluster_id: &str) -> Result<Ca, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = name(&format!("flotilla-ca-{cluster_id}"), None);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params, CA_VALIDITY);
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            credential: Credential {
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
            },
            cert_der: cert.der().to_vec(),
            key,
        })
    }

    pub fn from_pem(credential: Credential) -> Result<Ca, PkiError> {
        let key = KeyPair::from_pem(&credential.key_pem)?;
        let cert_der = first_der(&credential.cert_pem)?;
        Ok(Ca {
            credential,
            key,
            cert_der,
        })
    }

    pub fn credential(&self) -> &Credential {
        &self.credential
    }

    pub fn cert_pem(&self) -> &str {
        &self.credential.cert_pem
    }

    pub fn hash(&self) -> CaHash {
        CaHash::of_der(&self.cert_der)
    }

    /// A node certificate for the public key in `csr_pem`. Only the key is taken from the
    /// request; names, groups and usages are ours.
    pub fn sign_node_csr(&self, csr_pem: &str, node: &str, ip: IpAddr) -> Result<String, PkiError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)?;
        let params = node_params(node, ip)?;
        Ok(params.signed_by(&csr.public_key, &self.issuer()?)?.pem())
    }

    /// A node certificate with a fresh key (for the node that bootstraps the cluster).
    pub fn issue_node(&self, node: &str, ip: IpAddr) -> Result<Credential, PkiError> {
        let key = KeyPair::generate()?;
        let cert = node_params(node, ip)?.signed_by(&key, &self.issuer()?)?;
        Ok(Credential {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A client certificate for `user` in `groups`.
    pub fn issue_client(&self, user: &str, groups: &[&str]) -> Result<Credential, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, user);
        for g in groups {
            dn.push(DnType::OrganizationName, *g);
        }
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        validity(&mut params, LEAF_VALIDITY);
        let cert = params.signed_by(&key, &self.issuer()?)?;
        Ok(Credential {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    fn issuer(&self) -> Result<Issuer<'static, &KeyPair>, PkiError> {
        Ok(Issuer::from_ca_cert_der(
            &self.cert_der.clone().into(),
            &self.key,
        )?)
    }
}

/// A fresh key and a certificate signing request for a joining node: `(key_pem, csr_pem)`.
pub fn node_csr(node: &str) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = name(&format!("system:node:{node}"), Some(NODES_GROUP));
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.pem()?))
}

fn node_params(node: &str, ip: IpAddr) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::new(vec![NODE_SERVER_NAME.to_string()])?;
    if let Ok(dns) = node.try_into() {
        params.subject_alt_names.push(SanType::DnsName(dns));
    }
    params.subject_alt_names.push(SanType::IpAddress(ip));
    params.distinguished_name = name(&format!("system:node:{node}"), Some(NODES_GROUP));
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    validity(&mut params, LEAF_VALIDITY);
    Ok(params)
}

fn name(common: &str, group: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common);
    if let Some(g) = group {
        dn.push(DnType::OrganizationName, g);
    }
    dn
}

fn validity(params: &mut CertificateParams, how_long: Duration) {
    // A little slack for clocks that differ between machines.
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + how_long;
}

/// The DER of the first certificate in `pem`.
pub fn first_der(pem: &str) -> Result<Vec<u8>, PkiError> {
    certs_der(pem)?
        .into_iter()
        .next()
        .ok_or_else(|| PkiError::Pem("no certificate in PEM input".into()))
}

/// Every certificate in `pem`, in order.
pub fn certs_der(pem: &str) -> Result<Vec<Vec<u8>>, PkiError> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::Pem(e.to_string()))
}

/// The common name and groups (organisations) in a certificate's subject.
pub fn subject_of(der: &[u8]) -> Result<(String, Vec<String>), PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| PkiError::Pem(format!("unparsable certificate: {e}")))?;
    let subject = cert.subject();
    let cn = subject
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .unwrap_or_default()
        .to_string();
    let groups = subject
        .iter_organization()
        .filter_map(|a| a.as_str().ok().map(str::to_string))
        .collect();
    Ok((cn, groups))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_node_certificate_names_the_node_and_its_group() {
        let ca = Ca::generate("c1").unwrap();
        let (_key, csr) = node_csr("n2").unwrap();
        let cert = ca
            .sign_node_csr(&csr, "n2", "10.0.0.2".parse().unwrap())
            .unwrap();
        let (cn, groups) = subject_of(&first_der(&cert).unwrap()).unwrap();
        assert_eq!(cn, "system:node:n2");
        assert_eq!(groups, vec![NODES_GROUP.to_string()]);

        let admin = ca.issue_client("admin", &[ADMINS_GROUP]).unwrap();
        let (cn, groups) = subject_of(&first_der(&admin.cert_pem).unwrap()).unwrap();
        assert_eq!(
            (cn.as_str(), groups),
            ("admin", vec![ADMINS_GROUP.to_string()])
        );
    }

    #[test]
    fn the_hash_survives_a_round_trip_through_pem() {
        let ca = Ca::generate("c1").unwrap();
        let again = Ca::from_pem(ca.credential().clone()).unwrap();
        assert_eq!(ca.hash(), again.hash());
        assert_eq!(CaHash::of_pem(ca.cert_pem()).unwrap(), ca.hash());
        assert_ne!(Ca::generate("c1").unwrap().hash(), ca.hash());
    }

    #[test]
    fn garbage_is_not_a_csr() {
        let ca = Ca::generate("c1").unwrap();
        assert!(ca
            .sign_node_csr("not a csr", "n2", "10.0.0.2".parse().unwrap())
            .is_err());
    }
}
