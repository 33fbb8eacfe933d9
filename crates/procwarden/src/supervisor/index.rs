//! A definition's children by name, indexed once for all runs of the supervisor.
//!
//! A sorted vector of (hash, position) rather than a map of names: it holds no reference to the
//! names, so dropping it is one deallocation instead of one reference count per child, and it
//! is half the size. Finding a name is a binary search, then a comparison with the child's own.

use std::hash::{BuildHasher, RandomState};

use super::ChildSpec;

pub(crate) struct NameIndex {
    hasher: RandomState,
    /// Hash of each name and the position of its child, sorted.
    entries: Vec<(u64, usize)>,
}

/// Why the names cannot be indexed: the first position (in order) that is invalid or repeats
/// an earlier name.
pub(crate) enum IndexError {
    Invalid(usize),
    Duplicate(usize),
}

impl NameIndex {
    /// Indexes `children`, checking every name with `valid`.
    pub(crate) fn build(
        children: &[ChildSpec],
        valid: impl Fn(&str) -> bool,
    ) -> Result<Self, IndexError> {
        let hasher = RandomState::new();
        let mut entries: Vec<(u64, usize)> = children
            .iter()
            .enumerate()
            .map(|(position, child)| (hasher.hash_one(&*child.name), position))
            .collect();
        entries.sort_unstable();
        let invalid = children.iter().position(|child| !valid(&child.name));
        let duplicate = first_duplicate(&entries, children);
        match (invalid, duplicate) {
            (Some(i), Some(d)) if d < i => Err(IndexError::Duplicate(d)),
            (Some(i), _) => Err(IndexError::Invalid(i)),
            (None, Some(d)) => Err(IndexError::Duplicate(d)),
            (None, None) => Ok(Self { hasher, entries }),
        }
    }

    /// The position of the child named `name`.
    pub(crate) fn find(&self, name: &str, children: &[ChildSpec]) -> Option<usize> {
        let hash = self.hasher.hash_one(name);
        let first = self.entries.partition_point(|&(h, _)| h < hash);
        self.entries[first..]
            .iter()
            .take_while(|&&(h, _)| h == hash)
            .map(|&(_, position)| position)
            .find(|&position| &*children[position].name == name)
    }
}

/// The first position whose name an earlier position has already: within each run of equal
/// hashes (sorted by position), every later child is compared with the earlier ones.
fn first_duplicate(entries: &[(u64, usize)], children: &[ChildSpec]) -> Option<usize> {
    let mut first = None;
    for run in entries
        .chunk_by(|a, b| a.0 == b.0)
        .filter(|run| run.len() > 1)
    {
        for (i, &(_, later)) in run.iter().enumerate() {
            let repeats = run[..i]
                .iter()
                .any(|&(_, earlier)| children[earlier].name == children[later].name);
            if repeats {
                first = Some(first.map_or(later, |found: usize| found.min(later)));
            }
        }
    }
    first
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use super::*;

    fn specs(names: &[&str]) -> Vec<ChildSpec> {
        names
            .iter()
            .map(|&name| ChildSpec::new(name, |_| async { Ok::<(), Infallible>(()) }))
            .collect()
    }

    fn not_empty(name: &str) -> bool {
        !name.is_empty()
    }

    #[test]
    fn finds_every_name_and_no_other() {
        let children = specs(&["a", "b", "c"]);
        let index = NameIndex::build(&children, not_empty).ok().unwrap();
        assert_eq!(index.find("a", &children), Some(0));
        assert_eq!(index.find("c", &children), Some(2));
        assert_eq!(index.find("d", &children), None);
    }

    #[test]
    fn reports_the_first_failure_in_order() {
        let check = |names: &[&str]| match NameIndex::build(&specs(names), not_empty) {
            Ok(_) => None,
            Err(IndexError::Invalid(at)) => Some(("invalid", at)),
            Err(IndexError::Duplicate(at)) => Some(("duplicate", at)),
        };
        assert_eq!(check(&["a", "b", "a", "b", "b"]), Some(("duplicate", 2)));
        assert_eq!(check(&["a", "b", "", "a"]), Some(("invalid", 2)));
        assert_eq!(check(&["a", "a", ""]), Some(("duplicate", 1)));
        assert_eq!(check(&["", "x", ""]), Some(("invalid", 0)));
        assert_eq!(check(&["x", "y"]), None);
    }

    #[test]
    fn equal_hashes_are_told_apart_by_name() {
        let children = specs(&["a", "b"]);
        // Both names made to collide: only the comparison of names can find the right one.
        let hasher = RandomState::new();
        let hash = hasher.hash_one("b");
        let index = NameIndex {
            hasher,
            entries: vec![(hash, 0), (hash, 1)],
        };
        assert_eq!(index.find("b", &children), Some(1));
        assert_eq!(
            first_duplicate(&[(7, 0), (7, 1)], &specs(&["a", "a"])),
            Some(1)
        );
        assert_eq!(
            first_duplicate(&[(7, 0), (7, 1)], &specs(&["a", "b"])),
            None
        );
    }
}
