//! Errors as one line of text for people (logs, CLI messages, API answers).

use std::fmt::Write as _;

/// The error and its causes on one line, each cause once ("client error
/// (Connect): tcp connect error: Connection refused"); a failed TLS
/// handshake, for one, is only visible in the causes.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let part = s.to_string();
        if !text.contains(&part) {
            let _ = write!(text, ": {part}");
        }
        cur = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("outer: inner")]
    struct Repeats(#[source] std::io::Error);

    #[test]
    fn causes_are_joined_once() {
        let e = Repeats(std::io::Error::other("inner"));
        assert_eq!(super::chain(&e), "outer: inner");
        let io = std::io::Error::other("refused");
        #[derive(Debug, thiserror::Error)]
        #[error("connect")]
        struct Wraps(#[source] std::io::Error);
        assert_eq!(super::chain(&Wraps(io)), "connect: refused");
    }
}
