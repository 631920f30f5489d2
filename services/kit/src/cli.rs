//! Command-line options shared by every service (NATS, subject prefix, H3 resolutions, how
//! tokens are checked) and their checks, made before any port is bound.

use protocol::geo::GeoConfig;
use protocol::subjects::Subjects;

/// Where the bus is and how subjects are partitioned.
#[derive(Debug, Clone, clap::Args)]
pub struct BusArgs {
    /// NATS server URL(s), comma-separated.
    #[arg(long = topology::shared::NATS_URL.flag, env = topology::shared::NATS_URL.env, default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// Prefix of every subject, so deployments can share a NATS server.
    #[arg(long = topology::shared::SUBJECT_PREFIX.flag, env = topology::shared::SUBJECT_PREFIX.env, default_value = "dispatch")]
    pub subject_prefix: String,
    /// H3 resolution of regions (what a matcher serves).
    #[arg(long, env = "REGION_RESOLUTION", default_value_t = 5)]
    pub region_resolution: u8,
    /// H3 resolution of cells (what a location subject and a dashboard viewport name).
    #[arg(long, env = "CELL_RESOLUTION", default_value_t = 7)]
    pub cell_resolution: u8,
}

impl BusArgs {
    /// Checks the options; call before binding anything.
    pub fn validate(&self) -> anyhow::Result<(Subjects, GeoConfig)> {
        let subjects = Subjects::new(&self.subject_prefix)?;
        let geo = GeoConfig::new(self.region_resolution, self.cell_resolution)?;
        Ok((subjects, geo))
    }
}

/// How client tokens are checked: a shared secret (HS256), an identity provider's key set, or
/// both.
#[derive(Debug, Clone, clap::Args)]
pub struct TokenArgs {
    /// Secret that signs client tokens (HS256), at least 16 bytes. Optional when AUTH_JWKS is
    /// set.
    #[arg(long = topology::shared::TOKEN_SECRET.flag, env = topology::shared::TOKEN_SECRET.env, hide_env_values = true)]
    pub token_secret: Option<String>,
    /// An identity provider's JSON Web Key Set: a file, or an http(s) URL fetched at startup
    /// and every AUTH_JWKS_REFRESH_S. RS256, ES256 and the other RSA and EC algorithms.
    #[arg(long, env = "AUTH_JWKS")]
    pub jwks: Option<String>,
    /// Seconds between fetches of an AUTH_JWKS URL.
    #[arg(long, env = "AUTH_JWKS_REFRESH_S", default_value_t = 300)]
    pub jwks_refresh_s: u64,
    /// When set, tokens must carry this `iss`.
    #[arg(long, env = "AUTH_ISSUER")]
    pub issuer: Option<String>,
    /// When set, tokens' `aud` must hold this.
    #[arg(long, env = "AUTH_AUDIENCE")]
    pub audience: Option<String>,
    /// The claim holding the role (driver, rider or dispatcher); a dotted path such as
    /// `realm_access.roles` reaches into objects, and an array may hold the role.
    #[arg(long, env = "AUTH_ROLE_CLAIM", default_value = "role")]
    pub role_claim: String,
    /// The claim holding the driver's, rider's or dispatcher's id (a dotted path).
    #[arg(long, env = "AUTH_SUBJECT_CLAIM", default_value = "sub")]
    pub subject_claim: String,
    /// Allowance for clock differences on `exp` and `nbf`, seconds.
    #[arg(long, env = "AUTH_LEEWAY_S", default_value_t = 30)]
    pub leeway_s: u32,
}

/// Shortest token secret accepted, bytes.
pub const MIN_TOKEN_SECRET: usize = 16;

/// Checked token settings.
#[derive(Debug, Clone)]
pub struct TokenSettings {
    /// The shared secret, for minting development tokens.
    pub secret: Option<Vec<u8>>,
    pub verifier: protocol::token::Verifier,
    /// A key set URL the service must keep fetching ([`crate::auth::follow_keys`]).
    pub follow: Option<(url::Url, std::time::Duration)>,
}

impl TokenArgs {
    /// Only a secret, with the other options at their defaults.
    pub fn with_secret(secret: &str) -> Self {
        Self {
            token_secret: Some(secret.into()),
            jwks: None,
            jwks_refresh_s: 300,
            issuer: None,
            audience: None,
            role_claim: "role".into(),
            subject_claim: "sub".into(),
            leeway_s: 30,
        }
    }

    /// The secret's bytes, if it is set and long enough.
    pub fn secret(&self) -> anyhow::Result<Vec<u8>> {
        let Some(secret) = &self.token_secret else {
            anyhow::bail!("TOKEN_SECRET is not set");
        };
        anyhow::ensure!(
            secret.len() >= MIN_TOKEN_SECRET,
            "TOKEN_SECRET must be at least {MIN_TOKEN_SECRET} bytes"
        );
        Ok(secret.as_bytes().to_vec())
    }

    /// Checks the options and loads a key set file.
    pub fn validate(&self) -> anyhow::Result<TokenSettings> {
        anyhow::ensure!(
            self.token_secret.is_some() || self.jwks.is_some(),
            "set TOKEN_SECRET, AUTH_JWKS or both"
        );
        let secret = self
            .token_secret
            .as_ref()
            .map(|_| self.secret())
            .transpose()?;
        anyhow::ensure!(
            self.jwks_refresh_s >= 1,
            "AUTH_JWKS_REFRESH_S must be at least 1"
        );
        for (name, claim) in [
            ("AUTH_ROLE_CLAIM", &self.role_claim),
            ("AUTH_SUBJECT_CLAIM", &self.subject_claim),
        ] {
            anyhow::ensure!(
                !claim.is_empty() && claim.split('.').all(|part| !part.is_empty()),
                "{name} must be a claim name or a dotted path"
            );
        }
        let rules = protocol::token::ClaimRules {
            role_claim: self.role_claim.clone(),
            subject_claim: self.subject_claim.clone(),
            issuer: self.issuer.clone(),
            audience: self.audience.clone(),
            leeway_s: self.leeway_s.into(),
        };
        let source = self
            .jwks
            .as_deref()
            .map(crate::auth::KeySource::parse)
            .transpose()?;
        let verifier = crate::auth::verifier(secret.as_deref(), rules, source.as_ref())?;
        let follow = match source {
            Some(crate::auth::KeySource::Url(url)) => {
                Some((url, std::time::Duration::from_secs(self.jwks_refresh_s)))
            }
            _ => None,
        };
        Ok(TokenSettings {
            secret,
            verifier,
            follow,
        })
    }
}

/// The checked configuration, or: log why it is not valid and exit with
/// [`crate::EXIT_BAD_CONFIG`] (before any port is bound).
pub fn or_exit<T>(checked: anyhow::Result<T>) -> T {
    match checked {
        Ok(value) => value,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "invalid configuration");
            std::process::exit(crate::EXIT_BAD_CONFIG);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_secret_needs_sixteen_bytes() {
        assert!(
            TokenArgs::with_secret("0123456789abcde")
                .validate()
                .is_err()
        );
        let settings = TokenArgs::with_secret("0123456789abcdef")
            .validate()
            .unwrap();
        assert_eq!(settings.secret.as_deref(), Some(&b"0123456789abcdef"[..]));
        assert!(settings.follow.is_none());
    }

    #[test]
    fn a_secret_or_a_key_set_and_sane_claim_paths() {
        let mut args = TokenArgs::with_secret("0123456789abcdef");
        args.token_secret = None;
        assert!(args.validate().is_err());
        args.jwks = Some("https://id.example/jwks.json".into());
        let settings = args.validate().unwrap();
        assert!(settings.secret.is_none());
        assert_eq!(
            settings
                .follow
                .map(|(url, every)| (url.to_string(), every.as_secs())),
            Some(("https://id.example/jwks.json".into(), 300))
        );
        for claim in ["", "a..b", ".role"] {
            args.role_claim = claim.into();
            assert!(args.validate().is_err(), "{claim:?}");
        }
    }
}
