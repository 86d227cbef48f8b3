//! The process's cache of live API keys, so checking the key of a request does not cost a
//! database round trip every time.
//!
//! - Keyed by the key's SHA-256 hash (the key itself is never held), it maps a live key to its
//!   id and tenant. Unknown and revoked keys are never cached: a flood of made-up keys cannot
//!   grow it, and each of them costs the one indexed lookup it costs without the cache.
//! - Bounded: at most `max_entries` keys (the oldest entry makes room) and each for at most
//!   `ttl`, after which the key is read again.
//! - Revocation reaches every replica through Postgres: a trigger on `api_keys` notifies
//!   [`API_KEY_CHANNEL`] in the revoking transaction (whatever revoked it: the CLI, SQL by
//!   hand), and the process's one listening connection drops the key from the cache as soon
//!   as the notification arrives.
//! - The cache is used only while that listening connection is up. When it is lost,
//!   notifications may have been missed: the cache is emptied and bypassed until the process
//!   listens again, then starts empty. A process that never listens (the CLI) never caches.
//! - A lookup that read the database while a revocation (or a reset) was heard does not store
//!   what it read, so a key revoked during its read is not cached as live.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use domain::ApiKeyId;

use crate::api_keys::AuthenticatedKey;

/// The channel that announces a revoked (or deleted) key, with its id as payload.
pub const API_KEY_CHANNEL: &str = "api_key_revoked";

/// How often a key's `last_used_at` is written at most.
pub(crate) const TOUCH_INTERVAL: Duration = Duration::from_secs(60);

/// The cache's limits (`API_KEY_CACHE_TTL`, `API_KEY_CACHE_MAX_ENTRIES`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyCacheSettings {
    /// How long a key is trusted without reading it again; zero turns the cache off.
    pub ttl: Duration,
    /// Keys held at most.
    pub max_entries: usize,
}

impl KeyCacheSettings {
    /// No caching: every request reads its key.
    pub const OFF: Self = Self {
        ttl: Duration::ZERO,
        max_entries: 1,
    };
}

impl Default for KeyCacheSettings {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(60),
            max_entries: 10_000,
        }
    }
}

/// How keys were checked since the process started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyCacheStats {
    /// Answered from the cache.
    pub hits: u64,
    /// Read from the database (unknown, expired, evicted, or the cache was off or bypassed).
    pub reads: u64,
    /// Keys held now.
    pub entries: usize,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    key: AuthenticatedKey,
    cached_at: Instant,
    /// When this process last wrote the key's `last_used_at` (or found it recent).
    touched_at: Instant,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<[u8; 32], Entry>,
    /// Grows with every revocation heard and every reset; a read that began at another value
    /// is not stored.
    generation: u64,
    /// Listening connections up in this process; the cache is used only when there is one.
    listening: u32,
}

/// What a cache lookup found.
pub(crate) enum Lookup {
    /// A live key; `touch` when its `last_used_at` is due to be written.
    Hit { key: AuthenticatedKey, touch: bool },
    /// Read the key from the database; pass the ticket to [`KeyCache::store`].
    Miss(Ticket),
}

/// Taken before a database read, so a revocation heard during the read is not undone.
pub(crate) struct Ticket(Option<u64>);

/// Shared by every clone of a [`crate::Store`] built by one [`crate::Store::with_key_cache`].
#[derive(Debug)]
pub(crate) struct KeyCache {
    settings: KeyCacheSettings,
    state: Mutex<State>,
    hits: AtomicU64,
    reads: AtomicU64,
}

impl KeyCache {
    pub(crate) fn new(settings: KeyCacheSettings) -> Arc<Self> {
        Arc::new(Self {
            settings,
            state: Mutex::default(),
            hits: AtomicU64::new(0),
            reads: AtomicU64::new(0),
        })
    }

    fn enabled(&self) -> bool {
        !self.settings.ttl.is_zero() && self.settings.max_entries > 0
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn lookup(&self, hash: &[u8; 32]) -> Lookup {
        if !self.enabled() {
            self.reads.fetch_add(1, Ordering::Relaxed);
            return Lookup::Miss(Ticket(None));
        }
        let now = Instant::now();
        let mut state = self.state();
        if state.listening == 0 {
            drop(state);
            self.reads.fetch_add(1, Ordering::Relaxed);
            return Lookup::Miss(Ticket(None));
        }
        match state.entries.get_mut(hash) {
            Some(entry) if now.duration_since(entry.cached_at) < self.settings.ttl => {
                let touch = now.duration_since(entry.touched_at) >= TOUCH_INTERVAL;
                if touch {
                    entry.touched_at = now;
                }
                let key = entry.key;
                drop(state);
                self.hits.fetch_add(1, Ordering::Relaxed);
                Lookup::Hit { key, touch }
            }
            found => {
                if found.is_some() {
                    state.entries.remove(hash);
                }
                let ticket = Ticket(Some(state.generation));
                drop(state);
                self.reads.fetch_add(1, Ordering::Relaxed);
                Lookup::Miss(ticket)
            }
        }
    }

    /// Keeps a key read live from the database, unless a revocation or reset was heard since
    /// the ticket was taken.
    pub(crate) fn store(&self, ticket: Ticket, hash: [u8; 32], key: AuthenticatedKey) {
        let Ticket(Some(generation)) = ticket else {
            return;
        };
        let now = Instant::now();
        let mut state = self.state();
        if state.generation != generation || state.listening == 0 {
            return;
        }
        if state.entries.len() >= self.settings.max_entries && !state.entries.contains_key(&hash) {
            let ttl = self.settings.ttl;
            state
                .entries
                .retain(|_, entry| now.duration_since(entry.cached_at) < ttl);
            if state.entries.len() >= self.settings.max_entries {
                let oldest = state
                    .entries
                    .iter()
                    .min_by_key(|(_, entry)| entry.cached_at)
                    .map(|(hash, _)| *hash);
                if let Some(oldest) = oldest {
                    state.entries.remove(&oldest);
                }
            }
        }
        state.entries.insert(
            hash,
            Entry {
                key,
                cached_at: now,
                touched_at: now,
            },
        );
    }

    /// A key was revoked (on any replica): it is checked against the database from now on.
    pub(crate) fn revoked(&self, key_id: ApiKeyId) {
        let mut state = self.state();
        state.generation += 1;
        state.entries.retain(|_, entry| entry.key.key_id != key_id);
    }

    /// Notifications may have been missed: forget every key.
    fn reset(state: &mut State) {
        state.generation += 1;
        state.entries.clear();
    }

    /// A listening connection is up (again): the cache starts empty.
    pub(crate) fn listening(&self) {
        let mut state = self.state();
        Self::reset(&mut state);
        state.listening += 1;
    }

    /// A listening connection was lost or closed.
    pub(crate) fn not_listening(&self) {
        let mut state = self.state();
        Self::reset(&mut state);
        state.listening = state.listening.saturating_sub(1);
    }

    pub(crate) fn stats(&self) -> KeyCacheStats {
        KeyCacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            reads: self.reads.load(Ordering::Relaxed),
            entries: self.state().entries.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::TenantId;

    fn key() -> AuthenticatedKey {
        AuthenticatedKey {
            key_id: ApiKeyId::new(),
            tenant_id: TenantId(uuid::Uuid::new_v4()),
        }
    }

    fn miss(cache: &KeyCache, hash: &[u8; 32]) -> Ticket {
        match cache.lookup(hash) {
            Lookup::Miss(ticket) => ticket,
            Lookup::Hit { .. } => panic!("expected a miss"),
        }
    }

    fn hit(cache: &KeyCache, hash: &[u8; 32]) -> AuthenticatedKey {
        match cache.lookup(hash) {
            Lookup::Hit { key, .. } => key,
            Lookup::Miss(_) => panic!("expected a hit"),
        }
    }

    fn listening(settings: KeyCacheSettings) -> Arc<KeyCache> {
        let cache = KeyCache::new(settings);
        cache.listening();
        cache
    }

    #[test]
    fn a_stored_key_is_a_hit_until_it_is_revoked() {
        let cache = listening(KeyCacheSettings::default());
        let (hash, live) = ([1; 32], key());
        let ticket = miss(&cache, &hash);
        cache.store(ticket, hash, live);
        assert_eq!(hit(&cache, &hash), live);
        cache.revoked(live.key_id);
        miss(&cache, &hash);
        assert_eq!(cache.stats().hits, 1);
        assert_eq!(cache.stats().reads, 2);
    }

    #[test]
    fn a_read_during_which_a_revocation_was_heard_is_not_stored() {
        let cache = listening(KeyCacheSettings::default());
        let (hash, live) = ([1; 32], key());
        let ticket = miss(&cache, &hash);
        cache.revoked(live.key_id);
        cache.store(ticket, hash, live);
        miss(&cache, &hash);
    }

    #[test]
    fn nothing_is_cached_without_a_listening_connection() {
        let cache = KeyCache::new(KeyCacheSettings::default());
        let (hash, live) = ([1; 32], key());
        cache.store(miss(&cache, &hash), hash, live);
        miss(&cache, &hash);

        cache.listening();
        cache.store(miss(&cache, &hash), hash, live);
        hit(&cache, &hash);
        // The connection is lost: everything is forgotten, and nothing is stored until the
        // process listens again.
        cache.not_listening();
        assert_eq!(cache.stats().entries, 0);
        cache.store(miss(&cache, &hash), hash, live);
        miss(&cache, &hash);
        cache.listening();
        cache.store(miss(&cache, &hash), hash, live);
        hit(&cache, &hash);
    }

    #[test]
    fn a_zero_ttl_turns_the_cache_off() {
        let cache = listening(KeyCacheSettings::OFF);
        let (hash, live) = ([1; 32], key());
        cache.store(miss(&cache, &hash), hash, live);
        miss(&cache, &hash);
        assert_eq!(cache.stats().entries, 0);
    }

    #[test]
    fn entries_expire_after_the_ttl() {
        let cache = listening(KeyCacheSettings {
            ttl: Duration::from_millis(1),
            max_entries: 10,
        });
        let (hash, live) = ([1; 32], key());
        cache.store(miss(&cache, &hash), hash, live);
        let expired = Instant::now() + Duration::from_millis(1);
        while Instant::now() < expired {
            std::hint::spin_loop();
        }
        miss(&cache, &hash);
    }

    #[test]
    fn at_most_max_entries_are_kept_the_oldest_making_room() {
        let cache = listening(KeyCacheSettings {
            ttl: Duration::from_secs(60),
            max_entries: 2,
        });
        let hashes = [[1; 32], [2; 32], [3; 32]];
        for hash in &hashes {
            cache.store(miss(&cache, hash), *hash, key());
        }
        assert_eq!(cache.stats().entries, 2);
        miss(&cache, &hashes[0]);
        hit(&cache, &hashes[1]);
        hit(&cache, &hashes[2]);
    }

    #[test]
    fn a_key_is_touched_at_most_once_per_interval() {
        let cache = listening(KeyCacheSettings::default());
        let (hash, live) = ([1; 32], key());
        cache.store(miss(&cache, &hash), hash, live);
        match cache.lookup(&hash) {
            Lookup::Hit { touch, .. } => assert!(!touch, "just read: its use was noted"),
            Lookup::Miss(_) => panic!("expected a hit"),
        }
    }
}
