//! The command bus (overload, rate limit, lag-aware gating), the read-through cache (never
//! older than what the projection handled) and the metrics in one place.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use common::backends::on_each_backend;
use common::*;
use strata::bus::BusOptions;
use strata::cache::CacheStats;
use strata::projection::{HandlerError, ProjectionOptions};
use strata::{
    Command, CommandBus, Error, EventData, Metrics, Projection, ProjectionEngine, RecordedEvent, Store, ViewCache,
};

/// Appends one event, after `think` (time spent deciding, so commands pile up).
struct Tick {
    stream: String,
    think: Duration,
}

impl Command for Tick {
    type Aggregate = Tally<0, 1>;
    fn stream(&self) -> &str {
        &self.stream
    }
    fn decide(&self, state: &Tally<0, 1>, _: Option<u64>) -> Result<Vec<EventData>, String> {
        std::thread::sleep(self.think);
        Ok(vec![EventData::new("Tick", format!("{}", state.events))])
    }
}

#[test]
fn an_overload_is_refused_and_nothing_accepted_is_lost() {
    on_each_backend(4, 1 << 20, |store| {
        let bus =
            CommandBus::new(store.clone(), None, BusOptions::default().max_in_flight(4).conflict_retries(100)).unwrap();
        let (ok, overloaded) = (AtomicU64::new(0), AtomicU64::new(0));
        std::thread::scope(|s| {
            for t in 0..24 {
                let (bus, ok, overloaded) = (&bus, &ok, &overloaded);
                s.spawn(move || {
                    for _ in 0..10 {
                        let cmd = Tick { stream: format!("s{}", t % 3), think: Duration::from_millis(3) };
                        match bus.execute(&cmd) {
                            Ok(Some(_)) => ok.fetch_add(1, Ordering::Relaxed),
                            Err(Error::Overloaded { limit: 4, .. }) => overloaded.fetch_add(1, Ordering::Relaxed),
                            other => panic!("{other:?}"),
                        };
                    }
                });
            }
        });
        let (ok, overloaded) = (ok.into_inner(), overloaded.into_inner());
        assert!(overloaded > 0 && ok > 0, "{ok} {overloaded}");
        assert_eq!(ok + overloaded, 240);
        // Every accepted command's event is there, once.
        let stored: u64 =
            (0..3).map(|i| store.read_stream(&format!("s{i}"), 0, usize::MAX).unwrap().len() as u64).sum();
        assert_eq!(stored, ok);
        let stats = bus.stats();
        assert_eq!((stats.accepted, stats.overloaded, stats.in_flight), (ok, overloaded, 0));
    });
}

#[test]
fn the_rate_limit_refuses_with_a_retry_hint() {
    let dir = tempfile::tempdir().unwrap();
    // Buffered: appends far faster than the refill, so the bucket empties.
    let buffered = strata::Durability::Buffered { sync_interval: Duration::from_millis(50) };
    let store = Arc::new(Store::open(dir.path(), opts(1, 1 << 20).durability(buffered)).unwrap());
    // Options no bus can work with are refused up front.
    for bad in [BusOptions::default().rate_limit(f64::NAN, 3.0), BusOptions::default().gate_on("nothing")] {
        assert!(matches!(CommandBus::new(store.clone(), None, bad), Err(Error::InvalidOptions(_))));
    }
    let bus = CommandBus::new(store, None, BusOptions::default().rate_limit(20.0, 3.0)).unwrap();
    let cmd = Tick { stream: "r".into(), think: Duration::ZERO };
    for _ in 0..3 {
        bus.execute(&cmd).unwrap();
    }
    let retry = match bus.execute(&cmd) {
        Err(Error::RateLimited { retry_after }) => retry_after,
        other => panic!("{other:?}"),
    };
    assert!(retry > Duration::ZERO && retry <= Duration::from_millis(50), "{retry:?}");
    std::thread::sleep(retry + Duration::from_millis(5));
    bus.execute(&cmd).unwrap();
    assert_eq!(bus.stats().rate_limited, 1);
}

/// A projection that can be held back.
#[derive(Default)]
struct Held {
    hold: AtomicBool,
    handled: AtomicU64,
}

impl Projection for Held {
    fn handle(&self, _: &RecordedEvent) -> Result<(), HandlerError> {
        while self.hold.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(1));
        }
        self.handled.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

#[test]
fn commands_wait_while_a_critical_projection_lags_past_its_sla() {
    on_each_backend(2, 1 << 20, |store| {
        let engine = Arc::new(ProjectionEngine::new(store.clone(), 2));
        let held = Arc::new(Held::default());
        held.hold.store(true, Ordering::Release);
        engine.register("critical", held.clone(), ProjectionOptions::default().sla(Duration::from_millis(30))).unwrap();
        let options = BusOptions::default().gate_on("critical");
        let bus = CommandBus::new(store.clone(), Some(engine.clone()), options).unwrap();
        let cmd = Tick { stream: "g".into(), think: Duration::ZERO };
        bus.execute(&cmd).unwrap();
        std::thread::sleep(Duration::from_millis(60));
        match bus.execute(&cmd) {
            Err(Error::Lagging { projection, lag, retry_after }) => {
                assert_eq!(projection, "critical");
                assert!(lag >= Duration::from_millis(30), "{lag:?}");
                assert!(retry_after > Duration::ZERO);
            }
            other => panic!("{other:?}"),
        }
        // Released: it drains, and commands are accepted again.
        held.hold.store(false, Ordering::Release);
        assert!(engine.wait_caught_up("critical", Duration::from_secs(10)).unwrap());
        std::thread::sleep(Duration::from_millis(20));
        bus.execute(&cmd).unwrap();
        let stats = bus.stats();
        assert_eq!((stats.accepted, stats.lagging), (2, 1));
    });
}

/// A read model (key -> last version seen) that invalidates the cache after each update,
/// and then publishes what it has handled (for the readers to compare against).
struct Versions {
    model: RwLock<std::collections::HashMap<String, u64>>,
    handled: RwLock<std::collections::HashMap<String, u64>>,
    cache: Arc<ViewCache<String, u64>>,
}

impl Projection for Versions {
    fn handle(&self, e: &RecordedEvent) -> Result<(), HandlerError> {
        self.model.write().unwrap().insert(e.stream_id.clone(), e.version);
        self.cache.invalidate(&e.stream_id);
        self.handled.write().unwrap().insert(e.stream_id.clone(), e.version);
        Ok(())
    }
}

#[test]
fn the_cache_never_serves_a_view_older_than_one_handled() {
    on_each_backend(2, 1 << 20, |store| {
        let cache = Arc::new(ViewCache::new(1000));
        let model = Arc::new(Versions {
            model: RwLock::new(Default::default()),
            handled: RwLock::new(Default::default()),
            cache: cache.clone(),
        });
        let engine = ProjectionEngine::new(store.clone(), 2);
        engine.register("versions", model.clone(), ProjectionOptions::default().batch(1)).unwrap();
        let keys: Vec<String> = (0..4).map(|i| format!("k{i}")).collect();
        let done = AtomicBool::new(false);
        let checked = AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..3 {
                let (cache, model, keys, done, checked, engine) = (&cache, &model, &keys, &done, &checked, &engine);
                s.spawn(move || {
                    while !done.load(Ordering::Acquire) {
                        for k in keys {
                            // What the projection has handled for k before this read starts...
                            let handled = model.handled.read().unwrap().get(k).copied();
                            let v = cache.get_or_load(k, |k| {
                                let v = model.model.read().unwrap().get(k).copied().unwrap_or(0);
                                // A slow read model: invalidations land while it loads.
                                std::thread::sleep(Duration::from_micros(300));
                                v
                            });
                            // ... is never newer than what the read returns.
                            if let Some(h) = handled {
                                assert!(v >= h, "{k}: read {v} after v{h} was handled");
                            }
                            checked.fetch_add(1, Ordering::Relaxed);
                        }
                        let _ = engine.status("versions");
                    }
                });
            }
            for i in 0..300 {
                fill(&store, &keys[i % 4], 1);
            }
            assert!(engine.wait_caught_up("versions", Duration::from_secs(30)).unwrap());
            done.store(true, Ordering::Release);
        });
        // Twice each: the second read of a key nothing invalidates any more is a hit, however
        // the readers above raced the invalidations (on a loaded machine they may never hit).
        for _ in 0..2 {
            for k in &keys {
                assert_eq!(cache.get_or_load(k, |k| model.model.read().unwrap()[k]), 74, "{k}");
            }
        }
        let stats: CacheStats = cache.stats();
        assert!(stats.hits > 0 && stats.misses > 0 && checked.load(Ordering::Relaxed) > 0, "{stats:?}");
        assert!(stats.hit_ratio() > 0.0 && stats.hit_ratio() < 1.0);
    });
}

#[test]
fn metrics_in_one_place_and_in_prometheus_text() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), opts(2, 1 << 20)).unwrap());
    let engine = ProjectionEngine::new(store.clone(), 1);
    engine.register("count", Arc::new(Held::default()), Default::default()).unwrap();
    let bus = CommandBus::new(store.clone(), None, BusOptions::default()).unwrap();
    for i in 0..10 {
        bus.execute(&Tick { stream: format!("m{i}"), think: Duration::ZERO }).unwrap();
    }
    assert!(engine.wait_caught_up("count", Duration::from_secs(10)).unwrap());
    let cache: ViewCache<u32, u32> = ViewCache::new(10);
    cache.get_or_load(&1, |_| 1);
    cache.get_or_load(&1, |_| 1);
    let m = Metrics::collect(&store, Some(&engine), Some(&bus), &[("hot", cache.stats())]);
    assert_eq!((m.write.appends, m.append_latency.count()), (10, 10));
    // One command at a time: every group commit held one append.
    assert_eq!((m.group_sizes[0], m.group_sizes.iter().sum::<u64>()), (10, 10));
    assert_eq!(m.partitions.iter().map(|p| p.events).sum::<u64>(), 10);
    assert_eq!(m.projections.len(), 1);
    let text = m.prometheus();
    for line in [
        "strata_appends_total 10",
        "strata_append_seconds_count 10",
        "strata_commands_total{outcome=\"accepted\"} 10",
        "strata_projection_dead_letters{projection=\"count\"} 0",
        "strata_projection_healthy{projection=\"count\"} 1",
        "strata_cache_reads_total{cache=\"hot\",result=\"hit\"} 1",
        "strata_append_seconds_bucket{le=\"+Inf\"} 10",
        "strata_group_commit_appends_sum 10",
        "strata_group_commit_appends_bucket{le=\"+Inf\"} 10",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
    }
    // Every sample line is `name{labels} value` with a number.
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let value = l.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "{l}");
    }
}

#[test]
fn label_values_are_escaped_in_prometheus_text() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), opts(1, 1 << 20)).unwrap();
    let m = Metrics::collect(&store, None, None, &[("we\"ird\\name\nx", CacheStats::default())]);
    let text = m.prometheus();
    assert!(text.contains(r#"strata_cache_entries{cache="we\"ird\\name\nx"} 0"#), "{text}");
    // Every sample line: a metric name, optional labels, a number.
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = l.rsplit_once(' ').unwrap();
        assert!(value.parse::<f64>().is_ok(), "{l}");
        let name = series.split('{').next().unwrap();
        assert!(name.starts_with("strata_") && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'), "{l}");
    }
}

#[test]
fn an_update_or_clear_is_never_undone_by_a_racing_load() {
    let cache: ViewCache<u32, u32> = ViewCache::new(10);
    // A load that read 1 from the store while the projection wrote 2 and updated the cache.
    let v = cache.get_or_load(&7, |_| {
        cache.update(&7, 2);
        1
    });
    assert_eq!(v, 1, "the racing read returns what it read...");
    assert_eq!(cache.get_or_load(&7, |_| 3), 2, "...but does not replace the update");
    let v = cache.get_or_load(&8, |_| {
        cache.clear();
        1
    });
    assert_eq!((v, cache.get_or_load(&8, |_| 5)), (1, 5), "not cached across a clear");
    let r: Result<u32, &str> = cache.try_get_or_load(&9, |_| Err("down"));
    assert!(r.is_err());
    assert_eq!(cache.try_get_or_load(&9, |_| Ok::<_, &str>(4)), Ok(4));
}
