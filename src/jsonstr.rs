//! JSON string literals written fast: transcript text is most of what berth sends, and
//! escaping it one byte at a time (serde_json's way) was the largest single cost in a
//! profile of a 200 MB transcript. Output is byte-identical to `serde_json::to_string`.

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// True when some byte of the word is a control byte (< 0x20), `"` or `\`.
///
/// The classic "has a zero byte" / "has a byte below n" tests: exact about whether such a
/// byte exists, which is all the caller needs (it then looks byte by byte).
fn needs_escape(w: u64) -> bool {
    let below_space = w.wrapping_sub(ONES * 0x20) & !w;
    let q = w ^ (ONES * b'"' as u64);
    let quote = q.wrapping_sub(ONES) & !q;
    let b = w ^ (ONES * b'\\' as u64);
    let backslash = b.wrapping_sub(ONES) & !b;
    (below_space | quote | backslash) & HIGHS != 0
}

/// The escape of one byte, or `None` when it goes out as it is.
fn escape(c: u8) -> Option<&'static str> {
    const CONTROL: [&str; 32] = [
        "\\u0000", "\\u0001", "\\u0002", "\\u0003", "\\u0004", "\\u0005", "\\u0006", "\\u0007",
        "\\b", "\\t", "\\n", "\\u000b", "\\f", "\\r", "\\u000e", "\\u000f", "\\u0010", "\\u0011",
        "\\u0012", "\\u0013", "\\u0014", "\\u0015", "\\u0016", "\\u0017", "\\u0018", "\\u0019",
        "\\u001a", "\\u001b", "\\u001c", "\\u001d", "\\u001e", "\\u001f",
    ];
    match c {
        b'"' => Some("\\\""),
        b'\\' => Some("\\\\"),
        0..=0x1f => CONTROL.get(c as usize).copied(),
        _ => None,
    }
}

/// Appends `s` as a JSON string literal (quotes included) to `out`.
pub fn push(s: &str, out: &mut String) {
    let b = s.as_bytes();
    out.reserve(b.len() + 2);
    out.push('"');
    // `run` is where the bytes not yet copied start; escaped bytes are ASCII, so every cut
    // lands on a char boundary.
    let mut run = 0;
    let mut i = 0;
    while i < b.len() {
        if let Some(word) = b[i..].first_chunk::<8>()
            && !needs_escape(u64::from_le_bytes(*word))
        {
            i += 8;
            continue;
        }
        if let Some(e) = escape(b[i]) {
            out.push_str(&s[run..i]);
            out.push_str(e);
            run = i + 1;
        }
        i += 1;
    }
    out.push_str(&s[run..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn lit(s: &str) -> String {
        let mut out = String::new();
        push(s, &mut out);
        out
    }

    #[test]
    fn every_byte_that_needs_an_escape_is_found_in_any_lane_of_a_word() {
        for c in 0u8..=255 {
            let must = c < 0x20 || c == b'"' || c == b'\\';
            for lane in 0..8 {
                let mut w = [b'a'; 8];
                w[lane] = c;
                assert_eq!(
                    needs_escape(u64::from_le_bytes(w)),
                    must,
                    "byte {c:#x} lane {lane}"
                );
            }
        }
        // Bytes right next to the thresholds, all at once, stay clean.
        assert!(!needs_escape(u64::from_le_bytes([
            0x20, 0x21, 0x23, 0x5b, 0x5d, 0x7f, 0x80, 0xff
        ])));
    }

    #[test]
    fn plain_and_escaped_text_match_serde_json() {
        for s in [
            "",
            "a",
            "hello world\n",
            "\"quoted\" \\ back",
            "\u{1}\u{1f}\t\r\u{8}\u{c}",
            "é✓ 𝄞\u{7f}",
        ] {
            assert_eq!(lit(s), serde_json::to_string(s).unwrap_or_default());
        }
    }

    proptest! {
        #[test]
        fn any_string_is_written_exactly_as_serde_json_writes_it(
            s in proptest::collection::vec(
                prop_oneof![
                    Just('"'), Just('\\'), Just('\n'), Just('\u{0}'), Just('\u{1f}'), Just(' '),
                    Just('é'), Just('𝄞'), any::<char>(), proptest::char::range('a', 'z'),
                ],
                0..80,
            ).prop_map(|v| v.into_iter().collect::<String>())
        ) {
            prop_assert_eq!(lit(&s), serde_json::to_string(&s).unwrap_or_default());
        }
    }
}
