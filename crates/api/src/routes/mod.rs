pub mod archives;
pub mod avatars;
pub mod fal_webhook;
pub mod generations;
pub mod ops;
pub mod photos;
pub mod trainings;
