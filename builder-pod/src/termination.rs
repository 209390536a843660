//! The pod's termination message: a compact summary the operator reads from the pod
//! status (Kubernetes keeps at most 4 KiB of it), beside the full report on the volume.

use serde::Serialize;

/// Where the kubelet collects the message from (`terminationMessagePath`).
pub const PATH: &str = "/dev/termination-log";

/// The most Kubernetes keeps.
pub const LIMIT: usize = stagecoach_plan::contract::MESSAGE_LIMIT;

/// Also writes the message to this file when set: podman, which runs our pods without a
/// cluster, keeps no termination messages, so the local runner reads them from the
/// workspace instead.
pub const OUTCOME_FILE_ENV: &str = "STAGECOACH_OUTCOME_FILE";

/// Writes the summary where the kubelet reads it (if the file exists, inside a pod) and
/// to `$STAGECOACH_OUTCOME_FILE` when set; elsewhere does nothing.
pub fn write<T: Serialize>(summary: &T) {
    let message = compact(summary);
    let path = std::path::Path::new(PATH);
    if path.exists() {
        let _ = std::fs::write(path, &message);
    }
    if let Some(file) = std::env::var_os(OUTCOME_FILE_ENV) {
        let file = std::path::PathBuf::from(file);
        if let Some(dir) = file.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let _ = std::fs::write(file, &message);
    }
}

/// JSON no longer than the limit: a summary that does not fit is replaced by a pointer
/// to the full report, so the reader always gets valid JSON.
pub fn compact<T: Serialize>(summary: &T) -> String {
    let json = serde_json::to_string(summary).unwrap_or_else(|_| "{}".into());
    if json.len() <= LIMIT {
        json
    } else {
        serde_json::json!({ "truncated": true, "report": "see reports/ on the workspace" })
            .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_summaries_stay_valid_json_under_the_limit() {
        let small = compact(&serde_json::json!({"pod": "build"}));
        assert_eq!(small, r#"{"pod":"build"}"#);
        let big = compact(&serde_json::json!({"x": "y".repeat(10_000)}));
        assert!(big.len() <= LIMIT);
        assert!(serde_json::from_str::<serde_json::Value>(&big).is_ok());
    }
}
