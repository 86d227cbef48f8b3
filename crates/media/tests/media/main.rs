//! Integration tests for the media crate (one test binary, several modules).

mod archive_inspection;
mod performance;
mod photos;
mod support;
mod training_archive;
