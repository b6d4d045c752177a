//! Callback bodies shaped like Tencent's (see tests/fixtures): mixed element types, realistic
//! sizes, unicode text. Deterministic per (group, seq), so a run can be reproduced.

use std::fmt::Write;

const WORDS: &[&str] = &[
    "hello",
    "red packet",
    "你好",
    "明天见",
    "👍",
    "meeting at 10",
    "ok",
    "😀😀",
    "see you",
    "こんにちは",
    "thanks!",
    "on my way",
    "图片",
    "location shared",
    "🎉 congrats",
];

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn new(group: usize, seq: u64) -> Rng {
        Rng((group as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ seq.wrapping_mul(0xD1B5_4A32_D192_ED03)
            | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The body of `Group.CallbackAfterSendMsg` number `seq` of `group_id`, its `CloudCustomData`
/// padded so that the body is at least `at_least` bytes (0: as it comes, 0.3–2 KB).
pub fn group_message(group_index: usize, group_id: &str, seq: u64, at_least: usize) -> String {
    let mut rng = Rng::new(group_index, seq);
    let mut elements = String::with_capacity(512);
    let count = 1 + rng.below(3);
    for i in 0..count {
        if i > 0 {
            elements.push(',');
        }
        match rng.below(10) {
            0..=5 => {
                let mut text = String::new();
                for _ in 0..(1 + rng.below(24)) {
                    text.push_str(WORDS[rng.below(WORDS.len() as u64) as usize]);
                    text.push(' ');
                }
                let _ = write!(
                    elements,
                    r#"{{"MsgType":"TIMTextElem","MsgContent":{{"Text":"{}"}}}}"#,
                    text.trim_end()
                );
            }
            6 => {
                let uuid = rng.next();
                let _ = write!(
                    elements,
                    r#"{{"MsgType":"TIMImageElem","MsgContent":{{"UUID":"{uuid:x}","ImageFormat":1,"ImageInfoArray":[{{"Type":1,"Size":1853095,"Width":2448,"Height":3264,"URL":"https://example.invalid/{uuid:x}/orig.jpg"}},{{"Type":2,"Size":0,"Width":0,"Height":0,"URL":"https://example.invalid/{uuid:x}/large.jpg"}},{{"Type":3,"Size":0,"Width":0,"Height":0,"URL":"https://example.invalid/{uuid:x}/thumb.jpg"}}]}}}}"#
                );
            }
            7 => {
                let _ = write!(
                    elements,
                    r#"{{"MsgType":"TIMFaceElem","MsgContent":{{"Index":{},"Data":"face"}}}}"#,
                    rng.below(100)
                );
            }
            8 => {
                let _ = write!(
                    elements,
                    r#"{{"MsgType":"TIMCustomElem","MsgContent":{{"Data":"{{\"order\":{}}}","Desc":"notification","Ext":"url","Sound":"dingdong.aiff"}}}}"#,
                    rng.next()
                );
            }
            _ => {
                let _ = write!(
                    elements,
                    r#"{{"MsgType":"TIMLocationElem","MsgContent":{{"Desc":"someinfo","Latitude":29.340656774469956,"Longitude":116.94226837158203}}}}"#
                );
            }
        }
    }
    let from = rng.below(1000);
    let random = rng.next() as u32;
    let body = |custom: &str| {
        format!(
            r#"{{"CallbackCommand":"Group.CallbackAfterSendMsg","GroupId":"{group_id}","Type":"Public","From_Account":"user{from}","Operator_Account":"admin","Random":{random},"MsgSeq":{seq},"MsgTime":1490686222,"OnlineOnlyFlag":0,"MsgBody":[{elements}],"CloudCustomData":"{custom}","EventTime":1670574414123}}"#
        )
    };
    let custom = "your cloud custom data";
    let plain = body(custom);
    match at_least.checked_sub(plain.len()) {
        Some(short) if short > 0 => body(&format!("{custom}{}", "x".repeat(short))),
        _ => plain,
    }
}
