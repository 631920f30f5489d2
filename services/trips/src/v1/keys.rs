//! API keys for integrators' servers: `dk_{key_id}_{secret}`, created and revoked by a
//! dispatcher, stored as the SHA-256 of the secret (shown once, at creation), each with scopes
//! and its own request rate on each replica.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use deadpool_postgres::Pool;
use kit::ratelimit::TokenBucket;
use protocol::ErrorCode;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use utoipa::ToSchema;

use super::{Principal, Problem, V1State};

/// What an API key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum Scope {
    /// Create jobs, and read, list and cancel the jobs this key created.
    #[serde(rename = "jobs:write")]
    JobsWrite,
    /// Read and list every trip and every job.
    #[serde(rename = "trips:read")]
    TripsRead,
    /// List drivers and read their trip history.
    #[serde(rename = "drivers:read")]
    DriversRead,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Self::JobsWrite, Self::TripsRead, Self::DriversRead];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::JobsWrite => "jobs:write",
            Self::TripsRead => "trips:read",
            Self::DriversRead => "drivers:read",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|scope| scope.as_str() == s)
    }
}

/// Each key's request rate, on each replica.
#[derive(Debug, Clone, Copy)]
pub struct KeyRate {
    pub per_second: u32,
    pub burst: u32,
}

impl Default for KeyRate {
    fn default() -> Self {
        Self {
            per_second: 100,
            burst: 200,
        }
    }
}

/// The key store, the keys checked lately, and each key's token bucket.
#[derive(Debug, Clone)]
pub struct ApiKeys {
    pool: Pool,
    rate: KeyRate,
    buckets: Arc<Mutex<HashMap<String, TokenBucket>>>,
    /// Keys read from the database within [`KEY_TTL`]: their secret's hash and scopes. A key
    /// revoked on another replica stops working here within that time; on this one, at once.
    checked: Arc<quick_cache::sync::Cache<String, CheckedKey>>,
}

/// How long a key read from the database is trusted without reading it again.
pub const KEY_TTL: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
struct CheckedKey {
    hash: Vec<u8>,
    scopes: Vec<Scope>,
    read_at: Instant,
}

const PREFIX: &str = "dk_";
/// Hexadecimal digits of a key id.
const KEY_ID_LEN: usize = 16;

/// Whether a bearer token is shaped like an API key (rather than a JWT).
pub fn is_api_key(token: &str) -> bool {
    token.starts_with(PREFIX)
}

fn hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// A new key id and secret.
fn generate() -> (String, String) {
    let mut rng = rand::rng();
    let mut id = [0u8; KEY_ID_LEN / 2];
    rng.fill_bytes(&mut id);
    let mut secret = [0u8; 32];
    rng.fill_bytes(&mut secret);
    let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
    (id, URL_SAFE_NO_PAD.encode(secret))
}

/// Splits `dk_{key_id}_{secret}`.
fn split(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_at_checked(KEY_ID_LEN)?;
    let secret = secret.strip_prefix('_')?;
    let valid_id = id.bytes().all(|b| b.is_ascii_hexdigit());
    (valid_id && !secret.is_empty() && secret.len() <= 64).then_some((id, secret))
}

impl ApiKeys {
    pub fn new(pool: Pool, rate: KeyRate) -> Self {
        Self {
            pool,
            rate,
            buckets: Default::default(),
            checked: Arc::new(quick_cache::sync::Cache::new(10_000)),
        }
    }

    /// The key's hash and scopes, from the last `KEY_TTL` or the database; `None` when there
    /// is no such key or it is revoked.
    async fn lookup(&self, key_id: &str) -> Result<Option<CheckedKey>, Problem> {
        if let Some(known) = self.checked.get(key_id)
            && known.read_at.elapsed() < KEY_TTL
        {
            return Ok(Some(known));
        }
        let client = self.pool.get().await?;
        let statement = client
            .prepare_cached(
                "SELECT secret_hash, scopes FROM api_keys \
                 WHERE key_id = $1 AND revoked_at IS NULL",
            )
            .await?;
        let Some(row) = client.query_opt(&statement, &[&key_id]).await? else {
            self.checked.remove(key_id);
            return Ok(None);
        };
        let scopes: Vec<String> = row.get(1);
        let known = CheckedKey {
            hash: row.get(0),
            scopes: scopes.iter().filter_map(|s| Scope::parse(s)).collect(),
            read_at: Instant::now(),
        };
        self.checked.insert(key_id.to_owned(), known.clone());
        Ok(Some(known))
    }

    /// Forgets a key at once (it was just revoked here).
    pub fn forget(&self, key_id: &str) {
        self.checked.remove(key_id);
    }

    /// The principal a key stands for, once its secret matched and its rate allows.
    pub async fn authenticate(&self, token: &str) -> Result<Principal, Problem> {
        let refused = || Problem::new(ErrorCode::Unauthorized, "unknown or revoked API key");
        let (key_id, secret) = split(token).ok_or_else(refused)?;
        let known = self.lookup(key_id).await?.ok_or_else(refused)?;
        if !bool::from(known.hash.ct_eq(&hash(secret))) {
            return Err(refused());
        }
        self.take(key_id)?;
        Ok(Principal::Key {
            key_id: key_id.to_owned(),
            scopes: known.scopes,
        })
    }

    /// Takes one request from the key's bucket.
    fn take(&self, key_id: &str) -> Result<(), Problem> {
        let mut buckets = self.buckets.lock().expect("bucket lock");
        let bucket = buckets
            .entry(key_id.to_owned())
            .or_insert_with(|| TokenBucket::new(self.rate.per_second, self.rate.burst));
        if bucket.allow() {
            return Ok(());
        }
        metrics::counter!(crate::meters::API_RATE_LIMITED).increment(1);
        let mut problem = Problem::new(
            ErrorCode::RateLimited,
            format!(
                "this API key is limited to {} requests a second",
                self.rate.per_second
            ),
        );
        problem.retry_after_s = Some(bucket.retry_after_s());
        Err(problem)
    }
}

/// A key to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewApiKey {
    /// What the key is for, shown to dispatchers (1 to 200 characters).
    #[schema(min_length = 1, max_length = 200, pattern = "^[^\\u0000]*$")]
    pub name: String,
    /// At least one scope.
    #[schema(min_items = 1)]
    pub scopes: Vec<Scope>,
}

/// A key as listed: never its secret.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ApiKey {
    pub key_id: String,
    pub name: String,
    pub scopes: Vec<Scope>,
    /// The dispatcher who created it.
    pub created_by: String,
    /// Milliseconds since the epoch.
    pub created_at: i64,
    /// When it was revoked, if it was.
    pub revoked_at: Option<i64>,
}

/// A key just created, with the token to use: shown this once.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CreatedApiKey {
    #[serde(flatten)]
    pub key: ApiKey,
    /// `dk_{key_id}_{secret}`, sent as `Authorization: Bearer ...`. Not retrievable later.
    pub token: String,
}

/// Stores a new key; its token is returned once. Used by the API and the command line.
pub async fn insert(
    pool: &Pool,
    name: &str,
    scopes: &[Scope],
    created_by: &str,
) -> Result<CreatedApiKey, Problem> {
    if name.is_empty() {
        return Err(Problem::invalid("name must not be empty"));
    }
    super::jobs::check_text("name", &Some(name.to_owned()), 200)?;
    if scopes.is_empty() {
        return Err(Problem::invalid("a key needs at least one scope"));
    }
    let mut scopes = scopes.to_vec();
    scopes.sort_by_key(|s| s.as_str());
    scopes.dedup();
    let (key_id, secret) = generate();
    let names: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
    let client = pool.get().await?;
    let created_at: i64 = client
        .query_one(
            "INSERT INTO api_keys (key_id, name, secret_hash, scopes, created_by) \
             VALUES ($1, $2, $3, $4, $5) \
             RETURNING (extract(epoch from created_at) * 1000)::int8",
            &[&key_id, &name, &hash(&secret), &names, &created_by],
        )
        .await?
        .get(0);
    Ok(CreatedApiKey {
        token: format!("{PREFIX}{key_id}_{secret}"),
        key: ApiKey {
            key_id,
            name: name.to_owned(),
            scopes,
            created_by: created_by.to_owned(),
            created_at,
            revoked_at: None,
        },
    })
}

/// Every key, newest first.
pub async fn all(pool: &Pool) -> Result<Vec<ApiKey>, Problem> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT key_id, name, scopes, created_by, \
               (extract(epoch from created_at) * 1000)::int8, \
               (extract(epoch from revoked_at) * 1000)::int8 \
             FROM api_keys ORDER BY created_at DESC, key_id LIMIT 10000",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let scopes: Vec<String> = r.get(2);
            ApiKey {
                key_id: r.get(0),
                name: r.get(1),
                scopes: scopes.iter().filter_map(|s| Scope::parse(s)).collect(),
                created_by: r.get(3),
                created_at: r.get(4),
                revoked_at: r.get(5),
            }
        })
        .collect())
}

/// What revoking a key found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    /// Revoked by this call.
    Now,
    /// Revoked before; it stays revoked as it was.
    Already,
    /// No key has this id.
    NoSuchKey,
}

/// Revokes a key. Revoking a revoked key changes nothing and is no error, so a retried or
/// repeated revocation answers as the first did.
pub async fn revoke_key(pool: &Pool, key_id: &str) -> Result<Revoked, Problem> {
    let client = pool.get().await?;
    let revoked = client
        .execute(
            "UPDATE api_keys SET revoked_at = now() WHERE key_id = $1 AND revoked_at IS NULL",
            &[&key_id],
        )
        .await?;
    if revoked == 1 {
        return Ok(Revoked::Now);
    }
    let exists = client
        .query_opt("SELECT 1 FROM api_keys WHERE key_id = $1", &[&key_id])
        .await?
        .is_some();
    Ok(if exists {
        Revoked::Already
    } else {
        Revoked::NoSuchKey
    })
}

/// Creates an API key (dispatchers only). The token in the answer is shown only this once.
#[utoipa::path(
    post, path = "/v1/api-keys", tag = "api-keys",
    request_body = NewApiKey,
    responses(
        (status = 201, description = "Created; the token is shown only now", body = CreatedApiKey),
        (status = 403, description = "Not a dispatcher"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn create(
    State(state): State<V1State>,
    Extension(principal): Extension<Principal>,
    body: Result<Json<NewApiKey>, JsonRejection>,
) -> Result<(StatusCode, Json<CreatedApiKey>), Problem> {
    principal.require_dispatcher()?;
    let Json(new) = body?;
    let created = insert(&state.pool, &new.name, &new.scopes, &principal.actor_id()).await?;
    tracing::info!(key_id = %created.key.key_id, by = %principal.actor_id(), "API key created");
    Ok((StatusCode::CREATED, Json(created)))
}

/// Lists every API key, revoked ones included (dispatchers only).
#[utoipa::path(
    get, path = "/v1/api-keys", tag = "api-keys",
    responses(
        (status = 200, description = "The keys, newest first", body = Vec<ApiKey>),
        (status = 403, description = "Not a dispatcher"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list(
    State(state): State<V1State>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<Vec<ApiKey>>, Problem> {
    principal.require_dispatcher()?;
    Ok(Json(all(&state.pool).await?))
}

/// Revokes an API key at once (dispatchers only).
#[utoipa::path(
    delete, path = "/v1/api-keys/{key_id}", tag = "api-keys",
    params(("key_id" = String, Path, description = "The key's id", pattern = "^[0-9a-f]{16}$")),
    responses(
        (status = 204, description = "Revoked, now or before (revoking again changes nothing)"),
        (status = 403, description = "Not a dispatcher"),
        (status = 404, description = "No such key"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn revoke(
    State(state): State<V1State>,
    Extension(principal): Extension<Principal>,
    Path(key_id): Path<String>,
) -> Result<StatusCode, Problem> {
    principal.require_dispatcher()?;
    if key_id.len() != KEY_ID_LEN
        || !key_id
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(Problem::invalid(
            "a key id is 16 lowercase hexadecimal digits",
        ));
    }
    if revoke_key(&state.pool, &key_id).await? == Revoked::NoSuchKey {
        return Err(Problem::not_found("API key"));
    }
    state.keys.forget(&key_id);
    tracing::info!(%key_id, by = %principal.actor_id(), "API key revoked");
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_split_and_hash() {
        let (id, secret) = generate();
        assert_eq!(id.len(), KEY_ID_LEN);
        let token = format!("{PREFIX}{id}_{secret}");
        assert!(is_api_key(&token));
        assert_eq!(split(&token), Some((id.as_str(), secret.as_str())));
        for bad in [
            "dk_",
            "dk_0123456789abcdef",
            "dk_0123456789abcdef_",
            "dk_0123456789abcdeg_secret",
            "dk_short_secret",
        ] {
            assert_eq!(split(bad), None, "{bad}");
        }
        assert_ne!(hash(&secret), hash("other"));
        assert_eq!(Scope::parse("jobs:write"), Some(Scope::JobsWrite));
        assert_eq!(Scope::parse("jobs:admin"), None);
    }
}
