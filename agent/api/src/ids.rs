//! Validation of container and exec ids, shared so the client can reject a
//! bad id before sending it and the agent rejects it again on arrival.

/// Longest accepted id, in bytes.
pub const MAX_ID_LEN: usize = 128;

/// Why an id was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    #[error("id is empty; give a non-empty id")]
    Empty,
    #[error("id is longer than {MAX_ID_LEN} bytes; use a shorter id")]
    TooLong,
    #[error("id contains {0:?}; use only letters, digits, '-', '_' and '.'")]
    BadChar(char),
    #[error("id may not start with '.'; use a name without a leading dot")]
    LeadingDot,
}

/// Accepts `[A-Za-z0-9_.-]{1,128}` not starting with `.` (so never `.`,
/// `..` or anything containing `/`).
pub fn validate_id(id: &str) -> Result<(), IdError> {
    if id.is_empty() {
        return Err(IdError::Empty);
    }
    if id.len() > MAX_ID_LEN {
        return Err(IdError::TooLong);
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(IdError::BadChar(c));
    }
    if id.starts_with('.') {
        return Err(IdError::LeadingDot);
    }
    Ok(())
}

/// Like [`validate_id`], but the empty string (meaning "the init process")
/// is accepted.
pub fn validate_exec_id(id: &str) -> Result<(), IdError> {
    if id.is_empty() {
        Ok(())
    } else {
        validate_id(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_typical_ids() {
        assert_eq!(validate_id("abc-123_x.y"), Ok(()));
        assert_eq!(validate_id(&"a".repeat(MAX_ID_LEN)), Ok(()));
        assert_eq!(validate_exec_id(""), Ok(()));
    }

    #[test]
    fn rejects_traversal_and_junk() {
        assert_eq!(validate_id(""), Err(IdError::Empty));
        assert_eq!(validate_id(".."), Err(IdError::LeadingDot));
        assert_eq!(validate_id("."), Err(IdError::LeadingDot));
        assert_eq!(validate_id("a/b"), Err(IdError::BadChar('/')));
        assert_eq!(validate_id("../x"), Err(IdError::BadChar('/')));
        assert_eq!(validate_id("a\0"), Err(IdError::BadChar('\0')));
        assert_eq!(
            validate_id(&"a".repeat(MAX_ID_LEN + 1)),
            Err(IdError::TooLong)
        );
        assert_eq!(validate_exec_id("x/y"), Err(IdError::BadChar('/')));
    }
}
