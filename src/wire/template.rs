//! Subject and topic templates: `{command}`, `{partition}`, `{sdkappid}`.

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
}
