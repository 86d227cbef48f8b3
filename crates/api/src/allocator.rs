//! The process's memory allocator: mimalloc, tuned to give freed memory back at once.
//!
//! Photo checks allocate and free tens of megabytes per photo on the blocking pool's threads.
//! glibc's allocator kept those buffers per thread, so peak memory grew with the batch size.
//! mimalloc by default keeps freed pages for a second (and its arenas ten) and backs its
//! arenas with transparent huge pages, which held a burst of uploads' memory long enough for
//! the next burst to stack on top of it. Purging at once (and no huge pages, built in through
//! the `no_thp` feature) keeps peak memory near what is in use.

use std::os::raw::c_long;

/// `mi_option_purge_delay` in mimalloc's `mi_option_t` (v3 `include/mimalloc.h`); the
/// constant is not exported by `libmimalloc-sys`. A test checks it against the variable
/// mimalloc reads for it, `MIMALLOC_PURGE_DELAY`.
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Called first thing in `main`: later allocations see the option. An operator's own
/// `MIMALLOC_PURGE_DELAY` (milliseconds) is left as mimalloc read it.
pub fn tune() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: setting an option is a plain store into mimalloc's option table; the option is
    // read at each purge, so setting it after start-up takes effect from here on.
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, 0 as c_long) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_delay_option_is_the_one_mimalloc_reads_from_its_variable() {
        // mimalloc reads its variables at process start, so a child process is started with
        // the variable set and checks the option it sees.
        if std::env::var_os("ALLOCATOR_TEST_CHILD").is_some() {
            // SAFETY: a read of mimalloc's option table.
            assert_eq!(unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) }, 4321);
            return;
        }
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "allocator::tests::the_purge_delay_option_is_the_one_mimalloc_reads_from_its_variable",
            ])
            .env("ALLOCATOR_TEST_CHILD", "1")
            .env("MIMALLOC_PURGE_DELAY", "4321")
            .status()
            .unwrap();
        assert!(status.success());
    }

    #[test]
    fn tuning_purges_at_once() {
        tune();
        // SAFETY: a read of mimalloc's option table.
        assert_eq!(unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) }, 0);
    }
}
