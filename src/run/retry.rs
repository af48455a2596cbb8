//! Waiting between retries: exponential backoff with jitter (backon), so
//! that workers which failed together do not retry in step.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// Retries of one kind of failure, counted until a success resets them.
#[derive(Debug)]
pub struct Retries {
    builder: ExponentialBuilder,
    current: Option<ExponentialBackoff>,
    attempts: u32,
}

impl Retries {
    /// Waits from `min` doubling up to `max`, `times` in a row at most.
    pub fn new(min: Duration, max: Duration, times: usize) -> Self {
        Self {
            builder: ExponentialBuilder::default()
                .with_min_delay(min)
                .with_max_delay(max)
                .with_max_times(times)
                .with_jitter(),
            current: None,
            attempts: 0,
        }
    }

    /// How long to wait before the next try; None when the tries in a row
    /// are spent.
    pub fn next_wait(&mut self) -> Option<Duration> {
        let wait = self.current.get_or_insert_with(|| self.builder.build()).next()?;
        self.attempts += 1;
        Some(wait)
    }

    /// Tries in a row so far.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// A success: the next failure starts from the shortest wait.
    pub fn reset(&mut self) {
        self.current = None;
        self.attempts = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_are_bounded_and_start_again_after_a_success() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(2));
        let mut r = Retries::new(min, max, 6);
        let waits: Vec<Duration> = std::iter::from_fn(|| r.next_wait()).collect();
        assert_eq!(waits.len(), 6, "then the tries are spent");
        assert_eq!(r.attempts(), 6);
        // Jitter adds up to one more wait of the same length.
        assert!(waits.iter().all(|w| *w >= min && *w <= max * 2), "{waits:?}");
        assert!(waits[4] > waits[0], "{waits:?}");
        r.reset();
        assert_eq!(r.attempts(), 0);
        assert!(r.next_wait().unwrap() <= min * 2);
    }
}
