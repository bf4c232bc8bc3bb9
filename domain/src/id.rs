//! Validated identifiers.
//!
//! Every node of the hierarchy (virtual DER, site, DER) has a [`NodeId`] that is
//! unique across the whole hierarchy, so any node can be addressed by id alone
//! (`/api/v1/nodes/{id}`). Ids are short ASCII so they are safe in URLs, MQTT
//! topics and sled keys without escaping.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Longest id accepted, in bytes.
pub const MAX_ID_LEN: usize = 64;

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The id is empty.
    #[error("id is empty")]
    Empty,
    /// The id is longer than [`MAX_ID_LEN`].
    #[error("id {0:?} is longer than {MAX_ID_LEN} bytes")]
    TooLong(String),
    /// The id has a character outside `A-Z a-z 0-9 - _ . :`.
    #[error("id {id:?} has the character {ch:?}; only A-Z a-z 0-9 - _ . : are allowed")]
    BadChar {
        /// The offending id.
        id: String,
        /// The first character not allowed.
        ch: char,
    },
}

fn check(s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.len() > MAX_ID_LEN {
        let mut cut = MAX_ID_LEN;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        return Err(IdError::TooLong(format!("{}…", &s[..cut])));
    }
    if let Some(ch) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')))
    {
        return Err(IdError::BadChar {
            id: s.to_string(),
            ch,
        });
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(Arc<str>);

        impl $name {
            /// Validates and wraps `s`.
            pub fn new(s: impl AsRef<str>) -> Result<Self, IdError> {
                let s = s.as_ref();
                check(s)?;
                Ok(Self(Arc::from(s)))
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0.to_string()
            }
        }

        // Lookups by `&str` (no allocation on the telemetry path): the
        // derived Hash and Eq are those of the string.
        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", &*self.0)
            }
        }
    };
}

id_type!(
    /// Id of a node of the hierarchy: a virtual DER, a site or a DER.
    NodeId
);
id_type!(
    /// Id of a dispatch order. Callers may choose it (idempotent create) or let
    /// the runtime generate one.
    DispatchId
);

id_type!(
    /// Id of an account (operator, utility, aggregator or participant).
    AccountId
);
id_type!(
    /// Id of a demand-flexibility program.
    ProgramId
);
id_type!(
    /// Id of an enrollment of a resource in a program.
    EnrollmentId
);
id_type!(
    /// Id of a demand-response event.
    EventId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_ids() {
        for s in ["a", "site-0001", "der_1.bat:0", &"x".repeat(MAX_ID_LEN)] {
            assert_eq!(NodeId::new(s).unwrap().as_str(), s);
        }
    }

    #[test]
    fn rejects_bad_ids() {
        assert_eq!(NodeId::new(""), Err(IdError::Empty));
        assert!(matches!(
            NodeId::new("x".repeat(MAX_ID_LEN + 1)),
            Err(IdError::TooLong(_))
        ));
        assert!(matches!(
            NodeId::new("a/b"),
            Err(IdError::BadChar { ch: '/', .. })
        ));
        assert!(matches!(
            NodeId::new("é"),
            Err(IdError::BadChar { ch: 'é', .. })
        ));
        // A long multi-byte id must not panic while being cut for the message.
        assert!(NodeId::new("é".repeat(60)).is_err());
    }

    #[test]
    fn serde_validates() {
        let ok: NodeId = serde_json::from_str("\"abc\"").unwrap();
        assert_eq!(ok.as_str(), "abc");
        assert!(serde_json::from_str::<NodeId>("\"a b\"").is_err());
    }
}
