//! One test body on each backend: the embedded store always; and, in a build with the
//! `jetstream` feature where `STRATA_NATS_SERVER` names a nats-server, a store on a JetStream
//! server of its own, started on 127.0.0.1 for the body and stopped by PID after it. `.ci/run`
//! runs the files that use this both ways (the second time with the feature and the server).

use std::sync::Arc;

use strata::Store;

use super::opts;

/// Runs `body` on a fresh embedded store of `partitions` (segments of `segment_bytes`), then,
/// where a server is at hand, on a fresh JetStream store of `partitions` (one replica, a 2 s
/// projection lease).
pub fn on_each_backend(partitions: u32, segment_bytes: u64, body: impl Fn(Arc<Store>)) {
    {
        let dir = tempfile::tempdir().unwrap();
        body(Arc::new(Store::open(dir.path(), opts(partitions, segment_bytes)).unwrap()));
    }
    #[cfg(feature = "jetstream")]
    if std::env::var_os("STRATA_NATS_SERVER").is_some() {
        // One server at a time for the tests of a file: the machine has two cores.
        static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let server = super::nats::Cluster::start(1);
        let dir = tempfile::tempdir().unwrap();
        let options = strata::JetStreamOptions::new(server.urls(), "t")
            .replicas(1)
            .partitions(partitions)
            .lease(std::time::Duration::from_secs(2))
            .state_dir(dir.path());
        let store = Arc::new(Store::connect(options).unwrap());
        eprintln!("the same body on the jetstream backend");
        body(store.clone());
        let _ = store.close();
    }
}
