//! The S3-compatible server `cargo xtask test` starts for the suite (moto, with authentication
//! on), named by `AVATARS_TEST_S3_*` variables. Each test works under its own prefix.

/// Where the suite's S3 server is and how to sign in to it.
pub struct TestS3 {
    pub endpoint: String,
    pub bucket: String,
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl TestS3 {
    /// The server `cargo xtask test` started. Fails the test when there is none: the S3 path
    /// must run wherever the suite runs.
    pub fn from_env() -> Self {
        let var = |name: &str| {
            std::env::var(name).unwrap_or_else(|_| {
                panic!(
                    "{name} is not set: run the suite with `cargo xtask test`, which starts \\
                     an S3-compatible server (moto) for it"
                )
            })
        };
        Self {
            endpoint: var("AVATARS_TEST_S3_ENDPOINT"),
            bucket: var("AVATARS_TEST_S3_BUCKET"),
            access_key_id: var("AVATARS_TEST_S3_ACCESS_KEY_ID"),
            secret_access_key: var("AVATARS_TEST_S3_SECRET_ACCESS_KEY"),
        }
    }

    /// The service's S3 settings for this server: path-style, plain http, the issued key.
    pub fn options(&self) -> store::S3Options {
        store::S3Options {
            endpoint: Some(self.endpoint.clone()),
            region: Some("us-east-1".into()),
            access_key_id: Some(self.access_key_id.clone()),
            secret_access_key: Some(self.secret_access_key.clone().into()),
            session_token: None,
            virtual_hosted_style: false,
            allow_http: true,
        }
    }

    /// A store on `bucket` under `prefix`, signed with `options`.
    pub fn store_with(
        &self,
        bucket: &str,
        prefix: &str,
        options: &store::S3Options,
    ) -> store::BlobStore {
        store::BlobStore::from_url(&format!("s3://{bucket}/{prefix}"), options)
            .expect("an S3 blob store")
    }

    /// The whole bucket, to see what the tests' prefixes hold.
    pub fn bucket_store(&self) -> store::BlobStore {
        store::BlobStore::from_url(&format!("s3://{}", self.bucket), &self.options())
            .expect("an S3 blob store")
    }

    /// A store on the suite's bucket under a fresh prefix, and that prefix.
    pub fn fresh_store(&self) -> (store::BlobStore, String) {
        let prefix = format!("test-{}", uuid::Uuid::new_v4());
        (
            self.store_with(&self.bucket, &prefix, &self.options()),
            prefix,
        )
    }
}
