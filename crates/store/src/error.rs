use sqlx::error::ErrorKind;

/// What can go wrong in the store, in terms its callers act on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    /// A unique constraint refused the write; `constraint` names it.
    #[error("conflicts with an existing row ({constraint})")]
    Conflict { constraint: String },
    /// A row holds a value the code does not know (the schema and the code disagree, or the
    /// row was written by hand): reading it fails rather than guessing.
    #[error("corrupt row: {table}.{column} holds unknown value {value:?}")]
    CorruptRow {
        table: &'static str,
        column: &'static str,
        value: String,
    },
    /// The tenant already has `limit` of what it asked to create.
    #[error("the tenant's limit of {limit} is reached")]
    QuotaReached { limit: u32 },
    #[error("database error: {0}")]
    Database(sqlx::Error),
    /// An event snapshot could not be encoded (a bug, not a condition of the database).
    #[error("could not encode an event: {0}")]
    Encode(String),
    #[error("migration error: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
}

/// An unknown value met while decoding a column; surfaces as [`StoreError::CorruptRow`].
#[derive(Debug, thiserror::Error)]
#[error("{table}.{column} holds unknown value {value:?}")]
pub(crate) struct CorruptValue {
    pub table: &'static str,
    pub column: &'static str,
    pub value: String,
}

impl From<CorruptValue> for StoreError {
    fn from(corrupt: CorruptValue) -> Self {
        StoreError::CorruptRow {
            table: corrupt.table,
            column: corrupt.column,
            value: corrupt.value,
        }
    }
}

impl From<sqlx::Error> for StoreError {
    /// A column that failed to decode because of an unknown value is a corrupt row; anything
    /// else is the database's.
    fn from(error: sqlx::Error) -> Self {
        if let sqlx::Error::ColumnDecode { source, .. } = &error {
            if let Some(corrupt) = source.downcast_ref::<CorruptValue>() {
                return StoreError::CorruptRow {
                    table: corrupt.table,
                    column: corrupt.column,
                    value: corrupt.value.clone(),
                };
            }
        }
        StoreError::Database(error)
    }
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
        StoreError::from(error)
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
