//! Ed25519 signing of device manifests, and the public keys devices check
//! them with.
//!
//! One key signs (`packages.signing_key_file`, or one generated into
//! `<data_dir>/manifest-signing-key.pem` on first start); any number of
//! further public keys are published beside it
//! (`packages.published_key_files`), so firmware can be given a new key
//! before it is used and still trust the old one after a rotation.
//!
//! A key is named by its `kid`: the first 16 hex digits of the SHA-256 of
//! its raw 32-byte public key.

use std::path::Path;

use anyhow::{Context, bail};
use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};

use crate::config::PackagesConfig;

/// File the generated signing key is kept in, under the data dir.
pub const GENERATED_KEY_FILE: &str = "manifest-signing-key.pem";
pub const ALGORITHM: &str = "Ed25519";

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410): the raw key follows.
const SPKI_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];

/// A published public key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    pub kid: String,
    pub raw: [u8; 32],
    /// Whether this key signs new manifests.
    pub active: bool,
}

impl PublicKey {
    fn new(raw: [u8; 32], active: bool) -> Self {
        Self { kid: hex::encode(&Sha256::digest(raw)[..8]), raw, active }
    }

    pub fn base64(&self) -> String {
        STANDARD.encode(self.raw)
    }

    /// PEM `PUBLIC KEY` (SubjectPublicKeyInfo), as `openssl pkey -pubout` writes it.
    pub fn pem(&self) -> String {
        let mut der = SPKI_PREFIX.to_vec();
        der.extend_from_slice(&self.raw);
        pem::encode(&pem::Pem::new("PUBLIC KEY", der))
    }

    /// The key as a JWK (RFC 8037).
    pub fn jwk(&self) -> serde_json::Value {
        serde_json::json!({
            "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig",
            "kid": self.kid, "x": URL_SAFE_NO_PAD.encode(self.raw), "active": self.active,
        })
    }

    /// Check `signature` over `message` with this key.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, self.raw).verify(message, signature).is_ok()
    }
}

pub struct ManifestSigner {
    key: Ed25519KeyPair,
    keys: Vec<PublicKey>,
}

impl std::fmt::Debug for ManifestSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManifestSigner").field("keys", &self.keys).finish_non_exhaustive()
    }
}

impl ManifestSigner {
    pub fn from_config(config: &PackagesConfig, data_dir: &Path) -> anyhow::Result<Self> {
        let key = match &config.signing_key_file {
            Some(path) => load_private(path).context("packages.signing_key_file")?,
            None => load_or_generate(data_dir)?,
        };
        let active = PublicKey::new(raw_public(&key)?, true);
        let mut keys = vec![active];
        for path in &config.published_key_files {
            let raw = load_public(path).context("packages.published_key_files")?;
            if keys.iter().all(|k| k.raw != raw) {
                keys.push(PublicKey::new(raw, false));
            }
        }
        Ok(Self { key, keys })
    }

    /// The active key first, then the other published ones.
    pub fn keys(&self) -> &[PublicKey] {
        &self.keys
    }

    pub fn active(&self) -> &PublicKey {
        &self.keys[0]
    }

    /// Sign `message` with the active key: `(kid, base64 signature)`.
    pub fn sign(&self, message: &[u8]) -> (String, String) {
        (self.active().kid.clone(), STANDARD.encode(self.key.sign(message).as_ref()))
    }
}

fn raw_public(key: &Ed25519KeyPair) -> anyhow::Result<[u8; 32]> {
    key.public_key().as_ref().try_into().context("an Ed25519 public key is 32 bytes")
}

fn read_pem(path: &Path) -> anyhow::Result<pem::Pem> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    pem::parse(text).with_context(|| format!("{}: not a PEM file", path.display()))
}

/// A PKCS#8 `PRIVATE KEY` PEM (what `openssl genpkey -algorithm ed25519` writes).
fn load_private(path: &Path) -> anyhow::Result<Ed25519KeyPair> {
    let pem = read_pem(path)?;
    if pem.tag() != "PRIVATE KEY" {
        bail!("{}: expected a PKCS#8 \"PRIVATE KEY\" PEM, found {:?}", path.display(), pem.tag());
    }
    Ed25519KeyPair::from_pkcs8_maybe_unchecked(pem.contents())
        .map_err(|e| anyhow::anyhow!("{}: not an Ed25519 private key ({e})", path.display()))
}

/// A `PUBLIC KEY` PEM, or a private key whose public half is published.
fn load_public(path: &Path) -> anyhow::Result<[u8; 32]> {
    let pem = read_pem(path)?;
    match pem.tag() {
        "PUBLIC KEY" => match pem.contents().strip_prefix(SPKI_PREFIX.as_slice()) {
            Some(raw) if raw.len() == 32 => Ok(raw.try_into()?),
            _ => bail!("{}: not an Ed25519 public key", path.display()),
        },
        "PRIVATE KEY" => raw_public(&load_private(path)?),
        other => bail!("{}: expected a \"PUBLIC KEY\" PEM, found {other:?}", path.display()),
    }
}

fn load_or_generate(data_dir: &Path) -> anyhow::Result<Ed25519KeyPair> {
    let path = data_dir.join(GENERATED_KEY_FILE);
    if path.exists() {
        return load_private(&path);
    }
    std::fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let document = Ed25519KeyPair::generate_pkcs8v1(&aws_lc_rs::rand::SystemRandom::new())
        .map_err(|_| anyhow::anyhow!("generating an Ed25519 key failed"))?;
    let text = pem::encode(&pem::Pem::new("PRIVATE KEY", document.as_ref().to_vec()));
    match crate::auth::secret::write_private(&path, &text) {
        Ok(()) => tracing::warn!(
            path = %path.display(),
            "no packages.signing_key_file configured: generated a manifest signing key; \
             configure one shared by every replica (and back it up) for production"
        ),
        // Another process starting at the same moment won the race: use its key.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("writing {}", path.display())),
    }
    load_private(&path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_key_signs_and_verifies_and_is_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let config = PackagesConfig::default();
        let signer = ManifestSigner::from_config(&config, dir.path()).unwrap();
        let (kid, signature) = signer.sign(b"hello");
        assert_eq!(kid, signer.active().kid);
        let signature = STANDARD.decode(signature).unwrap();
        assert!(signer.active().verify(b"hello", &signature));
        assert!(!signer.active().verify(b"hellO", &signature));

        let again = ManifestSigner::from_config(&config, dir.path()).unwrap();
        assert_eq!(again.keys(), signer.keys(), "the key is kept in the data dir");
    }

    #[test]
    fn published_keys_are_listed_after_the_active_one() {
        let dir = tempfile::tempdir().unwrap();
        let old = ManifestSigner::from_config(&PackagesConfig::default(), dir.path()).unwrap();
        let public = dir.path().join("old.pub.pem");
        std::fs::write(&public, old.active().pem()).unwrap();
        std::fs::rename(dir.path().join(GENERATED_KEY_FILE), dir.path().join("old.pem")).unwrap();

        let config = PackagesConfig { published_key_files: vec![public], ..PackagesConfig::default() };
        let new = ManifestSigner::from_config(&config, dir.path()).unwrap();
        assert_eq!(new.keys().len(), 2);
        assert!(new.keys()[0].active && !new.keys()[1].active);
        assert_eq!(new.keys()[1].raw, old.active().raw, "the PEM round-trips");
        assert_ne!(new.keys()[0].kid, new.keys()[1].kid);
    }
}
