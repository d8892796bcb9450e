//! Property test: random appends (with random expected versions) and random windowed reads,
//! across segment rolls and reopens, against a plain in-memory model.

mod common;

use std::collections::HashMap;

use common::*;
use proptest::prelude::*;
use strata::{Error, ExpectedVersion, Options, Store};

#[derive(Debug, Clone)]
enum Op {
    Append { stream: u8, events: u8, expect_ok: bool },
    Forward { stream: u8, from: u8, limit: u8 },
    Backward { stream: u8, from: Option<u8>, limit: u8 },
    Scan { partition: u8, from: u8, limit: u8 },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..5, 1u8..5, prop::bool::weighted(0.8)).prop_map(|(stream, events, expect_ok)| Op::Append { stream, events, expect_ok }),
        2 => (0u8..5, any::<u8>(), 1u8..40).prop_map(|(stream, from, limit)| Op::Forward { stream, from: from % 60, limit }),
        2 => (0u8..5, prop::option::of(any::<u8>()), 1u8..40).prop_map(|(stream, from, limit)| Op::Backward { stream, from: from.map(|f| f % 60), limit }),
        1 => (0u8..2, any::<u8>(), 1u8..80).prop_map(|(partition, from, limit)| Op::Scan { partition, from, limit }),
        1 => Just(Op::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_model(ops in prop::collection::vec(op(), 1..120)) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Some(Store::open(dir.path(), opts(2, 4096)).unwrap());
        // stream -> payloads; partition -> (stream, version) in log order
        let mut model: HashMap<String, Vec<Vec<u8>>> = HashMap::new();
        let mut logs: HashMap<u32, Vec<(String, u64)>> = HashMap::new();
        let mut n = 0u32;
        for op in ops {
            let s = store.as_ref().unwrap();
            match op {
                Op::Append { stream, events, expect_ok } => {
                    let name = format!("s{stream}");
                    let have = model.get(&name).map_or(0, Vec::len) as u64;
                    let current = have.checked_sub(1);
                    let expected = match (expect_ok, current) {
                        (true, None) => ExpectedVersion::NoStream,
                        (true, Some(v)) => ExpectedVersion::Exact(v),
                        (false, None) => ExpectedVersion::StreamExists,
                        (false, Some(v)) => ExpectedVersion::Exact(v + 1),
                    };
                    let batch: Vec<_> = (0..events).map(|_| { n += 1; ev("E", format!("{name}-{n}")) }).collect();
                    match s.append(&name, expected, &batch) {
                        Ok(r) => {
                            prop_assert!(expect_ok);
                            prop_assert_eq!(r.first_version, have);
                            let list = model.entry(name.clone()).or_default();
                            let log = logs.entry(r.partition).or_default();
                            prop_assert_eq!(r.first_position, log.len() as u64);
                            for (i, e) in batch.iter().enumerate() {
                                list.push(e.payload.clone());
                                log.push((name.clone(), have + i as u64));
                            }
                        }
                        Err(Error::WrongExpectedVersion { actual, .. }) => {
                            prop_assert!(!expect_ok);
                            prop_assert_eq!(actual, current);
                        }
                        Err(e) => prop_assert!(false, "{e}"),
                    }
                }
                Op::Forward { stream, from, limit } => {
                    let name = format!("s{stream}");
                    let want: Vec<Vec<u8>> = model.get(&name).map_or(vec![], |l| l.iter().skip(from as usize).take(limit as usize).cloned().collect());
                    let got = s.read_stream(&name, u64::from(from), limit as usize).unwrap();
                    prop_assert_eq!(payloads(&got), want);
                    prop_assert!(got.iter().enumerate().all(|(i, e)| e.version == u64::from(from) + i as u64));
                }
                Op::Backward { stream, from, limit } => {
                    let name = format!("s{stream}");
                    let list = model.get(&name).cloned().unwrap_or_default();
                    let top = from.map_or(list.len(), |f| (f as usize + 1).min(list.len()));
                    let want: Vec<Vec<u8>> = list[..top].iter().rev().take(limit as usize).cloned().collect();
                    let got = s.read_stream_backward(&name, from.map(u64::from), limit as usize).unwrap();
                    prop_assert_eq!(payloads(&got), want);
                }
                Op::Scan { partition, from, limit } => {
                    let p = u32::from(partition);
                    let log = logs.get(&p).cloned().unwrap_or_default();
                    let want: Vec<(String, u64)> = log.iter().skip(from as usize).take(limit as usize).cloned().collect();
                    let got = s.read_partition(p, u64::from(from), limit as usize).unwrap();
                    prop_assert_eq!(got.iter().map(|e| (e.stream_id.clone(), e.version)).collect::<Vec<_>>(), want);
                    prop_assert_eq!(s.head(p).unwrap(), log.len() as u64);
                }
                Op::Reopen => {
                    store.take().unwrap().close().unwrap();
                    store = Some(Store::open(dir.path(), Options::default()).unwrap());
                }
            }
        }
    }
}
