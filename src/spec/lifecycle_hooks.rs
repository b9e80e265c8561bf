//! The lifecycle-hook context (`oz_lifecycle_hooks`, PROTOCOL.md §8.5): trust data for the Oz
//! CLI's hooks that the worker checks strictly and forwards as one argv pair, never
//! interpreting it further. A context that fails a check refuses the whole assignment before
//! any claim, so the server requeues it for a worker that can honour it: running the task
//! without the hooks its owner required would be worse than not running it here.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::protocol::TaskAssignment;

/// The one payload schema the Oz CLI speaks.
pub const SCHEMA_V1: &str = "warp.oz_hook.v1";
/// The flag that carries the context; an assignment may not smuggle its own.
pub const FLAG: &str = "--oz-lifecycle-hooks-context";
/// Largest encoded context accepted (PROTOCOL.md §8.5 takes 256 KiB).
pub const MAX_BYTES: usize = 256 * 1024;
/// Most trust records accepted.
pub const MAX_TRUST_RECORDS: usize = 64;

/// The context as the CLI receives it, fields in the order re-encoded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Context {
    #[serde(default)]
    required: Option<bool>,
    #[serde(default)]
    supported_payload_schema_versions: Vec<String>,
    #[serde(default)]
    project_trust: Option<Vec<TrustRecord>>,
}

/// One trusted hooks file of a checked-out project.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrustRecord {
    git_root: String,
    config_path: String,
    sha256: String,
}

/// Why a context is refused; the `Display` text is the `task_rejected` reason (it names the
/// rule broken, never a value from the context).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("oz_lifecycle_hooks is larger than {MAX_BYTES} bytes")]
    TooLarge,
    #[error("oz_lifecycle_hooks does not decode: {0}")]
    Malformed(String),
    #[error("oz_lifecycle_hooks.required must be true")]
    NotRequired,
    #[error(
        "oz_lifecycle_hooks supports no payload schema this worker forwards (only {SCHEMA_V1})"
    )]
    Schema,
    #[error("oz_lifecycle_hooks.project_trust is missing")]
    NoTrustList,
    #[error("oz_lifecycle_hooks.project_trust has more than {MAX_TRUST_RECORDS} records")]
    TooManyRecords,
    #[error("oz_lifecycle_hooks.project_trust[{0}] has a blank git_root or config_path")]
    BlankPath(usize),
    #[error("oz_lifecycle_hooks.project_trust[{0}].sha256 is not 64 hexadecimal characters")]
    BadDigest(usize),
    #[error("lifecycle hooks need the Oz harness; this task uses another harness")]
    NotOzHarness,
    #[error("lifecycle hooks need the Oz agent; this berth/1 task runs its own command")]
    OwnCommand,
    #[error("additional_oz_args may not carry {FLAG}; the worker passes the checked context")]
    FlagInArgs,
}

/// Checks an assignment's context (pure); `own_command` says the task runs its berth/1
/// command instead of the agent. `Ok(None)` without a context; `Ok(Some(json))` is the compact
/// re-encoding the argv carries.
pub fn check(a: &TaskAssignment, own_command: bool) -> Result<Option<String>, Refusal> {
    let Some(raw) = a.oz_lifecycle_hooks.as_ref().map(|r| r.0.as_ref()) else {
        return Ok(None);
    };
    let ctx = decode(raw)?;
    compatible(a, own_command)?;
    let json = serde_json::to_string(&ctx).map_err(|e| Refusal::Malformed(e.to_string()))?;
    Ok(Some(super::argv::go_compact(&json)))
}

fn decode(raw: &RawValue) -> Result<Context, Refusal> {
    if raw.get().len() > MAX_BYTES {
        return Err(Refusal::TooLarge);
    }
    // serde also reads a struct from an array; the contract's context and records are objects.
    let shape: serde_json::Value =
        serde_json::from_str(raw.get()).map_err(|e| Refusal::Malformed(describe(&e)))?;
    let records = shape.get("project_trust").and_then(|t| t.as_array());
    if !shape.is_object() || records.is_some_and(|r| r.iter().any(|x| !x.is_object())) {
        return Err(Refusal::Malformed(
            "the context and each trust record must be JSON objects".into(),
        ));
    }
    let ctx: Context =
        serde_json::from_str(raw.get()).map_err(|e| Refusal::Malformed(describe(&e)))?;
    if ctx.required != Some(true) {
        return Err(Refusal::NotRequired);
    }
    let versions = &ctx.supported_payload_schema_versions;
    if versions.is_empty() || versions.iter().any(|v| v != SCHEMA_V1) {
        return Err(Refusal::Schema);
    }
    let trust = ctx.project_trust.as_ref().ok_or(Refusal::NoTrustList)?;
    if trust.len() > MAX_TRUST_RECORDS {
        return Err(Refusal::TooManyRecords);
    }
    for (i, r) in trust.iter().enumerate() {
        if r.git_root.trim().is_empty() || r.config_path.trim().is_empty() {
            return Err(Refusal::BlankPath(i));
        }
        if r.sha256.len() != 64 || !r.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Refusal::BadDigest(i));
        }
    }
    Ok(ctx)
}

/// serde's words for a decoding error, without the offending value (an "invalid type" error
/// quotes it): an unknown or duplicate key is named, anything else is placed.
fn describe(e: &serde_json::Error) -> String {
    let text = e.to_string();
    for rule in ["unknown field", "duplicate field", "missing field"] {
        if let Some(start) = text.find(rule) {
            let named = &text[start..];
            return named
                .split(", expected")
                .next()
                .unwrap_or(named)
                .to_string();
        }
    }
    format!(
        "a value has the wrong type or shape (line {}, column {})",
        e.line(),
        e.column()
    )
}

fn compatible(a: &TaskAssignment, own_command: bool) -> Result<(), Refusal> {
    if own_command {
        return Err(Refusal::OwnCommand);
    }
    // A task without a snapshot counts as Oz (the newer Go worker's rule).
    let snap = a
        .task
        .as_ref()
        .and_then(|t| t.agent_config_snapshot.as_ref());
    if snap.is_some_and(|s| !super::argv::is_oz_harness(s)) {
        return Err(Refusal::NotOzHarness);
    }
    let smuggled = |t: &String| t == FLAG || t.starts_with(&format!("{FLAG}="));
    if a.additional_oz_args.iter().flatten().any(smuggled) {
        return Err(Refusal::FlagInArgs);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{AgentConfigSnapshot, Harness, Task};

    const DIGEST: &str = "0123456789abcdef0123456789ABCDEF0123456789abcdef0123456789abcdef";

    fn with(ctx: &str) -> TaskAssignment {
        TaskAssignment {
            task_id: "t".into(),
            task: Some(Task::default()),
            oz_lifecycle_hooks: RawValue::from_string(ctx.to_string())
                .ok()
                .map(crate::protocol::RawJson),
            ..TaskAssignment::default()
        }
    }

    fn good() -> String {
        format!(
            r#"{{"project_trust": [{{"sha256": "{DIGEST}", "config_path": "/workspace/r/.warp/hooks.json", "git_root": "/workspace/r"}}],
                "supported_payload_schema_versions": ["warp.oz_hook.v1"], "required": true}}"#
        )
    }

    #[test]
    fn a_good_context_is_re_encoded_compact_in_the_contract_key_order() {
        assert_eq!(
            check(&with(&good()), false),
            Ok(Some(format!(
                r#"{{"required":true,"supported_payload_schema_versions":["warp.oz_hook.v1"],"project_trust":[{{"git_root":"/workspace/r","config_path":"/workspace/r/.warp/hooks.json","sha256":"{DIGEST}"}}]}}"#
            )))
        );
        let empty = r#"{"required":true,"supported_payload_schema_versions":["warp.oz_hook.v1"],"project_trust":[]}"#;
        assert_eq!(check(&with(empty), false), Ok(Some(empty.to_string())));
        // Go's HTML escaping, as the CLI would see from the Go worker.
        let html = good().replace("/workspace/r\"", "/workspace/<r>&\"");
        let out = check(&with(&html), false)
            .ok()
            .flatten()
            .unwrap_or_default();
        assert!(
            out.contains(r#""git_root":"/workspace/\u003cr\u003e\u0026""#),
            "{out}"
        );
    }

    #[test]
    fn no_context_changes_nothing() {
        let a = TaskAssignment {
            task_id: "t".into(),
            ..TaskAssignment::default()
        };
        assert_eq!(check(&a, false), Ok(None));
    }

    #[test]
    fn every_decoding_rule_refuses_with_its_own_reason() {
        let v1 = r#"["warp.oz_hook.v1"]"#;
        let rec = format!(r#"{{"git_root":"/g","config_path":"/g/h","sha256":"{DIGEST}"}}"#);
        let many = vec![rec.as_str(); 65].join(",");
        let cases: Vec<(String, Refusal)> = vec![
            (
                format!(r#"{{"required":true,"supported_payload_schema_versions":{v1},"project_trust":[],"extra":1}}"#),
                Refusal::Malformed(String::new()),
            ),
            (
                format!(r#"{{"required":true,"supported_payload_schema_versions":{v1},"project_trust":[{{"git_root":"/g","config_path":"/g/h","sha256":"{DIGEST}","x":1}}]}}"#),
                Refusal::Malformed(String::new()),
            ),
            ("[]".into(), Refusal::Malformed(String::new())),
            (
                format!(r#"{{"required":true,"supported_payload_schema_versions":{v1},"project_trust":[["/g","/g/h","{DIGEST}"]]}}"#),
                Refusal::Malformed(String::new()),
            ),
            (
                format!(r#"{{"required":true,"required":true,"supported_payload_schema_versions":{v1},"project_trust":[]}}"#),
                Refusal::Malformed(String::new()),
            ),
            (
                format!(r#"{{"required":false,"supported_payload_schema_versions":{v1},"project_trust":[]}}"#),
                Refusal::NotRequired,
            ),
            (
                format!(r#"{{"supported_payload_schema_versions":{v1},"project_trust":[]}}"#),
                Refusal::NotRequired,
            ),
            (
                r#"{"required":true,"supported_payload_schema_versions":[],"project_trust":[]}"#.into(),
                Refusal::Schema,
            ),
            (
                r#"{"required":true,"project_trust":[]}"#.into(),
                Refusal::Schema,
            ),
            (
                r#"{"required":true,"supported_payload_schema_versions":["warp.oz_hook.v1","warp.oz_hook.v2"],"project_trust":[]}"#.into(),
                Refusal::Schema,
            ),
            (
                format!(r#"{{"required":true,"supported_payload_schema_versions":{v1}}}"#),
                Refusal::NoTrustList,
            ),
            (
                format!(r#"{{"required":true,"supported_payload_schema_versions":{v1},"project_trust":null}}"#),
                Refusal::NoTrustList,
            ),
            (
                format!(r#"{{"required":true,"supported_payload_schema_versions":{v1},"project_trust":[{many}]}}"#),
                Refusal::TooManyRecords,
            ),
            (
                format!(r#"{{"required":true,"supported_payload_schema_versions":{v1},"project_trust":[{rec},{{"git_root":" ","config_path":"/g/h","sha256":"{DIGEST}"}}]}}"#),
                Refusal::BlankPath(1),
            ),
            (
                format!(r#"{{"required":true,"supported_payload_schema_versions":{v1},"project_trust":[{{"git_root":"/g","config_path":"","sha256":"{DIGEST}"}}]}}"#),
                Refusal::BlankPath(0),
            ),
            (
                format!(r#"{{"required":true,"supported_payload_schema_versions":{v1},"project_trust":[{{"git_root":"/g","config_path":"/c","sha256":"{}"}}]}}"#, &DIGEST[1..]),
                Refusal::BadDigest(0),
            ),
            (
                format!(r#"{{"required":true,"supported_payload_schema_versions":{v1},"project_trust":[{{"git_root":"/g","config_path":"/c","sha256":"{}g"}}]}}"#, &DIGEST[1..]),
                Refusal::BadDigest(0),
            ),
        ];
        for (ctx, want) in cases {
            let got = check(&with(&ctx), false);
            match (&got, &want) {
                (Err(Refusal::Malformed(_)), Refusal::Malformed(_)) => {}
                _ => assert_eq!(got, Err(want), "{ctx}"),
            }
        }
        // 64 records are fine; the size cap is on the encoded form.
        let sixty_four = vec![rec.as_str(); 64].join(",");
        let ok = format!(
            r#"{{"required":true,"supported_payload_schema_versions":{v1},"project_trust":[{sixty_four}]}}"#
        );
        assert!(check(&with(&ok), false).is_ok());
        let big = format!(
            r#"{{"required":true,"supported_payload_schema_versions":{v1},"project_trust":[{{"git_root":"/{}","config_path":"/c","sha256":"{DIGEST}"}}]}}"#,
            "g".repeat(MAX_BYTES)
        );
        assert_eq!(check(&with(&big), false), Err(Refusal::TooLarge));
    }

    #[test]
    fn the_task_must_be_able_to_carry_the_context() {
        let oz = |kind: Option<&str>| {
            let mut a = with(&good());
            a.task = Some(Task {
                agent_config_snapshot: Some(AgentConfigSnapshot {
                    harness: Some(Harness {
                        kind: kind.map(str::to_string),
                    }),
                    ..AgentConfigSnapshot::default()
                }),
                ..Task::default()
            });
            a
        };
        assert!(check(&oz(Some("oz")), false).is_ok());
        assert!(check(&oz(None), false).is_ok());
        assert_eq!(
            check(&oz(Some("claude")), false),
            Err(Refusal::NotOzHarness)
        );
        assert_eq!(check(&with(&good()), true), Err(Refusal::OwnCommand));
        for args in [
            vec!["--x".to_string(), FLAG.to_string(), "{}".to_string()],
            vec![format!("{FLAG}={{}}")],
        ] {
            let mut a = with(&good());
            a.additional_oz_args = Some(args);
            assert_eq!(check(&a, false), Err(Refusal::FlagInArgs));
        }
        let mut fine = with(&good());
        fine.additional_oz_args = Some(vec!["--oz-lifecycle-hooks-contextual".into()]);
        assert!(check(&fine, false).is_ok());
    }

    #[test]
    fn refusal_texts_name_the_rule_and_never_a_value() {
        let typed =
            r#"{"required":"s3cr3t","supported_payload_schema_versions":[],"project_trust":[]}"#;
        let text = check(&with(typed), false)
            .err()
            .map(|r| r.to_string())
            .unwrap_or_default();
        assert!(
            text.starts_with("oz_lifecycle_hooks does not decode: a value has the wrong type"),
            "{text}"
        );
        assert!(!text.contains("s3cr3t"), "{text}");
        let extra = r#"{"required":true,"bogus":1}"#;
        let text = check(&with(extra), false)
            .err()
            .map(|r| r.to_string())
            .unwrap_or_default();
        assert_eq!(
            text,
            "oz_lifecycle_hooks does not decode: unknown field `bogus`"
        );
        let secret_ish = r#"{"required":true,"supported_payload_schema_versions":["warp.oz_hook.v1"],"project_trust":[{"git_root":"/s3cr3t","config_path":"/c","sha256":"nothex"}]}"#;
        let text = check(&with(secret_ish), false)
            .err()
            .map(|r| r.to_string())
            .unwrap_or_default();
        assert_eq!(
            text,
            "oz_lifecycle_hooks.project_trust[0].sha256 is not 64 hexadecimal characters"
        );
        assert!(!text.contains("s3cr3t"));
    }
}
