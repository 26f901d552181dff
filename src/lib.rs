//! The `tenantry` binary's library: configuration loading, logging, and the
//! wiring of the app and admin listeners. Domain code lives in the crates.

pub mod cli;
pub mod config;
pub mod dev;
pub mod startup;
pub mod telemetry;
pub mod testkit;

pub use config::Settings;
pub use startup::Stack;
