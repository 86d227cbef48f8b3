//! Photo intake: every file a caller sends (uploaded or fetched from a URL) is spooled to a
//! temporary file, inspected, reserved in the avatar's set, stored as a blob and only then
//! counted. Nothing is stored for a rejected file, and a crash mid-way leaves a pending row the
//! janitor cleans up, never an unknown blob.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;

use domain::{Avatar, AvatarId, PhotoId, PhotoWarning, TenantId};
use sha2::{Digest, Sha256};
use store::{PhotoFacts, PhotoRecord, PhotoRemoval, Reservation};
use tokio::io::AsyncWriteExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::context::Service;
use crate::error::ServiceError;

/// A file the service refused, and why.
#[derive(Debug, Clone)]
pub struct RejectedFile {
    /// The uploaded file's name, or the URL it was fetched from.
    pub file_name: String,
    /// Stable machine code, e.g. `unsupported_format`, `too_small`, `duplicate_photo`.
    pub code: String,
    pub message: String,
}

impl RejectedFile {
    pub fn new(file_name: &str, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            file_name: file_name.to_string(),
            code: code.into(),
            message: message.into(),
        }
    }
}

/// What the detector found, as the domain keeps it.
pub(crate) fn face_check(faces: &media::FaceInspection) -> domain::FaceCheck {
    domain::FaceCheck {
        faces: faces.faces,
        largest: faces.largest.map(|f| domain::LargestFace {
            bbox: domain::FaceBox {
                x: f.x,
                y: f.y,
                width: f.width,
                height: f.height,
            },
            share: f.share,
            score: f.score,
        }),
    }
}

/// Checks the file at `path` and, when it passes, adds it to the avatar's set.
/// `Ok(Err(_))` is a refusal of this one file; `Err(_)` stops the whole request.
pub async fn ingest_file(
    service: &Service,
    tenant_id: TenantId,
    avatar_id: AvatarId,
    file_name: &str,
    path: &Path,
) -> Result<Result<PhotoRecord, RejectedFile>, ServiceError> {
    let inspection = inspect(service, path.to_path_buf());
    admit(service, tenant_id, avatar_id, file_name, path, inspection).await
}

/// The decoded pixels the whole process may hold at once. A decode takes its photo's pixel
/// count (at most the whole budget, so a photo larger than it runs alone) and waits while the
/// budget is spent: a burst of uploads queues instead of exhausting memory and CPU.
#[derive(Clone)]
pub struct DecodeBudget {
    pixels: Arc<Semaphore>,
    total: u32,
}

impl DecodeBudget {
    pub fn new(total: u32) -> Self {
        Self {
            pixels: Arc::new(Semaphore::new(total as usize)),
            total,
        }
    }

    /// Waits until `pixels` (capped at the whole budget) are free and holds them until the
    /// permit is dropped.
    pub async fn acquire(&self, pixels: u64) -> OwnedSemaphorePermit {
        let wanted = pixels.clamp(1, u64::from(self.total)) as u32;
        self.pixels
            .clone()
            .acquire_many_owned(wanted)
            .await
            .expect("the decode budget is never closed")
    }
}

/// The photo checks of one file: the header first (cheap), then, once the decode budget has
/// room for its pixels, the full decode on a blocking thread. Returns a handle so a batch can
/// check the next file while this one is being admitted.
pub fn inspect(service: &Service, path: std::path::PathBuf) -> Inspection {
    let rules = service.photo_rules();
    let budget = service.decode_budget.clone();
    let pool = service.check_pool.clone();
    tokio::spawn(async move {
        let (probe_path, probe_rules) = (path.clone(), rules.clone());
        let probe =
            tokio::task::spawn_blocking(move || media::probe_photo_path(&probe_path, &probe_rules))
                .await
                .map_err(std::io::Error::other)??;
        let _permit = budget.acquire(probe.pixels()).await;
        pool.run(move || media::inspect_photo_path(&path, &rules))
            .await
            .map_err(std::io::Error::other)?
    })
}

/// Adds an inspected file to the avatar's set: reserve, store the bytes, count.
pub async fn admit(
    service: &Service,
    tenant_id: TenantId,
    avatar_id: AvatarId,
    file_name: &str,
    path: &Path,
    inspection: Inspection,
) -> Result<Result<PhotoRecord, RejectedFile>, ServiceError> {
    let inspection = match inspection.await.map_err(ServiceError::internal)? {
        Ok(inspection) => inspection,
        Err(media::InspectError::Rejected(rejection)) => {
            return Ok(Err(RejectedFile::new(
                file_name,
                rejection.code(),
                rejection.message(),
            )))
        }
        Err(media::InspectError::Io(error)) => return Err(ServiceError::internal(error)),
    };
    let new = PhotoFacts {
        file_name: file_name.to_string(),
        format: inspection.format,
        width: inspection.width,
        height: inspection.height,
        orientation: inspection.orientation,
        bytes: inspection.bytes,
        sha256: inspection.sha256.clone(),
        perceptual_hash: inspection.perceptual_hash,
        warnings: inspection
            .warnings
            .iter()
            .map(|w| PhotoWarning {
                code: w.code.to_string(),
                message: w.message.clone(),
            })
            .collect(),
        faces: Some(face_check(&inspection.faces)),
    };
    let rules = service.photo_set_rules();
    let photo = match service
        .store
        .reserve_photo(tenant_id, avatar_id, new, rules, media::is_near_duplicate)
        .await?
    {
        Reservation::Reserved(photo) => *photo,
        Reservation::AvatarNotFound => return Err(ServiceError::avatar_not_found(avatar_id)),
        Reservation::AvatarBusy(_) => return Err(ServiceError::avatar_training()),
        Reservation::LimitReached { max } => return Ok(Err(limit_reached(file_name, max))),
        Reservation::Duplicate { existing } => {
            return Ok(Err(RejectedFile::new(
                file_name,
                "duplicate_photo",
                format!("the same file is already in the avatar's set as photo {existing}"),
            )))
        }
    };
    if let Err(error) = service.blobs.put_file(&photo.blob_key, path).await {
        service.store.discard_pending_photo(photo.id).await?;
        crate::workers::janitor::purge_deleted_blobs(service).await;
        return Err(ServiceError::unavailable(
            "storage_unavailable",
            "the photo could not be stored; retry later",
        )
        .with_source(error));
    }
    service
        .store
        .mark_photo_stored(tenant_id, avatar_id, photo.id, rules)
        .await?;
    Ok(Ok(photo))
}

/// A photo check running in the background.
pub type Inspection = tokio::task::JoinHandle<Result<media::PhotoInspection, media::InspectError>>;

fn limit_reached(file_name: &str, max: u32) -> RejectedFile {
    RejectedFile::new(
        file_name,
        "photo_limit_reached",
        format!("the avatar already holds the maximum of {max} photos; delete one to add another"),
    )
}

/// A fresh spool file in the scratch directory, removed when dropped.
fn spool_file(service: &Service) -> Result<tempfile::NamedTempFile, ServiceError> {
    service
        .scratch_file("upload")
        .map_err(ServiceError::internal)
}

fn no_files(field: &str) -> ServiceError {
    ServiceError::invalid_field(
        crate::InputLocation::Body,
        field,
        "no_files",
        "the request holds no photo",
    )
}

/// What happened to each file of a batch, and the avatar after it.
#[derive(Debug)]
pub struct PhotoBatchReport {
    pub accepted: Vec<PhotoRecord>,
    pub rejected: Vec<RejectedFile>,
    /// `photo_count` and `status` (`ready` once trainable) after the batch.
    pub avatar: Avatar,
    pub min_photos: u32,
    pub max_photos: u32,
}

/// A file of a batch whose outcome is not taken yet.
enum Pending {
    Inspecting(String, tempfile::NamedTempFile, Inspection),
    Decided(RejectedFile),
}

/// A file being received: its bytes go to a spool file (memory does not grow with the
/// upload); past the photo size limit they are only counted.
pub struct IncomingFile {
    file_name: String,
    spool: tempfile::NamedTempFile,
    /// Buffered: each write of a file is handed to a blocking thread.
    file: tokio::io::BufWriter<tokio::fs::File>,
    size: u64,
    max_bytes: u64,
    /// Hashed as it arrives, so an exact duplicate is known before any decode.
    sha256: Sha256,
}

impl IncomingFile {
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), ServiceError> {
        self.size += chunk.len() as u64;
        if self.size > self.max_bytes {
            return Ok(());
        }
        self.sha256.update(chunk);
        self.file
            .write_all(chunk)
            .await
            .map_err(ServiceError::internal)
    }
}

/// One request's photos for one avatar, uploaded or fetched, taken file by file. Each file is
/// checked on a blocking thread while the next is received; outcomes are taken in the order
/// the caller sent the files, so limits and duplicates apply in that order.
pub struct PhotoBatch {
    service: Service,
    tenant_id: TenantId,
    avatar_id: AvatarId,
    /// The request field the files came in, named when the request holds none.
    field: &'static str,
    files: usize,
    pending: VecDeque<Pending>,
    accepted: Vec<PhotoRecord>,
    rejected: Vec<RejectedFile>,
    /// Files checked at once: as many as the check pool runs (more would only queue there).
    in_flight_limit: usize,
    /// SHA-256 of every file in the avatar's set or earlier in this request, with the stored
    /// photo's id: exact duplicates are refused without decoding them.
    known: HashMap<String, Option<PhotoId>>,
    /// Photos the avatar held when the batch opened.
    stored_before: usize,
}

impl PhotoBatch {
    /// Starts a batch for an avatar that exists and is not training.
    #[tracing::instrument(skip_all, fields(tenant_id = %tenant_id, avatar_id = %avatar_id))]
    pub async fn open(
        service: &Service,
        tenant_id: TenantId,
        avatar_id: AvatarId,
    ) -> Result<Self, ServiceError> {
        let avatar = crate::avatars::get_avatar(service, tenant_id, avatar_id).await?;
        if avatar.status == domain::AvatarStatus::Training {
            return Err(ServiceError::avatar_training());
        }
        let existing = list_photos(service, tenant_id, avatar_id).await?;
        Ok(Self {
            stored_before: existing.len(),
            known: existing
                .into_iter()
                .map(|photo| (photo.facts.sha256, Some(photo.id)))
                .collect(),
            service: service.clone(),
            tenant_id,
            avatar_id,
            field: "files",
            files: 0,
            pending: VecDeque::new(),
            accepted: Vec::new(),
            rejected: Vec::new(),
            in_flight_limit: service.settings.photos.check_threads as usize,
        })
    }

    /// The largest upload request: a whole set plus room for the multipart framing.
    pub fn max_upload_bytes(&self) -> u64 {
        let photos = self.service.settings.photos;
        photos
            .max_photo_bytes
            .saturating_mul(u64::from(photos.max_photos))
            + 1024 * 1024
    }

    /// The name of the next part: the given one, or `part-N`. Refuses the whole request past
    /// the parts limit, so empty or tiny parts cannot pile up rejections without end.
    fn next_name(&mut self, name: Option<&str>) -> Result<String, ServiceError> {
        self.files += 1;
        let max = self.service.settings.photos.max_parts;
        if self.files > max as usize {
            return Err(ServiceError::too_large(
                "too_many_parts",
                format!("an upload may carry at most {max} parts"),
            )
            .with_extension("limit", serde_json::json!(max)));
        }
        Ok(name
            .map(str::to_string)
            .unwrap_or_else(|| format!("part-{}", self.files)))
    }

    /// Notes a part that is a form field, not a file.
    pub fn refuse_form_field(&mut self, name: Option<&str>) -> Result<(), ServiceError> {
        let file_name = self.next_name(name)?;
        self.pending.push_back(Pending::Decided(RejectedFile::new(
            &file_name,
            "not_a_file",
            "this part is a form field, not a file",
        )));
        Ok(())
    }

    /// Starts receiving a file; feed it with [`IncomingFile::write`], then [`Self::add`] it.
    pub fn receive(&mut self, name: Option<&str>) -> Result<IncomingFile, ServiceError> {
        let file_name = self.next_name(name)?;
        let spool = spool_file(&self.service)?;
        let file = tokio::io::BufWriter::with_capacity(
            store::FILE_CHUNK_BYTES,
            tokio::fs::File::from_std(spool.reopen().map_err(ServiceError::internal)?),
        );
        Ok(IncomingFile {
            file_name,
            spool,
            file,
            size: 0,
            max_bytes: self.service.settings.photos.max_photo_bytes,
            sha256: Sha256::new(),
        })
    }

    /// Adds a received file: refused when too large, an exact duplicate or beyond the set's
    /// room (all known without decoding), else checked while the next arrives.
    pub async fn add(&mut self, mut incoming: IncomingFile) -> Result<(), ServiceError> {
        incoming
            .file
            .flush()
            .await
            .map_err(ServiceError::internal)?;
        let IncomingFile {
            file_name,
            spool,
            size,
            max_bytes,
            sha256,
            ..
        } = incoming;
        // The name is stored with the photo, and no text column can hold U+0000.
        if file_name.contains('\0') {
            self.pending.push_back(Pending::Decided(RejectedFile::new(
                &file_name.replace('\0', "\u{FFFD}"),
                "invalid_file_name",
                "the file name may not contain the NUL character (U+0000)",
            )));
            return Ok(());
        }
        if size > max_bytes {
            self.pending.push_back(Pending::Decided(RejectedFile::new(
                &file_name,
                "file_too_large",
                format!(
                    "the file is larger than the {} MB limit",
                    max_bytes / (1024 * 1024)
                ),
            )));
            return Ok(());
        }
        if let Some(rejection) = self.refuse_before_decoding(&file_name, sha256).await? {
            self.pending.push_back(Pending::Decided(rejection));
            return Ok(());
        }
        let inspection = inspect(&self.service, spool.path().to_path_buf());
        self.pending
            .push_back(Pending::Inspecting(file_name, spool, inspection));
        while self.in_flight() >= self.in_flight_limit {
            self.settle_next().await?;
        }
        Ok(())
    }

    /// The refusals that need no decode. The store still decides when the photo is reserved
    /// (another request may add photos meanwhile); this only spares decoding files that cannot
    /// be accepted.
    async fn refuse_before_decoding(
        &mut self,
        file_name: &str,
        sha256: Sha256,
    ) -> Result<Option<RejectedFile>, ServiceError> {
        let digest = hex::encode(sha256.finalize());
        if let Some(existing) = self.known.get(&digest) {
            let message = match existing {
                Some(id) => format!("the same file is already in the avatar's set as photo {id}"),
                None => "the same file appears earlier in this request".to_string(),
            };
            return Ok(Some(RejectedFile::new(
                file_name,
                "duplicate_photo",
                message,
            )));
        }
        self.known.insert(digest, None);
        let max = self.service.settings.photos.max_photos;
        // Files still being checked may yet be refused: only count them once settled.
        if self.stored_before + self.accepted.len() + self.in_flight() >= max as usize {
            while !self.pending.is_empty() {
                self.settle_next().await?;
            }
        }
        if self.stored_before + self.accepted.len() >= max as usize {
            return Ok(Some(limit_reached(file_name, max)));
        }
        Ok(None)
    }

    fn in_flight(&self) -> usize {
        self.pending
            .iter()
            .filter(|p| matches!(p, Pending::Inspecting(..)))
            .count()
    }

    /// Takes the oldest pending file's outcome: admits it to the set when its checks passed.
    async fn settle_next(&mut self) -> Result<(), ServiceError> {
        let outcome = match self.pending.pop_front() {
            Some(Pending::Decided(rejection)) => Err(rejection),
            Some(Pending::Inspecting(file_name, spool, inspection)) => {
                admit(
                    &self.service,
                    self.tenant_id,
                    self.avatar_id,
                    &file_name,
                    spool.path(),
                    inspection,
                )
                .await?
            }
            None => return Ok(()),
        };
        match outcome {
            Ok(photo) => self.accepted.push(photo),
            Err(rejection) => self.rejected.push(rejection),
        }
        Ok(())
    }

    /// Fetches each URL through the safe fetcher into a spool file and adds it.
    #[tracing::instrument(skip_all, fields(tenant_id = %self.tenant_id, avatar_id = %self.avatar_id))]
    pub async fn fetch_urls(&mut self, urls: Vec<String>) -> Result<(), ServiceError> {
        self.field = "urls";
        if urls.is_empty() {
            return Err(no_files(self.field));
        }
        let max = self.service.settings.photos.max_photos as usize;
        if urls.len() > max {
            return Err(ServiceError::invalid_field(
                crate::InputLocation::Body,
                "urls",
                "too_many",
                format!("at most {max} URLs"),
            ));
        }
        for url in urls {
            self.files += 1;
            let spool = spool_file(&self.service)?;
            let fetched = self
                .service
                .photo_fetcher
                .fetch_to_file(&url, spool.path())
                .await;
            let outcome = match fetched {
                Err(error) => Err(RejectedFile::new(&url, error.code(), error.to_string())),
                Ok(_) => {
                    let service = &self.service;
                    ingest_file(service, self.tenant_id, self.avatar_id, &url, spool.path()).await?
                }
            };
            match outcome {
                Ok(photo) => self.accepted.push(photo),
                Err(rejection) => self.rejected.push(rejection),
            }
        }
        Ok(())
    }

    /// Takes every outstanding outcome. Fails when the request held no photo, or when every
    /// file was refused (`photos_rejected`, listing them).
    #[tracing::instrument(skip_all, fields(tenant_id = %self.tenant_id, avatar_id = %self.avatar_id))]
    pub async fn finish(mut self) -> Result<PhotoBatchReport, ServiceError> {
        while !self.pending.is_empty() {
            self.settle_next().await?;
        }
        let only_form_fields = self.rejected.iter().all(|r| r.code == "not_a_file");
        if self.files == 0 || (self.accepted.is_empty() && only_form_fields) {
            return Err(no_files(self.field));
        }
        if self.accepted.is_empty() {
            return Err(ServiceError::new(
                crate::ErrorKind::Invalid,
                "photos_rejected",
                format!(
                    "none of the {} files was accepted; see `rejected`",
                    self.rejected.len()
                ),
            )
            .with_attachment(crate::Attachment::RejectedFiles(self.rejected)));
        }
        let avatar = self
            .service
            .store
            .get_avatar(self.tenant_id, self.avatar_id)
            .await?;
        let photos = self.service.settings.photos;
        Ok(PhotoBatchReport {
            accepted: self.accepted,
            rejected: self.rejected,
            avatar,
            min_photos: photos.min_photos,
            max_photos: photos.max_photos,
        })
    }
}

/// The avatar's photos, oldest first.
#[tracing::instrument(skip_all, fields(tenant_id = %tenant_id, avatar_id = %avatar_id))]
pub async fn list_photos(
    service: &Service,
    tenant_id: TenantId,
    avatar_id: AvatarId,
) -> Result<Vec<PhotoRecord>, ServiceError> {
    service
        .store
        .list_photos(tenant_id, avatar_id)
        .await?
        .ok_or_else(|| ServiceError::avatar_not_found(avatar_id))
}

/// Removes a photo from the avatar's set (the avatar goes back to `draft` when its set is no
/// longer trainable) and purges its blob.
#[tracing::instrument(skip_all, fields(tenant_id = %tenant_id, avatar_id = %avatar_id, photo_id = %photo_id))]
pub async fn delete_photo(
    service: &Service,
    tenant_id: TenantId,
    avatar_id: AvatarId,
    photo_id: PhotoId,
) -> Result<(), ServiceError> {
    let removal = service
        .store
        .delete_photo(tenant_id, avatar_id, photo_id, service.photo_set_rules())
        .await?;
    match removal {
        PhotoRemoval::Removed(_) => {
            crate::workers::janitor::purge_deleted_blobs(service).await;
            Ok(())
        }
        PhotoRemoval::AvatarNotFound => Err(ServiceError::avatar_not_found(avatar_id)),
        PhotoRemoval::PhotoNotFound => Err(ServiceError::photo_not_found(photo_id)),
        PhotoRemoval::AvatarBusy(_) => Err(ServiceError::avatar_training()),
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::DecodeBudget;

    #[tokio::test]
    async fn decodes_beyond_the_budget_wait_for_pixels_to_be_released() {
        let budget = DecodeBudget::new(10_000_000);
        let first = budget.acquire(6_000_000).await;
        let second = budget.acquire(4_000_000).await;
        let mut third = Box::pin(budget.acquire(1));
        assert!((&mut third).now_or_never().is_none(), "the budget is spent");
        drop(second);
        assert!(third.now_or_never().is_some(), "released pixels are taken");
        drop(first);
        // A photo larger than the whole budget still runs, alone.
        let giant = budget.acquire(50_000_000).await;
        assert!(budget.acquire(1).now_or_never().is_none());
        drop(giant);
    }
}
