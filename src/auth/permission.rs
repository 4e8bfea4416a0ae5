//! The fixed set of operator permissions.
//!
//! Roles (in the `role` table) map names to sets of these. A new
//! permission is added here, to the coverage table in
//! `tests/it/authz_coverage.rs`, and by migration to the built-in roles
//! that should hold it (`admin` holds `*`, every permission).

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

macro_rules! permissions {
    ($($variant:ident => $name:literal,)*) => {
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Permission {
            $($variant,)*
        }

        impl Permission {
            pub const ALL: &'static [Permission] = &[$(Permission::$variant,)*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(Permission::$variant => $name,)*
                }
            }
        }

        impl FromStr for Permission {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($name => Ok(Permission::$variant),)*
                    other => Err(format!("unknown permission {other:?}")),
                }
            }
        }
    };
}

permissions! {
    ContentRead => "CONTENT_READ",
    ContentWrite => "CONTENT_WRITE",
    ContentPromote => "CONTENT_PROMOTE",
    PackageRead => "PACKAGE_READ",
    PackageWrite => "PACKAGE_WRITE",
    DeviceRead => "DEVICE_READ",
    DeviceWrite => "DEVICE_WRITE",
    GroupWrite => "GROUP_WRITE",
    DeploymentRead => "DEPLOYMENT_READ",
    DeploymentWrite => "DEPLOYMENT_WRITE",
    CommandRead => "COMMAND_READ",
    CommandSend => "COMMAND_SEND",
    AuditRead => "AUDIT_READ",
    RoleRead => "ROLE_READ",
    RoleAdmin => "ROLE_ADMIN",
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The wildcard stored for the `admin` role: every permission, also ones
/// added after the role was created. It means that for the built-in
/// `admin` role alone; in any other role's list it grants nothing.
pub const ALL_PERMISSIONS: &str = "*";

/// Expand a role's stored permission list (`["*"]` or names) into a set;
/// `wildcard` says whether the role may hold `*` (the built-in `admin`).
/// Unknown names (from a newer or older version) are skipped, never fatal.
pub fn expand(stored: &serde_json::Value, wildcard: bool) -> BTreeSet<Permission> {
    let mut set = BTreeSet::new();
    for name in stored.as_array().into_iter().flatten().filter_map(|v| v.as_str()) {
        if name == ALL_PERMISSIONS {
            if wildcard {
                set.extend(Permission::ALL.iter().copied());
            } else {
                tracing::warn!("a role other than admin holds \"*\"; ignored");
            }
        } else if let Ok(permission) = name.parse() {
            set.insert(permission);
        } else {
            tracing::warn!(permission = name, "role holds an unknown permission; ignored");
        }
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for p in Permission::ALL {
            assert_eq!(p.as_str().parse::<Permission>(), Ok(*p));
        }
    }

    #[test]
    fn wildcard_expands_to_all() {
        assert_eq!(expand(&serde_json::json!(["*"]), true).len(), Permission::ALL.len());
        assert_eq!(
            expand(&serde_json::json!(["AUDIT_READ", "NOPE"]), true).into_iter().collect::<Vec<_>>(),
            vec![Permission::AuditRead]
        );
    }

    #[test]
    fn wildcard_grants_nothing_outside_admin() {
        assert_eq!(
            expand(&serde_json::json!(["*", "AUDIT_READ"]), false).into_iter().collect::<Vec<_>>(),
            vec![Permission::AuditRead]
        );
    }
}
