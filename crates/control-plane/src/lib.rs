//! The control plane: owns every registry write, creates and places tenants,
//! runs migrations on every backend, and serves the admin API.

pub mod config;
pub mod console;
pub mod erase;
pub mod error;
pub mod export;
pub mod fleet;
pub mod http;
pub mod metrics;
pub mod migrate;
pub mod moves;
pub mod operations;
pub mod reports;
pub mod service;
pub mod usage;

pub use config::{ClusterConfig, ControlPlaneConfig};
pub use error::Error;
pub use service::ControlPlane;
