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

/// Keeps a URL's key set loaded until `stop`: fetched now, then every `every`, retried every
/// few seconds while it fails. A failed fetch keeps the keys already loaded.
pub async fn follow_keys(
    verifier: Verifier,
    url: url::Url,
    every: Duration,
    stop: CancellationToken,
) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("an HTTP client without custom TLS builds");
    loop {
        let wait = match fetch(&client, &url, &verifier).await {
            Ok(kept) => {
                tracing::debug!(%url, keys = kept, "key set loaded");
                metrics::gauge!("auth_jwks_keys").set(kept as f64);
                every
            }
            Err(error) => {
                tracing::warn!(%url, error = format!("{error:#}"), "cannot load the key set");
                metrics::counter!("auth_jwks_failures_total").increment(1);
                Duration::from_secs(5).min(every)
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
