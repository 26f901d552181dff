//! Creates and retires PostgreSQL databases and clusters. A leaf crate: it knows
//! PostgreSQL administration (and, later, cloud APIs), nothing of HTTP, the
//! registry or tenants' data.

pub mod error;
pub mod local_cluster;
pub mod logical;
pub mod rds;
pub mod scram;

pub use error::Error;
pub use local_cluster::{ClusterSpec, LocalCluster};
pub use logical::{DatabaseAddress, LogicalProvisioner, RoleCredentials};
pub use rds::{RdsConfig, RdsError, RdsProvisioner};

/// Quotes an SQL identifier (`"name"`, doubling inner quotes).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes an SQL string literal (`'text'`, doubling inner quotes).
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}
