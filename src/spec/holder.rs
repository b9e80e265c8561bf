//! The provisioning holder: a task container starts under a tiny `/bin/sh` loop that waits
//! until berth has cloned repos and run setup commands inside it, then becomes the task's real
//! command. Pure (argv and script only), used by the spec builder and by provisioning.

/// Waits for `SIGUSR1`, then becomes the task's command (`"$@"`); exits on SIGTERM/SIGINT so a
/// stop during provisioning is immediate. `sleep` runs in the background because a shell only
/// runs traps between commands or while in `wait`.
pub const HOLD_SCRIPT: &str = "trap 'kill $! 2>/dev/null; exec \"$@\"' USR1; trap 'exit 143' TERM INT; while :; do sleep 3600 & wait $!; done";

/// The signal that releases the held command.
pub const RELEASE_SIGNAL: &str = "SIGUSR1";

/// `$0` of the holder, visible in `ps` inside the container.
const HOLD_NAME: &str = "berth-hold";

/// The container's entrypoint and cmd while held: the holder, with the real command (the
/// image's own entrypoint, then the task's cmd) as its arguments.
pub fn held(image_entrypoint: &[String], cmd: &[String]) -> (Vec<String>, Vec<String>) {
    let entrypoint = vec![
        "/bin/sh".to_string(),
        "-c".to_string(),
        HOLD_SCRIPT.to_string(),
        HOLD_NAME.to_string(),
    ];
    let mut args = image_entrypoint.to_vec();
    args.extend(cmd.iter().cloned());
    (entrypoint, args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_holder_keeps_the_image_entrypoint_before_the_cmd() {
        let (ep, args) = held(&["/init".into(), "--".into()], &["run".into()]);
        assert_eq!(&ep[..2], ["/bin/sh", "-c"]);
        assert_eq!(ep[2], HOLD_SCRIPT);
        assert_eq!(args, ["/init", "--", "run"]);
        let (_, args) = held(&[], &["echo".into(), "hi there".into()]);
        assert_eq!(args, ["echo", "hi there"]);
    }
}
