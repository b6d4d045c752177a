//! `--config FILE`: the apps a bridge serves, in YAML (`.yaml`, `.yml`) or TOML (`.toml`).
//!
//! Strict on purpose: an unknown or misspelt key is refused with its path (`apps[1].tokn`), as
//! is an app without a token source unless it says `unsigned: true`; a configuration that
//! half-applies would be worse than none. Every other setting stays a flag.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::core::secret::Secret;
use crate::core::ConfigError;
use crate::sink::SinkConfig;
use crate::tencent::callback::Token;
use crate::tencent::rest::Region;
use crate::tencent::rest::RestCredentials;
use crate::wire::apps::App;
use crate::wire::Template;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    apps: Vec<AppEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AppEntry {
    sdkappid: u64,
    token: Option<String>,
    token_file: Option<PathBuf>,
    token_env: Option<String>,
    /// The app's callbacks are not signed (authentication off in Tencent's console).
    #[serde(default)]
    unsigned: bool,
    nats_subject: Option<String>,
    kafka_topic: Option<String>,
    rest: Option<RestEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RestEntry {
    region: Region,
    identifier: String,
    secret_key: Option<String>,
    secret_key_file: Option<PathBuf>,
    secret_key_env: Option<String>,
}

/// Reads the apps of the configuration file at `path`; `sink` decides which destination key
/// an app may set and checks its template.
pub fn read_apps(path: &Path, sink: &SinkConfig) -> Result<Vec<App>, ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new("--config", format!("{shown}: {e}")))?;
    let file = parse(path, &text).map_err(|(key, message)| {
        ConfigError::new(
            if key.is_empty() {
                shown.clone()
            } else {
                format!("{shown}: {key}")
            },
            message,
        )
    })?;
    apps(file, sink).map_err(|mut err| {
        err.flag = format!("{shown}: {}", err.flag).into();
        err
    })
}

/// The file's content, or the key path of the first problem and what it is.
fn parse(path: &Path, text: &str) -> Result<File, (String, String)> {
    let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let failed = |path: &serde_path_to_error::Path, message: String| {
        let key = path.to_string();
        (if key == "." { String::new() } else { key }, message)
    };
    match extension {
        "yaml" | "yml" => {
            serde_path_to_error::deserialize(serde_yaml_ng::Deserializer::from_str(text)).map_err(
                |e| {
                    // The YAML error starts with its own (shorter) path; ours says it already.
                    let message = e.inner().to_string();
                    let key = e.path().to_string();
                    let message = match message.split_once(": ") {
                        Some((own, rest)) if key.starts_with(own) => rest.to_owned(),
                        _ => message,
                    };
                    failed(e.path(), message)
                },
            )
        }
        "toml" => {
            let deserializer = toml::de::Deserializer::parse(text)
                .map_err(|e| (String::new(), toml_message(&e, text)))?;
            serde_path_to_error::deserialize(deserializer)
                .map_err(|e| failed(e.path(), toml_message(e.inner(), text)))
        }
        _ => Err((
            String::new(),
            "name the file .yaml, .yml or .toml, for its format".into(),
        )),
    }
}

/// TOML's own rendering quotes the offending line over several lines; the exit message is one
/// line, like YAML's: the message and where.
fn toml_message(error: &toml::de::Error, text: &str) -> String {
    let message = error.message().trim_end();
    match error.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("{message} at line {line} column {column}")
        }
        None => message.to_owned(),
    }
}

fn apps(file: File, sink: &SinkConfig) -> Result<Vec<App>, ConfigError> {
    if file.apps.is_empty() {
        return Err(ConfigError::new("apps", "lists no app"));
    }
    let mut apps: Vec<App> = Vec::with_capacity(file.apps.len());
    for (i, entry) in file.apps.into_iter().enumerate() {
        let at = |key: &str| format!("apps[{i}].{key}");
        if entry.sdkappid == 0 {
            return Err(ConfigError::new(at("sdkappid"), "must be more than 0"));
        }
        if apps.iter().any(|app| app.sdkappid == entry.sdkappid) {
            return Err(ConfigError::new(
                at("sdkappid"),
                format!("{} is listed twice", entry.sdkappid),
            ));
        }
        let token = secret(&at("token"), entry.token, entry.token_file, entry.token_env)?;
        let token = match (token, entry.unsigned) {
            (Some(_), true) => {
                return Err(ConfigError::new(
                    at("unsigned"),
                    "an unsigned app has no token: remove one of them",
                ))
            }
            (None, false) => {
                return Err(ConfigError::new(
                    at("token"),
                    "give token, token_file or token_env (or unsigned: true when the console's callback authentication is off)",
                ))
            }
            (token, _) => token.map(|t| Token::new(t.expose().to_owned())),
        };
        let destination = destination(&at, entry.nats_subject, entry.kafka_topic, sink)?;
        let rest = match entry.rest {
            None => None,
            Some(rest) => {
                if rest.identifier.is_empty() {
                    return Err(ConfigError::new(at("rest.identifier"), "must not be empty"));
                }
                let secret_key = secret(
                    &at("rest.secret_key"),
                    rest.secret_key,
                    rest.secret_key_file,
                    rest.secret_key_env,
                )?
                .ok_or_else(|| {
                    ConfigError::new(
                        at("rest.secret_key"),
                        "give secret_key, secret_key_file or secret_key_env",
                    )
                })?;
                Some(RestCredentials {
                    region: rest.region,
                    identifier: rest.identifier,
                    secret_key,
                })
            }
        };
        apps.push(App {
            sdkappid: entry.sdkappid,
            token,
            destination,
            rest,
        });
    }
    Ok(apps)
}

/// The app's own subject or topic: only the key of the sink in use is allowed (stdout prints
/// NATS subjects), checked with that sink's rules.
fn destination(
    at: &dyn Fn(&str) -> String,
    nats_subject: Option<String>,
    kafka_topic: Option<String>,
    sink: &SinkConfig,
) -> Result<Option<Template>, ConfigError> {
    let (key, text, other) = match sink {
        SinkConfig::Kafka(_) => ("kafka_topic", kafka_topic, ("nats_subject", nats_subject)),
        SinkConfig::Nats(_) | SinkConfig::Stdout => {
            ("nats_subject", nats_subject, ("kafka_topic", kafka_topic))
        }
    };
    if other.1.is_some() {
        return Err(ConfigError::new(
            at(other.0),
            format!("is not used by the {} sink (set {key})", sink.name()),
        ));
    }
    let Some(text) = text else { return Ok(None) };
    let key = at(key);
    let template = Template::parse(&key, &text)?;
    sink.check_destination(&key, &template)?;
    Ok(Some(template))
}

/// A credential given inline, in a file (trailing newline ignored) or in an environment
/// variable: at most one of the three, never empty.
fn secret(
    key: &str,
    inline: Option<String>,
    file: Option<PathBuf>,
    env: Option<String>,
) -> Result<Option<Secret>, ConfigError> {
    let given = [inline.is_some(), file.is_some(), env.is_some()];
    if given.iter().filter(|g| **g).count() > 1 {
        return Err(ConfigError::new(
            key.to_owned(),
            format!("give only one of {key}, {key}_file and {key}_env"),
        ));
    }
    let value = if let Some(value) = inline {
        value
    } else if let Some(path) = file {
        std::fs::read_to_string(&path)
            .map_err(|e| {
                ConfigError::new(format!("{key}_file"), format!("{}: {e}", path.display()))
            })?
            .trim_end_matches(['\r', '\n'])
            .to_owned()
    } else if let Some(name) = env {
        std::env::var(&name)
            .map_err(|e| ConfigError::new(format!("{key}_env"), format!("{name}: {e}")))?
    } else {
        return Ok(None);
    };
    if value.is_empty() {
        return Err(ConfigError::new(key.to_owned(), "is empty"));
    }
    Ok(Some(Secret::new(value)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `text` as `name` in a fresh directory and reads its apps for the stdout sink.
    fn read(name: &str, text: &str) -> Result<Vec<App>, String> {
        read_for(name, text, &SinkConfig::Stdout)
    }

    fn read_for(name: &str, text: &str, sink: &SinkConfig) -> Result<Vec<App>, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        read_apps(&path, sink).map_err(|e| {
            let text = e.to_string();
            text.replace(&format!("{}", dir.path().display()), "DIR")
        })
    }

    const TWO_APPS: &str = "
apps:
  - sdkappid: 1400000001
    token: prod-token
    nats_subject: prod.{command}.{partition}
    rest:
      region: singapore
      identifier: administrator
      secret_key: prod-key
  - sdkappid: 1400000002
    token_env: TIMBRIDGE_TEST_STAGING_TOKEN
";

    #[test]
    fn yaml_and_toml_give_the_same_apps() {
        std::env::set_var("TIMBRIDGE_TEST_STAGING_TOKEN", "staging-token");
        let yaml = read("apps.yaml", TWO_APPS).unwrap();
        let toml = read(
            "apps.toml",
            r#"
[[apps]]
sdkappid = 1400000001
token = "prod-token"
nats_subject = "prod.{command}.{partition}"
rest = { region = "singapore", identifier = "administrator", secret_key = "prod-key" }

[[apps]]
sdkappid = 1400000002
token_env = "TIMBRIDGE_TEST_STAGING_TOKEN"
"#,
        )
        .unwrap();
        assert_eq!(yaml, toml);
        assert_eq!(yaml.len(), 2);
        assert_eq!(yaml[0].token, Some(Token::new("prod-token".into())));
        assert_eq!(yaml[1].token, Some(Token::new("staging-token".into())));
        assert_eq!(
            yaml[0].destination.as_ref().unwrap().render("A.B", 3, 1),
            "prod.A.B.3"
        );
        let rest = yaml[0].rest.as_ref().unwrap();
        assert_eq!(rest.region, Region::Singapore);
        assert_eq!(rest.secret_key.expose(), "prod-key");
        assert!(yaml[1].destination.is_none() && yaml[1].rest.is_none());
        // The Debug form (logged at start-up in debug) shows no credential.
        let printed = format!("{yaml:?}{yaml:#?}");
        for secret in ["prod-token", "staging-token", "prod-key"] {
            assert!(!printed.contains(secret), "{secret} in {printed}");
        }
    }

    #[test]
    fn a_token_file_is_read_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "from-file\n").unwrap();
        let apps = read(
            "apps.yml",
            &format!(
                "apps:\n  - sdkappid: 1\n    token_file: {}\n",
                token.display()
            ),
        )
        .unwrap();
        assert_eq!(apps[0].token, Some(Token::new("from-file".into())));
    }

    /// Each mistake is refused with the file, the key path and the reason.
    #[test]
    fn errors_name_the_key_path() {
        let nats = SinkConfig::Nats(crate::sink::nats::tests::config());
        let cases: &[(&str, &str, &str)] = &[
            (
                "apps:\n  - sdkappid: 1\n    token: a\n  - sdkappid: 2\n    tokn: b\n",
                "DIR/f.yaml: apps[1].tokn: unknown field `tokn`",
                "stdout",
            ),
            ("apps:\n  - sdkappid: 1\n    token: a\nlisten: x\n", "DIR/f.yaml: listen: unknown field `listen`", "stdout"),
            ("apps:\n  - sdkappid: one\n", "DIR/f.yaml: apps[0].sdkappid: invalid type", "stdout"),
            ("apps:\n  - token: a\n", "DIR/f.yaml: apps[0]: missing field `sdkappid`", "stdout"),
            ("apps: []\n", "DIR/f.yaml: apps: lists no app", "stdout"),
            ("apps:\n  - sdkappid: 1\n", "DIR/f.yaml: apps[0].token: give token, token_file or token_env", "stdout"),
            (
                "apps:\n  - sdkappid: 1\n    token: a\n  - sdkappid: 1\n    token: b\n",
                "DIR/f.yaml: apps[1].sdkappid: 1 is listed twice",
                "stdout",
            ),
            (
                "apps:\n  - sdkappid: 1\n    token: a\n    token_env: B\n",
                "DIR/f.yaml: apps[0].token: give only one of",
                "stdout",
            ),
            ("apps:\n  - sdkappid: 1\n    token: ''\n", "DIR/f.yaml: apps[0].token: is empty", "stdout"),
            (
                "apps:\n  - sdkappid: 1\n    token_env: TIMBRIDGE_TEST_UNSET_VARIABLE\n",
                "DIR/f.yaml: apps[0].token_env: TIMBRIDGE_TEST_UNSET_VARIABLE",
                "stdout",
            ),
            ("apps:\n  - sdkappid: 1\n    token: a\n    unsigned: true\n", "DIR/f.yaml: apps[0].unsigned:", "stdout"),
            (
                "apps:\n  - sdkappid: 1\n    unsigned: true\n    rest: {region: mars, identifier: admin, secret_key: k}\n",
                "DIR/f.yaml: apps[0].rest.region: unknown variant `mars`",
                "stdout",
            ),
            (
                "apps:\n  - sdkappid: 1\n    unsigned: true\n    rest: {region: china, identifier: admin}\n",
                "DIR/f.yaml: apps[0].rest.secret_key: give secret_key",
                "stdout",
            ),
            (
                "apps:\n  - sdkappid: 1\n    unsigned: true\n    nats_subject: tim.{group}\n",
                "DIR/f.yaml: apps[0].nats_subject: unknown placeholder {group}",
                "stdout",
            ),
            (
                "apps:\n  - sdkappid: 1\n    unsigned: true\n    kafka_topic: t\n",
                "DIR/f.yaml: apps[0].kafka_topic: is not used by the stdout sink (set nats_subject)",
                "stdout",
            ),
            (
                "apps:\n  - sdkappid: 1\n    unsigned: true\n    nats_subject: other.{command}\n",
                "DIR/f.yaml: apps[0].nats_subject: the stream's subjects",
                "nats",
            ),
            ("apps:\n  - sdkappid: 1\n    unsigned: true\n", "DIR/f.json: name the file .yaml", "json"),
        ];
        for (text, expected, sink) in cases {
            let got = match *sink {
                "json" => read("f.json", text),
                "nats" => read_for("f.yaml", text, &nats),
                _ => read("f.yaml", text),
            }
            .unwrap_err();
            assert!(
                got.starts_with(expected),
                "{text}\n  expected {expected}\n  got      {got}"
            );
        }
        let toml = read("f.toml", "[[apps]]\nsdkappid = 1\ntokn = \"a\"\n").unwrap_err();
        assert!(
            toml.starts_with("DIR/f.toml: apps[0].tokn: unknown field `tokn`"),
            "{toml}"
        );
        assert!(!toml.contains('\n'), "one line: {toml}");
        let broken = read("f.toml", "[[apps]\n").unwrap_err();
        assert!(broken.starts_with("DIR/f.toml: "), "{broken}");
        assert!(!broken.contains('\n'), "one line: {broken}");
    }
}
