//! The Oz agent's argument vector (the task container's `Cmd`, PROTOCOL.md §5 and §8): every
//! flag the Go worker emits, in its order and with its bytes, so the agent CLI cannot tell the
//! two workers apart.

use std::collections::BTreeMap;

use super::AgentSettings;
use crate::protocol::{AgentConfigSnapshot, RepositoryHeadOverride, TaskAssignment};

fn non_blank(s: &Option<String>) -> Option<&str> {
    s.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

pub(super) fn is_oz_harness(snap: &AgentConfigSnapshot) -> bool {
    match &snap.harness {
        None => true,
        Some(h) => matches!(h.kind.as_deref(), None | Some("") | Some("oz")),
    }
}

/// Go's `json.Compact` with HTML escaping: drop insignificant white space, and escape `<`, `>`,
/// `&`, U+2028 and U+2029 so the bytes match what the Go worker puts on the command line.
pub(super) fn go_compact(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in json.chars() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
        } else if matches!(c, ' ' | '\t' | '\n' | '\r') {
            continue;
        }
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            _ => out.push(c),
        }
    }
    out
}

/// The `--mcp` value: keys sorted bytewise, values compacted as received.
pub fn mcp_json(servers: &BTreeMap<String, crate::protocol::RawJson>) -> String {
    let mut s = String::from("{");
    for (i, (k, v)) in servers.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&serde_json::Value::String(k.clone()).to_string());
        s.push(':');
        s.push_str(v.get());
    }
    s.push('}');
    go_compact(&s)
}

fn push2(v: &mut Vec<String>, flag: &str, value: impl Into<String>) {
    v.push(flag.to_string());
    v.push(value.into());
}

/// The Oz agent argument vector (the container's `Cmd`), every rule of PROTOCOL.md §5.
pub fn agent_argv(a: &TaskAssignment, s: &AgentSettings) -> Vec<String> {
    let mut v: Vec<String> = ["/agent/entrypoint.sh", "agent", "run"]
        .map(String::from)
        .to_vec();
    let task = a.task.clone().unwrap_or_default();
    let task_id = if task.id.is_empty() {
        a.task_id.clone()
    } else {
        task.id.clone()
    };
    if task.owner.as_ref().is_some_and(|o| o.kind == "TEAM") {
        push2(&mut v, "--share", "team:edit");
    }
    push2(&mut v, "--task-id", task_id);
    v.push("--sandboxed".into());
    push2(&mut v, "--server-root-url", s.server_root_url.clone());

    let snap = task.agent_config_snapshot.as_ref();
    if let Some(snap) = snap {
        let oz = is_oz_harness(snap);
        if oz && let Some(m) = non_blank(&snap.model_id) {
            push2(&mut v, "--model", m);
        }
        if let Some(p) = non_blank(&snap.profile_id) {
            push2(&mut v, "--profile", p);
        }
        if let Some(sk) = non_blank(&snap.skill_spec) {
            push2(&mut v, "--skill", sk);
        }
        if let Some(mcp) = snap.mcp_servers.as_ref().filter(|m| !m.is_empty()) {
            push2(&mut v, "--mcp", mcp_json(mcp));
        }
        let computer_use = snap.computer_use_enabled.unwrap_or(oz);
        v.push(if computer_use {
            "--computer-use".into()
        } else {
            "--no-computer-use".into()
        });
        if computer_use
            && oz
            && let Some(m) = non_blank(&snap.computer_use_model_id)
        {
            push2(&mut v, "--computer-use-model", m);
        }
        if let Some(aws) = snap
            .inference_providers
            .as_ref()
            .and_then(|p| p.aws.as_ref())
            .filter(|aws| !aws.disabled)
            && let Some(role) = non_blank(&aws.role_arn)
        {
            push2(&mut v, "--bedrock-inference-role", role);
            if let Some(region) = non_blank(&aws.region) {
                push2(&mut v, "--bedrock-role-region", region);
            }
        }
        if let Some(h) = snap.harness.as_ref().and_then(|h| non_blank(&h.kind)) {
            push2(&mut v, "--harness", h);
        }
        match snap
            .session_sharing
            .as_ref()
            .and_then(|s| s.public_access.as_deref())
        {
            Some("VIEWER") => push2(&mut v, "--share", "public:view"),
            Some("EDITOR") => push2(&mut v, "--share", "public:edit"),
            _ => {}
        }
        if snap.snapshot_disabled == Some(true) {
            v.push("--no-snapshot".into());
        }
        if let Some(n) = snap.snapshot_upload_timeout_secs.filter(|n| *n > 0) {
            push2(&mut v, "--snapshot-upload-timeout", format!("{n}s"));
        }
        if let Some(n) = snap.snapshot_script_timeout_secs.filter(|n| *n > 0) {
            push2(&mut v, "--snapshot-script-timeout", format!("{n}s"));
        }
        if let Some(env) = non_blank(&snap.environment_id) {
            push2(&mut v, "--environment", env);
        }
        push_head_overrides(&mut v, snap.repository_head_overrides.as_deref());
    }
    v.extend(a.additional_oz_args.iter().flatten().cloned());
    let idle_minutes = snap.and_then(|s| s.idle_timeout_minutes).filter(|m| *m > 0);
    match (idle_minutes, s.idle_on_complete.as_deref()) {
        (Some(m), _) => push2(&mut v, "--idle-on-complete", format!("{m}m")),
        (None, Some(op)) => push2(&mut v, "--idle-on-complete", op),
        (None, None) => v.push("--idle-on-complete".into()),
    }
    if let Some(url) = s.session_sharing_server_url.as_deref() {
        push2(&mut v, "--session-sharing-server-url", url);
    }
    // Last of all (§8.5); admission has refused any context that does not pass its checks.
    if let Ok(Some(ctx)) = super::lifecycle_hooks::check(a, false) {
        push2(&mut v, super::lifecycle_hooks::FLAG, ctx);
    }
    v
}

/// One `--repository-head-override-json` per entry, then one `--remove-repository-origins`
/// (PROTOCOL.md §8.2: the CLI reads `preserve_origin` per entry, so the flag is always there).
fn push_head_overrides(v: &mut Vec<String>, overrides: Option<&[RepositoryHeadOverride]>) {
    let Some(list) = overrides.filter(|l| !l.is_empty()) else {
        return;
    };
    for entry in list {
        // A struct of strings always encodes; an empty object would only mean a serde bug.
        let json = serde_json::to_string(entry).unwrap_or_else(|_| "{}".into());
        push2(v, "--repository-head-override-json", go_compact(&json));
    }
    v.push("--remove-repository-origins".into());
}

#[cfg(test)]
mod tests {
    use super::super::tests::{BASE, argv_tail, assignment, raw, settings, strs};
    use super::*;
    use crate::protocol::*;

    #[test]
    fn no_snapshot_gives_base_flags_and_bare_idle_flag() {
        let a = assignment(None);
        let v = agent_argv(&a, &settings());
        assert_eq!(&v[..3], &strs(&["/agent/entrypoint.sh", "agent", "run"]));
        let mut want = strs(&BASE);
        want.push("--idle-on-complete".into());
        assert_eq!(v[3..].to_vec(), want);
    }

    #[test]
    fn team_owner_shares_first() {
        let mut a = assignment(None);
        if let Some(t) = a.task.as_mut() {
            t.owner = Some(Owner {
                kind: "TEAM".into(),
                id: 1,
            });
        }
        assert_eq!(
            argv_tail(&a, &settings())[..2],
            strs(&["--share", "team:edit"])
        );
        if let Some(t) = a.task.as_mut() {
            t.owner = Some(Owner {
                kind: "USER".into(),
                id: 1,
            });
        }
        assert_eq!(argv_tail(&a, &settings())[0], "--task-id");
    }

    #[test]
    fn every_snapshot_flag_in_contract_order() {
        let snap = AgentConfigSnapshot {
            environment_id: Some(" env-1 ".into()),
            model_id: Some(" m1 ".into()),
            profile_id: Some("p1".into()),
            skill_spec: Some("sk".into()),
            mcp_servers: Some(BTreeMap::from([
                ("b".to_string(), raw(r#"{"x": 1}"#)),
                ("a".to_string(), raw("{}")),
            ])),
            computer_use_enabled: None,
            idle_timeout_minutes: Some(15),
            harness: None,
            inference_providers: Some(InferenceProviders {
                aws: Some(AwsInference {
                    disabled: false,
                    role_arn: Some("arn:r".into()),
                    region: Some("eu-west-1".into()),
                }),
            }),
            session_sharing: Some(SessionSharing {
                public_access: Some("EDITOR".into()),
            }),
            snapshot_disabled: Some(true),
            snapshot_upload_timeout_secs: Some(30),
            snapshot_script_timeout_secs: Some(20),
            ..AgentConfigSnapshot::default()
        };
        let mut a = assignment(Some(snap));
        a.additional_oz_args = Some(strs(&["--extra", " raw "]));
        let s = AgentSettings {
            session_sharing_server_url: Some("https://share".into()),
            idle_on_complete: Some("5m".into()),
            ..settings()
        };
        let mut want = strs(&BASE);
        want.extend(strs(&[
            "--model",
            "m1",
            "--profile",
            "p1",
            "--skill",
            "sk",
            "--mcp",
            r#"{"a":{},"b":{"x":1}}"#,
            "--computer-use",
            "--bedrock-inference-role",
            "arn:r",
            "--bedrock-role-region",
            "eu-west-1",
            "--share",
            "public:edit",
            "--no-snapshot",
            "--snapshot-upload-timeout",
            "30s",
            "--snapshot-script-timeout",
            "20s",
            "--environment",
            "env-1",
            "--extra",
            " raw ",
            "--idle-on-complete",
            "15m",
            "--session-sharing-server-url",
            "https://share",
        ]));
        assert_eq!(argv_tail(&a, &s), want);
    }

    fn head_override(owner: &str, clone: bool, preserve: Option<bool>) -> RepositoryHeadOverride {
        RepositoryHeadOverride {
            code_forge: "GITHUB".into(),
            repo_owner: owner.into(),
            repo_name: "r<&>".into(),
            head: RepositoryHead {
                kind: "BRANCH".into(),
                value: "feat/x".into(),
            },
            clone_from: clone.then(|| CloneFrom {
                code_forge: "GITHUB".into(),
                owner: "up".into(),
                repo: "r".into(),
            }),
            preserve_origin: preserve,
        }
    }

    #[test]
    fn the_newer_snapshot_fields_land_in_their_places_and_change_nothing_when_absent() {
        let full = AgentConfigSnapshot {
            environment_id: Some("env-1".into()),
            computer_use_model_id: Some(" cu-1 ".into()),
            repository_head_overrides: Some(vec![
                head_override("o1", true, Some(true)),
                head_override("o2", false, Some(false)),
            ]),
            ..AgentConfigSnapshot::default()
        };
        let mut a = assignment(Some(full.clone()));
        a.additional_oz_args = Some(strs(&["--extra"]));
        let mut want = strs(&BASE);
        want.extend(strs(&[
            "--computer-use",
            "--computer-use-model",
            "cu-1",
            "--environment",
            "env-1",
            "--repository-head-override-json",
            r#"{"code_forge":"GITHUB","repo_owner":"o1","repo_name":"r\u003c\u0026\u003e","head":{"type":"BRANCH","value":"feat/x"},"clone_from":{"code_forge":"GITHUB","owner":"up","repo":"r"},"preserve_origin":true}"#,
            "--repository-head-override-json",
            r#"{"code_forge":"GITHUB","repo_owner":"o2","repo_name":"r\u003c\u0026\u003e","head":{"type":"BRANCH","value":"feat/x"}}"#,
            "--remove-repository-origins",
            "--extra",
            "--idle-on-complete",
        ]));
        assert_eq!(argv_tail(&a, &settings()), want);

        // Absent, blank, empty, or ruled out: byte-identical to an argv built without them.
        let without = |snap: &AgentConfigSnapshot| {
            let mut b = assignment(Some(AgentConfigSnapshot {
                computer_use_model_id: None,
                repository_head_overrides: None,
                ..snap.clone()
            }));
            b.additional_oz_args = a.additional_oz_args.clone();
            argv_tail(&b, &settings())
        };
        let ruled_out = [
            AgentConfigSnapshot {
                computer_use_model_id: Some("  ".into()),
                repository_head_overrides: Some(vec![]),
                ..full.clone()
            },
            AgentConfigSnapshot {
                computer_use_enabled: Some(false),
                repository_head_overrides: None,
                ..full.clone()
            },
            AgentConfigSnapshot {
                harness: Some(Harness {
                    kind: Some("claude".into()),
                }),
                repository_head_overrides: None,
                ..full.clone()
            },
        ];
        for snap in ruled_out {
            let mut b = assignment(Some(snap.clone()));
            b.additional_oz_args = a.additional_oz_args.clone();
            let got = argv_tail(&b, &settings());
            assert_eq!(got, without(&snap), "{snap:?}");
            assert!(!got.iter().any(|t| t.starts_with("--computer-use-model")
                || t.starts_with("--repository-head")
                || t == "--remove-repository-origins"));
        }
    }

    #[test]
    fn the_lifecycle_hooks_context_goes_last() {
        let mut a = assignment(None);
        let ctx = r#"{"required": true, "supported_payload_schema_versions": ["warp.oz_hook.v1"], "project_trust": []}"#;
        a.oz_lifecycle_hooks = serde_json::value::RawValue::from_string(ctx.into())
            .ok()
            .map(RawJson);
        let s = AgentSettings {
            session_sharing_server_url: Some("https://share".into()),
            ..settings()
        };
        let mut want = strs(&BASE);
        want.extend(strs(&[
            "--idle-on-complete",
            "--session-sharing-server-url",
            "https://share",
            "--oz-lifecycle-hooks-context",
            r#"{"required":true,"supported_payload_schema_versions":["warp.oz_hook.v1"],"project_trust":[]}"#,
        ]));
        assert_eq!(argv_tail(&a, &s), want);
        a.oz_lifecycle_hooks = None;
        want.truncate(want.len() - 2);
        assert_eq!(argv_tail(&a, &s), want);
    }

    #[test]
    fn model_only_for_the_oz_harness_and_harness_flag_otherwise() {
        let cases: [(Option<Harness>, bool, Option<&str>); 6] = [
            (None, true, None),
            (Some(Harness { kind: None }), true, None),
            (
                Some(Harness {
                    kind: Some("".into()),
                }),
                true,
                None,
            ),
            (
                Some(Harness {
                    kind: Some("oz".into()),
                }),
                true,
                Some("oz"),
            ),
            // Not trimmed for the harness test: " oz" is another harness.
            (
                Some(Harness {
                    kind: Some(" oz".into()),
                }),
                false,
                Some("oz"),
            ),
            (
                Some(Harness {
                    kind: Some("claude".into()),
                }),
                false,
                Some("claude"),
            ),
        ];
        for (harness, oz, harness_flag) in cases {
            let a = assignment(Some(AgentConfigSnapshot {
                model_id: Some("m".into()),
                harness: harness.clone(),
                ..AgentConfigSnapshot::default()
            }));
            let v = argv_tail(&a, &settings());
            assert_eq!(v.contains(&"--model".to_string()), oz, "{harness:?}");
            // Computer use defaults on for Oz, off otherwise.
            assert_eq!(v.contains(&"--computer-use".to_string()), oz, "{harness:?}");
            assert_eq!(
                v.contains(&"--no-computer-use".to_string()),
                !oz,
                "{harness:?}"
            );
            let h = v
                .iter()
                .position(|x| x == "--harness")
                .map(|i| v[i + 1].as_str());
            assert_eq!(h, harness_flag, "{harness:?}");
        }
    }

    #[test]
    fn explicit_computer_use_wins() {
        for (explicit, harness, want) in [
            (Some(false), None, "--no-computer-use"),
            (Some(true), Some("claude"), "--computer-use"),
        ] {
            let a = assignment(Some(AgentConfigSnapshot {
                computer_use_enabled: explicit,
                harness: harness.map(|h| Harness {
                    kind: Some(h.into()),
                }),
                ..AgentConfigSnapshot::default()
            }));
            assert!(argv_tail(&a, &settings()).contains(&want.to_string()));
        }
    }

    #[test]
    fn blank_values_and_disabled_providers_emit_nothing() {
        let a = assignment(Some(AgentConfigSnapshot {
            model_id: Some("  ".into()),
            profile_id: Some("".into()),
            skill_spec: Some("\t".into()),
            environment_id: Some(" ".into()),
            mcp_servers: Some(BTreeMap::new()),
            inference_providers: Some(InferenceProviders {
                aws: Some(AwsInference {
                    disabled: true,
                    role_arn: Some("arn".into()),
                    region: Some("r".into()),
                }),
            }),
            session_sharing: Some(SessionSharing {
                public_access: Some("OWNER".into()),
            }),
            snapshot_disabled: Some(false),
            snapshot_upload_timeout_secs: Some(0),
            snapshot_script_timeout_secs: Some(-1),
            idle_timeout_minutes: Some(0),
            ..AgentConfigSnapshot::default()
        }));
        let mut want = strs(&BASE);
        want.extend(strs(&["--computer-use", "--idle-on-complete"]));
        assert_eq!(argv_tail(&a, &settings()), want);
    }

    #[test]
    fn bedrock_region_needs_a_role() {
        let a = assignment(Some(AgentConfigSnapshot {
            inference_providers: Some(InferenceProviders {
                aws: Some(AwsInference {
                    disabled: false,
                    role_arn: Some(" ".into()),
                    region: Some("r".into()),
                }),
            }),
            ..AgentConfigSnapshot::default()
        }));
        assert!(
            !argv_tail(&a, &settings())
                .iter()
                .any(|x| x.starts_with("--bedrock"))
        );
        let a = assignment(Some(AgentConfigSnapshot {
            inference_providers: Some(InferenceProviders {
                aws: Some(AwsInference {
                    disabled: false,
                    role_arn: Some("arn".into()),
                    region: None,
                }),
            }),
            ..AgentConfigSnapshot::default()
        }));
        let v = argv_tail(&a, &settings());
        let i = v.iter().position(|x| x == "--bedrock-inference-role");
        assert_eq!(i.map(|i| v[i + 1].as_str()), Some("arn"));
        assert!(!v.contains(&"--bedrock-role-region".to_string()));
    }

    #[test]
    fn idle_on_complete_precedence() {
        let op = AgentSettings {
            idle_on_complete: Some("45m".into()),
            ..settings()
        };
        let tail = |a: &TaskAssignment, s: &AgentSettings| {
            let v = argv_tail(a, s);
            let i = v
                .iter()
                .position(|x| x == "--idle-on-complete")
                .unwrap_or(0);
            v[i..].to_vec()
        };
        let with_minutes = assignment(Some(AgentConfigSnapshot {
            idle_timeout_minutes: Some(3),
            ..AgentConfigSnapshot::default()
        }));
        assert_eq!(
            tail(&with_minutes, &op),
            strs(&["--idle-on-complete", "3m"])
        );
        assert_eq!(
            tail(&assignment(None), &op),
            strs(&["--idle-on-complete", "45m"])
        );
        assert_eq!(
            tail(&assignment(None), &settings()),
            strs(&["--idle-on-complete"])
        );
    }

    #[test]
    fn mcp_json_sorts_keys_compacts_and_escapes_like_go() {
        let m = BTreeMap::from([
            (
                "z".to_string(),
                raw(r#"{ "cmd" : "a<b>&c", "list": [ 1, 2 ] }"#),
            ),
            ("B".to_string(), raw(r#""line\u2028sep""#)),
            ("a b".to_string(), raw(r#"{"s": "keep  inner  spaces"}"#)),
        ]);
        assert_eq!(
            mcp_json(&m),
            r#"{"B":"line\u2028sep","a b":{"s":"keep  inner  spaces"},"z":{"cmd":"a\u003cb\u003e\u0026c","list":[1,2]}}"#
        );
        let m = BTreeMap::from([("k".to_string(), raw("\"raw\u{2028}char\""))]);
        assert_eq!(mcp_json(&m), r#"{"k":"raw\u2028char"}"#);
        let m = BTreeMap::from([("q".to_string(), raw(r#""a \"quoted\" <x>""#))]);
        assert_eq!(mcp_json(&m), r#"{"q":"a \"quoted\" \u003cx\u003e"}"#);
    }
}
