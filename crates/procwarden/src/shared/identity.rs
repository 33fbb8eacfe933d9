//! From a service's identity — user, state directory, name — to IPC keys and a fingerprint.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// How many keys a service may try before giving up: a key taken by another service's set moves
/// it to the next one.
pub(crate) const PROBES: u32 = 16;

/// FNV-1a, 64 bits: stable across builds and Rust versions, which `std`'s hasher is not, and
/// every process sharing a service must compute the same key.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &byte in *part {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Separate the parts so that ("ab", "c") and ("a", "bc") differ.
        hash ^= 0xff;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Who a service is: the same for every process of the same user, state directory and name.
#[derive(Clone, Debug)]
pub(crate) struct Identity {
    uid: [u8; 4],
    dir: Vec<u8>,
    name: String,
}

impl Identity {
    pub(crate) fn new(uid: u32, dir: &Path, name: &str) -> Self {
        Self {
            uid: uid.to_le_bytes(),
            dir: dir.as_os_str().as_bytes().to_vec(),
            name: name.to_owned(),
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The IPC key to try at `probe`: never 0 (`IPC_PRIVATE`).
    pub(crate) fn key(&self, probe: u32) -> i32 {
        let hash = fnv1a(&[
            b"procwarden-key",
            &self.uid,
            &self.dir,
            self.name.as_bytes(),
            &probe.to_le_bytes(),
        ]);
        let folded = (hash ^ (hash >> 32)) as u32 as i32;
        if folded == 0 { 1 } else { folded }
    }

    /// A 45-bit fingerprint, in three 15-bit semaphore values, that tells this service's set from
    /// another's that landed on the same key.
    pub(crate) fn tag(&self) -> [u16; 3] {
        let hash = fnv1a(&[
            b"procwarden-tag",
            &self.uid,
            &self.dir,
            self.name.as_bytes(),
        ]);
        [
            (hash & 0x7fff) as u16,
            ((hash >> 15) & 0x7fff) as u16,
            ((hash >> 30) & 0x7fff) as u16,
        ]
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn a_hundred_thousand_names_have_distinct_identities() {
        let dir = Path::new("/run/user/1000/procwarden");
        let mut keys = HashSet::new();
        let mut tags = HashSet::new();
        let mut key_collisions = 0;
        for i in 0..100_000 {
            let identity = Identity::new(1000, dir, &format!("service-{i}"));
            if !keys.insert(identity.key(0)) {
                key_collisions += 1;
            }
            assert!(
                tags.insert(identity.tag()),
                "fingerprint collision at service-{i}"
            );
        }
        // 32-bit keys collide now and then (about one pair per 100,000 names); such a pair is
        // told apart by the fingerprint and the second one moves to its next key.
        assert!(key_collisions <= 5, "{key_collisions} key collisions");
    }

    #[test]
    fn anagrams_users_and_directories_differ() {
        let dir = Path::new("/tmp/a");
        let redis = Identity::new(1, dir, "redis");
        assert_ne!(redis.key(0), Identity::new(1, dir, "sider").key(0));
        assert_ne!(redis.key(0), Identity::new(2, dir, "redis").key(0));
        assert_ne!(
            redis.key(0),
            Identity::new(1, Path::new("/tmp/b"), "redis").key(0)
        );
        assert_ne!(redis.key(0), redis.key(1));
        assert_eq!(
            redis.key(3),
            Identity::new(1, dir, "redis").key(3),
            "stable"
        );
    }
}
