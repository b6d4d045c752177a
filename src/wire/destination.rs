//! Where a record goes: its subject or topic, from a template (`{command}`, `{partition}`,
//! `{sdkappid}`), and its partition, from Kafka's default partitioner, so that a group lands on
//! the same partition number in NATS (the `{partition}` of the subject) as in Kafka
//! (librdkafka's `murmur2_random`, the Java client's default).

use std::fmt::Write as _;

use crate::core::ConfigError;

/// A subject or topic name with placeholders: `{command}`, `{partition}`, `{sdkappid}`.
/// Parsed once at start-up; rendering is plain concatenation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Command,
    Partition,
    SdkAppid,
}

impl Template {
    pub fn parse(flag: &str, text: &str) -> Result<Template, ConfigError> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_owned()));
            }
            let close = rest[open..].find('}').ok_or_else(|| {
                ConfigError::new(flag.to_owned(), format!("unclosed '{{' in {text:?}"))
            })?;
            parts.push(match &rest[open + 1..open + close] {
                "command" => Part::Command,
                "partition" => Part::Partition,
                "sdkappid" => Part::SdkAppid,
                other => {
                    return Err(ConfigError::new(
                        flag.to_owned(),
                        format!(
                            "unknown placeholder {{{other}}} (use {{command}}, {{partition}}, {{sdkappid}})"
                        ),
                    ))
                }
            });
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_owned()));
        }
        if parts.is_empty() {
            return Err(ConfigError::new(flag.to_owned(), "must not be empty"));
        }
        Ok(Template { parts })
    }

    /// What stdout lines name as their destination: the NATS default subject.
    pub fn stdout() -> Template {
        Template {
            parts: vec![
                Part::Literal("tim.".into()),
                Part::Command,
                Part::Literal(".".into()),
                Part::Partition,
            ],
        }
    }

    /// The rendering for a typical callback (a group message of app 1400000000, partition 0),
    /// for checking a configured template once at start-up.
    pub fn sample(&self) -> String {
        self.render("Group.CallbackAfterSendMsg", 0, 1400000000)
    }

    pub fn uses_command(&self) -> bool {
        self.parts.contains(&Part::Command)
    }

    /// The NATS subject pattern covering every rendering of a template without `{command}`:
    /// each placeholder a `*`.
    pub fn wildcard(&self) -> String {
        self.parts
            .iter()
            .map(|part| match part {
                Part::Literal(s) => s.as_str(),
                _ => "*",
            })
            .collect()
    }

    pub fn uses_partition(&self) -> bool {
        self.parts.contains(&Part::Partition)
    }

    pub fn render(&self, command: &str, partition: u32, sdkappid: u64) -> String {
        let mut out = String::with_capacity(64);
        for part in &self.parts {
            // Writing into a String cannot fail.
            let _ = match part {
                Part::Literal(s) => {
                    out.push_str(s);
                    Ok(())
                }
                Part::Command => {
                    out.push_str(command);
                    Ok(())
                }
                Part::Partition => write!(out, "{partition}"),
                Part::SdkAppid => write!(out, "{sdkappid}"),
            };
        }
        out
    }
}

/// Kafka's `Utils.murmur2`: MurmurHash2, 32-bit, seed `0x9747b28c`, little-endian blocks.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;

    let len = data.len();
    let mut h: u32 = SEED ^ (len as u32);
    let mut blocks = data.chunks_exact(4);
    for block in &mut blocks {
        let mut k = u32::from_le_bytes([block[0], block[1], block[2], block[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = blocks.remainder();
    if !tail.is_empty() {
        if tail.len() >= 3 {
            h ^= u32::from(tail[2]) << 16;
        }
        if tail.len() >= 2 {
            h ^= u32::from(tail[1]) << 8;
        }
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition of `key` among `partitions`: `(murmur2(key) & 0x7fffffff) % partitions`.
pub fn partition(key: &[u8], partitions: u32) -> u32 {
    debug_assert!(partitions > 0);
    ((murmur2(key) & 0x7fff_ffff) as u32) % partitions.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_render_and_refuse_unknown_placeholders() {
        let t = Template::parse("--nats-subject", "tim.{command}.{partition}").unwrap();
        assert!(t.uses_partition());
        assert_eq!(
            t.render("Group.CallbackAfterSendMsg", 3, 1),
            "tim.Group.CallbackAfterSendMsg.3"
        );
        let t = Template::parse("--nats-subject", "a.{sdkappid}.b").unwrap();
        assert!(!t.uses_partition());
        assert_eq!(t.render("X.Y", 0, 1400000000), "a.1400000000.b");
        assert!(Template::parse("--nats-subject", "tim.{group}").is_err());
        assert!(Template::parse("--nats-subject", "tim.{command").is_err());
        assert!(Template::parse("--nats-subject", "").is_err());
    }

    /// The vectors of Kafka's own `UtilsTest.testMurmur2`.
    #[test]
    fn matches_kafkas_vectors() {
        let cases: &[(&str, i32)] = &[
            ("21", -973932308),
            ("foobar", -790332482),
            ("a-little-bit-long-string", -985981536),
            ("a-little-bit-longer-string", -1486304829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58897971,
            ),
            ("abc", 479470107),
        ];
        for (input, expected) in cases {
            assert_eq!(murmur2(input.as_bytes()), *expected, "{input}");
        }
    }

    #[test]
    fn partitions_are_in_range_and_stable() {
        for n in [1, 2, 16, 100] {
            for key in ["@TGS#2J4SZEAEL", "", "g", "@TGS#_@TGS#cQVLVHIM62CJ"] {
                let p = partition(key.as_bytes(), n);
                assert!(p < n);
                assert_eq!(p, partition(key.as_bytes(), n));
            }
        }
        // Kafka: Utils.toPositive(murmur2("foobar")) % 16
        assert_eq!(
            partition(b"foobar", 16),
            ((-790332482i32 & 0x7fffffff) % 16) as u32
        );
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::*;

        proptest! {
            /// Every key lands in range, the same way twice, and on partition 0 of one.
            #[test]
            fn partitions_are_in_range_and_stable(key in proptest::collection::vec(any::<u8>(), 0..512), n in 1u32..4096) {
                let p = partition(&key, n);
                prop_assert!(p < n);
                prop_assert_eq!(p, partition(&key, n));
                prop_assert_eq!(partition(&key, 1), 0);
            }

            /// Any text is parsed or refused, never a panic; a text without braces renders as
            /// itself, and placeholders render as their values.
            #[test]
            fn templates_render_what_they_say(text in ".{0,64}", literal in "[a-z0-9._-]{1,16}", command in "[A-Za-z0-9_.]{1,32}", n in any::<u32>(), app in any::<u64>()) {
                if let Ok(t) = Template::parse("--nats-subject", &text) {
                    if !text.contains('{') {
                        prop_assert_eq!(t.render(&command, n, app), text);
                    }
                }
                let t = Template::parse("--nats-subject", &format!("{literal}{{command}}.{{partition}}.{{sdkappid}}")).unwrap();
                prop_assert_eq!(t.render(&command, n, app), format!("{literal}{command}.{n}.{app}"));
            }
        }
    }
}
