//! The request path: API key or a tenant user's token -> tenant -> placement -> backend pool -> a
//! transaction entered as the tenant -> tenant-scoped queries. Never writes to
//! the registry and links no cloud SDK.

pub mod budget;
pub mod caller;
pub mod config;
pub mod data;
pub(crate) mod gate;
pub mod http;
pub mod jobs;
pub mod limits;
pub mod resolver;
pub mod scope;
pub mod signins;
pub mod tokens;
pub mod usage;
pub mod wire;

pub use config::AppConfig;
pub use resolver::Resolver;
