//! The man pages: one per verb from the CLI definition (clap_mangen), `berth(1)` with EXIT
//! STATUS, ENVIRONMENT, FILES and SIGNALS added, and `berth.yaml(5)` rendered from
//! `docs/configuration.md` — the same table, so the two cannot disagree.

use std::path::Path;

/// `docs/configuration.md`, compiled in: berth.yaml(5)'s source.
const CONFIG_REFERENCE: &str = include_str!("../../docs/configuration.md");

/// The title line `docs/configuration.md` starts with; what follows it, up to the next `## `
/// heading (its "See also"), is the page.
const CONFIG_TITLE: &str = "# Configuration reference\n";

const EXIT_STATUS: &str = "\
0|success: a clean shutdown (run), a valid configuration (check-config), every check passed (verify), an applied reload (reload)
1|failure: Docker or TLS could not be set up (run), a check failed (verify), the daemon does not answer or refused (status, drain, resume, tasks, cancel, logs), a refused reload (reload)
2|a configuration error (run, check-config): every problem is printed with its file, line, key and fix; systemd does not restart on it (RestartPreventExitStatus=2)
125|run --one-shot stopped before its task's result was delivered
N|run --one-shot and submit: the task's own exit code; 130 when it was cancelled";

const ENVIRONMENT: &str = "\
BERTH_API_KEY|the API key (also WARP_API_KEY, for Oz compatibility); never logged, never put in a container
BERTH_CONTROL_PLANE_URL|the control plane's WebSocket URL (--control-plane-url)
BERTH_API|the local API the admin commands talk to (--api)
BERTH_SERVER|the control plane HTTP API of submit (--server)
BERTH_DEV_API_KEY|the key berth dev gives its workers (--api-key)
CREDENTIALS_DIRECTORY|set by systemd (LoadCredential=): berth reads api-key from it when no other key source is set
NOTIFY_SOCKET, WATCHDOG_USEC|set by systemd (Type=notify): READY=1, RELOADING=1, STATUS=, WATCHDOG=1, STOPPING=1
DOCKER_HOST|the Docker engine (unless backend.docker.host is set)
DOCKER_CONFIG|where registry credentials are read (config.json), unless backend.docker.auth_config is set
XDG_STATE_HOME|berth dev keeps its state under $XDG_STATE_HOME/berth/dev (else ~/.local/state/berth/dev)
NO_COLOR|when set and non-empty, no ANSI colour anywhere (colour is only ever used on a terminal)";

const FILES: &str = "\
/etc/berth/config.yaml|the configuration, see berth.yaml(5)
/etc/berth/api-key.cred|the API key as an encrypted systemd credential (LoadCredentialEncrypted=api-key:…)
/var/lib/berth|state_dir: journal.sqlite (executions, acknowledged offsets, undelivered results), transcripts/ (one spool per execution), admin-token; all 0700/0600
/run/berth/api.sock|the local API as a Unix socket, when api.listen names it (mode 0660, group api.socket_group)
/usr/lib/systemd/system/berth.service|the hardened Type=notify unit
/usr/share/doc/berth/examples|drop-ins: egress.conf (egress allowlists), ip-allow.conf (IPAddressDeny=any)";

const SIGNALS: &str = "\
SIGTERM, SIGINT|shut down: with shutdown_mode preserve (default) task containers keep running and the next start re-attaches; with cancel they are stopped and reported as graceful_shutdown. Results not yet delivered stay in the journal. A second signal exits at once (status 130)
SIGHUP|reload the configuration: applied as a whole or refused as a whole (the running one is kept); berth reload waits for the verdict";

/// Writes berth.1 (with the extra sections), berth-VERB.1 and berth.yaml.5 into `dir`.
pub(super) fn write(cmd: clap::Command, dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    clap_mangen::generate_to(cmd.clone(), dir)?;
    let mut main = Vec::new();
    clap_mangen::Man::new(cmd).render(&mut main)?;
    let mut main = String::from_utf8_lossy(&main).into_owned();
    for (title, rows) in [
        ("EXIT STATUS", EXIT_STATUS),
        ("ENVIRONMENT", ENVIRONMENT),
        ("FILES", FILES),
        ("SIGNALS", SIGNALS),
    ] {
        main.push_str(&section(title, rows));
    }
    main.push_str(".SH \"SEE ALSO\"\nberth.yaml(5), systemd.exec(5), docker(1)\n");
    std::fs::write(dir.join("berth.1"), main)?;
    std::fs::write(dir.join("berth.yaml.5"), config_page(CONFIG_REFERENCE))
}

/// A `.SH` section of tagged paragraphs from `term|text` lines.
fn section(title: &str, rows: &str) -> String {
    let mut out = format!(".SH \"{title}\"\n");
    for row in rows.lines() {
        let (term, text) = row.split_once('|').unwrap_or((row, ""));
        out.push_str(&format!(".TP\n\\fB{}\\fR\n{}\n", roff(term), roff(text)));
    }
    out
}

/// berth.yaml(5) from the configuration reference (`docs/configuration.md`): its prose, then
/// one entry per row of its key table (key, default, flag or env, meaning).
pub(super) fn config_page(reference: &str) -> String {
    let body = reference_body(reference);
    let mut out = format!(
        ".TH BERTH.YAML 5 \"\" \"berth {}\" \"File Formats\"\n.SH NAME\nberth.yaml \\- configuration of the berth worker daemon\n.SH SYNOPSIS\n/etc/berth/config.yaml\n.SH DESCRIPTION\n",
        env!("CARGO_PKG_VERSION")
    );
    let mut keys = String::from(".SH KEYS\n");
    let mut prose = String::new();
    for line in body.lines() {
        if let Some(row) = line.strip_prefix('|') {
            let cells: Vec<&str> = row
                .trim_end_matches('|')
                .split('|')
                .map(str::trim)
                .collect();
            let [key, default, flag, meaning] = cells[..] else {
                continue;
            };
            if key == "key" || key.starts_with("---") {
                continue;
            }
            keys.push_str(&format!(".TP\n\\fB{}\\fR\n", roff(&plain(key))));
            let mut facts = format!("Default: {}.", plain(default));
            if !flag.is_empty() {
                facts.push_str(&format!(" Flag or environment: {}.", plain(flag)));
            }
            keys.push_str(&format!(
                "{}\n.br\n{}\n",
                roff(&facts),
                roff(&plain(meaning))
            ));
        } else if line.trim().is_empty() {
            if !prose.is_empty() {
                out.push_str(&roff(prose.trim()));
                out.push_str("\n.PP\n");
                prose.clear();
            }
        } else {
            prose.push_str(&plain(line));
            prose.push(' ');
        }
    }
    if !prose.is_empty() {
        out.push_str(&roff(prose.trim()));
        out.push('\n');
    }
    out.push_str(&keys);
    out.push_str(".SH \"SEE ALSO\"\nberth(1), berth\\-check\\-config(1), berth\\-verify(1)\n");
    out
}

/// The part of the configuration reference the man page renders: after its title, up to its
/// first `## ` section. Empty when the title is not the document's first line.
fn reference_body(reference: &str) -> &str {
    reference
        .strip_prefix(CONFIG_TITLE)
        .and_then(|rest| rest.split("\n## ").next())
        .unwrap_or_default()
}

/// Markdown inline to plain text: `code` and **bold** lose their marks, [text](link) keeps
/// the text. A `[` whose `]` is not followed by `(` is kept as it is (`[ALL]`, `[{url}]`).
fn plain(md: &str) -> String {
    let mut out = String::with_capacity(md.len());
    let mut rest = md;
    while let Some(i) = rest.find('[') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        match after.find(']').and_then(|j| {
            let target = after[j + 1..].strip_prefix('(')?;
            let close = target.find(')')?;
            Some((j, j + 2 + close))
        }) {
            Some((j, end)) => {
                out.push_str(&after[..j]);
                rest = &after[end + 1..];
            }
            None => {
                out.push('[');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out.replace("**", "").replace('`', "")
}

/// Escapes text for roff: backslashes, and a line may not start with `.` or `'`.
fn roff(text: &str) -> String {
    let escaped = text.replace('\\', "\\e");
    escaped
        .lines()
        .map(|l| {
            if l.starts_with('.') || l.starts_with('\'') {
                format!("\\&{l}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_becomes_plain_and_roff_safe() {
        assert_eq!(
            plain("see [`x.yaml`](x.yaml) and `a` **b**"),
            "see x.yaml and a b"
        );
        assert_eq!(plain("[not a link"), "[not a link");
        assert_eq!(
            plain("`cap_drop: [ALL]`, `[{url}]` (see [Isolation](isolation.md#egress))"),
            "cap_drop: [ALL], [{url}] (see Isolation)"
        );
        assert_eq!(roff(".starts with a dot\\"), "\\&.starts with a dot\\e");
    }

    #[test]
    fn the_config_page_has_every_key_of_the_reference_table() {
        let page = config_page(CONFIG_REFERENCE);
        // Every key row of the whole document, counted without `reference_body`: a row the
        // section-finding loses, or a key the page leaves out, fails here.
        let keys: Vec<String> = CONFIG_REFERENCE
            .lines()
            .filter(|l| l.starts_with("| `"))
            .map(|l| plain(l.split('|').nth(1).unwrap().trim()))
            .collect();
        assert!(keys.len() > 40, "{}", keys.len());
        assert_eq!(
            page.matches("\n.TP\n").count(),
            keys.len(),
            "one entry per key"
        );
        for key in &keys {
            assert!(
                page.contains(&format!("\n.TP\n\\fB{}\\fR\n", roff(key))),
                "berth.yaml(5) has no entry for {key}"
            );
        }
        for key in ["worker_id", "policy.egress.allow", "log.format"] {
            assert!(keys.iter().any(|k| k == key), "{key} is in the table");
        }
        assert!(
            page.contains("The config file is YAML."),
            "the prose before the table is the DESCRIPTION"
        );
        assert!(
            !page.contains("See also") && !page.contains("manpages DIR"),
            "the page stops at the reference's first ## section"
        );
        assert!(page.contains(
            "\\fBworker_id\\fR\nDefault: — (required). Flag or environment: --worker-id."
        ));
        assert!(page.starts_with(".TH BERTH.YAML 5"));
        assert!(
            !page.contains('`') && !page.contains("]("),
            "no markdown left"
        );
    }

    #[test]
    fn the_config_page_needs_the_reference_title() {
        let doc = "# Configuration reference\n\nProse.\n\n| key | default | flag / env | meaning |\n|---|---|---|---|\n| `a` | `1` | | the a |\n\n## See also\n\n| `b` | `2` | | not a key |\n";
        let page = config_page(doc);
        assert_eq!(page.matches("\n.TP\n").count(), 1);
        assert!(page.contains("\\fBa\\fR\nDefault: 1.\n.br\nthe a\n"));
        assert!(page.contains("Prose."));
        let untitled = config_page(&doc.replacen("# Configuration reference", "# Other", 1));
        assert_eq!(untitled.matches("\n.TP\n").count(), 0);
    }

    #[test]
    fn extra_sections_are_tagged_paragraphs() {
        let s = section("SIGNALS", SIGNALS);
        assert!(s.starts_with(".SH \"SIGNALS\"\n.TP\n\\fBSIGTERM, SIGINT\\fR\n"));
        assert_eq!(s.matches(".TP").count(), 2);
    }
}
