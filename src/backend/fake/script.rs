//! What a sandbox (or an in-place step) does once its command runs: a [`Script`] of steps,
//! registered for a command's first word or read from the command by a tiny shell
//! ([`Script::interpret`]).

use std::time::Duration;

use super::{NOT_FOUND, status};
use crate::backend::ExitStatus;
use crate::protocol::Stream;

/// One step of a [`Script`], public so that other simulated runtimes (the fake Kubernetes
/// kubelet of the integration tests) can execute scripts themselves.
#[derive(Debug, Clone, PartialEq)]
pub enum ScriptStep {
    /// Writes the bytes on the stream (one write).
    Print(Stream, Vec<u8>),
    /// Pauses (in real time).
    Sleep(Duration),
    /// Ends with this status.
    Exit(ExitStatus),
    /// Runs until stopped, removed or told to exit.
    Hang,
}

/// The name this module's users know the steps by.
pub(super) use ScriptStep as Step;

/// What a sandbox (or an in-place step) does once its command runs, step by step. Steps after
/// an exit are never reached; a script that runs out of steps exits 0.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Script {
    pub(super) steps: Vec<Step>,
}

impl Script {
    /// Does nothing and exits 0.
    pub fn new() -> Self {
        Script::default()
    }

    /// The steps, in order.
    pub fn steps(&self) -> &[ScriptStep] {
        &self.steps
    }

    /// Writes `bytes` on `stream` (one log entry).
    pub fn prints(mut self, stream: Stream, bytes: impl AsRef<[u8]>) -> Self {
        self.steps
            .push(Step::Print(stream, bytes.as_ref().to_vec()));
        self
    }

    /// Pauses for `d` (in real time).
    pub fn sleeps(mut self, d: Duration) -> Self {
        self.steps.push(Step::Sleep(d));
        self
    }

    /// Exits with `code`.
    pub fn exits(mut self, code: i64) -> Self {
        self.steps.push(Step::Exit(status(code)));
        self
    }

    /// Is killed by the OOM killer (137).
    pub fn oom(mut self) -> Self {
        self.steps.push(Step::Exit(ExitStatus {
            code: 137,
            oom_killed: true,
        }));
        self
    }

    /// Runs until stopped (or [`FakeBackend::exit`](super::FakeBackend::exit)).
    pub fn runs(mut self) -> Self {
        self.steps.push(Step::Hang);
        self
    }

    /// A command read as a tiny shell would run it. Understood:
    ///
    /// * `sh -c SCRIPT` (or `bash -c`, any path): SCRIPT is commands separated by `;` or
    ///   newlines; words split at blanks, `'…'` and `"…"` quote (no escapes, no `$`
    ///   expansion, no pipes or redirections but a final `>&2` on `echo`).
    /// * Any other argv is one command, its words taken as they are.
    /// * Commands: `echo [-n] WORDS… [>&2]` (one line, on stderr with `>&2`); `sleep N`
    ///   (seconds, fractions allowed; `infinity` runs until stopped); `exit [N]` (N mod 256;
    ///   without N the last command's status); `true` and `:` (0); `false` (1).
    /// * Anything else prints `sh: NAME: not found` on stderr and has status 127, as a shell
    ///   would; the script then goes on. The sandbox exits with the last command's status.
    pub fn interpret(command: &[String]) -> Script {
        let shell = |w: &str| matches!(w.rsplit('/').next(), Some("sh" | "bash"));
        match command {
            [sh, c, text, ..] if shell(sh) && c == "-c" => {
                let mut script = Script::new();
                let mut last = 0;
                for words in split_commands(text) {
                    match script.command(&words, last) {
                        Flow::Next(code) => last = code,
                        Flow::Stop => return script,
                    }
                }
                script.exits(last)
            }
            [] => Script::new(),
            argv => {
                let mut script = Script::new();
                match script.command(argv, 0) {
                    Flow::Next(code) => script.exits(code),
                    Flow::Stop => script,
                }
            }
        }
    }

    /// Appends one command's steps; its status, or `Stop` after an exit.
    fn command(&mut self, words: &[String], last: i64) -> Flow {
        let Some((name, args)) = words.split_first() else {
            return Flow::Next(last);
        };
        match name.as_str() {
            "echo" => {
                let (stream, args) = match args.split_last() {
                    Some((r, rest)) if r == ">&2" || r == "1>&2" => (Stream::Stderr, rest),
                    _ => (Stream::Stdout, args),
                };
                let (newline, args) = match args.split_first() {
                    Some((n, rest)) if n == "-n" => (false, rest),
                    _ => (true, args),
                };
                let mut line = args.join(" ");
                if newline {
                    line.push('\n');
                }
                self.steps.push(Step::Print(stream, line.into_bytes()));
                Flow::Next(0)
            }
            "sleep" => match args.first().map(String::as_str) {
                Some("infinity") => {
                    self.steps.push(Step::Hang);
                    Flow::Stop
                }
                Some(n) => match n.parse::<f64>() {
                    Ok(secs) if secs.is_finite() && secs >= 0.0 => {
                        self.steps.push(Step::Sleep(Duration::from_secs_f64(secs)));
                        Flow::Next(0)
                    }
                    _ => self.fails(format!("sleep: invalid number '{n}'\n"), 1),
                },
                None => self.fails("sleep: missing operand\n".to_string(), 1),
            },
            "exit" => {
                let code = match args.first() {
                    None => last,
                    Some(n) => match n.parse::<i64>() {
                        Ok(n) => n.rem_euclid(256),
                        // What sh does with `exit abc`.
                        Err(_) => 2,
                    },
                };
                self.steps.push(Step::Exit(status(code)));
                Flow::Stop
            }
            "true" | ":" => Flow::Next(0),
            "false" => Flow::Next(1),
            other => self.fails(format!("sh: {other}: not found\n"), NOT_FOUND),
        }
    }

    fn fails(&mut self, message: String, code: i64) -> Flow {
        self.steps
            .push(Step::Print(Stream::Stderr, message.into_bytes()));
        Flow::Next(code)
    }
}

/// After one command of a script: go on (with its status) or stop (it exited).
enum Flow {
    Next(i64),
    Stop,
}

/// `text` as commands (`;` or newline between them), each as words (blanks between them,
/// quotes kept together and removed).
fn split_commands(text: &str) -> Vec<Vec<String>> {
    let mut commands = Vec::new();
    let mut words: Vec<String> = Vec::new();
    let mut word: Option<String> = None;
    let mut quote: Option<char> = None;
    for c in text.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.get_or_insert_default().push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                word.get_or_insert_default();
            }
            (None, ';' | '\n') => {
                words.extend(word.take());
                commands.push(std::mem::take(&mut words));
            }
            (None, c) if c.is_whitespace() => words.extend(word.take()),
            (None, c) => word.get_or_insert_default().push(c),
        }
    }
    words.extend(word.take());
    commands.push(words);
    commands.retain(|w| !w.is_empty());
    commands
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{sh, strs};
    use super::*;

    #[test]
    fn the_interpreter_reads_echo_sleep_exit_and_semicolons() {
        let s = Script::interpret(&sh("echo hi; sleep 0.5;exit 3; echo never"));
        assert_eq!(
            s,
            Script::new()
                .prints(Stream::Stdout, "hi\n")
                .sleeps(Duration::from_millis(500))
                .exits(3)
        );
        assert_eq!(
            Script::interpret(&sh("echo 'a  b' \"c;d\" >&2\necho -n x")),
            Script::new()
                .prints(Stream::Stderr, "a  b c;d\n")
                .prints(Stream::Stdout, "x")
                .exits(0)
        );
        assert_eq!(
            Script::interpret(&strs(&["/bin/bash", "-c", "false"])),
            Script::new().exits(1)
        );
        assert_eq!(
            Script::interpret(&sh("false; exit")),
            Script::new().exits(1),
            "a bare exit keeps the last status"
        );
        assert_eq!(Script::interpret(&sh("exit 300")), Script::new().exits(44));
        assert_eq!(
            Script::interpret(&sh("sleep infinity; echo never")),
            Script::new().runs()
        );
    }

    #[test]
    fn a_plain_argv_is_one_command_and_unknown_commands_are_not_found() {
        assert_eq!(
            Script::interpret(&strs(&["echo", "hello", "world"])),
            Script::new()
                .prints(Stream::Stdout, "hello world\n")
                .exits(0)
        );
        assert_eq!(
            Script::interpret(&strs(&["sleep", "300"])),
            Script::new().sleeps(Duration::from_secs(300)).exits(0)
        );
        assert_eq!(Script::interpret(&strs(&["true"])), Script::new().exits(0));
        assert_eq!(
            Script::interpret(&strs(&["git", "clone", "x"])),
            Script::new()
                .prints(Stream::Stderr, "sh: git: not found\n")
                .exits(NOT_FOUND)
        );
        assert_eq!(
            Script::interpret(&sh("nope; echo after")),
            Script::new()
                .prints(Stream::Stderr, "sh: nope: not found\n")
                .prints(Stream::Stdout, "after\n")
                .exits(0),
            "the script goes on after a command it cannot run"
        );
        assert_eq!(
            Script::interpret(&strs(&["sleep", "soon"])),
            Script::new()
                .prints(Stream::Stderr, "sleep: invalid number 'soon'\n")
                .exits(1)
        );
    }
}
