//! What the benchmarks share.

/// A positive integer from the environment variable `name`, or `default` when it is unset; when
/// it is set to anything else, a message that names the variable and its value.
pub fn env_usize(name: &str, default: usize) -> Result<usize, String> {
    match std::env::var(name) {
        Ok(value) => match value.trim().parse() {
            Ok(parsed) if parsed > 0 => Ok(parsed),
            _ => Err(format!("{name}={value:?} is not a positive integer")),
        },
        Err(_) => Ok(default),
    }
}
