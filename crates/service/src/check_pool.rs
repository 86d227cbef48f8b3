//! The threads that decode and check photos and archives.
//!
//! Checks are CPU-bound and allocate tens of megabytes each. On tokio's blocking pool they
//! landed on whichever of its many threads was idle, and the allocator keeps freed memory per
//! thread for a while, so peak memory grew with the number of threads that had run a check. A
//! fixed pool of `PHOTO_CHECK_THREADS` threads (default: one per core) reuses the same
//! threads' memory and never runs more checks at once than there are cores to run them.

use std::panic::AssertUnwindSafe;

/// A check that panicked (a decoder bug on hostile input): the request fails, the process
/// does not.
#[derive(Debug, thiserror::Error)]
#[error("a photo check panicked")]
pub struct CheckPanicked;

#[derive(Clone)]
pub struct CheckPool {
    threads: std::sync::Arc<rayon_core::ThreadPool>,
}

impl CheckPool {
    pub fn new(threads: usize) -> std::io::Result<Self> {
        let pool = rayon_core::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("photo-check-{i}"))
            .build()
            .map_err(std::io::Error::other)?;
        Ok(Self {
            threads: std::sync::Arc::new(pool),
        })
    }

    /// Runs `check` on the pool and waits for its result without blocking the runtime.
    pub async fn run<T: Send + 'static>(
        &self,
        check: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, CheckPanicked> {
        let (done, result) = tokio::sync::oneshot::channel();
        self.threads.spawn(move || {
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(check));
            // The caller may have gone (request cancelled): nobody waits for the result.
            let _ = done.send(outcome.map_err(|_| CheckPanicked));
        });
        result.await.map_err(|_| CheckPanicked)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_check_runs_on_a_pool_thread_and_returns_its_result() {
        let pool = CheckPool::new(2).unwrap();
        let name = pool
            .run(|| std::thread::current().name().map(str::to_string))
            .await
            .unwrap();
        assert!(name.unwrap().starts_with("photo-check-"));
    }

    #[tokio::test]
    async fn a_panicking_check_is_an_error_and_the_pool_goes_on() {
        let pool = CheckPool::new(1).unwrap();
        let panicked = pool.run(|| -> u8 { panic!("decoder bug") }).await;
        assert!(panicked.is_err());
        assert_eq!(pool.run(|| 7).await.unwrap(), 7);
    }
}
