//! Command-line options shared by every service: NATS, subject prefix, H3 resolutions.

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
