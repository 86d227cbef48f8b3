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

/// Image formats fal's trainers accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PhotoFormat {
    Jpeg,
    Png,
    Webp,
}

impl PhotoFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Jpeg => "jpeg",
            Self::Png => "png",
            Self::Webp => "webp",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        [Self::Jpeg, Self::Png, Self::Webp]
            .into_iter()
            .find(|f| f.as_str() == value)
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
}
