//! Small helpers over `std::sync`.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, going on with the data if a panicking thread poisoned it: every mutex here
/// guards state that stays valid between operations, and a child's panic is already reported as
/// its failure.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
