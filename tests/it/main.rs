//! Black-box tests: the real server on port 0, a real HTTP client, a real
//! PostgreSQL 15 cluster started by the harness (one per test process), and a
//! fresh registry and shared pool database per test.

mod helpers;

mod abuse;
mod admin;
mod adoption;
mod app_api;
mod bad_input;
mod console;
mod contract;
mod cutover;
mod estates;
mod fleet;
mod forgery;
mod identity;
mod isolation;
mod migrations;
mod moves;
mod operations;
mod rds;
mod reports;
mod routing;
mod staff;
mod tls;
mod topology;
mod usage;
