//! The export redactor (PROTOCOL §8.3): every registered secret, in every form it may take in
//! output, replaced by `[REDACTED]` in one left-to-right pass, longest match first. Stricter
//! than the transcript's (no minimum length) and failing closed: past its caps every body is
//! `[REDACTED]` for the rest of the execution.

use std::collections::BTreeSet;

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};

/// What every match (and every body in blanket mode) becomes.
pub const MARK: &str = "[REDACTED]";
/// A single secret larger than this switches to blanket mode.
pub const MAX_VALUE: usize = 1 << 20;
/// More distinct registered strings than this switches to blanket mode.
pub const MAX_STRINGS: usize = 4096;
/// Registered strings totalling more than this switch to blanket mode.
pub const MAX_TOTAL: usize = 1 << 20;

/// The strings registered for one secret: raw, URL-query-escaped, JSON-escaped, and each
/// non-empty line of a multi-line value. Empty for an empty value; may repeat a form.
pub fn variants(value: &str) -> Vec<String> {
    if value.is_empty() {
        return Vec::new();
    }
    let mut v = vec![value.to_string(), query_escape(value), json_escape(value)];
    if value.contains(['\n', '\r']) {
        v.extend(
            value
                .split(['\n', '\r'])
                .filter(|l| !l.is_empty())
                .map(str::to_string),
        );
    }
    v
}

/// Go's `url.QueryEscape`: unreserved bytes as they are, space as `+`, the rest `%XX`.
pub fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The value as a JSON string's contents (no quotes), HTML-safe the way Go's encoder writes
/// it: `<`, `>`, `&` as `\u003c`, `\u003e`, `\u0026`, and U+2028/U+2029 escaped too.
pub fn json_escape(s: &str) -> String {
    let mut quoted = String::with_capacity(s.len() + 2);
    crate::jsonstr::push(s, &mut quoted);
    let inner = &quoted[1..quoted.len() - 1];
    const HTML: [(char, &str); 5] = [
        ('<', "\\u003c"),
        ('>', "\\u003e"),
        ('&', "\\u0026"),
        ('\u{2028}', "\\u2028"),
        ('\u{2029}', "\\u2029"),
    ];
    let mut out = String::with_capacity(inner.len());
    for c in inner.chars() {
        match HTML.iter().find(|(h, _)| *h == c) {
            Some((_, e)) => out.push_str(e),
            None => out.push(c),
        }
    }
    out
}

/// One execution's redaction state. Its `Debug` shows counts only: the strings are secrets.
#[derive(Default)]
pub struct Redactor {
    strings: BTreeSet<String>,
    total: usize,
    blanket: bool,
    finder: Option<AhoCorasick>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field("strings", &self.strings.len())
            .field("total", &self.total)
            .field("blanket", &self.blanket)
            .finish()
    }
}

impl Redactor {
    /// A redactor for these secrets (see [`Redactor::register`]).
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Self {
        let mut r = Redactor::default();
        r.register_all(secrets);
        r
    }

    /// Registers one more secret (an identity token once issued).
    pub fn register(&mut self, secret: &str) {
        self.register_all([secret]);
    }

    /// Registers secrets with all their variants; past a cap, switches to blanket mode.
    pub fn register_all<'a>(&mut self, secrets: impl IntoIterator<Item = &'a str>) {
        let before = self.strings.len();
        for s in secrets {
            if self.blanket {
                return;
            }
            if s.len() > MAX_VALUE {
                self.go_blanket();
                return;
            }
            for v in variants(s) {
                let len = v.len();
                if self.strings.insert(v) {
                    self.total += len;
                }
            }
            if self.strings.len() > MAX_STRINGS || self.total > MAX_TOTAL {
                self.go_blanket();
                return;
            }
        }
        if self.strings.len() != before {
            self.rebuild();
        }
    }

    fn go_blanket(&mut self) {
        self.blanket = true;
        self.strings.clear();
        self.finder = None;
    }

    fn rebuild(&mut self) {
        // Standard matching, so every match can be found, overlapping ones included: the
        // spans they cover are merged and each merged span replaced once (see `redact`).
        // A contiguous NFA: memory linear in the registered bytes (up to 1 MiB), where a DFA
        // over long secrets would be large and slow to build.
        self.finder = AhoCorasick::builder()
            .match_kind(MatchKind::Standard)
            .kind(Some(AhoCorasickKind::ContiguousNFA))
            .build(&self.strings)
            .ok();
        if self.finder.is_none() {
            // Cannot happen for non-empty literals; if it does, nothing unredacted leaves.
            self.go_blanket();
        }
    }

    /// Every body is `[REDACTED]` from now on.
    pub fn is_blanket(&self) -> bool {
        self.blanket
    }

    /// Distinct strings registered (for tests and caps).
    pub fn len(&self) -> usize {
        self.strings.len()
    }

    /// Nothing registered.
    pub fn is_empty(&self) -> bool {
        self.strings.is_empty()
    }

    /// `text` with every registered string replaced; `[REDACTED]` in blanket mode.
    pub fn redact(&self, text: &[u8]) -> Vec<u8> {
        if self.blanket {
            return MARK.as_bytes().to_vec();
        }
        let Some(f) = &self.finder else {
            return text.to_vec();
        };
        // Every match, overlapping ones too: with secrets `ab` and `bcdef`, leftmost matching
        // alone would leave `cdef` of the second in `abcdef`. Covered spans are merged (as are
        // touching ones) and each becomes one mark, in a single pass over `text`.
        let mut spans: Vec<(usize, usize)> = f
            .find_overlapping_iter(text)
            .map(|m| (m.start(), m.end()))
            .collect();
        spans.sort_unstable();
        let mut out = Vec::with_capacity(text.len());
        let mut at = 0;
        let mut i = 0;
        while i < spans.len() {
            let (start, mut end) = spans[i];
            while i + 1 < spans.len() && spans[i + 1].0 <= end {
                i += 1;
                end = end.max(spans[i].1);
            }
            out.extend_from_slice(&text[at.min(start)..start]);
            out.extend_from_slice(MARK.as_bytes());
            at = end;
            i += 1;
        }
        out.extend_from_slice(&text[at.min(text.len())..]);
        out
    }

    /// [`Redactor::redact`] for text (invalid UTF-8 becomes U+FFFD after redaction).
    pub fn redact_str(&self, text: &str) -> String {
        String::from_utf8_lossy(&self.redact(text.as_bytes())).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(secrets: &[&str], text: &str) -> String {
        Redactor::new(secrets.iter().copied()).redact_str(text)
    }

    #[test]
    fn overlapping_and_touching_secrets_leave_no_byte_of_either() {
        assert_eq!(r(&["ab", "bcdef"], "abcdef"), "[REDACTED]");
        assert_eq!(r(&["ab", "bcdef"], "xabcdefy"), "x[REDACTED]y");
        assert_eq!(r(&["bcdef", "ab"], "zab bcdef"), "z[REDACTED] [REDACTED]");
        assert_eq!(r(&["ab", "cd"], "abcd!"), "[REDACTED]!");
        assert_eq!(r(&["aa"], "aaa"), "[REDACTED]");
        assert_eq!(r(&["s3cret"], "no secret here"), "no secret here");
    }

    #[test]
    fn its_debug_shows_no_secret() {
        let d = format!("{:?}", Redactor::new(["s3cr3t-value"]));
        assert!(!d.contains("s3cr3t"), "{d}");
    }

    #[test]
    fn every_variant_is_registered() {
        let cases: &[(&str, &[&str])] = &[
            ("", &[]),
            ("abc", &["abc", "abc", "abc"]),
            ("a b&c", &["a b&c", "a+b%26c", "a b\\u0026c"]),
            ("<x>", &["<x>", "%3Cx%3E", "\\u003cx\\u003e"]),
            ("q\"\\", &["q\"\\", "q%22%5C", "q\\\"\\\\"]),
            ("~-_.*", &["~-_.*", "~-_.%2A", "~-_.*"]),
            (
                "l1\nl2\r\nl3",
                &[
                    "l1\nl2\r\nl3",
                    "l1%0Al2%0D%0Al3",
                    "l1\\nl2\\r\\nl3",
                    "l1",
                    "l2",
                    "l3",
                ],
            ),
            ("\u{2028}\t", &["\u{2028}\t", "%E2%80%A8%09", "\\u2028\\t"]),
        ];
        for (value, want) in cases {
            assert_eq!(variants(value), *want, "{value:?}");
        }
    }

    #[test]
    fn raw_url_and_json_forms_are_replaced() {
        let s = "p@ss w<rd>&";
        let text = format!(
            "raw={s} url={} json=\"{}\"",
            query_escape(s),
            json_escape(s)
        );
        assert_eq!(
            r(&[s], &text),
            "raw=[REDACTED] url=[REDACTED] json=\"[REDACTED]\""
        );
    }

    #[test]
    fn longest_match_wins_and_replacements_are_not_rescanned() {
        assert_eq!(r(&["ab", "abcd"], "xabcdx ab"), "x[REDACTED]x [REDACTED]");
        // The mark itself holds "RED": a secret "RED" or "D]" must not eat into marks.
        assert_eq!(r(&["s3", "RED"], "s3 RED"), "[REDACTED] [REDACTED]");
        // Touching matches merge into one mark.
        assert_eq!(r(&["x", "D]"], "xD]"), "[REDACTED]");
        assert_eq!(r(&["x", "D]"], "x D]"), "[REDACTED] [REDACTED]");
    }

    #[test]
    fn short_values_are_redacted_too() {
        assert_eq!(r(&["a"], "banana"), "b[REDACTED]n[REDACTED]n[REDACTED]");
    }

    #[test]
    fn each_line_of_a_multi_line_value_is_redacted_on_its_own() {
        let v = "-----BEGIN KEY-----\nAAAA1234\n-----END KEY-----\n";
        assert_eq!(r(&[v], "key: AAAA1234"), "key: [REDACTED]");
        assert_eq!(r(&[v], v), "[REDACTED]");
    }

    #[test]
    fn duplicates_and_empty_values_register_once_or_not_at_all() {
        let red = Redactor::new(["abc", "abc", ""]);
        assert_eq!(red.len(), 1);
        assert!(Redactor::new([""]).is_empty());
        assert_eq!(Redactor::new([""]).redact_str("text"), "text");
    }

    #[test]
    fn a_value_over_one_mib_switches_to_blanket_mode() {
        let big = "x".repeat(MAX_VALUE + 1);
        let red = Redactor::new([big.as_str()]);
        assert!(red.is_blanket());
        assert_eq!(red.redact_str("nothing secret"), MARK);
        // Exactly at the cap is still fine.
        let ok = "y".repeat(MAX_VALUE / 4);
        assert!(!Redactor::new([ok.as_str()]).is_blanket());
    }

    #[test]
    fn more_than_4096_strings_switch_to_blanket_mode() {
        let many: Vec<String> = (0..MAX_STRINGS).map(|i| format!("s{i}")).collect();
        let mut red = Redactor::new(many.iter().map(String::as_str));
        assert!(!red.is_blanket());
        assert_eq!(red.len(), MAX_STRINGS);
        red.register("one-more");
        assert!(red.is_blanket());
        assert_eq!(red.redact_str("anything"), MARK);
        // Blanket mode is for the rest of the execution.
        red.register("z");
        assert!(red.is_blanket());
    }

    #[test]
    fn more_than_one_mib_in_total_switches_to_blanket_mode() {
        let chunk = "z".repeat(300 << 10);
        let values: Vec<String> = (0..4).map(|i| format!("{i}{chunk}")).collect();
        let red = Redactor::new(values.iter().map(String::as_str));
        assert!(red.is_blanket());
    }

    #[test]
    fn tokens_registered_later_are_redacted_from_then_on() {
        let mut red = Redactor::new(["k1"]);
        assert_eq!(red.redact_str("k1 tok"), "[REDACTED] tok");
        red.register("tok");
        assert_eq!(red.redact_str("k1 tok"), "[REDACTED] [REDACTED]");
    }

    #[test]
    fn invalid_utf8_is_redacted_before_it_is_made_text() {
        let red = Redactor::new(["s3cret"]);
        let out = red.redact(b"\xffs3cret\xfe");
        assert_eq!(out, b"\xff[REDACTED]\xfe");
    }
}
