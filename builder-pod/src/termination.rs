//! The pod's termination message: a compact summary the operator reads from the pod
//! status (Kubernetes keeps at most 4 KiB of it), beside the full report on the volume.

use stagecoach_plan::contract::PodOutcome;

/// Where the kubelet collects the message from (`terminationMessagePath`).
pub const PATH: &str = "/dev/termination-log";

/// The most Kubernetes keeps.
pub const LIMIT: usize = stagecoach_plan::contract::MESSAGE_LIMIT;

/// Also writes the message to this file when set: podman, which runs our pods without a
/// cluster, keeps no termination messages, so the local runner reads them from the
/// workspace instead.
pub const OUTCOME_FILE_ENV: &str = "STAGECOACH_OUTCOME_FILE";

/// Writes the pod's outcome where the kubelet reads it (if the file exists, inside a
/// pod) and to `$STAGECOACH_OUTCOME_FILE` when set; elsewhere does nothing.
pub fn write(outcome: &PodOutcome) {
    write_message(&message(outcome));
}

/// The outcome as a message no longer than the limit ([`PodOutcome::to_message`]); one
/// that does not fit even compressed keeps its reason and place, with the message cut
/// (the whole text is in the pod's report).
pub fn message(outcome: &PodOutcome) -> String {
    outcome.to_message().unwrap_or_else(|_| {
        let cut = PodOutcome {
            message: outcome.message.as_deref().map(|m| bounded(m, 1024)),
            summary: None,
            ..outcome.clone()
        };
        cut.to_message()
            .unwrap_or_else(|_| r#"{"succeeded":false,"reason":"OutcomeTooLarge"}"#.into())
    })
}

/// A message cut at a character boundary near `max` bytes, saying where the rest is.
pub fn bounded(message: &str, max: usize) -> String {
    if message.len() <= max {
        return message.to_string();
    }
    let mut end = max;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… (see pods/ on the workspace)", &message[..end])
}

fn write_message(message: &str) {
    let path = std::path::Path::new(PATH);
    if path.exists() {
        let _ = std::fs::write(path, message);
    }
    if let Some(file) = std::env::var_os(OUTCOME_FILE_ENV) {
        let file = std::path::PathBuf::from(file);
        if let Some(dir) = file.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let _ = std::fs::write(file, message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_failures_keep_their_reason_and_place_under_the_limit() {
        let small = PodOutcome {
            succeeded: false,
            reason: Some("StageFailed".into()),
            ..PodOutcome::default()
        };
        assert_eq!(
            message(&small),
            r#"{"succeeded":false,"reason":"StageFailed"}"#
        );
        // Random-looking text does not compress: it must be cut.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let noise: String = (0..20_000)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                char::from(b'!' + (state % 90) as u8)
            })
            .collect();
        let long = PodOutcome {
            succeeded: false,
            reason: Some("StageFailed".into()),
            stage: Some("build".into()),
            line: Some(12),
            message: Some(format!(
                "stage build: Dockerfile:12: RUN {noise}: exit code 2"
            )),
            ..PodOutcome::default()
        };
        let m = message(&long);
        assert!(m.len() <= LIMIT, "{}", m.len());
        let back = PodOutcome::from_message(&m).expect("an outcome");
        assert_eq!(
            (back.reason.as_deref(), back.stage.as_deref(), back.line),
            (Some("StageFailed"), Some("build"), Some(12))
        );
        assert!(
            back.message
                .expect("message")
                .ends_with("(see pods/ on the workspace)")
        );
    }
}
