//! Signed, expiring URLs: the capability to upload one content's bytes or
//! download one object, without an operator token.
//!
//! `sig = base64url(HMAC-SHA256(key, purpose \n part \n part ... \n exp))`,
//! checked in constant time.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::{Error, Result};

pub const GENERATED_SECRET_FILE: &str = "url-secret";

pub struct UrlSigner {
    key: Vec<u8>,
}

impl UrlSigner {
    pub fn new(key: Vec<u8>) -> Self {
        Self { key }
    }

    fn mac(&self, purpose: &str, parts: &[&str], exp: i64) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(purpose.as_bytes());
        for part in parts {
            mac.update(b"\n");
            mac.update(part.as_bytes());
        }
        mac.update(format!("\n{exp}").as_bytes());
        mac
    }

    pub fn sign(&self, purpose: &str, parts: &[&str], exp: DateTime<Utc>) -> String {
        URL_SAFE_NO_PAD.encode(self.mac(purpose, parts, exp.timestamp()).finalize().into_bytes())
    }

    /// FORBIDDEN when the signature does not match or has expired.
    pub fn verify(&self, purpose: &str, parts: &[&str], exp: i64, sig: &str) -> Result<()> {
        let bytes = URL_SAFE_NO_PAD.decode(sig).map_err(|_| Error::BadSignature("is malformed"))?;
        self.mac(purpose, parts, exp).verify_slice(&bytes).map_err(|_| Error::BadSignature("does not match"))?;
        if exp < Utc::now().timestamp() {
            return Err(Error::BadSignature("has expired"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_and_verifies_and_refuses_changes() {
        let signer = UrlSigner::new(b"k".to_vec());
        let exp = Utc::now() + chrono::TimeDelta::minutes(5);
        let sig = signer.sign("upload", &["id-1", "205"], exp);
        assert!(signer.verify("upload", &["id-1", "205"], exp.timestamp(), &sig).is_ok());
        assert!(signer.verify("upload", &["id-1", "206"], exp.timestamp(), &sig).is_err());
        assert!(signer.verify("download", &["id-1", "205"], exp.timestamp(), &sig).is_err());
        assert!(signer.verify("upload", &["id-1", "205"], exp.timestamp() + 1, &sig).is_err());
        let past = Utc::now() - chrono::TimeDelta::minutes(5);
        let old = signer.sign("upload", &["id-1"], past);
        assert!(signer.verify("upload", &["id-1"], past.timestamp(), &old).is_err());
    }
}
