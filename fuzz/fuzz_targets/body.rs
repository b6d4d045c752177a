//! The body parser of every command: `tencent::callback::body::parse` under each command of
//! Tencent's table, and under one it does not list.
//!
//! Input: one byte choosing the URL's command, then the body.
#![no_main]

use std::borrow::Cow;

use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use timbridge::tencent::callback::body::{self, MAX_ID_BYTES};
use timbridge::tencent::callback::commands::COMMANDS;

/// Only the body's own command, for the check that an accepted body names the URL's.
#[derive(Deserialize)]
struct Named<'a> {
    #[serde(rename = "CallbackCommand", borrow)]
    command: Cow<'a, str>,
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let command = COMMANDS
        .get(usize::from(pick) % (COMMANDS.len() + 1))
        .map_or("Group.CallbackSomethingNew", |spec| spec.name);
    let Ok(fields) = body::parse(command, body) else {
        return;
    };
    // Accepted: one JSON document, whose command is the URL's.
    serde_json::from_slice::<serde::de::IgnoredAny>(body)
        .expect("accepted a body that is not JSON");
    let named: Named = serde_json::from_slice(body).expect("accepted a body without its command");
    assert_eq!(named.command, command);
    // Every identity that becomes a header, a key or a dedup id is bounded and has no control
    // character.
    for value in [
        &fields.group_id,
        &fields.topic_id,
        &fields.msg_id,
        &fields.from_account,
        &fields.to_account,
        &fields.msg_key,
        &fields.report_account,
        &fields.state_account,
    ]
    .into_iter()
    .flatten()
    .chain(&fields.members)
    {
        assert!(value.len() <= MAX_ID_BYTES, "{value:?}");
        assert!(!value.chars().any(char::is_control), "{value:?}");
    }
});
