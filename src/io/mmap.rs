//! The one place strata maps files into memory, and so the one module allowed `unsafe` (the
//! crate root denies it everywhere else). A mapping is only sound while nobody truncates the
//! file under it: a read of a page cut away raises `SIGBUS`. Each function below is for one
//! kind of file and says why that cannot happen to it; callers must keep to what it says.
//! What is read through a mapping is then checked like any other untrusted bytes (lengths,
//! CRCs, alignment before a cast), never trusted for being mapped.
#![allow(unsafe_code)]

use memmap2::Mmap;

use crate::error::{Error, Result};
use crate::io::FileHandle;

/// Maps a segment or index file for reading.
///
/// Callers: a sealed segment is trimmed before it is mapped for reads (an index rebuild drops
/// its scanning map before trimming); the active segment's read map is dropped under its lock
/// (`OpenSegment::unmap`) before the writer cuts the file back to its durable data (a failed
/// sync) or the sealer trims it; the one other cut, of a partial write after a full disk,
/// removes only bytes past the published end, which reads never pass.
pub(crate) fn segment(file: &FileHandle) -> Result<Mmap> {
    // SAFETY: no read touches a mapped page that a truncation removed, by the callers'
    // contract above. Writes through the file while it is mapped are fine (the map is
    // read-only; reads see the page cache). The store lock keeps other strata processes out.
    // Compaction unlinks files, which leaves existing mappings valid. Another program
    // truncating the file would be outside this contract.
    unsafe { Mmap::map(file.std()) }.map_err(|e| Error::io("mmap", file.path(), e))
}

/// Maps the active segment for its recovery scan at open.
///
/// Callers: the store lock is held and the partition's writer has not started; the map is
/// dropped before the file is truncated.
pub(crate) fn recovering(file: &FileHandle) -> Result<Mmap> {
    // SAFETY: nothing writes or truncates this file while the map exists (the callers'
    // contract above, and the store lock for other strata processes).
    unsafe { Mmap::map(file.std()) }.map_err(|e| Error::io("mmap", file.path(), e))
}

/// Maps the active segment's index journal at open, for its frozen section (FORMAT.md §8.4),
/// which is then read in place for as long as the segment is open.
///
/// Callers: strata changes a journal file only by appending records after what it read, by
/// cutting it at open to the end of its valid records (never into the frozen section, the
/// only bytes read through the map once the records are decoded), and by replacing or removing
/// it (a rename over it, an unlink), which leaves this mapping's inode intact.
pub(crate) fn active_index(file: &FileHandle) -> Result<Mmap> {
    // SAFETY: no truncation removes a page that is read through the map after it: the records
    // are decoded before open cuts the file, and the cut keeps every byte up to them; the
    // frozen section lies below. Appends, renames and unlinks leave mapped pages valid. The
    // store lock keeps other strata processes out.
    unsafe { Mmap::map(file.std()) }.map_err(|e| Error::io("mmap", file.path(), e))
}

/// Maps an archive.
///
/// Callers: archives are written whole under a temporary name and renamed into place.
pub(crate) fn archive(file: &FileHandle) -> Result<Mmap> {
    // SAFETY: strata never writes to or truncates an archive file once it is in place (a
    // rewrite renames a new file over it, which leaves this mapping's inode intact), and the
    // store lock keeps other strata processes out.
    unsafe { Mmap::map(file.std()) }.map_err(|e| Error::io("mmap", file.path(), e))
}
