//! Command-line options shared by every service (NATS, subject prefix, H3 resolutions, the
//! token secret) and their checks, made before any port is bound.

use protocol::geo::GeoConfig;
use protocol::subjects::Subjects;

/// Where the bus is and how subjects are partitioned.
#[derive(Debug, Clone, clap::Args)]
pub struct BusArgs {
    /// NATS server URL(s), comma-separated.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// Prefix of every subject, so deployments can share a NATS server.
    #[arg(long, env = "SUBJECT_PREFIX", default_value = "dispatch")]
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

/// The secret that signs client tokens.
#[derive(Debug, Clone, clap::Args)]
pub struct TokenArgs {
    /// Secret that signs client tokens, at least 16 bytes.
    #[arg(long, env = "TOKEN_SECRET", hide_env_values = true)]
    pub token_secret: String,
}

/// Shortest token secret accepted, bytes.
pub const MIN_TOKEN_SECRET: usize = 16;

impl TokenArgs {
    /// The secret's bytes, if it is long enough.
    pub fn validate(&self) -> anyhow::Result<Vec<u8>> {
        anyhow::ensure!(
            self.token_secret.len() >= MIN_TOKEN_SECRET,
            "TOKEN_SECRET must be at least {MIN_TOKEN_SECRET} bytes"
        );
        Ok(self.token_secret.as_bytes().to_vec())
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
        let args = |s: &str| TokenArgs {
            token_secret: s.into(),
        };
        assert!(args("0123456789abcde").validate().is_err());
        assert_eq!(
            args("0123456789abcdef").validate().unwrap(),
            b"0123456789abcdef"
        );
    }
}
