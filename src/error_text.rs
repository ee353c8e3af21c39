//! An error and its causes on one line, each cause only where the text so far does not already
//! say it: most of sluice's errors (and aya's) name their cause in their own message, and a
//! plain walk of the chain (anyhow's `{:#}`) printed it again per layer — a missing AF_XDP
//! queue was said three times.

/// `e`, then each of its sources not already in the text.
pub fn error_text(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(cause) = cur {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::error_text;

    #[derive(Debug, thiserror::Error)]
    #[error("outer: {0}")]
    struct Says(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Hides(#[source] std::io::Error);

    #[test]
    fn a_cause_is_added_once_and_only_when_the_message_lacks_it() {
        let io = || std::io::Error::other("disk gone");
        assert_eq!(error_text(&Says(io())), "outer: disk gone");
        assert_eq!(error_text(&Hides(io())), "outer: disk gone");
    }
}
