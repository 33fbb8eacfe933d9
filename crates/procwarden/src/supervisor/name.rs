//! Child names, checked before they enter a supervisor.

use super::SupervisorError;

/// The longest name a child may have, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// Checks that `name` is 1 to 64 bytes of `[A-Za-z0-9._-]` and does not start with a dot.
///
/// Names become path segments (`root/db/pool`), so `/` and other separators are refused.
pub(crate) fn validate(name: &str) -> Result<(), SupervisorError> {
    let reason = if name.is_empty() {
        "it is empty"
    } else if name.len() > MAX_NAME_LEN {
        "it is longer than 64 bytes"
    } else if name.starts_with('.') {
        "it starts with a dot"
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        "only A-Z, a-z, 0-9, '.', '_' and '-' are allowed"
    } else {
        return Ok(());
    };
    Err(SupervisorError::InvalidName {
        name: name.to_owned(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for name in ["db", "pool-1", "a.b_c", &"x".repeat(64)] {
            assert!(validate(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn refuses_bad_names_with_the_reason() {
        for (name, reason) in [
            ("", "empty"),
            (".hidden", "dot"),
            ("a/b", "allowed"),
            ("sp ace", "allowed"),
            (&"x".repeat(65), "64"),
        ] {
            let err = validate(name).unwrap_err().to_string();
            assert!(err.contains(reason), "{name:?}: {err}");
        }
    }
}
