//! Tenant ids, validated as Lambda does.
//!
//! A tenant id is only ever a value: a label, a log field, a message field.
//! It never becomes part of a file path (`../x` is a valid id).

/// The characters a tenant id may hold besides ASCII letters and digits:
/// the AWS API model's `[a-zA-Z0-9\._:\/=+\-@ ]` (the space included).
const TENANT_ID_PUNCTUATION: &str = "._:/=+-@ ";

/// A tenant id: 1 to 256 characters from `[a-zA-Z0-9._:/=+\-@ ]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(String);

/// Why a tenant id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidTenantId {
    /// Empty.
    #[error("the tenant id is empty")]
    Empty,
    /// Over 256 characters.
    #[error("the tenant id is {0} characters long; the limit is 256")]
    TooLong(usize),
    /// A character outside the allowed set.
    #[error(
        "the tenant id contains {0:?}; allowed are letters, digits, spaces and . _ : / = + @ -"
    )]
    BadChar(char),
}

impl TenantId {
    /// Validates `s`.
    pub fn parse(s: &str) -> Result<Self, InvalidTenantId> {
        if s.is_empty() {
            return Err(InvalidTenantId::Empty);
        }
        let n = s.chars().count();
        if n > 256 {
            return Err(InvalidTenantId::TooLong(n));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || TENANT_ID_PUNCTUATION.contains(*c)))
        {
            return Err(InvalidTenantId::BadChar(c));
        }
        Ok(Self(s.to_string()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for TenantId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_like_lambda() {
        assert!(TenantId::parse("tenant-A").is_ok());
        assert!(TenantId::parse("org/42:user=7+x@y.z_w").is_ok());
        assert_eq!(TenantId::parse(""), Err(InvalidTenantId::Empty));
        assert_eq!(
            TenantId::parse(&"a".repeat(257)),
            Err(InvalidTenantId::TooLong(257))
        );
        assert!(TenantId::parse("tenant A").is_ok());
        assert!(TenantId::parse("../x").is_ok());
        assert!(TenantId::parse(&" ".repeat(256)).is_ok());
        assert_eq!(TenantId::parse("a|b"), Err(InvalidTenantId::BadChar('|')));
        assert_eq!(TenantId::parse("a\tb"), Err(InvalidTenantId::BadChar('\t')));
        assert_eq!(TenantId::parse("é"), Err(InvalidTenantId::BadChar('é')));
    }
}
