//! A bank on strata, with typed events: an `Account` aggregate, commands through a
//! `CommandBus` with back-pressure, and a balances read model kept by a projection and read
//! through a `ViewCache`.
//!
//! ```text
//! cargo run --release --features serde --example bank -- [COMMANDS] [ACCOUNTS]
//! ```
//!
//! It runs COMMANDS commands (default 20,000) from four client threads against ACCOUNTS
//! accounts (default 200) in a fresh store in a temporary directory, then checks that the read
//! model, the cached reads and every aggregate agree, and exits non-zero if they do not.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use strata::bus::BusOptions;
use strata::projection::{HandlerError, ProjectionOptions};
use strata::typed::{DomainEvent, TypedAggregate, TypedProjection, encode_all};
use strata::{
    ApplyError, Command, CommandBus, Error, EventData, Options, ProjectionEngine, RecordedEvent, Store, ViewCache,
};

/// What happens to an account: the only facts the bank stores.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
enum AccountEvent {
    Opened { owner: String },
    Deposited { cents: u64 },
    Withdrawn { cents: u64 },
}

impl DomainEvent for AccountEvent {}

/// An account's state, rebuilt from its events (and snapshotted every 50).
#[derive(Default, Serialize, Deserialize)]
struct Account {
    open: bool,
    balance: u64,
}

impl TypedAggregate for Account {
    type Event = AccountEvent;
    const SNAPSHOT_EVERY: u64 = 50;

    fn apply(&mut self, event: &AccountEvent) -> Result<(), ApplyError> {
        match event {
            AccountEvent::Opened { .. } => self.open = true,
            AccountEvent::Deposited { cents } => self.balance += cents,
            AccountEvent::Withdrawn { cents } => {
                self.balance = self.balance.checked_sub(*cents).ok_or("withdrawn below zero")?;
            }
        }
        Ok(())
    }
}

/// The commands a client sends.
enum Banking {
    Open { account: String },
    Deposit { account: String, cents: u64 },
    Withdraw { account: String, cents: u64 },
}

impl Command for Banking {
    type Aggregate = Account;

    fn stream(&self) -> &str {
        match self {
            Banking::Open { account } | Banking::Deposit { account, .. } | Banking::Withdraw { account, .. } => account,
        }
    }

    /// The business rules: an account opens once, and never goes below zero.
    fn decide(&self, account: &Account, _: Option<u64>) -> Result<Vec<EventData>, String> {
        let events = match self {
            Banking::Open { account: id } if !account.open => {
                vec![AccountEvent::Opened { owner: format!("owner of {id}") }]
            }
            Banking::Open { .. } => return Err("already open".into()),
            _ if !account.open => return Err("no such account".into()),
            Banking::Deposit { cents, .. } => vec![AccountEvent::Deposited { cents: *cents }],
            Banking::Withdraw { cents, .. } if *cents > account.balance => {
                return Err(format!("insufficient funds: {} < {cents}", account.balance));
            }
            Banking::Withdraw { cents, .. } => vec![AccountEvent::Withdrawn { cents: *cents }],
        };
        encode_all(&events).map_err(|e| e.to_string())
    }
}

/// The read model: balances by account, as a query service would keep them (here in memory,
/// rebuilt at start), with a read-through cache in front that the projection invalidates.
struct Balances {
    table: RwLock<HashMap<String, u64>>,
    cache: ViewCache<String, u64>,
    table_reads: AtomicU64,
}

impl Balances {
    fn read(&self, account: &str) -> u64 {
        self.cache.get_or_load(&account.to_owned(), |a| {
            self.table_reads.fetch_add(1, Ordering::Relaxed);
            self.table.read().unwrap().get(a).copied().unwrap_or(0)
        })
    }
}

impl TypedProjection for Balances {
    type Event = AccountEvent;

    fn handle(&self, event: &AccountEvent, recorded: &RecordedEvent) -> Result<(), HandlerError> {
        {
            let mut table = self.table.write().unwrap();
            let balance = table.entry(recorded.stream_id.clone()).or_default();
            match event {
                AccountEvent::Opened { .. } => {}
                AccountEvent::Deposited { cents } => *balance += cents,
                AccountEvent::Withdrawn { cents } => {
                    *balance = balance.checked_sub(*cents).ok_or("negative balance")?
                }
            }
        }
        // After the table is updated: no read that starts now sees the old balance.
        self.cache.invalidate(&recorded.stream_id);
        Ok(())
    }

    fn reset(&self) -> Result<(), HandlerError> {
        self.table.write().unwrap().clear();
        self.cache.clear();
        Ok(())
    }
}

fn arg(n: usize, default: u64) -> u64 {
    std::env::args().nth(n).and_then(|a| a.parse().ok()).unwrap_or(default)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let commands = arg(1, 20_000);
    let accounts = arg(2, 200).max(1);
    let dir = tempfile::tempdir()?;
    let store = Arc::new(Store::open(dir.path(), Options::default().create_if_missing(true).partitions(4))?);
    let engine = Arc::new(ProjectionEngine::new(store.clone(), 2));
    let balances = Arc::new(Balances {
        table: RwLock::new(HashMap::new()),
        cache: ViewCache::new(10_000),
        table_reads: AtomicU64::new(0),
    });
    engine.register("balances", balances.clone(), ProjectionOptions::default())?;
    let bus =
        Arc::new(CommandBus::new(store.clone(), Some(engine.clone()), BusOptions::default().gate_on("balances"))?);

    let start = Instant::now();
    let clients: Vec<_> = (0..4u64)
        .map(|client| {
            let (bus, balances) = (bus.clone(), balances.clone());
            std::thread::spawn(move || -> Result<(u64, u64), Error> {
                let (mut done, mut rejected) = (0, 0);
                let mut seed = client * 7919 + 1;
                for i in (client..commands).step_by(4) {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    let account = format!("account-{}", (seed >> 33) % accounts);
                    let cents = (seed >> 40) % 10_000 + 1;
                    let command = match i % 10 {
                        // Accounts open first; later opens of an open account are refused.
                        _ if i < accounts => Banking::Open { account: format!("account-{i}") },
                        0 => Banking::Open { account },
                        1..=5 => Banking::Deposit { account, cents },
                        // Withdraw what the (cached, possibly stale) read model shows, at most.
                        _ => {
                            let shown = balances.read(&account);
                            Banking::Withdraw { account, cents: if shown == 0 { cents } else { cents.min(shown) } }
                        }
                    };
                    match bus.execute(&command) {
                        Ok(_) => done += 1,
                        Err(Error::Rejected(_)) => rejected += 1,
                        // Back-pressure: the read model lags; wait a moment and go on.
                        Err(e) if e.kind().is_back_pressure() => std::thread::sleep(Duration::from_millis(1)),
                        Err(e) => return Err(e),
                    }
                }
                Ok((done, rejected))
            })
        })
        .collect();
    let (mut done, mut rejected) = (0, 0);
    for c in clients {
        let (d, r) = c.join().expect("client thread")?;
        done += d;
        rejected += r;
    }
    let elapsed = start.elapsed();
    if !engine.wait_caught_up("balances", Duration::from_secs(30))? {
        return Err("the read model did not catch up in 30 s".into());
    }

    // Every account three ways: the aggregate, the read model's table, the cached read.
    let mut total = 0;
    for a in 0..accounts {
        let account = format!("account-{a}");
        let from_events = store.load::<Account>(&account)?.state().balance;
        let (table, cached) =
            (balances.table.read().unwrap().get(&account).copied().unwrap_or(0), balances.read(&account));
        if from_events != table || table != cached {
            return Err(format!("{account}: aggregate {from_events}, read model {table}, cached {cached}").into());
        }
        total += from_events;
    }
    // Queries once writes are quiet: hot views are served from memory.
    for _ in 0..10 {
        for a in 0..accounts {
            balances.read(&format!("account-{a}"));
        }
    }
    let cache = balances.cache.stats();
    println!(
        "{commands} commands in {:.2} s ({:.0}/s): {done} carried out, {rejected} rejected by the rules",
        elapsed.as_secs_f64(),
        commands as f64 / elapsed.as_secs_f64()
    );
    println!("{accounts} accounts agree three ways (aggregate, read model, cache); {:.2} in all", total as f64 / 100.0);
    println!(
        "cache: {} hits, {} misses, hit ratio {:.2}; {} table reads",
        cache.hits,
        cache.misses,
        cache.hit_ratio(),
        balances.table_reads.load(Ordering::Relaxed)
    );
    Ok(())
}
