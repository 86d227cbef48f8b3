use sqlx::error::ErrorKind;

/// What can go wrong in the store, in terms its callers act on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    /// A unique constraint refused the write; `constraint` names it.
    #[error("conflicts with an existing row ({constraint})")]
    Conflict { constraint: String },
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// An event snapshot could not be encoded (a bug, not a condition of the database).
    #[error("could not encode an event: {0}")]
    Encode(String),
    #[error("migration error: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
}

impl StoreError {
    /// Classifies a write's error: unique violations become `Conflict`.
    pub(crate) fn from_write(error: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &error {
            if db.kind() == ErrorKind::UniqueViolation {
                return StoreError::Conflict {
                    constraint: db.constraint().unwrap_or("unknown").to_string(),
                };
            }
        }
        StoreError::Database(error)
    }

    /// The database could not be reached (pool exhausted or closed, connection lost): a
    /// condition to retry, not a bug.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            StoreError::Database(
                sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed
            )
        )
    }

    pub fn is_conflict_on(&self, name: &str) -> bool {
        matches!(self, StoreError::Conflict { constraint } if constraint == name)
    }
}
