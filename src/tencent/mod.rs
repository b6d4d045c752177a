//! Tencent's side of the wire. [`callback`]: the webhook protocol (query, signature, body,
//! answer), pure functions; [`rest`]: the REST API the auditor calls.

pub mod callback;
pub mod rest;
