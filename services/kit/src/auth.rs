//! How services check client tokens: the shared secret (HS256) and an identity provider's key
//! set (JWKS), from a file read at startup or a URL fetched at startup and again every few
//! minutes, so a provider's key rotation reaches every gateway and trips replica.

use std::time::Duration;

use anyhow::Context;
use jsonwebtoken::jwk::JwkSet;
use protocol::token::{ClaimRules, Verifier};
use tokio_util::sync::CancellationToken;

/// Where the key set comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    File(std::path::PathBuf),
    Url(url::Url),
}

impl KeySource {
    /// A path, or an `http`/`https` URL.
    pub fn parse(value: &str) -> anyhow::Result<Self> {
        if value.starts_with("http://") || value.starts_with("https://") {
            return Ok(Self::Url(
                value.parse().context("AUTH_JWKS is not a valid URL")?,
            ));
        }
        Ok(Self::File(value.into()))
    }
}

/// Reads a key set from JSON, refusing one with no key this system can use.
fn parse_set(json: &[u8], verifier: &Verifier) -> anyhow::Result<usize> {
    let set: JwkSet = serde_json::from_slice(json).context("not a JSON Web Key Set")?;
    let kept = verifier.set_keys(&set);
    anyhow::ensure!(
        kept > 0,
        "the key set holds no RSA or EC signing key ({} keys)",
        set.keys.len()
    );
    Ok(kept)
}

/// The verifier, with a file's key set loaded; a URL's is loaded by [`follow_keys`].
pub fn verifier(
    secret: Option<&[u8]>,
    rules: ClaimRules,
    source: Option<&KeySource>,
) -> anyhow::Result<Verifier> {
    let verifier = Verifier::new(secret, rules);
    if let Some(KeySource::File(path)) = source {
        let json = std::fs::read(path)
            .with_context(|| format!("reading the key set {}", path.display()))?;
        parse_set(&json, &verifier).with_context(|| format!("key set {}", path.display()))?;
    }
    Ok(verifier)
}

/// Largest key set accepted from a URL.
const MAX_SET_BYTES: usize = 1024 * 1024;

async fn fetch(
    client: &reqwest::Client,
    url: &url::Url,
    verifier: &Verifier,
) -> anyhow::Result<usize> {
    let response = client.get(url.clone()).send().await?.error_for_status()?;
    anyhow::ensure!(
        response.content_length().unwrap_or(0) <= MAX_SET_BYTES as u64,
        "the key set is too large"
    );
    let body = response.bytes().await?;
    anyhow::ensure!(body.len() <= MAX_SET_BYTES, "the key set is too large");
    parse_set(&body, verifier)
}

/// The metrics a service reports its key set under: the number of keys, and failed fetches.
#[derive(Debug, Clone, Copy)]
pub struct KeyMeters {
    pub keys: &'static str,
    pub failures: &'static str,
}

/// Soonest a token naming an unknown key makes the set be fetched again: often enough to pick
/// up a rotation at once, never so often that made-up key ids hammer the provider.
pub const REFETCH_ON_UNKNOWN_KEY: Duration = Duration::from_secs(30);

/// Keeps a URL's key set loaded until `stop`: fetched now, then every `every`, retried every
/// few seconds while it fails, and fetched early (at most every
/// [`REFETCH_ON_UNKNOWN_KEY`]) when a token named a key the set does not hold. A failed fetch
/// keeps the keys already loaded.
pub async fn follow_keys(
    verifier: Verifier,
    url: url::Url,
    every: Duration,
    meters: KeyMeters,
    stop: CancellationToken,
) {
    follow_keys_checking(verifier, url, every, REFETCH_ON_UNKNOWN_KEY, meters, stop).await
}

/// [`follow_keys`], with the least time between fetches for unknown keys given.
pub async fn follow_keys_checking(
    verifier: Verifier,
    url: url::Url,
    every: Duration,
    unknown_key_gap: Duration,
    meters: KeyMeters,
    stop: CancellationToken,
) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("an HTTP client without custom TLS builds");
    loop {
        let fetched_at = tokio::time::Instant::now();
        let wait = match fetch(&client, &url, &verifier).await {
            Ok(kept) => {
                tracing::debug!(%url, keys = kept, "key set loaded");
                metrics::gauge!(meters.keys).set(kept as f64);
                every
            }
            Err(error) => {
                tracing::warn!(%url, error = format!("{error:#}"), "cannot load the key set");
                metrics::counter!(meters.failures).increment(1);
                Duration::from_secs(5).min(every)
            }
        };
        // Wait out `wait`, looking every half second for tokens that named an unknown key.
        let due = fetched_at + wait;
        let early = fetched_at + unknown_key_gap;
        verifier.take_unknown_key_seen();
        loop {
            let now = tokio::time::Instant::now();
            if now >= due || (now >= early && verifier.take_unknown_key_seen()) {
                break;
            }
            let next = (now + Duration::from_millis(500)).min(due);
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep_until(next) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use protocol::token::TokenError;

    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/jwt");

    /// A provider whose key set can change, counting the fetches.
    async fn provider(set: Arc<Mutex<String>>, fetches: Arc<AtomicUsize>) -> url::Url {
        let app = axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                fetches.fetch_add(1, Ordering::SeqCst);
                let body = set.lock().unwrap().clone();
                async move { body }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}/jwks.json").parse().unwrap()
    }

    #[tokio::test]
    async fn a_rotated_key_is_fetched_once_a_token_names_it() {
        let full: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(format!("{FIXTURES}/jwks.json")).unwrap(),
        )
        .unwrap();
        let mut old = full.clone();
        old["keys"].as_array_mut().unwrap().truncate(1);
        let set = Arc::new(Mutex::new(old.to_string()));
        let fetches = Arc::new(AtomicUsize::new(0));
        let url = provider(set.clone(), fetches.clone()).await;
        let verifier = Verifier::new(None, ClaimRules::default());
        let stop = CancellationToken::new();
        tokio::spawn(follow_keys_checking(
            verifier.clone(),
            url,
            Duration::from_secs(3600),
            Duration::from_millis(200),
            KeyMeters {
                keys: "test_jwks_keys",
                failures: "test_jwks_failures_total",
            },
            stop.clone(),
        ));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while verifier.key_count() != 1 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the set was not fetched"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The provider rotates in its RSA key and signs with it.
        *set.lock().unwrap() = full.to_string();
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("test-rs256".into());
        let claims = serde_json::json!({"role": "driver", "sub": "d1", "exp": 4_000_000_000_i64});
        let der = std::fs::read(format!("{FIXTURES}/rs256.pk1.der")).unwrap();
        let token =
            jsonwebtoken::encode(&header, &claims, &EncodingKey::from_rsa_der(&der)).unwrap();
        assert_eq!(
            verifier.verify(&token, 1_000).unwrap_err(),
            TokenError::UnknownKey
        );
        while verifier.verify(&token, 1_000).is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the rotated key never arrived"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
        stop.cancel();
    }

    #[test]
    fn sources_and_files() {
        assert_eq!(
            KeySource::parse("/etc/dispatch/jwks.json").unwrap(),
            KeySource::File("/etc/dispatch/jwks.json".into())
        );
        assert!(matches!(
            KeySource::parse("https://id.example/.well-known/jwks.json").unwrap(),
            KeySource::Url(_)
        ));
        assert!(KeySource::parse("https://").is_err());
        let fixture = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/jwt/jwks.json"
        );
        let source = KeySource::parse(fixture).unwrap();
        let verifier = verifier(None, ClaimRules::default(), Some(&source)).unwrap();
        assert_eq!(verifier.key_count(), 2);
        let missing = KeySource::File("/nonexistent/jwks.json".into());
        assert!(super::verifier(None, ClaimRules::default(), Some(&missing)).is_err());
        let empty = std::env::temp_dir().join(format!("jwks-empty-{}.json", std::process::id()));
        std::fs::write(&empty, br#"{"keys": []}"#).unwrap();
        let error = super::verifier(
            None,
            ClaimRules::default(),
            Some(&KeySource::File(empty.clone())),
        )
        .unwrap_err();
        assert!(
            format!("{error:#}").contains("no RSA or EC signing key"),
            "{error:#}"
        );
        std::fs::remove_file(empty).unwrap();
    }
}
