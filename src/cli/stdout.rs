//! Writing to stdout: a reader that went away (`berth tasks | head`) ends berth quietly with
//! status 141 — what SIGPIPE would give, which Rust ignores — instead of `println!`'s panic or
//! output written nowhere while `--follow` runs on.

use std::io::Write;

/// Writes `bytes` and flushes (so a follower sees them at once).
pub(super) fn write(bytes: &[u8]) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(bytes).and_then(|()| out.flush()) {
        gone(&e);
    }
}

/// Exits on a closed pipe; any other error is dropped, as before (a full disk under a
/// redirect is the shell's to report).
fn gone(e: &std::io::Error) {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(EXIT_BROKEN_PIPE);
    }
}

/// 128 + SIGPIPE.
const EXIT_BROKEN_PIPE: i32 = 141;
