//! The transcript bytes the embedded control plane holds per execution, de-duplicated by offset
//! as workers re-send after a reconnect.

use crate::protocol::Stream;

/// A task's transcript as stored by the server: bytes plus the stream of each run of bytes.
#[derive(Clone, Default)]
pub struct StoredTranscript {
    /// Every byte, in offset order.
    pub bytes: Vec<u8>,
    /// `(offset, stream, len)` runs.
    pub runs: Vec<(u64, Stream, u64)>,
}

impl std::fmt::Debug for StoredTranscript {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "StoredTranscript({} bytes, {} runs)",
            self.bytes.len(),
            self.runs.len()
        )
    }
}

impl StoredTranscript {
    /// Stores a chunk at `offset`, skipping bytes already held; returns the stored length.
    /// A chunk that starts past the end (a gap) is refused: the worker re-sends from the
    /// acknowledged offset.
    pub fn store(&mut self, offset: u64, stream: Stream, data: &[u8]) -> u64 {
        let have = self.bytes.len() as u64;
        if offset > have {
            return have;
        }
        let skip = (have - offset) as usize;
        if skip >= data.len() {
            return have;
        }
        let new = &data[skip..];
        match self.runs.last_mut() {
            Some((_, s, len)) if *s == stream => *len += new.len() as u64,
            _ => self.runs.push((have, stream, new.len() as u64)),
        }
        self.bytes.extend_from_slice(new);
        self.bytes.len() as u64
    }

    /// The runs that overlap `[from, ..)` as `(stream, bytes)`.
    pub fn since(&self, from: u64) -> Vec<(u64, Stream, &[u8])> {
        self.runs
            .iter()
            .filter(|(o, _, l)| o + l > from)
            .map(|(o, s, l)| {
                let start = (*o).max(from);
                (start, *s, &self.bytes[start as usize..(o + l) as usize])
            })
            .collect()
    }
}
