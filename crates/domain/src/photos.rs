//! The rules a photo set must meet before a training may spend money on it.

use serde::{Deserialize, Serialize};

/// How many accepted photos an avatar needs to train, and may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhotoSetRules {
    pub min_photos: u32,
    pub max_photos: u32,
}

impl Default for PhotoSetRules {
    /// The seed's limits: 10 to 20 photos.
    fn default() -> Self {
        Self {
            min_photos: 10,
            max_photos: 20,
        }
    }
}

impl PhotoSetRules {
    pub fn is_trainable(&self, count: u32) -> bool {
        count >= self.min_photos && count <= self.max_photos
    }

    /// How many more photos may be added to a set of `count`.
    pub fn room_left(&self, count: u32) -> u32 {
        self.max_photos.saturating_sub(count)
    }

    /// The status an untrained avatar should have with `count` photos.
    pub fn untrained_status(&self, count: u32) -> crate::AvatarStatus {
        if self.is_trainable(count) {
            crate::AvatarStatus::Ready
        } else {
            crate::AvatarStatus::Draft
        }
    }
}

named_enum! {
    /// Image formats fal's trainers accept.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum PhotoFormat {
        Jpeg => "jpeg",
        Png => "png",
        Webp => "webp",
    }
}

impl PhotoFormat {
    /// The file extension of a photo in this format (`jpg`, `png`, `webp`).
    pub fn extension(self) -> &'static str {
        match self {
            Self::Jpeg => "jpg",
            Self::Png => "png",
            Self::Webp => "webp",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Jpeg => "image/jpeg",
            Self::Png => "image/png",
            Self::Webp => "image/webp",
        }
    }
}

/// A quality concern about an accepted photo (dark, blurry, near-duplicate...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhotoWarning {
    pub code: String,
    pub message: String,
}

/// Below this share of the photo's area a face is `face_too_small`: about a seventh of the
/// frame's side, the size of a head in a half-body shot. Smaller faces train poorly.
pub const MIN_FACE_SHARE: f64 = 0.02;
/// A face box closer than this (relative) to a frame edge is `face_cut_off`.
pub const FACE_EDGE_MARGIN: f64 = 0.02;

/// A face's box relative to the photo as displayed (EXIF orientation applied): 0..1 on each
/// axis, origin top left.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FaceBox {
    pub x: f64,
    pub y: f64,
    pub width: f64,
    pub height: f64,
}

/// The largest face on a photo.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LargestFace {
    #[serde(rename = "box")]
    pub bbox: FaceBox,
    /// Box area over photo area.
    pub share: f64,
    /// The detector's confidence (higher is surer; faces below 2.0 are not reported).
    pub score: f64,
}

/// What face detection found on a photo.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FaceCheck {
    pub faces: u32,
    pub largest: Option<LargestFace>,
}

/// Why a photo's face makes it a poor training photo. Each has a stable [`code`](Self::code).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaceFinding {
    NoFace,
    SeveralFaces,
    FaceTooSmall,
    FaceCutOff,
}

impl FaceFinding {
    pub const ALL: [FaceFinding; 4] = [
        Self::NoFace,
        Self::SeveralFaces,
        Self::FaceTooSmall,
        Self::FaceCutOff,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Self::NoFace => "no_face",
            Self::SeveralFaces => "several_faces",
            Self::FaceTooSmall => "face_too_small",
            Self::FaceCutOff => "face_cut_off",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Self::NoFace => "no face was found on the photo",
            Self::SeveralFaces => "the photo shows several faces; use photos of the person alone",
            Self::FaceTooSmall => "the face is too small; get closer or crop the photo",
            Self::FaceCutOff => "the face touches the edge of the photo and may be cut off",
        }
    }
}

impl FaceCheck {
    /// The findings, in [`FaceFinding::ALL`] order; none for a photo with one usable face.
    pub fn findings(&self) -> Vec<FaceFinding> {
        let mut findings = Vec::new();
        if self.faces == 0 {
            findings.push(FaceFinding::NoFace);
        }
        if self.faces > 1 {
            findings.push(FaceFinding::SeveralFaces);
        }
        if let Some(face) = &self.largest {
            if face.share < MIN_FACE_SHARE {
                findings.push(FaceFinding::FaceTooSmall);
            }
            let b = &face.bbox;
            if b.x <= FACE_EDGE_MARGIN
                || b.y <= FACE_EDGE_MARGIN
                || b.x + b.width >= 1.0 - FACE_EDGE_MARGIN
                || b.y + b.height >= 1.0 - FACE_EDGE_MARGIN
            {
                findings.push(FaceFinding::FaceCutOff);
            }
        }
        findings
    }

    /// Exactly one face, large enough and inside the frame.
    pub fn is_usable(&self) -> bool {
        self.findings().is_empty()
    }
}

named_enum! {
    /// What face findings do to a training of an avatar kind (`PHOTO_FACE_POLICY`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum FacePolicy {
        /// Only photos with exactly one usable face count toward the minimum.
        Require => "require",
        /// Findings are reported; every photo counts.
        Warn => "warn",
        /// Findings are reported for information only; every photo counts.
        Off => "off",
    }
}

/// The face policy per avatar kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FacePolicies {
    pub by_kind: [(crate::AvatarKind, FacePolicy); 4],
}

impl Default for FacePolicies {
    /// People need their face; styles, products and the rest need none.
    fn default() -> Self {
        use crate::AvatarKind::*;
        Self {
            by_kind: [
                (Character, FacePolicy::Require),
                (Style, FacePolicy::Off),
                (Product, FacePolicy::Off),
                (General, FacePolicy::Off),
            ],
        }
    }
}

impl FacePolicies {
    pub fn for_kind(&self, kind: crate::AvatarKind) -> FacePolicy {
        self.by_kind
            .iter()
            .find(|(k, _)| *k == kind)
            .map_or(FacePolicy::Off, |(_, p)| *p)
    }

    /// The same policies with `kind` set to `policy` (from configuration).
    pub fn with_override(mut self, kind: crate::AvatarKind, policy: FacePolicy) -> Self {
        for entry in self.by_kind.iter_mut().filter(|(k, _)| *k == kind) {
            entry.1 = policy;
        }
        self
    }
}

/// Whether a photo counts toward the minimum under `policy`. Photos stored before faces were
/// checked (`None`) count: their owners could not have known.
pub fn counts_for_training(policy: FacePolicy, faces: Option<&FaceCheck>) -> bool {
    match (policy, faces) {
        (FacePolicy::Require, Some(check)) => check.is_usable(),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AvatarStatus;

    #[test]
    fn a_set_is_trainable_between_the_limits() {
        let rules = PhotoSetRules::default();
        assert!(!rules.is_trainable(9));
        assert!(rules.is_trainable(10));
        assert!(rules.is_trainable(20));
        assert!(!rules.is_trainable(21));
        assert_eq!(rules.untrained_status(9), AvatarStatus::Draft);
        assert_eq!(rules.untrained_status(10), AvatarStatus::Ready);
        assert_eq!(rules.room_left(18), 2);
        assert_eq!(rules.room_left(25), 0);
    }

    fn face(x: f64, y: f64, side: f64) -> FaceCheck {
        FaceCheck {
            faces: 1,
            largest: Some(LargestFace {
                bbox: FaceBox {
                    x,
                    y,
                    width: side,
                    height: side,
                },
                share: side * side,
                score: 5.0,
            }),
        }
    }

    #[test]
    fn findings_follow_the_largest_face() {
        assert!(face(0.3, 0.3, 0.3).is_usable());
        let none = FaceCheck {
            faces: 0,
            largest: None,
        };
        assert_eq!(none.findings(), [FaceFinding::NoFace]);
        let several = FaceCheck {
            faces: 3,
            ..face(0.3, 0.3, 0.3)
        };
        assert_eq!(several.findings(), [FaceFinding::SeveralFaces]);
        // The edge of "too small": a share of exactly the minimum passes.
        assert_eq!(face(0.4, 0.4, 0.13).findings(), [FaceFinding::FaceTooSmall]);
        assert!(face(0.4, 0.4, MIN_FACE_SHARE.sqrt() + 1e-9).is_usable());
        assert_eq!(face(0.0, 0.3, 0.3).findings(), [FaceFinding::FaceCutOff]);
        assert_eq!(face(0.7, 0.3, 0.3).findings(), [FaceFinding::FaceCutOff]);
        assert!(face(0.69 - FACE_EDGE_MARGIN, 0.3, 0.3).is_usable());
    }

    #[test]
    fn policies_decide_what_counts() {
        let policies = FacePolicies::default();
        assert_eq!(
            policies.for_kind(crate::AvatarKind::Character),
            FacePolicy::Require
        );
        assert_eq!(policies.for_kind(crate::AvatarKind::Style), FacePolicy::Off);
        let none = FaceCheck {
            faces: 0,
            largest: None,
        };
        assert!(!counts_for_training(FacePolicy::Require, Some(&none)));
        assert!(counts_for_training(FacePolicy::Warn, Some(&none)));
        assert!(counts_for_training(FacePolicy::Require, None));
        let warned = policies.with_override(crate::AvatarKind::Character, FacePolicy::Warn);
        assert_eq!(
            warned.for_kind(crate::AvatarKind::Character),
            FacePolicy::Warn
        );
    }
}
