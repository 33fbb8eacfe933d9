//! The one rule for names, shared by children, supervisors and shared services.

/// The longest name, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// Checks that `name` is 1 to 64 bytes of `[A-Za-z0-9._-]` and does not start with a dot; the
/// reason it is not, otherwise.
///
/// Names become path segments (`root/db/pool`) and file names (`postgres.state`), so `/`, other
/// separators, `..` and hidden names are refused.
pub(crate) fn check(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        Err("it is empty")
    } else if name.len() > MAX_NAME_LEN {
        Err("it is longer than 64 bytes")
    } else if name.starts_with('.') {
        Err("it starts with a dot")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        Err("only A-Z, a-z, 0-9, '.', '_' and '-' are allowed")
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for name in ["db", "pool-1", "a.b_c", &"x".repeat(64)] {
            assert!(check(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn refuses_bad_names_with_the_reason() {
        for (name, reason) in [
            ("", "empty"),
            (".hidden", "dot"),
            ("..", "dot"),
            ("a/b", "allowed"),
            ("../x", "dot"),
            ("sp ace", "allowed"),
            (&"x".repeat(65), "64"),
        ] {
            let err = check(name).unwrap_err();
            assert!(err.contains(reason), "{name:?}: {err}");
        }
    }
}
