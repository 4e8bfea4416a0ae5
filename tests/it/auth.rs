//! Operator tokens: what is accepted, what is refused, and why.

use std::process::Command;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{JWT_SECRET, TestApp, error_code};

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn claims(overrides: Value) -> Value {
    let mut base = json!({
        "sub": "mallory", "iss": "otadepot", "aud": "otadepot",
        "iat": now(), "exp": now() + 600, "roles": ["admin"],
    });
    for (k, v) in overrides.as_object().unwrap() {
        if v.is_null() {
            base.as_object_mut().unwrap().remove(k);
        } else {
            base[k] = v.clone();
        }
    }
    base
}

fn hs256(secret: &str, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
}

/// POST `{ me }` with a raw Authorization header value.
async fn me_with(app: &TestApp, authorization: &str) -> (StatusCode, Value) {
    let response = app
        .client
        .post(app.url("/graphql"))
        .header("authorization", authorization)
        .json(&json!({ "query": "{ me { subject permissions } }" }))
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn a_valid_token_resolves_roles_to_permissions() {
    let app = TestApp::start().await;
    let (status, body) =
        me_with(&app, &format!("Bearer {}", hs256(JWT_SECRET, &claims(json!({"roles": ["viewer", "auditor"]}))))).await;
    assert_eq!(status, StatusCode::OK);
    let permissions: Vec<&str> =
        body["data"]["me"]["permissions"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    assert!(permissions.contains(&"AUDIT_READ") && permissions.contains(&"DEVICE_READ"));
    assert!(!permissions.contains(&"ROLE_ADMIN"));
}

#[tokio::test]
async fn bad_tokens_are_refused_with_401_and_change_nothing() {
    let app = TestApp::start().await;
    let before = crate::support::count_rows(app.db(), "audit_event").await;
    let forged = hs256("another-secret-another-secret-another-secret", &claims(json!({})));
    let alg_none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims(json!({})).to_string())
    );
    let cases = [
        ("expired", hs256(JWT_SECRET, &claims(json!({"exp": now() - 3600})))),
        ("not yet valid", hs256(JWT_SECRET, &claims(json!({"nbf": now() + 3600})))),
        ("forged", forged),
        ("alg none", alg_none),
        ("wrong issuer", hs256(JWT_SECRET, &claims(json!({"iss": "someone-else"})))),
        ("wrong audience", hs256(JWT_SECRET, &claims(json!({"aud": "someone-else"})))),
        ("no exp", hs256(JWT_SECRET, &claims(json!({"exp": null})))),
        ("no sub", hs256(JWT_SECRET, &claims(json!({"sub": null})))),
        ("garbage", "not.a.jwt".to_owned()),
    ];
    for (what, token) in cases {
        let (status, body) = me_with(&app, &format!("Bearer {token}")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {body}");
        assert_eq!(error_code(&body), "UNAUTHENTICATED", "{what}");
        // Also for a mutation: nothing runs.
        let response = app
            .client
            .post(app.url("/graphql"))
            .bearer_auth(&token)
            .json(&json!({ "query": r#"mutation { createRole(input: {name: "x1", permissions: [AUDIT_READ]}) { role { name } } }"# }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{what}");
    }
    let (status, body) = me_with(&app, "Basic YWxpY2U6c2VjcmV0").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body["errors"][0]["message"].as_str().unwrap().contains("Bearer"));
    assert_eq!(crate::support::count_rows(app.db(), "audit_event").await, before);
}

#[tokio::test]
async fn unknown_roles_grant_nothing() {
    let app = TestApp::start().await;
    let token = hs256(JWT_SECRET, &claims(json!({"roles": ["superuser"]})));
    let (status, body) = me_with(&app, &format!("Bearer {token}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["data"]["me"]["permissions"], json!([]));
    let code = app.with_token(&token).error_code("{ roles { name } }", json!({})).await;
    assert_eq!(code, "FORBIDDEN");
}

#[tokio::test]
async fn roles_claim_is_configurable() {
    let app = TestApp::start_with(|c| c.auth.roles_claim = "https://otadepot/groups".into()).await;
    let token = hs256(JWT_SECRET, &claims(json!({"roles": null, "https://otadepot/groups": "auditor viewer"})));
    let (_, body) = me_with(&app, &format!("Bearer {token}")).await;
    assert!(body["data"]["me"]["permissions"].as_array().unwrap().contains(&json!("AUDIT_READ")), "{body}");
}

/// An identity provider's Ed25519 key, by PEM file and by JWKS.
#[tokio::test]
async fn public_keys_and_jwks_verify_identity_provider_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("idp.pem");
    let public = dir.path().join("idp.pub.pem");
    let ok = Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(&private)
        .status()
        .expect("openssl is installed");
    assert!(ok.success());
    let ok = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public)
        .status()
        .unwrap();
    assert!(ok.success());
    let der = Command::new("openssl")
        .args(["pkey", "-pubin", "-outform", "DER", "-in"])
        .arg(&public)
        .output()
        .unwrap()
        .stdout;
    let raw_public = &der[der.len() - 32..];
    let jwks = dir.path().join("jwks.json");
    std::fs::write(
        &jwks,
        json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "kid": "idp-1", "x": URL_SAFE_NO_PAD.encode(raw_public)}]}).to_string(),
    )
    .unwrap();
    let signing = EncodingKey::from_ed_pem(&std::fs::read(&private).unwrap()).unwrap();
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some("idp-1".into());
    let token =
        jsonwebtoken::encode(&header, &claims(json!({"roles": ["auditor"], "sub": "idp-user"})), &signing).unwrap();

    let by_pem = TestApp::start_with(|c| {
        c.auth.jwt_public_keys =
            vec![otadepot::config::PublicKeyConfig { algorithm: "EdDSA".into(), path: public.clone(), kid: None }];
    })
    .await;
    let (status, body) = me_with(&by_pem, &format!("Bearer {token}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["me"]["subject"], "idp-user");
    // The HS256 secret still works alongside.
    let (status, _) = me_with(&by_pem, &format!("Bearer {}", hs256(JWT_SECRET, &claims(json!({}))))).await;
    assert_eq!(status, StatusCode::OK);

    let by_jwks = TestApp::start_with(|c| c.auth.jwks_file = Some(jwks.clone())).await;
    let (status, body) = me_with(&by_jwks, &format!("Bearer {token}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // A token naming another key id is refused.
    header.kid = Some("idp-2".into());
    let other = jsonwebtoken::encode(&header, &claims(json!({})), &signing).unwrap();
    let (status, _) = me_with(&by_jwks, &format!("Bearer {other}")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// RS256 and ES256 identity provider keys (PEM files), each refusing a
/// token signed by another key.
#[tokio::test]
async fn rs256_and_es256_keys_verify_identity_provider_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let openssl = |args: &[&str]| {
        let ok = Command::new("openssl")
            .args(args)
            .current_dir(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl is installed");
        assert!(ok.success(), "openssl {args:?}");
    };
    openssl(&["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "rsa.pem"]);
    openssl(&["pkey", "-pubout", "-in", "rsa.pem", "-out", "rsa.pub.pem"]);
    openssl(&["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "ec.pem"]);
    openssl(&["pkey", "-pubout", "-in", "ec.pem", "-out", "ec.pub.pem"]);
    openssl(&["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "other.pem"]);
    let read = |name: &str| std::fs::read(dir.path().join(name)).unwrap();
    let token = |algorithm: Algorithm, key: &EncodingKey, sub: &str| {
        jsonwebtoken::encode(&Header::new(algorithm), &claims(json!({"roles": ["viewer"], "sub": sub})), key).unwrap()
    };
    let rs = token(Algorithm::RS256, &EncodingKey::from_rsa_pem(&read("rsa.pem")).unwrap(), "rsa-user");
    let es = token(Algorithm::ES256, &EncodingKey::from_ec_pem(&read("ec.pem")).unwrap(), "ec-user");
    let forged = token(Algorithm::ES256, &EncodingKey::from_ec_pem(&read("other.pem")).unwrap(), "mallory");

    let public = |algorithm: &str, file: &str| otadepot::config::PublicKeyConfig {
        algorithm: algorithm.into(),
        path: dir.path().join(file),
        kid: None,
    };
    let app = TestApp::start_with(|c| {
        c.auth.jwt_public_keys = vec![public("RS256", "rsa.pub.pem"), public("ES256", "ec.pub.pem")];
    })
    .await;
    for (token, subject) in [(&rs, "rsa-user"), (&es, "ec-user")] {
        let (status, body) = me_with(&app, &format!("Bearer {token}")).await;
        assert_eq!(status, StatusCode::OK, "{subject}: {body}");
        assert_eq!(body["data"]["me"]["subject"], subject);
    }
    let (status, _) = me_with(&app, &format!("Bearer {forged}")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "signed by a key that is not configured");
}

#[tokio::test]
async fn a_generated_secret_is_kept_in_the_data_dir() {
    let app = TestApp::start_with(|c| c.auth.jwt_secret = otadepot::config::Secret::default()).await;
    let path = app.dir.path().join("jwt-secret");
    let secret = std::fs::read_to_string(&path).expect("secret generated");
    assert!(secret.len() >= 64);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    let (status, _) = me_with(&app, &format!("Bearer {}", hs256(secret.trim(), &claims(json!({}))))).await;
    assert_eq!(status, StatusCode::OK);
}
