//! The README, for the tests that hold its tables to the code.

/// The text under `heading` (a `## ` or `### ` line) up to the next `## ` heading.
pub fn section(heading: &str) -> &'static str {
    include_str!("../../README.md")
        .split(heading)
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .unwrap_or_else(|| panic!("the README has a {heading:?} section"))
}
