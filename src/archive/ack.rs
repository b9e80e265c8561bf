//! Building the acknowledgement (pure): which fields an outcome carries, warning codes
//! deduplicated and sorted, and the message sanitised and bounded.

use std::collections::BTreeSet;

use super::reason::{Outcome, Reason, Warning};
use super::validate::Ids;
use crate::protocol::ArchiveAck;

/// Longest `message`, in bytes.
pub const MAX_MESSAGE: usize = 256;
/// Most warning codes in one answer.
const MAX_WARNINGS: usize = 16;

/// What an uploaded object was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    pub bytes: u64,
    /// CRC-32C, base64 of its 4 big-endian bytes.
    pub crc32c: String,
    /// Lowercase hex.
    pub sha256: String,
    pub truncated: bool,
    pub warnings: BTreeSet<Warning>,
}

/// Control characters become spaces, runs of whitespace one space, and the text is cut to
/// [`MAX_MESSAGE`] bytes on a character boundary.
pub fn sanitize(text: &str) -> String {
    let spaced: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let mut out = spaced.split_whitespace().collect::<Vec<_>>().join(" ");
    if out.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    out
}

fn base(ids: &Ids, outcome: Outcome, backend: &str) -> ArchiveAck {
    ArchiveAck {
        protocol_version: 1,
        request_id: ids.request_id.clone(),
        archive_id: ids.archive_id.clone(),
        collection_id: ids.collection_id.clone(),
        run_id: ids.run_id.clone(),
        execution_id: ids.execution_id.clone(),
        outcome: outcome.as_str().to_string(),
        backend_kind: backend.to_string(),
        // Everything else starts absent: `truncated: false`, no warnings, empty reason.
        ..ArchiveAck::default()
    }
}

/// The answer for a request that was not uploaded: its reason decides the outcome, and the
/// message is the reason's fixed text (never request or provider data).
pub fn not_uploaded(ids: &Ids, reason: Reason, backend: &str) -> ArchiveAck {
    ArchiveAck {
        reason_code: reason.as_str().to_string(),
        message: sanitize(reason.message()),
        ..base(ids, reason.outcome(), backend)
    }
}

/// The answer for an uploaded object.
pub fn uploaded(ids: &Ids, u: &Uploaded, backend: &str) -> ArchiveAck {
    let warning_codes: Vec<String> = u
        .warnings
        .iter()
        .map(|w| w.as_str().to_string())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .take(MAX_WARNINGS)
        .collect();
    let status = if warning_codes.is_empty() {
        "complete"
    } else {
        "partial"
    };
    ArchiveAck {
        bytes: Some(u.bytes),
        crc32c: Some(u.crc32c.clone()),
        sha256: Some(u.sha256.clone()),
        truncated: u.truncated,
        content_transformer_version: Some(1),
        capture_status: Some(status.to_string()),
        warning_codes,
        message: sanitize("uploaded"),
        ..base(ids, Outcome::Uploaded, backend)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn ids() -> Ids {
        Ids {
            request_id: "r".into(),
            archive_id: "a".into(),
            collection_id: "c".into(),
            run_id: "t".into(),
            execution_id: "e".into(),
        }
    }

    fn wire(a: &ArchiveAck) -> Value {
        serde_json::to_value(a).unwrap()
    }

    #[test]
    fn a_failure_carries_the_always_fields_and_nothing_of_an_upload() {
        let v = wire(&not_uploaded(&ids(), Reason::UploadRejected, "docker"));
        assert_eq!(
            v,
            json!({"protocol_version": 1, "request_id": "r", "archive_id": "a",
                   "collection_id": "c", "run_id": "t", "execution_id": "e",
                   "outcome": "failed", "backend_kind": "docker", "truncated": false,
                   "warning_codes": [], "reason_code": "upload_rejected",
                   "message": "the upload target rejected the object"})
        );
        let v = wire(&not_uploaded(&ids(), Reason::CaptureUnavailable, "docker"));
        assert_eq!(v["outcome"], "unavailable");
        for absent in [
            "bytes",
            "crc32c",
            "sha256",
            "content_transformer_version",
            "capture_status",
        ] {
            assert!(v.get(absent).is_none(), "{absent}");
        }
    }

    #[test]
    fn an_upload_carries_sizes_checksums_and_sorted_unique_warnings() {
        let u = Uploaded {
            bytes: 10,
            crc32c: "4waSgw==".into(),
            sha256: "ab".into(),
            truncated: true,
            warnings: [Warning::ProviderSnapshotIncomplete, Warning::OutputDropped].into(),
        };
        let v = wire(&uploaded(&ids(), &u, "docker"));
        assert_eq!(v["outcome"], "uploaded");
        assert_eq!(v["reason_code"], "");
        assert_eq!(v["bytes"], 10);
        assert_eq!(v["crc32c"], "4waSgw==");
        assert_eq!(v["truncated"], true);
        assert_eq!(v["content_transformer_version"], 1);
        assert_eq!(v["capture_status"], "partial");
        assert_eq!(
            v["warning_codes"],
            json!(["output_dropped", "provider_snapshot_incomplete"])
        );
        let clean = Uploaded {
            warnings: BTreeSet::new(),
            truncated: false,
            ..u
        };
        let v = wire(&uploaded(&ids(), &clean, "docker"));
        assert_eq!(v["capture_status"], "complete");
        assert_eq!(v["warning_codes"], json!([]));
        assert_eq!(v["truncated"], false);
    }

    #[test]
    fn messages_lose_control_characters_and_runs_of_space_and_are_cut_on_a_boundary() {
        assert_eq!(sanitize("a\n\tb  \u{7}c\r\n"), "a b c");
        assert_eq!(sanitize("   "), "");
        let long = "é".repeat(200); // 400 bytes
        let s = sanitize(&long);
        assert_eq!(s.len(), 256);
        assert!(s.chars().all(|c| c == 'é'));
        let odd = format!("a{}", "é".repeat(200)); // a boundary falls mid-character
        let s = sanitize(&odd);
        assert_eq!(s.len(), 255);
        for r in [Reason::InvalidRequest, Reason::UploadFailed] {
            assert_eq!(sanitize(r.message()), r.message());
        }
    }
}
