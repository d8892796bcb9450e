//! Time as strata stores it: `u64` nanoseconds since the Unix epoch (FORMAT.md, conventions).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch, now (0 if the clock reads before 1970).
pub(crate) fn now_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// A stored timestamp as a [`SystemTime`].
pub(crate) fn system_time(nanos: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(nanos)
}
