//! The process: the flags ([`cli`]) and the configuration file ([`config`]) become one
//! [`Config`](config::Config); [`bridge`] builds every component from it and [`shutdown`] stops
//! them in order.

pub mod bridge;
pub mod cli;
pub mod config;
pub mod metrics;
pub mod shutdown;
