//! Operator JWTs: verification (HS256 secret, RS256 / ES256 / EdDSA public
//! keys, or a JWKS file) and minting (HS256, for `otadepot token issue`).
//!
//! Rule: the accepted algorithms come from the configured keys, never from
//! the token; `exp`, `iss`, `aud` and `sub` are required, `nbf` is checked.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::Value;

use crate::config::AuthConfig;
use crate::error::{Error, Result};

/// File in the data dir that holds the generated HS256 secret.
pub const GENERATED_SECRET_FILE: &str = "jwt-secret";

struct VerifyKey {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

pub struct JwtAuth {
    keys: Vec<VerifyKey>,
    signing: Option<EncodingKey>,
    issuer: String,
    audience: String,
    roles_claim: String,
    leeway: u64,
}

/// What a verified token says about its bearer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    pub subject: String,
    pub roles: Vec<String>,
    /// The token's `exp` (seconds since the epoch; always present, it is
    /// required).
    pub expires_at: i64,
}

impl JwtAuth {
    /// Load every configured key source; with none at all, generate (once)
    /// a random HS256 secret into `data_dir`.
    pub fn from_config(config: &AuthConfig, data_dir: &Path) -> anyhow::Result<Self> {
        let mut keys = Vec::new();
        let mut secret: Option<Vec<u8>> = None;

        if !config.jwt_secret.is_empty() {
            secret = Some(config.jwt_secret.expose().as_bytes().to_vec());
        } else if let Some(path) = &config.jwt_secret_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("invalid configuration: auth.jwt_secret_file: reading {}", path.display()))?;
            secret = Some(text.trim().as_bytes().to_vec());
        }
        for public in &config.jwt_public_keys {
            let pem = std::fs::read(&public.path).with_context(|| {
                format!("invalid configuration: auth.jwt_public_keys: reading {}", public.path.display())
            })?;
            let (algorithm, key) = match public.algorithm.as_str() {
                "RS256" => (Algorithm::RS256, DecodingKey::from_rsa_pem(&pem)),
                "ES256" => (Algorithm::ES256, DecodingKey::from_ec_pem(&pem)),
                "EdDSA" => (Algorithm::EdDSA, DecodingKey::from_ed_pem(&pem)),
                other => bail!(
                    "invalid configuration: auth.jwt_public_keys.algorithm: {other:?} is not one of RS256, ES256, EdDSA"
                ),
            };
            let key = key.with_context(|| {
                format!(
                    "invalid configuration: auth.jwt_public_keys: {} is not a {} public key in PEM",
                    public.path.display(),
                    public.algorithm
                )
            })?;
            keys.push(VerifyKey { kid: public.kid.clone(), algorithm, key });
        }
        if let Some(path) = &config.jwks_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("invalid configuration: auth.jwks_file: reading {}", path.display()))?;
            let set: JwkSet = serde_json::from_str(&text).with_context(|| {
                format!("invalid configuration: auth.jwks_file: {} is not a JWKS document", path.display())
            })?;
            for jwk in &set.keys {
                let Some(algorithm) = jwk.common.key_algorithm.and_then(|a| Algorithm::try_from(a).ok()) else {
                    tracing::warn!(kid = ?jwk.common.key_id, "JWKS key without a supported `alg`; skipped");
                    continue;
                };
                if matches!(algorithm, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
                    bail!("invalid configuration: auth.jwks_file: symmetric keys are not accepted from a JWKS");
                }
                let key = DecodingKey::from_jwk(jwk).context("invalid configuration: auth.jwks_file: unusable key")?;
                keys.push(VerifyKey { kid: jwk.common.key_id.clone(), algorithm, key });
            }
        }
        if secret.is_none() && keys.is_empty() {
            secret = Some(super::secret::load_or_generate(data_dir, GENERATED_SECRET_FILE, "auth.jwt_secret")?);
        }
        if let Some(secret) = &secret {
            if secret.len() < 32 {
                bail!("invalid configuration: auth.jwt_secret: must be at least 32 bytes");
            }
            keys.push(VerifyKey { kid: None, algorithm: Algorithm::HS256, key: DecodingKey::from_secret(secret) });
        }
        Ok(Self {
            keys,
            signing: secret.as_deref().map(EncodingKey::from_secret),
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            roles_claim: config.roles_claim.clone(),
            leeway: config.leeway_seconds,
        })
    }

    /// Verify a bearer token; every failure is UNAUTHENTICATED with a reason
    /// that helps the operator without helping a forger.
    pub fn verify(&self, token: &str) -> Result<Claims> {
        let unauthenticated = |reason: &str| Error::Unauthenticated(format!("invalid token: {reason}"));
        let header = jsonwebtoken::decode_header(token).map_err(|_| unauthenticated("malformed"))?;
        let candidates: Vec<&VerifyKey> = self
            .keys
            .iter()
            .filter(|k| k.algorithm == header.alg)
            .filter(|k| match (&header.kid, &k.kid) {
                (Some(wanted), Some(have)) => wanted == have,
                _ => true,
            })
            .collect();
        if candidates.is_empty() {
            return Err(unauthenticated("algorithm or key id not accepted"));
        }
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = self.leeway;

        let mut last = None;
        for key in candidates {
            match jsonwebtoken::decode::<Value>(token, &key.key, &validation) {
                Ok(data) => {
                    return self.claims(&data.claims).ok_or_else(|| unauthenticated("claims"));
                }
                Err(err) => last = Some(err),
            }
        }
        use jsonwebtoken::errors::ErrorKind;
        let reason = match last.as_ref().map(|e| e.kind()) {
            Some(ErrorKind::ExpiredSignature) => "expired",
            Some(ErrorKind::ImmatureSignature) => "not valid yet",
            Some(ErrorKind::InvalidIssuer) => "wrong issuer",
            Some(ErrorKind::InvalidAudience) => "wrong audience",
            Some(ErrorKind::InvalidSignature) => "bad signature",
            Some(ErrorKind::MissingRequiredClaim(_)) => "missing a required claim",
            _ => "rejected",
        };
        Err(unauthenticated(reason))
    }

    fn claims(&self, claims: &Value) -> Option<Claims> {
        let subject = claims.get("sub")?.as_str()?.to_owned();
        if subject.is_empty() {
            return None;
        }
        let exp = claims.get("exp")?;
        // Validation accepted it as a number; some providers write a float.
        let expires_at = exp.as_i64().or_else(|| exp.as_f64().map(|f| f as i64))?;
        let roles = match claims.get(&self.roles_claim) {
            Some(Value::Array(items)) => items.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
            Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
            _ => Vec::new(),
        };
        Some(Claims { subject, roles, expires_at })
    }

    /// Mint an HS256 operator token (needs a configured or generated secret).
    pub fn issue(&self, subject: &str, roles: &[String], ttl: Duration) -> anyhow::Result<String> {
        let Some(signing) = &self.signing else {
            bail!(
                "minting tokens needs an HS256 secret (auth.jwt_secret); with an identity provider, get tokens from it"
            );
        };
        let now = chrono::Utc::now().timestamp();
        let claims = serde_json::json!({
            "sub": subject,
            "iss": self.issuer,
            "aud": self.audience,
            "iat": now,
            "nbf": now,
            "exp": now + i64::try_from(ttl.as_secs()).context("ttl too large")?,
            self.roles_claim.clone(): roles,
        });
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, signing).context("signing the token")
    }
}
