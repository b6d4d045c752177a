//! The process: the flags ([`cli`]) and the configuration file ([`config`]) become one
//! [`Config`](config::Config); [`bridge`] builds every component from it and [`shutdown`] stops
//! them in order.

pub mod bridge;
pub mod cli;
pub mod config;
pub mod metrics;
pub mod shutdown;

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use crate::core::OK_MEANS;

    /// Text with its line breaks and indentation folded into single spaces.
    fn folded(text: &str) -> String {
        text.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    /// What a 200 means is said in one sentence, the same in the README (its opening, the
    /// answers and the modes), the docs, `--help` and the callbacks counter's help.
    #[test]
    fn a_200_means_the_same_everywhere() {
        let readme = folded(include_str!("../../README.md"));
        assert!(readme.matches(OK_MEANS).count() >= 3, "README");
        for (name, text) in [
            ("docs/spool.md", include_str!("../../docs/spool.md")),
            (
                "docs/kubernetes.md",
                include_str!("../../docs/kubernetes.md"),
            ),
        ] {
            assert!(folded(text).contains(OK_MEANS), "{name}");
        }
        let about = super::cli::Cli::command().get_about().unwrap().to_string();
        assert!(about.contains(OK_MEANS), "--help: {about}");
        let metrics = super::metrics::BridgeMetrics::new().unwrap();
        let callbacks = metrics
            .registry
            .gather()
            .into_iter()
            .find(|family| family.name() == "timbridge_callbacks_total")
            .unwrap();
        assert!(callbacks.help().contains(OK_MEANS), "{}", callbacks.help());
    }
}
