//! librdkafka reports a broker it cannot reach on every poll while it
//! reconnects by itself: a poll loop says each error once in a while, not
//! every time.

use std::time::{Duration, Instant};

/// How long the same error stays unsaid after it was said.
const QUIET: Duration = Duration::from_secs(30);

/// The last error a poll loop said, and when.
#[derive(Debug, Default)]
pub struct Repeats {
    last: Option<(String, Instant)>,
}

impl Repeats {
    /// Whether `text` is worth saying now (and, if so, remember saying it).
    pub fn say(&mut self, text: &str) -> bool {
        let repeat = self
            .last
            .as_ref()
            .is_some_and(|(t, at)| t == text && at.elapsed() < QUIET);
        if !repeat {
            self.last = Some((text.to_string(), Instant::now()));
        }
        !repeat
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_error_is_said_once_a_while() {
        let mut r = Repeats::default();
        assert!(r.say("broker down"));
        assert!(!r.say("broker down"));
        assert!(r.say("other"));
        assert!(r.say("broker down"), "a different error came in between");
    }
}
