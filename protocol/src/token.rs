//! Client tokens: standard JSON Web Tokens (RFC 7519).
//!
//! Development and tests sign them with a shared secret (HS256, [`mint`]); an identity provider
//! signs them with its own keys (RS256, ES256 and the other asymmetric algorithms), which a
//! [`Verifier`] checks against the provider's published key set (JWKS). Which claims carry the
//! role and the subject is configurable ([`ClaimRules`]); `exp` is required, `nbf` honoured, both
//! with a small leeway, and `iss`/`aud` checked when configured. `alg: none` is never accepted.

use std::sync::{Arc, RwLock};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::client::Role;
use crate::validate::{self, ValidationError};

/// Longest token accepted, bytes: room for an identity provider's RS256 token with a few
/// dozen claims.
pub const MAX_TOKEN_LEN: usize = 4096;

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
    #[error("token is signed with an algorithm that is not accepted")]
    UnsupportedAlgorithm,
    #[error("token is signed by an unknown key")]
    UnknownKey,
    #[error("token expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token has the wrong issuer")]
    WrongIssuer,
    #[error("token is for another audience")]
    WrongAudience,
    #[error("token claims are invalid: {0}")]
    InvalidClaims(String),
    #[error("the signing secret is empty")]
    EmptySecret,
}

/// Which claims say what, and what else a token must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRules {
    /// The claim holding the role: a dotted path into nested objects (`realm_access.roles`);
    /// its value a string or an array of strings with exactly one of `driver`, `rider`,
    /// `dispatcher`.
    pub role_claim: String,
    /// The claim holding the subject (a dotted path); its value must be an id.
    pub subject_claim: String,
    /// When set, `iss` must equal it.
    pub issuer: Option<String>,
    /// When set, `aud` (a string or an array) must hold it.
    pub audience: Option<String>,
    /// Allowance for clocks that disagree, applied to `exp` and `nbf`, seconds.
    pub leeway_s: i64,
}

impl Default for ClaimRules {
    fn default() -> Self {
        Self {
            role_claim: "role".into(),
            subject_claim: "sub".into(),
            issuer: None,
            audience: None,
            leeway_s: 30,
        }
    }
}

/// One key of a key set, ready to check signatures.
struct Key {
    kid: Option<String>,
    algorithm: Option<Algorithm>,
    key: DecodingKey,
}

/// Checks tokens signed with the shared secret, the key set, or both.
#[derive(Clone)]
pub struct Verifier {
    secret: Option<Arc<DecodingKey>>,
    keys: Arc<RwLock<Arc<Vec<Key>>>>,
    rules: Arc<ClaimRules>,
    /// Set when a token named a key the set does not hold: the provider may have rotated its
    /// keys, so whoever keeps the set should fetch it again soon.
    unknown_key_seen: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("secret", &self.secret.is_some())
            .field("keys", &self.key_count())
            .field("rules", &self.rules)
            .finish()
    }
}

/// Algorithms accepted from a key set; HS256 is accepted only with the shared secret.
const ASYMMETRIC: [Algorithm; 8] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
];

impl Verifier {
    /// A verifier for tokens signed with `secret` (HS256), or none when `secret` is `None` or
    /// empty.
    pub fn new(secret: Option<&[u8]>, rules: ClaimRules) -> Self {
        Self {
            secret: secret
                .and_then(|s| DecodingKey::from_secret(s).ok())
                .map(Arc::new),
            keys: Default::default(),
            rules: Arc::new(rules),
            unknown_key_seen: Default::default(),
        }
    }

    /// A verifier for tokens signed with `secret`, with the default claims.
    pub fn hs256(secret: &[u8]) -> Self {
        Self::new(Some(secret), ClaimRules::default())
    }

    /// Replaces the key set; keys this crate cannot use (an unknown type or curve) are
    /// skipped, and how many were kept is returned. Verifiers cloned from this one see it too.
    pub fn set_keys(&self, set: &JwkSet) -> usize {
        let keys: Vec<Key> = set
            .keys
            .iter()
            .filter_map(|jwk| {
                let key = DecodingKey::from_jwk(jwk).ok()?;
                let algorithm = jwk
                    .common
                    .key_algorithm
                    .and_then(|a| a.to_string().parse::<Algorithm>().ok());
                if algorithm.is_some_and(|a| !ASYMMETRIC.contains(&a)) {
                    return None;
                }
                Some(Key {
                    kid: jwk.common.key_id.clone(),
                    algorithm,
                    key,
                })
            })
            .collect();
        let kept = keys.len();
        *self.keys.write().expect("key set lock") = Arc::new(keys);
        kept
    }

    /// Whether a token named an unknown key since the last call (and forgets it).
    pub fn take_unknown_key_seen(&self) -> bool {
        self.unknown_key_seen
            .swap(false, std::sync::atomic::Ordering::Relaxed)
    }

    /// How many keys the key set holds.
    pub fn key_count(&self) -> usize {
        self.keys.read().expect("key set lock").len()
    }

    /// Checks `token` at `now_s` (seconds since the epoch) and reads its claims.
    pub fn verify(&self, token: &str, now_s: i64) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        let mut validation = Validation::new(header.alg);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        let decode = |key: &DecodingKey| {
            jsonwebtoken::decode::<SentClaims>(token, key, &validation)
                .map(|data| data.claims)
                .map_err(|e| match e.kind() {
                    jsonwebtoken::errors::ErrorKind::InvalidSignature => TokenError::BadSignature,
                    // The signature held but the claims did not read (the library's own reading
                    // refuses a registered claim named twice): say so if that is why.
                    jsonwebtoken::errors::ErrorKind::Json(_) => {
                        match jsonwebtoken::dangerous::insecure_decode_claims::<SentClaims>(token) {
                            Ok(SentClaims {
                                repeated: Some(name),
                                ..
                            }) => repeated_claim(&name),
                            _ => TokenError::Malformed,
                        }
                    }
                    _ => TokenError::Malformed,
                })
        };
        let claims = if header.alg == Algorithm::HS256 {
            decode(
                self.secret
                    .as_deref()
                    .ok_or(TokenError::UnsupportedAlgorithm)?,
            )?
        } else if ASYMMETRIC.contains(&header.alg) {
            let keys = self.keys.read().expect("key set lock").clone();
            let fits = |k: &&Key| {
                k.algorithm.is_none_or(|a| a == header.alg)
                    && (header.kid.is_none() || k.kid == header.kid)
            };
            let mut candidates = keys.iter().filter(fits).peekable();
            if candidates.peek().is_none() {
                self.unknown_key_seen
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                return Err(TokenError::UnknownKey);
            }
            // Without a `kid` any fitting key may have signed it; the first that verifies wins.
            let mut outcome = Err(TokenError::BadSignature);
            for key in candidates {
                outcome = decode(&key.key);
                if !matches!(outcome, Err(TokenError::BadSignature)) {
                    break;
                }
            }
            outcome?
        } else {
            return Err(TokenError::UnsupportedAlgorithm);
        };
        // A claim named twice means whatever the reader keeps: identity providers' parsers
        // may keep the first, serde the last, so such a token could carry two roles.
        if let Some(name) = claims.repeated {
            return Err(repeated_claim(&name));
        }
        self.read_claims(&claims.claims, now_s)
    }

    fn read_claims(&self, claims: &Map<String, Value>, now_s: i64) -> Result<Claims, TokenError> {
        let rules = &self.rules;
        let invalid = |m: &str| TokenError::InvalidClaims(m.to_owned());
        let exp = claims
            .get("exp")
            .and_then(Value::as_i64)
            .ok_or_else(|| invalid("exp is missing or not a number"))?;
        if exp.saturating_add(rules.leeway_s) <= now_s {
            return Err(TokenError::Expired);
        }
        if let Some(nbf) = claims.get("nbf") {
            let nbf = nbf.as_i64().ok_or_else(|| invalid("nbf is not a number"))?;
            if now_s.saturating_add(rules.leeway_s) < nbf {
                return Err(TokenError::NotYetValid);
            }
        }
        if let Some(issuer) = &rules.issuer
            && claims.get("iss").and_then(Value::as_str) != Some(issuer)
        {
            return Err(TokenError::WrongIssuer);
        }
        if let Some(audience) = &rules.audience {
            let holds = match claims.get("aud") {
                Some(Value::String(a)) => a == audience,
                Some(Value::Array(all)) => all.iter().any(|a| a.as_str() == Some(audience)),
                _ => false,
            };
            if !holds {
                return Err(TokenError::WrongAudience);
            }
        }
        let role = role_of(lookup(claims, &rules.role_claim))
            .ok_or_else(|| invalid("the role claim holds no single known role"))?;
        let sub = lookup(claims, &rules.subject_claim)
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("the subject claim is missing"))?
            .to_owned();
        let name = match claims.get("name") {
            None | Some(Value::Null) => None,
            Some(Value::String(name)) => Some(name.clone()),
            Some(_) => return Err(invalid("name is not text")),
        };
        let claims = Claims {
            role,
            sub,
            exp,
            name,
        };
        check_claims(&claims).map_err(|e| TokenError::InvalidClaims(e.to_string()))?;
        Ok(claims)
    }
}

fn repeated_claim(name: &str) -> TokenError {
    TokenError::InvalidClaims(format!("the claim {name:?} appears more than once"))
}

/// A token's claims as sent, with the first name that appeared twice in any of its objects.
struct SentClaims {
    claims: Map<String, Value>,
    repeated: Option<String>,
}

impl<'de> Deserialize<'de> for SentClaims {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut repeated = None;
        let value = deserializer.deserialize_any(Noting {
            repeated: &mut repeated,
        })?;
        match value {
            Value::Object(claims) => Ok(Self { claims, repeated }),
            _ => Err(serde::de::Error::custom("the claims are not an object")),
        }
    }
}

/// Reads any JSON into a [`Value`], noting the first object key it sees twice.
struct Noting<'r> {
    repeated: &'r mut Option<String>,
}

impl<'de> serde::de::DeserializeSeed<'de> for Noting<'_> {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Noting<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JSON")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(v.into())
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(v.into())
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(Noting {
            repeated: &mut *self.repeated,
        })? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value_seed(Noting {
                repeated: &mut *self.repeated,
            })?;
            if object.contains_key(&key) && self.repeated.is_none() {
                *self.repeated = Some(key.clone());
            }
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

/// The value at a dotted path.
fn lookup<'a>(claims: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    let mut parts = path.split('.');
    let mut value = claims.get(parts.next()?)?;
    for part in parts {
        value = value.as_object()?.get(part)?;
    }
    Some(value)
}

fn role_of(value: Option<&Value>) -> Option<Role> {
    let parse = |v: &Value| match v.as_str()? {
        "driver" => Some(Role::Driver),
        "rider" => Some(Role::Rider),
        "dispatcher" => Some(Role::Dispatcher),
        _ => None,
    };
    match value? {
        Value::Array(all) => {
            let mut known = all.iter().filter_map(parse);
            let role = known.next()?;
            // A token naming two of the roles is ambiguous; it gets neither.
            known.all(|r| r == role).then_some(role)
        }
        other => parse(other),
    }
}

fn check_claims(claims: &Claims) -> Result<(), ValidationError> {
    validate::id("sub", &claims.sub)?;
    if let Some(name) = &claims.name {
        validate::text("name", name)?;
    }
    Ok(())
}

/// Signs `claims` with `secret` (HS256), for development and tests.
pub fn mint(secret: &[u8], claims: &Claims) -> Result<String, TokenError> {
    check_claims(claims).map_err(|e| TokenError::InvalidClaims(e.to_string()))?;
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret).map_err(|_| TokenError::EmptySecret)?,
    )
    .map_err(|e| TokenError::InvalidClaims(e.to_string()))
}

/// Checks a token signed with `secret` at `now_s`, with the default claims and no leeway.
pub fn verify(secret: &[u8], token: &str, now_s: i64) -> Result<Claims, TokenError> {
    let rules = ClaimRules {
        leeway_s: 0,
        ..ClaimRules::default()
    };
    Verifier::new(Some(secret), rules).verify(token, now_s)
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use serde_json::json;

    use super::*;

    fn claims() -> Claims {
        Claims {
            role: Role::Driver,
            sub: "driver-1".into(),
            exp: 2_000,
            name: Some("<b>Ann</b>".into()),
        }
    }

    fn b64(value: &Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
    }

    fn hs256(secret: &[u8], claims: &Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(secret).unwrap(),
        )
        .unwrap()
    }

    /// An HS256 token over `body` exactly as written, duplicates and all.
    fn hs256_raw(secret: &[u8], body: &str) -> String {
        let header = b64(&json!({"alg": "HS256", "typ": "JWT"}));
        let signed = format!("{header}.{}", URL_SAFE_NO_PAD.encode(body));
        let key = EncodingKey::from_secret(secret).unwrap();
        let signature =
            jsonwebtoken::crypto::sign(signed.as_bytes(), &key, Algorithm::HS256).unwrap();
        format!("{signed}.{signature}")
    }

    #[test]
    fn a_claim_named_twice_is_refused_at_any_depth() {
        let plain = r#"{"role":"driver","sub":"d1","exp":2000}"#;
        assert!(verify(b"secret", &hs256_raw(b"secret", plain), 1_000).is_ok());
        for (body, name) in [
            (
                r#"{"role":"driver","sub":"d1","exp":2000,"role":"dispatcher"}"#,
                "role",
            ),
            (
                r#"{"role":"driver","sub":"d1","sub":"d2","exp":2000}"#,
                "sub",
            ),
            (
                r#"{"role":"driver","sub":"d1","exp":2000,"exp":9000}"#,
                "exp",
            ),
            (
                r#"{"role":"driver","sub":"d1","exp":2000,"realm":{"roles":["a"],"roles":["b"]}}"#,
                "roles",
            ),
        ] {
            let refused = verify(b"secret", &hs256_raw(b"secret", body), 1_000);
            assert_eq!(
                refused,
                Err(TokenError::InvalidClaims(format!(
                    "the claim {name:?} appears more than once"
                ))),
                "{body}"
            );
        }
    }

    #[test]
    fn round_trip_as_a_standard_jwt() {
        let token = mint(b"secret", &claims()).unwrap();
        assert_eq!(token.split('.').count(), 3);
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, Algorithm::HS256);
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
        assert_eq!(verify(b"secret", "a.b.!!", 0), Err(TokenError::Malformed));
        // A forged body with the original signature.
        let parts: Vec<&str> = token.split('.').collect();
        let mut forged = claims();
        forged.role = Role::Dispatcher;
        let body = b64(&serde_json::to_value(&forged).unwrap());
        assert_eq!(
            verify(
                b"secret",
                &format!("{}.{body}.{}", parts[0], parts[2]),
                1_000
            ),
            Err(TokenError::BadSignature)
        );
        // `alg: none`, with or without a signature.
        let none = b64(&json!({"alg": "none", "typ": "JWT"}));
        for tail in ["", parts[2]] {
            assert_eq!(
                verify(b"secret", &format!("{none}.{body}.{tail}"), 1_000),
                Err(TokenError::Malformed)
            );
        }
        // HS384 is not accepted even with the right secret.
        let hs384 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS384),
            &claims(),
            &EncodingKey::from_secret(b"secret").unwrap(),
        )
        .unwrap();
        assert_eq!(
            verify(b"secret", &hs384, 1_000),
            Err(TokenError::UnsupportedAlgorithm)
        );
        let mut bad = claims();
        bad.sub = "a b".into();
        assert!(matches!(
            mint(b"secret", &bad),
            Err(TokenError::InvalidClaims(_))
        ));
        let long = "a".repeat(MAX_TOKEN_LEN + 1);
        assert_eq!(verify(b"secret", &long, 0), Err(TokenError::Malformed));
    }

    #[test]
    fn claims_rules_leeway_issuer_and_audience() {
        let rules = ClaimRules {
            role_claim: "realm_access.roles".into(),
            subject_claim: "uid".into(),
            issuer: Some("https://id.example".into()),
            audience: Some("dispatch".into()),
            leeway_s: 30,
        };
        let verifier = Verifier::new(Some(b"secret"), rules);
        let base = json!({
            "iss": "https://id.example", "aud": ["other", "dispatch"],
            "uid": "rider-7", "sub": "not used", "exp": 1_000, "nbf": 900,
            "realm_access": {"roles": ["offline_access", "rider"]},
        });
        let with = |patch: Value| {
            let mut value = base.clone();
            for (k, v) in patch.as_object().unwrap() {
                value[k] = v.clone();
            }
            hs256(b"secret", &value)
        };
        let ok = verifier.verify(&with(json!({})), 1_020).unwrap();
        assert_eq!((ok.role, ok.sub.as_str()), (Role::Rider, "rider-7"));
        // Leeway on both ends.
        assert!(verifier.verify(&with(json!({})), 875).is_ok());
        assert_eq!(
            verifier.verify(&with(json!({})), 860),
            Err(TokenError::NotYetValid)
        );
        assert_eq!(
            verifier.verify(&with(json!({})), 1_030),
            Err(TokenError::Expired)
        );
        let cases = [
            (
                json!({"iss": "https://evil.example"}),
                TokenError::WrongIssuer,
            ),
            (json!({"iss": null}), TokenError::WrongIssuer),
            (json!({"aud": "other"}), TokenError::WrongAudience),
            (json!({"aud": null}), TokenError::WrongAudience),
        ];
        for (patch, error) in cases {
            assert_eq!(verifier.verify(&with(patch), 950), Err(error));
        }
        for patch in [
            json!({"exp": null}),
            json!({"exp": "soon"}),
            json!({"realm_access": {"roles": ["rider", "dispatcher"]}}),
            json!({"realm_access": {"roles": []}}),
            json!({"realm_access": null}),
            json!({"uid": "a b"}),
            json!({"uid": 7}),
        ] {
            assert!(
                matches!(
                    verifier.verify(&with(patch.clone()), 950),
                    Err(TokenError::InvalidClaims(_))
                ),
                "{patch}"
            );
        }
    }

    #[test]
    fn asymmetric_tokens_need_a_known_key_and_the_secret_is_optional() {
        let verifier = Verifier::new(None, ClaimRules::default());
        let token = mint(b"secret", &claims()).unwrap();
        assert!(Verifier::hs256(b"secret").verify(&token, 1_000).is_ok());
        assert_eq!(
            verifier.verify(&token, 1_000),
            Err(TokenError::UnsupportedAlgorithm)
        );
        // An RS256 header with no key set configured.
        let header = b64(&json!({"alg": "RS256", "kid": "k1"}));
        let body = b64(&serde_json::to_value(claims()).unwrap());
        assert!(!verifier.take_unknown_key_seen());
        assert_eq!(
            verifier.verify(&format!("{header}.{body}.c2ln"), 1_000),
            Err(TokenError::UnknownKey)
        );
        assert!(verifier.take_unknown_key_seen());
        assert!(!verifier.take_unknown_key_seen());
        // A symmetric key in a key set is never used.
        let set: JwkSet = serde_json::from_value(json!({"keys": [
            {"kty": "oct", "kid": "k1", "alg": "HS256", "k": URL_SAFE_NO_PAD.encode(b"secret")}
        ]}))
        .unwrap();
        assert_eq!(verifier.set_keys(&set), 0);
    }

    #[test]
    fn rs256_and_es256_from_a_key_set() {
        let set: JwkSet =
            serde_json::from_str(include_str!("../../tests/fixtures/jwt/jwks.json")).unwrap();
        let verifier = Verifier::new(None, ClaimRules::default());
        assert_eq!(verifier.set_keys(&set), 2);
        let keys = [
            (
                Algorithm::ES256,
                "test-es256",
                EncodingKey::from_ec_der(include_bytes!("../../tests/fixtures/jwt/es256.pk8.der")),
            ),
            (
                Algorithm::RS256,
                "test-rs256",
                EncodingKey::from_rsa_der(include_bytes!("../../tests/fixtures/jwt/rs256.pk1.der")),
            ),
        ];
        for (alg, kid, key) in keys {
            let sign = |kid: Option<&str>| {
                let mut header = Header::new(alg);
                header.kid = kid.map(str::to_owned);
                jsonwebtoken::encode(&header, &claims(), &key).unwrap()
            };
            assert_eq!(verifier.verify(&sign(Some(kid)), 1_000).unwrap(), claims());
            // Without a kid, the key that fits the algorithm.
            assert_eq!(verifier.verify(&sign(None), 1_000).unwrap(), claims());
            assert_eq!(
                verifier.verify(&sign(Some("rotated-away")), 1_000),
                Err(TokenError::UnknownKey)
            );
            // The payload changed under the signature.
            let token = sign(Some(kid));
            let parts: Vec<&str> = token.split('.').collect();
            let mut forged = claims();
            forged.role = Role::Dispatcher;
            let body = b64(&serde_json::to_value(&forged).unwrap());
            assert_eq!(
                verifier.verify(&format!("{}.{body}.{}", parts[0], parts[2]), 1_000),
                Err(TokenError::BadSignature)
            );
        }
    }
}
