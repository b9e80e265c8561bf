//! The NDJSON object (PROTOCOL §8.4), pure: `data` records in their field order, the
//! truncation record, cutting output into records, and the first/last truncation plan.

use crate::protocol::Stream;

/// Most decoded bytes in one `data` record.
pub const MAX_RECORD_DATA: usize = 32 << 10;

/// What every record of one execution shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source<'a> {
    /// `docker` or `kubernetes`.
    pub backend: &'a str,
    /// The execution's container, when known.
    pub container_id: Option<&'a str>,
}

/// `data` cut into record-sized pieces, on UTF-8 boundaries where the bytes are text; empty
/// data gives none.
pub fn pieces(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = data;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let n = crate::transcript::cut_point(rest, MAX_RECORD_DATA).max(1);
        let (piece, tail) = rest.split_at(n);
        rest = tail;
        Some(piece)
    })
}

/// When berth read a chunk, always 24 bytes wide (so a line's size is known before its time).
pub fn observed_at(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// Appends one `data` record line (with its newline) to `out`.
pub fn data_line(
    sequence: u64,
    src: &Source<'_>,
    stream: Stream,
    observed_at: &str,
    data: &[u8],
    out: &mut Vec<u8>,
) {
    let mut s = String::with_capacity(data.len() + data.len() / 3 + 200);
    s.push_str(r#"{"schema_version":1,"kind":"data","sequence":"#);
    s.push_str(&sequence.to_string());
    s.push_str(r#","backend":"#);
    crate::jsonstr::push(src.backend, &mut s);
    s.push_str(r#","phase":"container","stream":"#);
    crate::jsonstr::push(stream.as_str(), &mut s);
    s.push_str(r#","observed_at":"#);
    crate::jsonstr::push(observed_at, &mut s);
    match std::str::from_utf8(data) {
        Ok(text) => {
            s.push_str(r#","encoding":"utf8","data":"#);
            crate::jsonstr::push(text, &mut s);
        }
        Err(_) => {
            use base64::Engine;
            s.push_str(r#","encoding":"base64","data":""#);
            base64::engine::general_purpose::STANDARD.encode_string(data, &mut s);
            s.push('"');
        }
    }
    if let Some(c) = src.container_id {
        s.push_str(r#","container_id":"#);
        crate::jsonstr::push(c, &mut s);
    }
    s.push_str("}\n");
    out.extend_from_slice(s.as_bytes());
}

/// The truncation record line.
pub fn truncation_line(omitted_bytes_at_least: u64) -> Vec<u8> {
    format!(
        "{{\"schema_version\":1,\"kind\":\"truncation\",\"policy\":\"first_last\",\"omitted_bytes_at_least\":{omitted_bytes_at_least}}}\n"
    )
    .into_bytes()
}

/// Room kept for the truncation record (its count at the widest).
pub fn truncation_reserve() -> u64 {
    truncation_line(u64::MAX).len() as u64
}

/// Decimal digits of `n`.
pub fn digits(n: u64) -> u64 {
    n.checked_ilog10().map_or(1, |d| u64::from(d) + 1)
}

/// Which records an object keeps: the first `head`, then (when truncated) the truncation
/// record, then every record from `tail_from` on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub head: usize,
    pub tail_from: usize,
    /// `Some(omitted decoded bytes)` when records were dropped.
    pub truncated: Option<u64>,
}

impl Plan {
    /// Whether record `i` is written.
    pub fn keeps(&self, i: usize) -> bool {
        i < self.head || i >= self.tail_from
    }
}

/// The first/last plan for records of `sizes` line bytes carrying `data` decoded bytes each,
/// under `bound`. `None` when even the truncation record cannot fit (the object is empty).
pub fn plan(sizes: &[u64], data: &[u64], bound: u64) -> Option<Plan> {
    let n = sizes.len();
    if sizes.iter().sum::<u64>() <= bound {
        return Some(Plan {
            head: n,
            tail_from: n,
            truncated: None,
        });
    }
    let budget = bound.checked_sub(truncation_reserve())?;
    let half = budget / 2;
    let (mut head, mut used) = (0usize, 0u64);
    while head < n && used + sizes[head] <= half {
        used += sizes[head];
        head += 1;
    }
    let tail_budget = budget - half;
    let (mut tail_from, mut used) = (n, 0u64);
    while tail_from > head && used + sizes[tail_from - 1] <= tail_budget {
        used += sizes[tail_from - 1];
        tail_from -= 1;
    }
    let omitted = data[head..tail_from].iter().sum();
    Some(Plan {
        head,
        tail_from,
        truncated: Some(omitted),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    const SRC: Source<'static> = Source {
        backend: "docker",
        container_id: Some("c1"),
    };

    fn line(seq: u64, stream: Stream, data: &[u8]) -> String {
        let mut out = Vec::new();
        data_line(
            seq,
            &SRC,
            stream,
            "2026-09-01T12:00:00.000Z",
            data,
            &mut out,
        );
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_data_record_has_the_protocol_field_order() {
        let l = line(7, Stream::Stderr, "héllo \"x\"\n".as_bytes());
        assert_eq!(
            l,
            "{\"schema_version\":1,\"kind\":\"data\",\"sequence\":7,\"backend\":\"docker\",\"phase\":\"container\",\"stream\":\"stderr\",\"observed_at\":\"2026-09-01T12:00:00.000Z\",\"encoding\":\"utf8\",\"data\":\"héllo \\\"x\\\"\\n\",\"container_id\":\"c1\"}\n"
        );
        let v: Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["data"], "héllo \"x\"\n");
        assert!(v.get("timestamp").is_none());
    }

    #[test]
    fn bytes_that_are_not_text_are_base64_and_the_container_is_optional() {
        let mut out = Vec::new();
        let src = Source {
            backend: "kubernetes",
            container_id: None,
        };
        data_line(1, &src, Stream::Stdout, "t", &[0xff, 0x00, 0x41], &mut out);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["encoding"], "base64");
        assert_eq!(v["data"], "/wBB");
        assert_eq!(v["backend"], "kubernetes");
        assert!(v.get("container_id").is_none());
    }

    #[test]
    fn pieces_are_at_most_32_kib_and_never_split_a_character() {
        assert_eq!(pieces(b"").count(), 0);
        // 'é' is 2 bytes; an odd offset puts a boundary inside one at 32 KiB.
        let text = format!("a{}", "é".repeat(40_000));
        let ps: Vec<&[u8]> = pieces(text.as_bytes()).collect();
        assert!(ps.iter().all(|p| p.len() <= MAX_RECORD_DATA));
        assert!(ps.iter().all(|p| std::str::from_utf8(p).is_ok()));
        assert_eq!(ps[0].len(), MAX_RECORD_DATA - 1);
        assert_eq!(ps.concat(), text.as_bytes());
        // Binary: cut exactly at the limit, bytes intact.
        let bin = vec![0xffu8; MAX_RECORD_DATA * 2 + 5];
        let ps: Vec<&[u8]> = pieces(&bin).collect();
        assert_eq!(
            ps.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [MAX_RECORD_DATA, MAX_RECORD_DATA, 5]
        );
    }

    #[test]
    fn observed_at_is_fixed_width() {
        let t = chrono::DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert_eq!(observed_at(t), "2026-01-02T03:04:05.000Z");
        assert_eq!(observed_at(chrono::Utc::now()).len(), 24);
    }

    #[test]
    fn the_truncation_record_is_exact() {
        let v: Value = serde_json::from_slice(&truncation_line(42)).unwrap();
        assert_eq!(
            v,
            json!({"schema_version": 1, "kind": "truncation", "policy": "first_last",
                   "omitted_bytes_at_least": 42})
        );
        assert_eq!(digits(0), 1);
        assert_eq!(digits(9), 1);
        assert_eq!(digits(10), 2);
        assert_eq!(digits(u64::MAX), 20);
    }

    #[test]
    fn everything_fits_untruncated() {
        let p = plan(&[10, 10], &[5, 5], 20).unwrap();
        assert_eq!(p.truncated, None);
        assert!(p.keeps(0) && p.keeps(1));
    }

    #[test]
    fn first_last_keeps_whole_records_from_both_ends_and_counts_the_rest() {
        let r = truncation_reserve();
        // budget 200: 100 for the head, 100 for the tail.
        let sizes = [40, 40, 40, 40, 40, 40, 40, 40];
        let data = [1, 2, 3, 4, 5, 6, 7, 8];
        let p = plan(&sizes, &data, 200 + r).unwrap();
        assert_eq!((p.head, p.tail_from), (2, 6));
        assert_eq!(p.truncated, Some(3 + 4 + 5 + 6));
        assert!(p.keeps(1) && !p.keeps(2) && !p.keeps(5) && p.keeps(6));
        let kept: u64 = (0..8).filter(|i| p.keeps(*i)).map(|i| sizes[i]).sum();
        assert!(kept + r <= 200 + r);
    }

    #[test]
    fn a_record_too_large_for_its_half_is_dropped() {
        let r = truncation_reserve();
        // Halves of 50: the first and last records do not fit theirs, and the head and the
        // tail are whole records from the ends, so the small ones between go too.
        let p = plan(&[150, 10, 10, 150], &[140, 1, 1, 140], 100 + r).unwrap();
        assert_eq!((p.head, p.tail_from), (0, 4));
        assert_eq!(p.truncated, Some(282));
        let p = plan(&[10, 250, 10], &[9, 240, 9], 100 + r).unwrap();
        assert_eq!((p.head, p.tail_from), (1, 2));
        assert_eq!(p.truncated, Some(240));
        // Nothing fits but the truncation record itself.
        let p = plan(&[500], &[400], r).unwrap();
        assert_eq!((p.head, p.tail_from), (0, 1));
        assert_eq!(p.truncated, Some(400));
    }

    #[test]
    fn no_room_for_the_truncation_record_means_an_empty_object() {
        assert_eq!(plan(&[500], &[400], truncation_reserve() - 1), None);
    }
}
