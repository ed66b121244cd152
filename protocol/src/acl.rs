//! Access control entries and the one function that decides with them (ARCHITECTURE.md,
//! "Security", Authorization).
//!
//! An [`Acl`] says that a principal (or `*`, everyone) is allowed or denied one operation on
//! resources of one type whose name matches literally or by prefix. [`authorize`] decides a
//! request: a matching deny wins over any allow, and nothing matching is a deny. The broker
//! checks every request with it; the CLI parses and prints entries with the `FromStr` and
//! `Display` impls here, so both spell them the same.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// What kind of thing an entry protects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ResourceType {
    Topic,
    Group,
    /// The broker (or cluster) as a whole: creating topics, moving partitions, managing ACLs.
    /// Its one resource is named [`CLUSTER`].
    Cluster,
}

/// The name of the one cluster resource.
pub const CLUSTER: &str = "cluster";

/// How an entry's name matches a resource's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PatternType {
    /// The same name; `*` matches every name.
    Literal,
    /// Every name that starts with it.
    Prefix,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Operation {
    Read,
    Write,
    Create,
    Delete,
    Alter,
    Describe,
    /// Every operation.
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Permission {
    Allow,
    Deny,
}

/// One access control entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Acl {
    /// A user name, or `*` for every principal.
    pub principal: String,
    pub resource: ResourceType,
    pub pattern: PatternType,
    pub name: String,
    pub operation: Operation,
    pub permission: Permission,
}

/// Selects entries to list: each field that is set must be equal.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclFilter {
    pub principal: Option<String>,
    pub resource: Option<ResourceType>,
    pub name: Option<String>,
}

impl AclFilter {
    pub fn matches(&self, acl: &Acl) -> bool {
        self.principal.as_ref().is_none_or(|p| *p == acl.principal)
            && self.resource.is_none_or(|r| r == acl.resource)
            && self.name.as_ref().is_none_or(|n| *n == acl.name)
    }
}

impl Acl {
    /// Whether this entry speaks of `name` (of its resource type).
    fn covers(&self, name: &str) -> bool {
        match self.pattern {
            PatternType::Literal => self.name == name || self.name == "*",
            PatternType::Prefix => name.starts_with(self.name.as_str()),
        }
    }

    /// Whether this entry grants (or, for a deny, refuses) `op`. Allowing read, write, delete
    /// or alter allows describe too (one cannot read a topic one may not see); a deny refuses
    /// only what it names.
    fn grants(&self, op: Operation) -> bool {
        use Operation::*;
        self.operation == op
            || self.operation == All
            || (op == Describe
                && self.permission == Permission::Allow
                && matches!(self.operation, Read | Write | Delete | Alter))
    }

    /// Checks an entry before it is stored: a name for a topic or group, the cluster's name for
    /// the cluster.
    pub fn validate(&self) -> Result<(), String> {
        if self.principal.is_empty() {
            return Err("an ACL needs a principal (a user name, or * for everyone)".into());
        }
        match self.resource {
            ResourceType::Cluster
                if self.name != CLUSTER || self.pattern != PatternType::Literal =>
            {
                Err(format!(
                    "the cluster resource is named {CLUSTER:?}, literally (got {:?} {:?})",
                    self.pattern, self.name
                ))
            }
            _ if self.name.is_empty() && self.pattern == PatternType::Literal => {
                Err("an ACL needs a resource name (* for every one, or a prefix)".into())
            }
            _ if self.name.len() > 255 => Err("a resource name is at most 255 bytes".into()),
            _ => Ok(()),
        }
    }
}

/// Whether `principal` may do `op` on the resource `(resource, name)` under `acls`: some entry
/// for it (or for `*`) allows it and none denies it.
pub fn authorize<'a>(
    acls: impl IntoIterator<Item = &'a Acl>,
    principal: &str,
    resource: ResourceType,
    name: &str,
    op: Operation,
) -> bool {
    let mut allowed = false;
    for acl in acls {
        if acl.resource != resource
            || (acl.principal != principal && acl.principal != "*")
            || !acl.covers(name)
            || !acl.grants(op)
        {
            continue;
        }
        match acl.permission {
            Permission::Deny => return false,
            Permission::Allow => allowed = true,
        }
    }
    allowed
}

macro_rules! words {
    ($ty:ident { $($variant:ident => $word:literal),* $(,)? }) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(match self { $($ty::$variant => $word,)* })
            }
        }

        impl FromStr for $ty {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, String> {
                match s.to_ascii_lowercase().as_str() {
                    $($word => Ok($ty::$variant),)*
                    _ => Err(format!(
                        "unknown {} {s:?} (one of: {})",
                        stringify!($ty).to_ascii_lowercase(),
                        [$($word),*].join(", ")
                    )),
                }
            }
        }
    };
}

words!(ResourceType { Topic => "topic", Group => "group", Cluster => "cluster" });
words!(PatternType { Literal => "literal", Prefix => "prefix" });
words!(Operation {
    Read => "read",
    Write => "write",
    Create => "create",
    Delete => "delete",
    Alter => "alter",
    Describe => "describe",
    All => "all",
});
words!(Permission { Allow => "allow", Deny => "deny" });

impl fmt::Display for Acl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {} {}:{}",
            self.permission, self.principal, self.operation, self.resource, self.pattern, self.name
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(
        principal: &str,
        resource: ResourceType,
        pattern: PatternType,
        name: &str,
        operation: Operation,
        permission: Permission,
    ) -> Acl {
        Acl {
            principal: principal.into(),
            resource,
            pattern,
            name: name.into(),
            operation,
            permission,
        }
    }

    use Operation::*;
    use PatternType::*;
    use Permission::*;
    use ResourceType::*;

    #[test]
    fn nothing_matching_is_a_deny_and_deny_wins() {
        let acls = vec![
            acl("alice", Topic, Literal, "orders", Write, Allow),
            acl("*", Topic, Prefix, "public.", Read, Allow),
            acl("mallory", Topic, Prefix, "public.", Read, Deny),
            acl("bob", Group, Literal, "*", All, Allow),
            acl("bob", Group, Prefix, "admin-", Delete, Deny),
        ];
        assert!(authorize(&acls, "alice", Topic, "orders", Write));
        assert!(!authorize(&acls, "alice", Topic, "orders", Read));
        assert!(
            !authorize(&acls, "alice", Topic, "orders2", Write),
            "literal is exact"
        );
        assert!(!authorize(&acls, "bob", Topic, "orders", Write));
        assert!(
            !authorize(&acls, "alice", Group, "orders", Write),
            "type matters"
        );
        // Prefix, everyone, and a deny for one principal over everyone's allow.
        assert!(authorize(&acls, "carol", Topic, "public.news", Read));
        assert!(!authorize(&acls, "carol", Topic, "private.news", Read));
        assert!(!authorize(&acls, "mallory", Topic, "public.news", Read));
        // All, and a narrower deny within it.
        assert!(authorize(&acls, "bob", Group, "payments", Delete));
        assert!(authorize(&acls, "bob", Group, "admin-x", Read));
        assert!(!authorize(&acls, "bob", Group, "admin-x", Delete));
        assert!(!authorize(&[], "alice", Cluster, CLUSTER, Describe));
    }

    #[test]
    fn allowing_use_of_a_resource_allows_describing_it_but_a_deny_stays_narrow() {
        let acls = vec![
            acl("alice", Topic, Literal, "orders", Read, Allow),
            acl("alice", Topic, Literal, "audit", Create, Allow),
            acl("bob", Topic, Literal, "*", Describe, Allow),
            acl("bob", Topic, Literal, "orders", Read, Deny),
        ];
        assert!(authorize(&acls, "alice", Topic, "orders", Describe));
        assert!(
            !authorize(&acls, "alice", Topic, "audit", Describe),
            "create does not"
        );
        assert!(authorize(&acls, "bob", Topic, "orders", Describe));
        assert!(!authorize(&acls, "bob", Topic, "orders", Read));
    }

    #[test]
    fn entries_read_back_as_written() {
        for s in ["topic", "GROUP", "cluster"] {
            let r: ResourceType = s.parse().unwrap();
            assert_eq!(r.to_string(), s.to_ascii_lowercase());
        }
        let e = "reed".parse::<Operation>().unwrap_err();
        assert!(e.contains("read, write"), "{e}");
        let a = acl("alice", Topic, Prefix, "orders.", Read, Deny);
        assert_eq!(a.to_string(), "deny alice read topic prefix:orders.");
        assert!(a.validate().is_ok());
        assert!(
            acl("a", Cluster, Literal, "x", Alter, Allow)
                .validate()
                .is_err()
        );
        assert!(
            acl("a", Topic, Literal, "", Read, Allow)
                .validate()
                .is_err()
        );
        assert!(
            acl("", Topic, Literal, "t", Read, Allow)
                .validate()
                .is_err()
        );
        assert!(acl("a", Topic, Prefix, "", Read, Allow).validate().is_ok());
    }
}
