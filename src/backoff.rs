//! Backoff between retries, shared by the engine (target writes, connects)
//! and the election (etcd).

use std::time::Duration;

/// Backoff between retries of a failed write: 200 ms doubling to 10 s.
pub fn retry_delays() -> impl Iterator<Item = Duration> {
    use backon::BackoffBuilder as _;
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(10))
        .with_jitter()
        .without_max_times()
        .build()
}
