//! The load's time series for `--report`: one [`Sample`] per interval, taken by the thread
//! that watches the load (never by the clients, which only record their latencies into
//! their own interval histogram). The interval starts short and doubles, merging samples in
//! pairs, whenever [`MAX_SAMPLES`] are held: a short run still has tens of samples, a long
//! one at most `MAX_SAMPLES`, and the sampling costs less as the run goes on.

use std::time::Duration;

use hdrhistogram::Histogram;

/// The first interval.
pub const FIRST_TICK: Duration = Duration::from_millis(20);
/// Samples held at most (even): reaching it merges them in pairs.
pub const MAX_SAMPLES: usize = 200;

/// A new interval latency histogram: µs, 2 significant digits (1 % is plenty for a plot, and
/// it keeps each sample's histogram at about 10 KiB).
pub fn interval_histogram() -> Histogram<u32> {
    Histogram::new_with_bounds(1, 60_000_000, 2).expect("histogram bounds")
}

/// One interval of the load, ending `at` after its start. Counters are totals since the
/// start; `latency` and `lag` are the interval's own.
#[derive(Clone)]
#[cfg_attr(not(feature = "report"), allow(dead_code))]
pub struct Sample {
    pub at: Duration,
    /// Events acknowledged.
    pub events: u64,
    /// Latencies (µs) of the commands that finished in the interval.
    pub latency: Histogram<u32>,
    /// The largest lag of each projection (balances, activity) seen in the interval.
    pub lag: [Duration; 2],
    /// The read model cache's hits and misses.
    pub cache_hits: u64,
    pub cache_misses: u64,
    /// Bytes of segments compacted, and of the archives made from them.
    pub compacted_bytes: u64,
    pub archive_bytes: u64,
}

impl Sample {
    /// `self` then `next` as one interval.
    fn merge(mut self, next: Sample) -> Sample {
        self.latency.add(&next.latency).expect("same bounds");
        Sample { latency: self.latency, lag: [self.lag[0].max(next.lag[0]), self.lag[1].max(next.lag[1])], ..next }
    }
}

/// The samples so far and the interval now.
pub struct Series {
    pub tick: Duration,
    pub samples: Vec<Sample>,
}

impl Series {
    pub fn new() -> Series {
        Series { tick: FIRST_TICK, samples: Vec::with_capacity(MAX_SAMPLES) }
    }

    pub fn push(&mut self, sample: Sample) {
        self.samples.push(sample);
        if self.samples.len() >= MAX_SAMPLES {
            let mut merged = Vec::with_capacity(MAX_SAMPLES);
            let mut old = std::mem::take(&mut self.samples).into_iter();
            while let Some(a) = old.next() {
                merged.push(match old.next() {
                    Some(b) => a.merge(b),
                    None => a,
                });
            }
            self.samples = merged;
            self.tick *= 2;
        }
    }
}
