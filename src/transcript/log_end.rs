//! Whether live output can be trusted to the byte: the attach stream's last bytes against the
//! end of the engine's log (pure).

use crate::protocol::Stream;

/// Whether the end of the engine's log (`entries`, both streams, in the log's order) is also
/// the end of what the attach stream delivered: per stream, its last raw bytes and whether
/// they are all of that stream's output (`true`) or only its end.
///
/// Each stream's entries are matched backwards against its bytes; an entry without a newline
/// may stand for a line whose newline the log driver dropped. Where the kept end runs out,
/// the entry reaching past it must end with what is left.
pub fn log_end_matches(tails: [(&[u8], bool); 2], entries: &[(Stream, &[u8])]) -> bool {
    for (slot, (tail, whole)) in tails.into_iter().enumerate() {
        let mut rest: &[u8] = tail;
        let mine = entries
            .iter()
            .rev()
            .filter(|(s, _)| crate::transcript::slot(*s) == slot);
        for (_, payload) in mine {
            let dropped_newline = !payload.ends_with(b"\n") && rest.ends_with(b"\n");
            let without = |r: &[u8]| -> usize {
                if dropped_newline {
                    r.len() - 1
                } else {
                    r.len()
                }
            };
            if rest.ends_with(payload) {
                rest = &rest[..rest.len() - payload.len()];
            } else if dropped_newline && rest[..without(rest)].ends_with(payload) {
                rest = &rest[..without(rest) - payload.len()];
            } else if !whole
                && (payload.ends_with(rest)
                    || (dropped_newline && payload.ends_with(&rest[..without(rest)])))
            {
                // The entry reaches back before the kept bytes: nothing more to compare.
                break;
            } else {
                return false;
            }
            if rest.is_empty() && !whole {
                break;
            }
        }
    }
    true
}

/// Raw bytes of each stream kept to compare with the log's last entries.
const TAIL_KEEP: usize = 128 << 10;

/// The last raw bytes of one stream (bounded), and whether they are all of it.
#[derive(Default)]
pub struct Tail {
    bytes: Vec<u8>,
    trimmed: bool,
}

impl Tail {
    pub fn push(&mut self, bytes: &[u8]) {
        if bytes.len() >= TAIL_KEEP {
            self.bytes.clear();
            self.bytes
                .extend_from_slice(&bytes[bytes.len() - TAIL_KEEP..]);
            self.trimmed = true;
            return;
        }
        // Trim in large steps so this stays amortised O(1) per byte.
        if self.bytes.len() + bytes.len() > 2 * TAIL_KEEP {
            let cut = self.bytes.len() + bytes.len() - TAIL_KEEP;
            self.bytes.drain(..cut.min(self.bytes.len()));
            self.trimmed = true;
        }
        self.bytes.extend_from_slice(bytes);
    }

    pub fn view(&self) -> (&[u8], bool) {
        (&self.bytes, !self.trimmed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transcript::replay::ENGINE_PIECE;

    #[test]
    fn the_log_end_must_be_the_end_of_the_live_bytes() {
        let out = Stream::Stdout;
        let err = Stream::Stderr;
        let whole = |b: &'static [u8]| (b, true);
        // Everything delivered: matches, whatever the interleaving.
        let log: &[(Stream, &[u8])] = &[(out, b"a\n"), (err, b"e\n"), (out, b"b\n")];
        assert!(log_end_matches([whole(b"a\nb\n"), whole(b"e\n")], log));
        // The live stream missed the last line of one stream, or a stream entirely.
        assert!(!log_end_matches([whole(b"a\n"), whole(b"e\n")], log));
        assert!(!log_end_matches([whole(b"a\nb\n"), whole(b"")], log));
        // The same last line again is caught when the stream is kept whole.
        let twice: &[(Stream, &[u8])] = &[(out, b"x\n"), (out, b"x\n")];
        assert!(!log_end_matches([whole(b"x\n"), whole(b"")], twice));
        // A split line whose newline the log driver dropped.
        let piece = vec![b'p'; ENGINE_PIECE];
        let mut raw = piece.clone();
        raw.extend_from_slice(b"qq\n");
        let split: Vec<(Stream, &[u8])> = vec![(out, &piece), (out, b"qq")];
        assert!(log_end_matches([(&raw, true), whole(b"")], &split));
        // Only the end kept: an entry reaching before it must end with what is left.
        assert!(log_end_matches(
            [(b"ne\nz\n", false), whole(b"")],
            &[(out, b"long line\n"), (out, b"z\n")]
        ));
        assert!(!log_end_matches(
            [(b"XX\nz\n", false), whole(b"")],
            &[(out, b"long line\n"), (out, b"z\n")]
        ));
        // Nothing printed, nothing logged.
        assert!(log_end_matches([whole(b""), whole(b"")], &[]));
    }
}
