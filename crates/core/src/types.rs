//! Vocabulary types. Each parses from its wire string and can only hold a valid value.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

/// An enum with one wire name per variant: `as_str`, `FromStr` (a clear
/// message naming the choices), `Display`, serde and OpenAPI as that name.
#[macro_export]
macro_rules! wire_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $(#[serde(rename = $text)] $variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::ParseError;
            fn from_str(s: &str) -> Result<Self, $crate::ParseError> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err($crate::ParseError(format!(
                        concat!("unknown ", stringify!($name), " `{}`; expected one of: {}"),
                        other,
                        [$($text),+].join(", ")
                    ))),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

wire_enum!(
    /// Where a tenant's rows live: beside others in a shared pool, or alone.
    Tier { Shared => "shared", Dedicated => "dedicated" }
);
wire_enum!(
    /// A backend holds many tenants (`shared_pool`) or one (`dedicated`); a
    /// `template` holds none and is copied to make dedicated databases.
    BackendKind { SharedPool => "shared_pool", Dedicated => "dedicated", Template => "template" }
);
wire_enum!(
    /// How a backend was made: a database on a managed cluster, an RDS instance, or by hand.
    Engine { Logical => "logical", Rds => "rds", External => "external" }
);
wire_enum!(
    TenantStatus {
        Provisioning => "provisioning",
        Active => "active",
        Suspended => "suspended",
        Erasing => "erasing",
        Erased => "erased",
        Failed => "failed",
        Reverted => "reverted",
    }
);
wire_enum!(
    BackendStatus {
        Provisioning => "provisioning",
        Ready => "ready",
        Draining => "draining",
        Retired => "retired",
        Failed => "failed",
    }
);

/// A tenant's URL-safe handle: `^[a-z0-9][a-z0-9-]{1,62}$`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct TenantSlug(String);

impl TenantSlug {
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        let b = s.as_bytes();
        let ok = (2..=63).contains(&b.len())
            && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
            && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-');
        if ok {
            Ok(TenantSlug(s.to_string()))
        } else {
            Err(ParseError(format!(
                "invalid slug `{s}`: use 2-63 characters of a-z, 0-9 and '-', starting with a letter or digit"
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantSlug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a tenant is writable now. The epoch increases at every move; a backend
/// accepts a tenant transaction only at its current epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Placement {
    pub backend_id: Uuid,
    pub epoch: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_follow_the_documented_pattern() {
        for good in ["acme", "a1", "globex-corp", "0day"] {
            assert_eq!(TenantSlug::parse(good).map(|s| s.0), Ok(good.to_string()));
        }
        for bad in ["", "a", "-acme", "Acme", "acme_corp", "acme corp", &"a".repeat(64)] {
            assert!(TenantSlug::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn enums_round_trip_their_wire_names() {
        for t in Tier::ALL {
            assert_eq!(t.as_str().parse::<Tier>(), Ok(*t));
        }
        let err = "gold".parse::<Tier>().unwrap_err();
        assert_eq!(err.0, "unknown Tier `gold`; expected one of: shared, dedicated");
    }
}
