//! How an error reads to a user: the error and each of its causes on one line.

/// `error: cause: cause's cause`; a cause already spelled out by the text before it
/// (errors that repeat their source in their message) is not said twice.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("cannot write /app/x")]
    struct Write(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("layer: {0}")]
    struct Repeats(#[source] std::io::Error);

    #[test]
    fn causes_follow_once() {
        let denied = || std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        assert_eq!(
            super::chain(&Write(denied())),
            "cannot write /app/x: permission denied"
        );
        assert_eq!(super::chain(&Repeats(denied())), "layer: permission denied");
    }
}
