//! The engine core: partitions as append-only logs of segment files. The write path is the
//! partition's writer (`writer`: group commit, atomic units, roll, poisoning) with its
//! idempotency window (`dedup`), its preallocator and the sealer; the read path goes from a
//! partition (`read`) through its segments (`view`: open, sealed or archived) to events
//! (`events`), an archive's blocks through the store's block cache (`block_cache`); opening recovers a partition (`recovery`), rebuilding the active segment's
//! index from its journal (`journal`). Beside the log: each partition's deleted streams
//! (`tombstones`) and its streams' retention rules and soft deletes (`stream_meta`), kept in
//! append-only record files (`records`), the one kind of file that tombstones, stream
//! metadata, dead letters and snapshot sidecars share.

pub(crate) mod active;
pub(crate) mod archive;
pub(crate) mod block_cache;
pub(crate) mod dedup;
pub(crate) mod events;
pub(crate) mod journal;
pub(crate) mod partition;
pub(crate) mod prealloc;
pub(crate) mod read;
pub(crate) mod records;
pub(crate) mod recovery;
pub(crate) mod reply;
pub(crate) mod sealed;
pub(crate) mod sealer;
pub(crate) mod segment;
pub(crate) mod stream_meta;
pub(crate) mod tombstones;
pub(crate) mod view;
pub(crate) mod writer;

pub(crate) use archive::Archive;
pub(crate) use block_cache::BlockCache;
pub(crate) use partition::{Partition, Tail, dir_name};
pub(crate) use segment::{Segment, State, View};
pub(crate) use writer::{AppendRequest, BatchBytes, Durability, Queued, Reply, StreamName, Writer, WriterConfig};
