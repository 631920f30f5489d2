//! Signed tokens that clients present in their hello: `<claims>.<signature>`, both base64url,
//! the claims JSON and the signature HMAC-SHA256 over the encoded claims with a shared secret.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::client::Role;
use crate::validate::{self, ValidationError};

/// Longest token accepted, bytes.
pub const MAX_TOKEN_LEN: usize = 1024;

/// What a token says about its holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub role: Role,
    /// The driver, rider or dispatcher id.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: i64,
    /// Display name; free text, shown as text only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is malformed")]
    Malformed,
    #[error("token signature does not match")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token claims are invalid: {0}")]
    InvalidClaims(String),
}

fn mac(secret: &[u8]) -> Hmac<Sha256> {
    Hmac::<Sha256>::new_from_slice(secret).expect("hmac takes keys of any length")
}

fn check_claims(claims: &Claims) -> Result<(), ValidationError> {
    validate::id("sub", &claims.sub)?;
    if let Some(name) = &claims.name {
        validate::text("name", name)?;
    }
    Ok(())
}

/// Signs `claims` with `secret`.
pub fn mint(secret: &[u8], claims: &Claims) -> Result<String, TokenError> {
    check_claims(claims).map_err(|e| TokenError::InvalidClaims(e.to_string()))?;
    let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims serialise"));
    let mut mac = mac(secret);
    mac.update(body.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    Ok(format!("{body}.{signature}"))
}

/// Checks `token`'s signature and expiry against `now_s` (seconds since the epoch).
pub fn verify(secret: &[u8], token: &str, now_s: i64) -> Result<Claims, TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Malformed);
    }
    let (body, signature) = token.split_once('.').ok_or(TokenError::Malformed)?;
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| TokenError::Malformed)?;
    let mut mac = mac(secret);
    mac.update(body.as_bytes());
    mac.verify_slice(&signature)
        .map_err(|_| TokenError::BadSignature)?;
    let claims: Claims = URL_SAFE_NO_PAD
        .decode(body)
        .ok()
        .and_then(|json| serde_json::from_slice(&json).ok())
        .ok_or(TokenError::Malformed)?;
    check_claims(&claims).map_err(|e| TokenError::InvalidClaims(e.to_string()))?;
    if claims.exp <= now_s {
        return Err(TokenError::Expired);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims {
            role: Role::Driver,
            sub: "driver-1".into(),
            exp: 2_000,
            name: Some("<b>Ann</b>".into()),
        }
    }

    #[test]
    fn round_trip() {
        let token = mint(b"secret", &claims()).unwrap();
        assert_eq!(verify(b"secret", &token, 1_000).unwrap(), claims());
    }

    #[test]
    fn refusals() {
        let token = mint(b"secret", &claims()).unwrap();
        assert_eq!(
            verify(b"other", &token, 1_000),
            Err(TokenError::BadSignature)
        );
        assert_eq!(verify(b"secret", &token, 2_000), Err(TokenError::Expired));
        assert_eq!(verify(b"secret", "nodot", 0), Err(TokenError::Malformed));
        assert_eq!(verify(b"secret", "a.!!", 0), Err(TokenError::Malformed));
        // A forged body with the original signature.
        let (_, signature) = token.split_once('.').unwrap();
        let mut forged = claims();
        forged.role = Role::Dispatcher;
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        assert_eq!(
            verify(b"secret", &format!("{body}.{signature}"), 1_000),
            Err(TokenError::BadSignature)
        );
        let mut bad = claims();
        bad.sub = "a b".into();
        assert!(matches!(
            mint(b"secret", &bad),
            Err(TokenError::InvalidClaims(_))
        ));
    }
}
