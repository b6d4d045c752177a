//! The Tencent IM callback protocol: the URL and its signature (`query.rs`), the body
//! (`body.rs`), the command table and the answer format. Pure functions; nothing here does I/O.
//!
//! The types make the order of checks hard to get wrong: a [`VerifiedQuery`] exists only once
//! the URL passed the app id and signature checks, and a [`Callback`] (the only thing a
//! [`crate::wire::RecordBuilder`] turns into a record) exists only once its body was validated against that query.

pub mod body;
pub mod commands;
pub mod error;
pub mod query;
pub mod reply;

pub use body::{Callback, Fields};
pub use error::CallbackError;
pub use query::{sign, Policy, Query, Signers, Token, VerifiedQuery};

/// The metric label for a command: the command itself when it is one Tencent documents,
/// `other` otherwise, so that callers cannot grow the label set.
pub fn command_label(command: &str) -> &'static str {
    commands::lookup(command).map_or("other", |spec| spec.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_labels_are_a_fixed_set() {
        assert_eq!(
            command_label("Group.CallbackAfterSendMsg"),
            "Group.CallbackAfterSendMsg"
        );
        assert_eq!(command_label("Group.CallbackSomethingNew"), "other");
    }
}
