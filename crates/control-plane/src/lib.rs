//! The control plane: owns every registry write, creates and places tenants,
//! runs durable operations and migrations on every backend, and serves the
//! admin API and the console.
//!
//! Layers, bottom up (a file imports only from its own layer's leaves or
//! below): `error`, `config`, `operation`, `registry`, `migrate` ->
//! `plane` (the handle) -> `backends`, `backend`, `placement`, `tenants` ->
//! `kind` (the trait) -> one file or folder per kind (`provision`, `retire`,
//! `erase`, `moves/`) -> `runner` and `operations` -> `identity`, `usage/`, `reports`,
//! `fleet`, `export`, `metrics` -> `http` (the admin API), `console/`, and
//! `server` mounting both.

pub mod auth;
pub mod backend;
pub mod backends;
pub mod config;
pub mod console;
pub mod erase;
pub mod error;
pub mod estates;
pub mod export;
pub mod fleet;
pub mod http;
pub mod http_estates;
pub mod http_identity;
pub mod identity;
pub mod kind;
pub mod metrics;
pub mod migrate;
pub mod moves;
pub mod operation;
pub mod operations;
pub mod placement;
pub mod plane;
pub mod provision;
pub mod registry;
pub mod reports;
pub mod retire;
pub mod runner;
pub mod server;
pub mod staff;
pub mod start;
pub mod tenants;
pub mod usage;
pub mod users;

pub use config::{ClusterConfig, ControlPlaneConfig};
pub use error::Error;
pub use plane::ControlPlane;
