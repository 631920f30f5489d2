//! Why a command or query failed inside the service, and what its caller is told.

use deadpool_postgres::PoolError;
use protocol::ErrorCode;
use protocol::bus::CommandError;
use tokio_postgres::error::SqlState;

/// Why a command failed inside the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error("database: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("database pool: {0}")]
    Pool(#[from] PoolError),
}

impl StoreError {
    /// What the caller is told.
    pub fn into_command_error(self) -> CommandError {
        match self {
            Self::Command(err) => err,
            Self::Db(err) => {
                if let Some(db) = err.as_db_error() {
                    if *db.code() == SqlState::UNIQUE_VIOLATION
                        && db.constraint() == Some("trips_one_active_trip_per_driver")
                    {
                        return CommandError::new(
                            ErrorCode::Conflict,
                            "driver already holds another trip",
                        );
                    }
                    if *db.code() == SqlState::QUERY_CANCELED
                        || db.code().code().starts_with("08")
                        || db.code().code().starts_with("57")
                    {
                        return CommandError::new(ErrorCode::Unavailable, "database unavailable");
                    }
                    tracing::error!(error = %err, "database error");
                    return CommandError::new(ErrorCode::Internal, "internal error");
                }
                CommandError::new(ErrorCode::Unavailable, "database unavailable")
            }
            Self::Pool(_) => CommandError::new(ErrorCode::Unavailable, "database unavailable"),
        }
    }
}

/// A failure of the command itself (not of the database), told to the caller as it is.
pub(crate) fn err(code: ErrorCode, message: &str) -> StoreError {
    StoreError::Command(CommandError::new(code, message))
}
