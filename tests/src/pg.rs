//! A fresh PostgreSQL database per test, migrated, dropped afterwards.

use tokio_postgres::NoTls;

/// The server tests create their databases on.
pub fn admin_url() -> String {
    std::env::var("DISPATCH_TEST_DATABASE_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{name}", &base[..host_end]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

async fn admin() -> tokio_postgres::Client {
    let url = admin_url();
    let (client, connection) = tokio_postgres::connect(&url, NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "PostgreSQL at {url} is not reachable ({e}); set DISPATCH_TEST_DATABASE_URL or run \
             the suite with `cargo xtask test`, which starts one"
            )
        });
    tokio::spawn(connection);
    client
}

/// A database of its own for one test.
#[derive(Debug)]
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    /// Creates an empty database and applies the trips service's migrations.
    pub async fn create() -> Self {
        Self::create_at(None).await
    }

    /// Creates an empty database and applies the trips service's migrations up to `version`
    /// (all when `None`).
    pub async fn create_at(version: Option<i32>) -> Self {
        let name = format!("test_{}", uuid::Uuid::new_v4().simple());
        admin()
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("creating a test database");
        let db = Self {
            url: with_database(&admin_url(), &name),
            name,
        };
        trips::db::migrate_to(&db.url, version)
            .await
            .expect("migrating the test database");
        db
    }

    /// Waits (up to 15 s) until some session of this database waits for a lock: a statement
    /// of the code under test queued behind a transaction the test holds open.
    pub async fn until_a_session_waits_for_a_lock(&self) {
        let watcher = self.client().await;
        crate::eventually(
            "a statement waiting for a lock",
            std::time::Duration::from_secs(15),
            || async {
                let waiting: i64 = watcher
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity \
                         WHERE datname = current_database() AND wait_event_type = 'Lock'",
                        &[],
                    )
                    .await
                    .expect("reading pg_stat_activity")
                    .get(0);
                (waiting > 0).then_some(())
            },
        )
        .await;
    }

    /// A client connected to this database.
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url, NoTls)
            .await
            .expect("connecting to the test database");
        tokio::spawn(connection);
        client
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside any runtime guarantee: use a thread with its own runtime.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("building a runtime");
            runtime.block_on(async {
                if let Ok((client, connection)) = tokio_postgres::connect(&admin_url(), NoTls).await
                {
                    tokio::spawn(connection);
                    let _ = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn database_urls() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(with_database("postgres://h", "x"), "postgres://h/x");
        assert_eq!(
            with_database("postgres://u@h/db?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
    }
}
