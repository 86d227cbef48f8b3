//! The photo set report: what a training would be fed, and whether it may start, before
//! anyone pays. `GET /avatars/{id}/photo-set` shows it and `POST /train` refuses with it.

use std::collections::BTreeMap;

use domain::{Avatar, AvatarId, FacePolicy, PhotoId, PhotoSetRules, TenantId};
use store::PhotoRecord;

use crate::context::Service;
use crate::error::ServiceError;

/// A photo with face findings.
#[derive(Debug, Clone)]
pub struct PhotoFindings {
    pub photo_id: PhotoId,
    pub file_name: String,
    /// Finding codes: `no_face`, `several_faces`, `face_too_small`, `face_cut_off`.
    pub findings: Vec<&'static str>,
    /// Whether the photo counts toward the minimum under the avatar's face policy.
    pub counts: bool,
}

/// Smallest, median and largest face share of the photos with a face.
#[derive(Debug, Clone, Copy)]
pub struct FaceShareSpread {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

/// A summary of an avatar's photo set.
#[derive(Debug, Clone)]
pub struct PhotoSetReport {
    pub photo_count: u32,
    /// Photos that count toward `min_photos` under `face_policy`.
    pub usable_photos: u32,
    pub min_photos: u32,
    pub max_photos: u32,
    pub face_policy: FacePolicy,
    /// Whether `POST /train` would accept the set.
    pub trainable: bool,
    /// The trainer a request naming none would get; `None` when requests must name one.
    pub trainer: Option<&'static str>,
    /// How many photos have each finding.
    pub findings: BTreeMap<&'static str, u32>,
    /// Photos with face findings, in upload order.
    pub photos_with_findings: Vec<PhotoFindings>,
    /// Groups of photos that look almost the same.
    pub near_duplicate_groups: Vec<Vec<PhotoId>>,
    /// `None` when no photo shows a face.
    pub face_share: Option<FaceShareSpread>,
}

impl PhotoSetReport {
    /// The photos that keep the set from training: those with findings that do not count.
    pub fn photos_not_counting(&self) -> impl Iterator<Item = &PhotoFindings> {
        self.photos_with_findings
            .iter()
            .filter(|photo| !photo.counts)
    }
}

/// The report for a set: pure, so the gate and the report cannot disagree.
pub fn summarize(
    photos: &[PhotoRecord],
    policy: FacePolicy,
    rules: PhotoSetRules,
    trainer: Option<&'static str>,
) -> PhotoSetReport {
    let mut findings: BTreeMap<&'static str, u32> = BTreeMap::new();
    let mut photos_with_findings = Vec::new();
    let mut usable = 0u32;
    let mut shares = Vec::new();
    for photo in photos {
        let counts = domain::photos::counts_for_training(policy, photo.facts.faces.as_ref());
        usable += u32::from(counts);
        let Some(check) = &photo.facts.faces else {
            continue;
        };
        if let Some(face) = &check.largest {
            shares.push(face.share);
        }
        let codes: Vec<&'static str> = check.findings().into_iter().map(|f| f.code()).collect();
        if codes.is_empty() {
            continue;
        }
        for code in &codes {
            *findings.entry(code).or_default() += 1;
        }
        photos_with_findings.push(PhotoFindings {
            photo_id: photo.id,
            file_name: photo.facts.file_name.clone(),
            findings: codes,
            counts,
        });
    }
    shares.sort_by(f64::total_cmp);
    let face_share = (!shares.is_empty()).then(|| FaceShareSpread {
        min: shares[0],
        median: shares[shares.len() / 2],
        max: shares[shares.len() - 1],
    });
    let photo_count = photos.len() as u32;
    PhotoSetReport {
        photo_count,
        usable_photos: usable,
        min_photos: rules.min_photos,
        max_photos: rules.max_photos,
        face_policy: policy,
        trainable: usable >= rules.min_photos && photo_count <= rules.max_photos,
        trainer,
        findings,
        photos_with_findings,
        near_duplicate_groups: near_duplicate_groups(photos),
        face_share,
    }
}

/// Photos joined when their perceptual hashes are near; groups of two or more, in upload order.
fn near_duplicate_groups(photos: &[PhotoRecord]) -> Vec<Vec<PhotoId>> {
    let mut group_of: Vec<usize> = (0..photos.len()).collect();
    fn root(group_of: &mut [usize], mut i: usize) -> usize {
        while group_of[i] != i {
            group_of[i] = group_of[group_of[i]];
            i = group_of[i];
        }
        i
    }
    for i in 0..photos.len() {
        for j in i + 1..photos.len() {
            if media::is_near_duplicate(
                photos[i].facts.perceptual_hash,
                photos[j].facts.perceptual_hash,
            ) {
                let (a, b) = (root(&mut group_of, i), root(&mut group_of, j));
                group_of[b.max(a)] = a.min(b);
            }
        }
    }
    let mut groups: BTreeMap<usize, Vec<PhotoId>> = BTreeMap::new();
    for (i, photo) in photos.iter().enumerate() {
        let r = root(&mut group_of, i);
        groups.entry(r).or_default().push(photo.id);
    }
    groups.into_values().filter(|g| g.len() > 1).collect()
}

/// The report for `avatar` with the service's rules.
pub fn report_for(service: &Service, avatar: &Avatar, photos: &[PhotoRecord]) -> PhotoSetReport {
    let selection = &service.settings.jobs.selection;
    let trainer = selection
        .auto
        .then(|| selection.trainer_for(avatar.kind).as_str());
    summarize(
        photos,
        service.settings.photos.face_policy.for_kind(avatar.kind),
        service.photo_set_rules(),
        trainer,
    )
}

/// `GET /avatars/{id}/photo-set`.
#[tracing::instrument(skip_all, fields(tenant_id = %tenant_id, avatar_id = %avatar_id))]
pub async fn photo_set(
    service: &Service,
    tenant_id: TenantId,
    avatar_id: AvatarId,
) -> Result<PhotoSetReport, ServiceError> {
    let avatar = crate::avatars::get_avatar(service, tenant_id, avatar_id).await?;
    let photos = service.store.photos_of(tenant_id, avatar_id).await?;
    Ok(report_for(service, &avatar, &photos))
}
