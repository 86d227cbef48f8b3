pub mod archives;
pub mod avatars;
pub mod ops;
pub mod photos;
