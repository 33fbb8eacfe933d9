//! Child names, checked before they enter a supervisor.

use super::SupervisorError;

/// Checks a child or supervisor name against the crate's one rule for names.
pub(crate) fn validate(name: &str) -> Result<(), SupervisorError> {
    crate::name::check(name).map_err(|reason| SupervisorError::InvalidName {
        name: name.to_owned(),
        reason,
    })
}
