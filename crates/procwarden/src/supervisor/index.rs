//! A definition's children by name, indexed once for all runs of the supervisor.
//!
//! A sorted vector of (hash, position) rather than a map of names: it holds no reference to the
//! names, so dropping it is one deallocation instead of one reference count per child, and it
//! is half the size. Finding a name is a binary search, then a comparison with the child's own.
//! A supervisor of a few children has no index at all: comparing their names in order is as
//! quick, and it spares the supervisor an allocation to make and, when it stops, to free.

use std::hash::{BuildHasher, RandomState};

use super::ChildSpec;

/// Up to this many children, names are compared in order rather than indexed.
const SCAN_UP_TO: usize = 16;

pub(crate) struct NameIndex {
    /// `None` for a definition of at most [`SCAN_UP_TO`] children.
    hashed: Option<Hashed>,
}

struct Hashed {
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
        let invalid = children.iter().position(|child| !valid(&child.name));
        let (hashed, duplicate) = if children.len() <= SCAN_UP_TO {
            (None, first_repeat(children))
        } else {
            let hasher = RandomState::new();
            let mut entries: Vec<(u64, usize)> = children
                .iter()
                .enumerate()
                .map(|(position, child)| (hasher.hash_one(&*child.name), position))
                .collect();
            entries.sort_unstable();
            let duplicate = first_duplicate(&entries, children);
            (Some(Hashed { hasher, entries }), duplicate)
        };
        match (invalid, duplicate) {
            (Some(i), Some(d)) if d < i => Err(IndexError::Duplicate(d)),
            (Some(i), _) => Err(IndexError::Invalid(i)),
            (None, Some(d)) => Err(IndexError::Duplicate(d)),
            (None, None) => Ok(Self { hashed }),
        }
    }

    /// The position of the child named `name`.
    pub(crate) fn find(&self, name: &str, children: &[ChildSpec]) -> Option<usize> {
        let Some(Hashed { hasher, entries }) = &self.hashed else {
            return children.iter().position(|child| &*child.name == name);
        };
        let hash = hasher.hash_one(name);
        let first = entries.partition_point(|&(h, _)| h < hash);
        entries[first..]
            .iter()
            .take_while(|&&(h, _)| h == hash)
            .map(|&(_, position)| position)
            .find(|&position| &*children[position].name == name)
    }
}

/// The first position whose name an earlier position has already, by comparing every pair.
fn first_repeat(children: &[ChildSpec]) -> Option<usize> {
    (1..children.len()).find(|&later| {
        children[..later]
            .iter()
            .any(|earlier| earlier.name == children[later].name)
    })
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
    fn many_children_are_indexed_and_found_alike() {
        let names: Vec<String> = (0..=SCAN_UP_TO).map(|i| format!("c{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let children = specs(&names);
        let index = NameIndex::build(&children, not_empty).ok().unwrap();
        assert!(
            index.hashed.is_some(),
            "more than SCAN_UP_TO children are indexed"
        );
        for (position, name) in names.iter().enumerate() {
            assert_eq!(index.find(name, &children), Some(position));
        }
        assert_eq!(index.find("c", &children), None);

        let few = specs(&names[..SCAN_UP_TO]);
        let scanned = NameIndex::build(&few, not_empty).ok().unwrap();
        assert!(scanned.hashed.is_none(), "a few children are not indexed");
        assert_eq!(scanned.find("c3", &few), Some(3));
        assert_eq!(scanned.find(names[SCAN_UP_TO], &few), None);
    }

    #[test]
    fn the_first_failure_is_the_same_whether_indexed_or_not() {
        let mut names: Vec<String> = (0..SCAN_UP_TO + 4).map(|i| format!("c{i}")).collect();
        names[SCAN_UP_TO + 2] = "c5".to_owned();
        names[SCAN_UP_TO + 3] = String::new();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let outcome = |names: &[&str]| match NameIndex::build(&specs(names), not_empty) {
            Ok(_) => None,
            Err(IndexError::Invalid(at)) => Some(("invalid", at)),
            Err(IndexError::Duplicate(at)) => Some(("duplicate", at)),
        };
        assert_eq!(outcome(&names), Some(("duplicate", SCAN_UP_TO + 2)));
        let mut few = names[..SCAN_UP_TO - 2].to_vec();
        few.push("c5");
        few.push("");
        assert_eq!(outcome(&few), Some(("duplicate", SCAN_UP_TO - 2)));
    }

    #[test]
    fn equal_hashes_are_told_apart_by_name() {
        let children = specs(&["a", "b"]);
        // Both names made to collide: only the comparison of names can find the right one.
        let hasher = RandomState::new();
        let hash = hasher.hash_one("b");
        let index = NameIndex {
            hashed: Some(Hashed {
                hasher,
                entries: vec![(hash, 0), (hash, 1)],
            }),
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
