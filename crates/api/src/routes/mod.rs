pub mod avatars;
pub mod ops;
