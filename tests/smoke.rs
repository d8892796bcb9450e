use strata::{EventData, ExpectedVersion, Options, Store};

#[test]
fn smoke() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options::default().create_if_missing(true).partitions(2).segment_bytes(4096);
    let store = Store::open(dir.path(), opts.clone()).unwrap();
    let mut last = None;
    for i in 0..200u64 {
        let ev = EventData::new("T", format!("payload-{i}").into_bytes());
        let exp = match last {
            None => ExpectedVersion::NoStream,
            Some(v) => ExpectedVersion::Exact(v),
        };
        let r = store.append("s1", exp, &[ev.clone(), ev]).unwrap();
        last = Some(r.last_version);
        store.append(&format!("other-{i}"), ExpectedVersion::NoStream, &[EventData::new("X", vec![1; 10])]).unwrap();
    }
    let evs = store.read_stream("s1", 0, 10_000).unwrap();
    assert_eq!(evs.len(), 400);
    for (i, e) in evs.iter().enumerate() {
        assert_eq!(e.version, i as u64);
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    drop(store);
    let store = Store::open(dir.path(), opts).unwrap();
    println!("{:?}", store.recovery_report());
    let evs = store.read_stream("s1", 0, 10_000).unwrap();
    assert_eq!(evs.len(), 400);
    assert_eq!(store.stream_version("s1").unwrap(), Some(399));
    let back = store.read_stream_backward("s1", None, 5).unwrap();
    assert_eq!(back.iter().map(|e| e.version).collect::<Vec<_>>(), vec![399, 398, 397, 396, 395]);
    let mut total = 0;
    for p in 0..2 {
        let all = store.read_partition(p, 0, 100000).unwrap();
        for (i, e) in all.iter().enumerate() {
            assert_eq!(e.position, i as u64);
        }
        total += all.len();
        assert_eq!(all.len() as u64, store.head(p).unwrap());
    }
    assert_eq!(total, 600);
    let r = store.append("s1", ExpectedVersion::Exact(5), &[EventData::new("T", vec![])]);
    assert!(matches!(r, Err(strata::Error::WrongExpectedVersion { .. })), "{r:?}");
    for f in std::fs::read_dir(dir.path().join("p00000")).unwrap() {
        println!("{:?}", f.unwrap().path());
    }
}
