//! From a validated callback to the record a consumer receives: the apps a bridge serves
//! ([`apps`]), the destination templates ([`template`]), the partitioner ([`partition`]) and the
//! one pure step that builds a [`Record`](crate::core::Record) ([`build`]).

pub mod apps;
pub mod build;
pub mod partition;
pub mod template;

pub use apps::{App, Apps};
pub use build::RecordBuilder;
pub use template::Template;
