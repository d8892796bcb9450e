//! Tracing hooks (feature `tracing`; the crate docs list what is traced): thin forms of the
//! `tracing` crate's macros that expand to nothing without the feature, so a call site stays
//! one line and the default build holds no trace of them, not even a clock read.
//!
//! - `event!(LEVEL, "target", fields..., "message")`: an event;
//! - `span!(guard, LEVEL, "target", "name", fields...)`: a span, entered until `guard` drops;
//! - `timer!(name, LEVEL)`: `let name`, a [`Timer`] that reads the clock only if a subscriber
//!   may want events of that level (none is installed: no clock read); `name.us()` is the
//!   time since, in microseconds.
//!
//! `LEVEL` is one of `tracing::Level`'s constants by name (`DEBUG`, `INFO`, `WARN`).

#[cfg(feature = "tracing")]
macro_rules! event {
    ($level:ident, $target:literal, $($rest:tt)+) => {
        ::tracing::event!(target: $target, ::tracing::Level::$level, $($rest)+)
    };
}
#[cfg(not(feature = "tracing"))]
macro_rules! event {
    ($($rest:tt)*) => {};
}

#[cfg(feature = "tracing")]
macro_rules! span {
    ($guard:ident, $level:ident, $target:literal, $name:literal $(, $($fields:tt)+)?) => {
        let $guard = ::tracing::span!(target: $target, ::tracing::Level::$level, $name $(, $($fields)+)?).entered();
    };
}
#[cfg(not(feature = "tracing"))]
macro_rules! span {
    ($($rest:tt)*) => {};
}

#[cfg(feature = "tracing")]
macro_rules! timer {
    ($name:ident, $level:ident) => {
        let $name = $crate::trace::Timer::start(::tracing::Level::$level);
    };
}
#[cfg(not(feature = "tracing"))]
macro_rules! timer {
    ($($rest:tt)*) => {};
}

pub(crate) use {event, span, timer};

/// When something traced began: read only if events of its level may be wanted.
#[cfg(feature = "tracing")]
pub(crate) struct Timer(Option<std::time::Instant>);

#[cfg(feature = "tracing")]
impl Timer {
    /// Starts a timer for events at `level`: the clock is read only if some subscriber may
    /// enable that level (two loads of a static, no clock read, when none is installed).
    pub fn start(level: tracing::Level) -> Timer {
        use tracing::level_filters::{LevelFilter, STATIC_MAX_LEVEL};
        let wanted = level <= STATIC_MAX_LEVEL && level <= LevelFilter::current();
        Timer(wanted.then(std::time::Instant::now))
    }

    /// Microseconds since the start (0 if the clock was not read).
    pub fn us(&self) -> u64 {
        self.0.map_or(0, |t| t.elapsed().as_micros() as u64)
    }
}
