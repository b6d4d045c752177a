//! Tencent's side of the wire. [`callback`]: the webhook protocol (query, signature, body,
//! answer), pure functions; later issues add the REST client the auditor uses.

pub mod callback;
