use chrono::{DateTime, Utc};
use domain::{
    Avatar, AvatarChange, AvatarId, AvatarStatus, FaceCheck, PhotoFormat, PhotoId, PhotoSetRules,
    PhotoWarning, TenantId,
};
use sqlx::{Postgres, Transaction};

use crate::avatars::{avatar_exists, fetch_avatar, lock_avatar};
use crate::error::StoreError;
use crate::records::parse_column;
use crate::Store;

/// A photo as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct PhotoRecord {
    pub id: PhotoId,
    pub avatar_id: AvatarId,
    pub facts: PhotoFacts,
    pub blob_key: String,
    pub created_at: DateTime<Utc>,
}

/// What inspecting a photo found, stored with it.
#[derive(Debug, Clone, PartialEq)]
pub struct PhotoFacts {
    pub file_name: String,
    pub format: PhotoFormat,
    pub width: u32,
    pub height: u32,
    pub orientation: u8,
    pub bytes: u64,
    pub sha256: String,
    pub perceptual_hash: u64,
    pub warnings: Vec<PhotoWarning>,
    /// Faces found at upload; `None` for photos stored before faces were checked.
    pub faces: Option<FaceCheck>,
}

/// The outcome of reserving a place for a photo in an avatar's set.
#[derive(Debug, Clone, PartialEq)]
pub enum Reservation {
    /// A pending row exists; store the bytes under `blob_key`, then call `mark_photo_stored`.
    Reserved(Box<PhotoRecord>),
    AvatarNotFound,
    /// The avatar is training: its set is fixed until the training ends.
    AvatarBusy(AvatarStatus),
    /// The set already holds the maximum number of photos.
    LimitReached {
        max: u32,
    },
    /// The same bytes are already in the set.
    Duplicate {
        existing: PhotoId,
    },
}

/// Deleting a photo from a set.
#[derive(Debug, Clone, PartialEq)]
pub enum PhotoRemoval {
    Removed(Box<Avatar>),
    AvatarNotFound,
    PhotoNotFound,
    AvatarBusy(AvatarStatus),
}

#[derive(sqlx::FromRow)]
struct PhotoRow {
    id: uuid::Uuid,
    avatar_id: uuid::Uuid,
    file_name: String,
    format: String,
    width: i32,
    height: i32,
    orientation: i16,
    bytes: i64,
    sha256: String,
    perceptual_hash: i64,
    warnings: sqlx::types::Json<Vec<PhotoWarning>>,
    faces: Option<sqlx::types::Json<FaceCheck>>,
    blob_key: String,
    created_at: DateTime<Utc>,
}

const PHOTO_COLUMNS: &str = "id, avatar_id, file_name, format, width, height, orientation, bytes, \
     sha256, perceptual_hash, warnings, faces, blob_key, created_at";

impl TryFrom<PhotoRow> for PhotoRecord {
    type Error = StoreError;

    fn try_from(row: PhotoRow) -> Result<Self, StoreError> {
        let facts = PhotoFacts {
            format: parse_column("photos", "format", &row.format, PhotoFormat::parse)?,
            file_name: row.file_name,
            width: row.width as u32,
            height: row.height as u32,
            orientation: row.orientation as u8,
            bytes: row.bytes as u64,
            sha256: row.sha256,
            // Postgres has no unsigned 64-bit type: the hash's bits are kept in a bigint.
            perceptual_hash: row.perceptual_hash as u64,
            warnings: row.warnings.0,
            faces: row.faces.map(|f| f.0),
        };
        Ok(PhotoRecord {
            id: PhotoId(row.id),
            avatar_id: AvatarId(row.avatar_id),
            facts,
            blob_key: row.blob_key,
            created_at: row.created_at,
        })
    }
}

/// Where a photo's bytes live in the blob store.
pub fn photo_blob_key(tenant_id: TenantId, avatar_id: AvatarId, photo_id: PhotoId) -> String {
    format!("tenants/{tenant_id}/avatars/{avatar_id}/photos/{photo_id}")
}

/// Locks the tenant's avatar row so concurrent changes to its photo set are serialised.
async fn lock_tenant_avatar(
    tx: &mut Transaction<'_, Postgres>,
    tenant_id: TenantId,
    avatar_id: AvatarId,
) -> Result<Option<AvatarStatus>, StoreError> {
    Ok(lock_avatar(tx, tenant_id, avatar_id)
        .await?
        .map(|avatar| avatar.status))
}

/// Recounts the stored photos and gives the avatar (locked, in `status`) the status the domain
/// decides for the new count.
async fn refresh_photo_count(
    tx: &mut Transaction<'_, Postgres>,
    tenant_id: TenantId,
    avatar_id: AvatarId,
    status: AvatarStatus,
    rules: PhotoSetRules,
) -> Result<Avatar, StoreError> {
    let count: i64 =
        sqlx::query_scalar("SELECT count(*) FROM photos WHERE avatar_id = $1 AND state = 'stored'")
            .bind(avatar_id.0)
            .fetch_one(&mut **tx)
            .await?;
    let count = count as u32;
    let verdict = status.after(AvatarChange::PhotosChanged { count, rules });
    sqlx::query(
        "UPDATE avatars SET photo_count = $3, status = $4, updated_at = now()
         WHERE tenant_id = $1 AND id = $2",
    )
    .bind(tenant_id.0)
    .bind(avatar_id.0)
    .bind(count as i32)
    .bind(verdict.as_str())
    .execute(&mut **tx)
    .await?;
    fetch_avatar(tx, tenant_id, avatar_id).await
}

impl Store {
    /// Reserves a place for a photo: checks the avatar, the set's size and exact duplicates
    /// under the avatar's row lock, flags near-duplicates with `is_near_duplicate`, and inserts
    /// a pending row. The caller stores the bytes next, then calls [`Store::mark_photo_stored`]
    /// (or [`Store::discard_pending_photo`] when storing failed).
    pub async fn reserve_photo(
        &self,
        tenant_id: TenantId,
        avatar_id: AvatarId,
        mut new: PhotoFacts,
        rules: PhotoSetRules,
        is_near_duplicate: impl Fn(u64, u64) -> bool,
    ) -> Result<Reservation, StoreError> {
        let mut tx = self.begin().await?;
        let Some(status) = lock_tenant_avatar(&mut tx, tenant_id, avatar_id).await? else {
            return Ok(Reservation::AvatarNotFound);
        };
        if status == AvatarStatus::Training {
            return Ok(Reservation::AvatarBusy(status));
        }
        let existing: Vec<(uuid::Uuid, String, i64, String)> = sqlx::query_as(
            "SELECT id, sha256, perceptual_hash, file_name FROM photos WHERE avatar_id = $1 ORDER BY id",
        )
        .bind(avatar_id.0)
        .fetch_all(&mut *tx)
        .await?;
        if let Some((id, ..)) = existing.iter().find(|(_, sha, ..)| *sha == new.sha256) {
            return Ok(Reservation::Duplicate {
                existing: PhotoId(*id),
            });
        }
        if existing.len() as u32 >= rules.max_photos {
            return Ok(Reservation::LimitReached {
                max: rules.max_photos,
            });
        }
        if let Some((id, _, _, name)) = existing
            .iter()
            .find(|(_, _, hash, _)| is_near_duplicate(*hash as u64, new.perceptual_hash))
        {
            new.warnings.push(PhotoWarning {
                code: "near_duplicate".into(),
                message: format!(
                    "looks almost the same as photo {id} ({name}); varied photos train better"
                ),
            });
        }
        let id = PhotoId::new();
        let row: PhotoRow = sqlx::query_as(&format!(
            "INSERT INTO photos (id, tenant_id, avatar_id, file_name, format, width, height,
                 orientation, bytes, sha256, perceptual_hash, warnings, faces, blob_key)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
             RETURNING {PHOTO_COLUMNS}"
        ))
        .bind(id.0)
        .bind(tenant_id.0)
        .bind(avatar_id.0)
        .bind(&new.file_name)
        .bind(new.format.as_str())
        .bind(new.width as i32)
        .bind(new.height as i32)
        .bind(i16::from(new.orientation))
        .bind(new.bytes as i64)
        .bind(&new.sha256)
        .bind(new.perceptual_hash as i64)
        .bind(sqlx::types::Json(&new.warnings))
        .bind(new.faces.map(sqlx::types::Json))
        .bind(photo_blob_key(tenant_id, avatar_id, id))
        .fetch_one(&mut *tx)
        .await
        .map_err(StoreError::from_write)?;
        tx.commit().await?;
        Ok(Reservation::Reserved(Box::new(row.try_into()?)))
    }

    /// Marks a reserved photo as stored and updates the avatar's count and status.
    pub async fn mark_photo_stored(
        &self,
        tenant_id: TenantId,
        avatar_id: AvatarId,
        photo_id: PhotoId,
        rules: PhotoSetRules,
    ) -> Result<Avatar, StoreError> {
        let mut tx = self.begin().await?;
        let status = lock_tenant_avatar(&mut tx, tenant_id, avatar_id)
            .await?
            .ok_or(StoreError::NotFound)?;
        let updated = sqlx::query(
            "UPDATE photos SET state = 'stored' WHERE id = $1 AND tenant_id = $2 AND avatar_id = $3",
        )
        .bind(photo_id.0)
        .bind(tenant_id.0)
        .bind(avatar_id.0)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        let avatar = refresh_photo_count(&mut tx, tenant_id, avatar_id, status, rules).await?;
        tx.commit().await?;
        Ok(avatar)
    }

    /// Drops a pending photo whose bytes could not be stored, queueing its blob for deletion
    /// in case part of it was written.
    pub async fn discard_pending_photo(
        &self,
        photo_id: PhotoId,
    ) -> Result<Option<String>, StoreError> {
        let key: Option<String> = sqlx::query_scalar(
            "WITH gone AS (DELETE FROM photos WHERE id = $1 AND state = 'pending' RETURNING blob_key)
             INSERT INTO blob_deletions (blob_key) SELECT blob_key FROM gone
             ON CONFLICT (blob_key) DO NOTHING
             RETURNING blob_key",
        )
        .bind(photo_id.0)
        .fetch_optional(&self.pool)
        .await?;
        Ok(key)
    }

    /// The avatar's stored photos, oldest first. `None` when the avatar does not exist.
    pub async fn list_photos(
        &self,
        tenant_id: TenantId,
        avatar_id: AvatarId,
    ) -> Result<Option<Vec<PhotoRecord>>, StoreError> {
        if !avatar_exists(&self.pool, tenant_id, avatar_id).await? {
            return Ok(None);
        }
        self.photos_of(tenant_id, avatar_id).await.map(Some)
    }

    /// The stored photos of an avatar the caller has read, in upload order: none when the
    /// avatar is gone meanwhile (one statement fewer than [`Store::list_photos`]).
    pub async fn photos_of(
        &self,
        tenant_id: TenantId,
        avatar_id: AvatarId,
    ) -> Result<Vec<PhotoRecord>, StoreError> {
        let rows: Vec<PhotoRow> = sqlx::query_as(&format!(
            "SELECT {PHOTO_COLUMNS} FROM photos
             WHERE tenant_id = $1 AND avatar_id = $2 AND state = 'stored' ORDER BY id"
        ))
        .bind(tenant_id.0)
        .bind(avatar_id.0)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(PhotoRecord::try_from).collect()
    }

    /// Deletes a photo and queues its blob for deletion in the same transaction.
    pub async fn delete_photo(
        &self,
        tenant_id: TenantId,
        avatar_id: AvatarId,
        photo_id: PhotoId,
        rules: PhotoSetRules,
    ) -> Result<PhotoRemoval, StoreError> {
        let mut tx = self.begin().await?;
        let Some(status) = lock_tenant_avatar(&mut tx, tenant_id, avatar_id).await? else {
            return Ok(PhotoRemoval::AvatarNotFound);
        };
        if status == AvatarStatus::Training {
            return Ok(PhotoRemoval::AvatarBusy(status));
        }
        let removed: Option<String> = sqlx::query_scalar(
            "WITH gone AS (
                 DELETE FROM photos WHERE id = $1 AND tenant_id = $2 AND avatar_id = $3
                 RETURNING blob_key)
             INSERT INTO blob_deletions (blob_key) SELECT blob_key FROM gone
             ON CONFLICT (blob_key) DO NOTHING
             RETURNING blob_key",
        )
        .bind(photo_id.0)
        .bind(tenant_id.0)
        .bind(avatar_id.0)
        .fetch_optional(&mut *tx)
        .await?;
        if removed.is_none() {
            return Ok(PhotoRemoval::PhotoNotFound);
        }
        let avatar = refresh_photo_count(&mut tx, tenant_id, avatar_id, status, rules).await?;
        tx.commit().await?;
        Ok(PhotoRemoval::Removed(Box::new(avatar)))
    }

    /// Pending uploads older than `older_than` (their process died mid-upload): deletes the
    /// rows and queues their blobs for deletion. Returns how many were abandoned.
    pub async fn sweep_abandoned_uploads(
        &self,
        older_than: std::time::Duration,
    ) -> Result<u64, StoreError> {
        let swept = sqlx::query(
            "WITH gone AS (
                 DELETE FROM photos
                 WHERE state = 'pending' AND created_at < now() - make_interval(secs => $1)
                 RETURNING blob_key)
             INSERT INTO blob_deletions (blob_key) SELECT blob_key FROM gone
             ON CONFLICT (blob_key) DO NOTHING",
        )
        .bind(older_than.as_secs_f64())
        .execute(&self.pool)
        .await?;
        Ok(swept.rows_affected())
    }
}
