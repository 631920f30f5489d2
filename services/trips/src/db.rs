//! Connections to PostgreSQL: the pool commands run on, and the versioned migrations.

use std::time::Duration;

use anyhow::Context;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// An arbitrary key under which migrations run one process at a time.
const MIGRATION_LOCK: i64 = 0x7269_6465_735f_6d67;

/// Applies every pending migration to the database at `url`, one process at a time.
pub async fn migrate(url: &str) -> anyhow::Result<()> {
    migrate_to(url, None).await
}

/// Applies pending migrations up to and including `version` (all when `None`), one process at
/// a time; upgrade tests start from an older schema with it.
pub async fn migrate_to(url: &str, version: Option<i32>) -> anyhow::Result<()> {
    let (mut client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .context("connecting to PostgreSQL for migrations")?;
    let connection = tokio::spawn(connection);
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let mut runner = embedded::migrations::runner();
    if let Some(version) = version {
        runner = runner.set_target(refinery::Target::Version(version));
    }
    let report = runner
        .run_async(&mut client)
        .await
        .context("applying migrations");
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await?;
    let report = report?;
    for migration in report.applied_migrations() {
        tracing::info!(
            version = migration.version(),
            name = migration.name(),
            "applied migration"
        );
    }
    drop(client);
    let _ = connection.await;
    Ok(())
}

/// Pool settings.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub max_size: usize,
    /// How long a command waits for a connection (or to open one) before failing.
    pub acquire_timeout: Duration,
    /// Server-side limit on any one statement.
    pub statement_timeout: Duration,
    /// How long a connection may go unanswered by its server (data sent and not acknowledged,
    /// or keepalives unanswered while idle) before it is closed. A server that vanished
    /// without closing its connections (its host died or was cut off) would otherwise hold
    /// them, and the commands on them, for the kernel's retransmission timeout of about 15
    /// minutes; closed, they leave the pool and new ones go to the node that is read-write
    /// now.
    pub dead_peer_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            max_size: 16,
            acquire_timeout: Duration::from_secs(2),
            statement_timeout: Duration::from_secs(5),
            dead_peer_timeout: Duration::from_secs(5),
        }
    }
}

/// Builds the pool; connections open lazily, so this succeeds while the database is down.
pub fn pool(url: &str, settings: &PoolSettings) -> anyhow::Result<Pool> {
    let mut config: tokio_postgres::Config = url.parse().context("parsing the database URL")?;
    config
        .connect_timeout(settings.acquire_timeout)
        .application_name("dispatch-trips")
        .tcp_user_timeout(settings.dead_peer_timeout)
        .keepalives(true)
        .keepalives_idle(settings.dead_peer_timeout / 2)
        .keepalives_interval(settings.dead_peer_timeout / 5)
        .keepalives_retries(3)
        .options(format!(
            "-c statement_timeout={}",
            settings.statement_timeout.as_millis()
        ));
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Ok(Pool::builder(manager)
        .max_size(settings.max_size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(settings.acquire_timeout))
        .create_timeout(Some(settings.acquire_timeout))
        .recycle_timeout(Some(settings.acquire_timeout))
        .build()?)
}
