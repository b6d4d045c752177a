//! From a validated callback to the record a consumer receives: the apps a bridge serves
//! ([`apps`]), where a record goes (its subject or topic template and its partition:
//! [`destination`]) and the one pure step that builds a [`Record`](crate::core::Record)
//! ([`build`]).

pub mod apps;
pub mod build;
pub mod destination;

pub use apps::{App, Apps};
pub use build::RecordBuilder;
pub use destination::{murmur2, partition, Template};
