//! Pure domain logic of the avatars service: no I/O, no HTTP, no SQL.

pub mod avatar;
pub mod validation;

pub use avatar::{
    Avatar, AvatarKind, AvatarName, AvatarStatus, NewAvatar, OwnerRef, TriggerPhrase,
};
pub use validation::{FieldViolation, Violations};
pub mod ids;
pub use ids::{ApiKeyId, AvatarId, PhotoId, TenantId};
pub mod photos;
pub use photos::{PhotoFormat, PhotoSetRules, PhotoWarning};
