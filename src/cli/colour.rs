//! When berth's terminal output may carry ANSI colour: only on a terminal, never with
//! `NO_COLOR` set (<https://no-color.org>), whatever the command.

use std::io::IsTerminal;

/// Pure decision: a terminal, and `NO_COLOR` unset or empty.
pub(super) fn wanted(is_terminal: bool, no_color: Option<&str>) -> bool {
    is_terminal && no_color.is_none_or(str::is_empty)
}

/// Colour for what berth writes to stderr (logs, dimmed transcript lines).
pub(super) fn on_stderr() -> bool {
    wanted(
        std::io::stderr().is_terminal(),
        std::env::var("NO_COLOR").ok().as_deref(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(wanted(true, None));
        assert!(wanted(true, Some("")), "an empty NO_COLOR does not count");
        assert!(!wanted(true, Some("1")));
        assert!(
            !wanted(false, None),
            "files and journald get no escape codes"
        );
        assert!(!wanted(false, Some("1")));
    }
}
