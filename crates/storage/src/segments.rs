//! The segment files of one partition: append-only files holding RecordBatch v2 bytes exactly
//! as stored, back to back, named by a number that only grows (`00000000000000000007.log`).
//!
//! Where each batch lives (file number, position, size) is the index's business
//! ([`crate::segment_store`]); this module creates, writes, reads, syncs and deletes files,
//! and after a crash finds the whole batches written past the last indexed one.
//!
//! A partition's next file can be made ahead of time, its blocks allocated and its length set
//! to a whole segment (a "spare", [`make_spare`]): appends into it neither allocate blocks nor
//! move the file's end, and both made appends wait. Under ext4's delayed allocation an append
//! into new blocks takes the inode's block-map lock, which the kernel's writeback holds while
//! it allocates the blocks of earlier appends, reading bitmaps from the disk (perf sched:
//! waits of up to 106 ms in `ext4_da_get_block_prep` at full acks=1 load); and an append past
//! the file's end updates its on-disk size under the same lock (`ext4_da_write_end`, up to
//! 60 ms with the blocks allocated but the length left at the data's end).
//!
//! So a file's length is not where its data ends: writes are positioned (the caller knows
//! the end, from the index), a file is cut to its data once it is no longer appended to
//! ([`SegFile::shrink_to`]), and recovery finds the end of the active file by reading whole
//! batches until zeros ([`scan`], [`zeros_at`]).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sluice_core::batch::{self, BatchHeader, HEADER_LEN};

use crate::StorageError;

const SUFFIX: &str = ".log";
/// Suffix of a partition's spare file; not a segment file until it is given a number.
const SPARE_SUFFIX: &str = ".spare";
/// Makes each spare's name unique: a spare is only ever renamed by the one that made it, so no
/// other maker (of a store dropped and reopened, of a partition removed and created again)
/// can put another file under its name.
static SPARE_NAMES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// One open segment file.
#[derive(Debug)]
pub(crate) struct SegFile {
    pub no: u64,
    file: File,
    path: PathBuf,
    /// Held while the length changes: a file is only ever cut shorter, so a cut to its data
    /// end made after a roll can never lengthen it again past a truncation's cut.
    sizing: Mutex<()>,
    /// Its syncs: the kernel reports a writeback error once per open file and marks the pages
    /// it could not write clean, so a later fdatasync would succeed over lost bytes, and of
    /// two running at once only one hears of it. So once one failed, every sync of this file
    /// fails (until the partition is opened again and recovery checks what is there), and a
    /// sync that succeeded answers only after the syncs running when it ended have ended.
    syncs: Mutex<Syncs>,
    synced: std::sync::Condvar,
}

#[derive(Debug, Default)]
struct Syncs {
    failed: bool,
    started: u64,
    running: Vec<u64>,
}

impl SegFile {
    fn new(no: u64, file: File, path: PathBuf) -> Arc<Self> {
        Arc::new(SegFile {
            no,
            file,
            path,
            sizing: Mutex::new(()),
            syncs: Mutex::new(Syncs::default()),
            synced: std::sync::Condvar::new(),
        })
    }

    fn io(&self, source: io::Error) -> StorageError {
        StorageError::Io { path: self.path.display().to_string(), source }
    }

    /// Writes `bufs`, back to back, at `at`, where the caller knows the file's data ends (what a
    /// batch's stamped header and the request's bytes are written from need not be joined
    /// first). What a failed write left is discarded ([`SegFile::discard_from`]).
    pub fn append(&self, bufs: &[&[u8]], at: u64) -> Result<(), StorageError> {
        let mut slices: Vec<IoSlice<'_>> = bufs.iter().map(|b| IoSlice::new(b)).collect();
        let mut rest = &mut slices[..];
        let mut pos = at;
        while !rest.is_empty() {
            match write_at(&self.file, rest, pos) {
                Ok(0) => return Err(self.failed(at, io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    IoSlice::advance_slices(&mut rest, n);
                    pos += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.failed(at, e)),
            }
        }
        Ok(())
    }

    /// The error of a write at `at`, after discarding what it may have left.
    fn failed(&self, at: u64, e: io::Error) -> StorageError {
        self.discard_from(at);
        self.io(e)
    }

    /// Makes what lies from `at` on read as zeros (the blocks stay allocated), or cuts the
    /// file there where the filesystem cannot, durably: whole batches written there that the
    /// log does not hold (a write that failed part way, an index update that failed) must not
    /// be taken into it by a recovery. Best effort: its own failure is logged.
    pub fn discard_from(&self, at: u64) {
        let done = self.len().and_then(|len| if len > at { self.zero_from(at, len) } else { Ok(()) });
        if let Err(e) = done {
            tracing::warn!(error = %e, at, "cannot discard what a failed write left in a segment file");
        }
    }

    /// Fills `buf` from `pos`. `Ok(false)` when the file ends first: the bytes were cut by a
    /// truncation since the caller looked them up.
    pub fn read_at(&self, buf: &mut [u8], pos: u64) -> Result<bool, StorageError> {
        match self.file.read_exact_at(buf, pos) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
            Err(e) => Err(self.io(e)),
        }
    }

    /// fdatasync: the bytes written so far survive a power loss. Syncs of the file run side by
    /// side (the second's writes overlap the first's journal commit).
    pub fn sync(&self) -> Result<(), StorageError> {
        let lock = || self.syncs.lock().unwrap_or_else(|e| e.into_inner());
        let failed =
            || self.io(io::Error::other("an earlier sync of this file failed: bytes written to it may be lost"));
        let me = {
            let mut st = lock();
            if st.failed {
                return Err(failed());
            }
            st.started += 1;
            let me = st.started;
            st.running.push(me);
            me
        };
        let res = self.file.sync_data();
        let mut st = lock();
        if let Err(e) = &res {
            if !st.failed {
                tracing::error!(path = %self.path.display(), error = %e, "sync failed: the file takes no more syncs until the partition is opened again");
            }
            st.failed = true;
        }
        st.running.retain(|r| *r != me);
        self.synced.notify_all();
        // One of these may have been told of an error this one's fdatasync was not.
        let others = st.running.clone();
        while others.iter().any(|o| st.running.contains(o)) {
            st = self.synced.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        match res {
            Err(e) => Err(self.io(e)),
            Ok(()) if st.failed => Err(failed()),
            Ok(()) => Ok(()),
        }
    }

    /// Cuts the file to `len`, durably.
    pub fn set_len(&self, len: u64) -> Result<(), StorageError> {
        self.set_len_unsynced(len)?;
        self.sync()
    }

    fn set_len_unsynced(&self, len: u64) -> Result<(), StorageError> {
        let _sizing = self.sizing.lock().unwrap_or_else(|e| e.into_inner());
        self.file.set_len(len).map_err(|e| self.io(e))
    }

    /// Cuts the file to `len` if it is longer: the preallocated end of a file no longer
    /// appended to. Not synced: should the cut be lost, zeros past the data are what a
    /// restart finds there, and recovery cuts them again.
    pub fn shrink_to(&self, len: u64) -> Result<(), StorageError> {
        let _sizing = self.sizing.lock().unwrap_or_else(|e| e.into_inner());
        if self.len()? > len {
            self.file.set_len(len).map_err(|e| self.io(e))?;
        }
        Ok(())
    }

    /// Makes the bytes from `from` to `len` read as zeros, durably, the blocks kept allocated
    /// (cut at `from` where the filesystem cannot or the zeroing fails). Synced: the block holding `from` is
    /// zeroed by a data write, which later appends into that block could reach the disk
    /// without (no journal commit orders them), leaving bytes past it that the zeroing did
    /// not make durable.
    pub fn zero_from(&self, from: u64, len: u64) -> Result<(), StorageError> {
        match zero_range(&self.file, from, len.saturating_sub(from)) {
            Ok(true) => self.sync(),
            Ok(false) | Err(_) => self.set_len(from),
        }
    }

    /// Whether anything but zeros may lie between `from` and `len`: the rest of the block
    /// holding `from` is read, and past it the filesystem says where data is (blocks made
    /// ahead and never written are none). True when it cannot tell. A clean restart finds
    /// nothing there and so zeroes and syncs nothing.
    pub fn written_past(&self, from: u64, len: u64) -> Result<bool, StorageError> {
        use std::os::unix::fs::MetadataExt;
        let block = self.file.metadata().map_err(|e| self.io(e))?.blksize().clamp(512, 1 << 20);
        let block_end = ((from / block + 1) * block).min(len);
        let mut rest = vec![0u8; (block_end - from) as usize];
        if !self.read_at(&mut rest, from)? || rest.iter().any(|b| *b != 0) {
            return Ok(true);
        }
        Ok(block_end < len && data_after(&self.file, block_end, len))
    }

    /// The file's length: past its data when it was made ahead.
    pub fn len(&self) -> Result<u64, StorageError> {
        Ok(self.file.metadata().map_err(|e| self.io(e))?.len())
    }

    /// Bytes of disk allocated to the file (past its length too, for a spare).
    pub fn allocated(&self) -> Result<u64, StorageError> {
        use std::os::unix::fs::MetadataExt;
        Ok(self.file.metadata().map_err(|e| self.io(e))?.blocks() * 512)
    }

    /// Unlinks the file. Readers holding it keep reading what it held.
    pub fn delete(&self) -> Result<(), StorageError> {
        remove_file(&self.path)
    }
}

/// Unlinks `path`; already gone is fine.
fn remove_file(path: &Path) -> Result<(), StorageError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StorageError::Io { path: path.display().to_string(), source: e }),
    }
}

fn dir_io(dir: &Path, source: io::Error) -> StorageError {
    StorageError::Io { path: dir.display().to_string(), source }
}

fn file_path(dir: &Path, no: u64) -> PathBuf {
    dir.join(format!("{no:020}{SUFFIX}"))
}

/// Makes a directory's entries (files created or removed in it) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| dir_io(dir, e))
}

fn open_file(path: PathBuf, no: u64, create: bool) -> Result<Arc<SegFile>, StorageError> {
    // Not opened for appending: writes are positioned (see the module doc).
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .open(&path)
        .map_err(|e| StorageError::Io { path: path.display().to_string(), source: e })?;
    Ok(SegFile::new(no, file, path))
}

/// A partition's next segment file, made ahead of time with its blocks allocated.
#[derive(Debug)]
pub(crate) struct Spare {
    file: File,
    path: PathBuf,
}

/// Makes a spare file in `dir`, `bytes` long and allocated (it reads as zeros). Not synced: the
/// allocation is metadata the first fdatasync of data in the file makes durable with it (as
/// for the blocks a growing file allocates), and an fsync here, under load, waited behind the
/// writeback of every partition's data. `Ok(None)` when the filesystem cannot
/// allocate ahead (nothing would be gained) or `dir` is gone (the partition was deleted).
pub(crate) fn make_spare(dir: &Path, bytes: u64) -> Result<Option<Spare>, StorageError> {
    let n = SPARE_NAMES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = dir.join(format!("{}-{n}{SPARE_SUFFIX}", std::process::id()));
    let io = |e| StorageError::Io { path: path.display().to_string(), source: e };
    // A new file: never one that may hold data.
    let file = match OpenOptions::new().read(true).write(true).create_new(true).open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    match allocate(&file, bytes) {
        Ok(true) => {}
        Ok(false) => {
            let _ = std::fs::remove_file(&path);
            return Ok(None);
        }
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            return Err(io(e));
        }
    }
    Ok(Some(Spare { file, path }))
}

/// Makes `spare` segment file `no` of `dir`: the name changes, the open file and its blocks
/// stay. The caller syncs `dir` before it counts on the file's data, as for [`create`].
pub(crate) fn adopt_spare(dir: &Path, spare: Spare, no: u64) -> Result<Arc<SegFile>, StorageError> {
    let path = file_path(dir, no);
    std::fs::rename(&spare.path, &path)
        .map_err(|e| StorageError::Io { path: spare.path.display().to_string(), source: e })?;
    Ok(SegFile::new(no, spare.file, path))
}

/// Whether the filesystem knows of data in `file` from `pos` to `len` (`SEEK_DATA`); true when
/// it cannot say.
#[cfg(target_os = "linux")]
fn data_after(file: &File, pos: u64, len: u64) -> bool {
    use nix::errno::Errno;
    use nix::unistd::{Whence, lseek};
    let Ok(at) = i64::try_from(pos) else { return true };
    match lseek(file, at, Whence::SeekData) {
        Ok(found) => (found as u64) < len,
        Err(Errno::ENXIO) => false,
        Err(_) => true,
    }
}

#[cfg(not(target_os = "linux"))]
fn data_after(_file: &File, _pos: u64, _len: u64) -> bool {
    true
}

/// Turns `bytes` from `from` into allocated zeros. `Ok(false)` when the filesystem cannot.
#[cfg(target_os = "linux")]
fn zero_range(file: &File, from: u64, bytes: u64) -> io::Result<bool> {
    use nix::errno::Errno;
    use nix::fcntl::{FallocateFlags, fallocate};
    let at = |n: u64| i64::try_from(n).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput));
    match fallocate(file, FallocateFlags::FALLOC_FL_ZERO_RANGE, at(from)?, at(bytes)?) {
        Ok(()) => Ok(true),
        Err(Errno::EOPNOTSUPP) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

#[cfg(not(target_os = "linux"))]
fn zero_range(_file: &File, _from: u64, _bytes: u64) -> io::Result<bool> {
    Ok(false)
}

/// One positioned, vectored write (at most `IOV_MAX` slices: the caller loops on short writes).
#[cfg(target_os = "linux")]
fn write_at(file: &File, bufs: &[IoSlice<'_>], pos: u64) -> io::Result<usize> {
    const IOV_MAX: usize = 1024;
    let pos = i64::try_from(pos).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    Ok(nix::sys::uio::pwritev(file, &bufs[..bufs.len().min(IOV_MAX)], pos)?)
}

#[cfg(not(target_os = "linux"))]
fn write_at(file: &File, bufs: &[IoSlice<'_>], pos: u64) -> io::Result<usize> {
    let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| &b[..]);
    file.write_at(first, pos)
}

/// Allocates `bytes` of blocks from the start of `file` and makes it that long (the blocks
/// read as zeros until written). `Ok(false)` when the filesystem cannot.
#[cfg(target_os = "linux")]
fn allocate(file: &File, bytes: u64) -> io::Result<bool> {
    use nix::errno::Errno;
    use nix::fcntl::{FallocateFlags, fallocate};
    let len = i64::try_from(bytes).unwrap_or(i64::MAX);
    match fallocate(file, FallocateFlags::empty(), 0, len) {
        Ok(()) => Ok(true),
        Err(Errno::EOPNOTSUPP) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

#[cfg(not(target_os = "linux"))]
fn allocate(_file: &File, _bytes: u64) -> io::Result<bool> {
    Ok(false)
}

/// Creates segment file `no` in `dir` (which it creates too); with `durable`, its name is
/// synced at once, otherwise the caller syncs `dir` before it counts on the file's data.
pub(crate) fn create(dir: &Path, no: u64, durable: bool) -> Result<Arc<SegFile>, StorageError> {
    std::fs::create_dir_all(dir).map_err(|e| dir_io(dir, e))?;
    let f = open_file(file_path(dir, no), no, true)?;
    if durable {
        sync_dir(dir)?;
    }
    Ok(f)
}

/// Opens every segment file in `dir` (none when it does not exist), with its length, and
/// deletes the spare files a process that stopped left there (they hold no data).
pub(crate) fn open_all(dir: &Path) -> Result<BTreeMap<u64, (Arc<SegFile>, u64)>, StorageError> {
    let mut out = BTreeMap::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(dir_io(dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| dir_io(dir, e))?;
        let name = entry.file_name();
        if name.to_str().is_some_and(|n| n.ends_with(SPARE_SUFFIX)) {
            remove_file(&entry.path())?;
            continue;
        }
        let Some(no) = name.to_str().and_then(|n| n.strip_suffix(SUFFIX)).and_then(|n| n.parse::<u64>().ok()) else {
            continue;
        };
        let f = open_file(entry.path(), no, false)?;
        let len = f.len()?;
        out.insert(no, (f, len));
    }
    Ok(out)
}

/// Removes a partition's directory and everything in it.
pub(crate) fn remove_dir(dir: &Path) -> Result<(), StorageError> {
    let mut tries = 0;
    loop {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            // A spare being made appeared while the directory was emptied: once more.
            Err(e) if e.kind() == io::ErrorKind::DirectoryNotEmpty && tries < 3 => tries += 1,
            Err(e) => return Err(dir_io(dir, e)),
        }
    }
}

/// A whole batch found in a file.
pub(crate) struct Found {
    pub pos: u64,
    pub header: BatchHeader,
    pub bytes: Vec<u8>,
}

/// The header of the batch at `pos`, when one is there (not checked against its bytes).
pub(crate) fn header_at(f: &SegFile, pos: u64, file_len: u64) -> Result<Option<BatchHeader>, StorageError> {
    let mut head = [0u8; HEADER_LEN];
    if pos + HEADER_LEN as u64 > file_len || !f.read_at(&mut head, pos)? {
        return Ok(None);
    }
    Ok(BatchHeader::parse(&head).ok())
}

/// Reads and checks (framing, CRC) the batch at `pos`; `None` when what is there is not a whole,
/// intact batch (a torn write, zeros, the end of the file).
pub(crate) fn batch_at(f: &SegFile, pos: u64, file_len: u64) -> Result<Option<Found>, StorageError> {
    let Some(h) = header_at(f, pos, file_len)? else { return Ok(None) };
    let size = h.total_len() as u64;
    if pos + size > file_len {
        return Ok(None);
    }
    // The length was read from the file: bounded by the file's size just above.
    let mut bytes = vec![0u8; size as usize];
    if !f.read_at(&mut bytes, pos)? || batch::check_crc(&bytes, &h).is_err() {
        return Ok(None);
    }
    Ok(Some(Found { pos, header: h, bytes }))
}

/// Whether the bytes at `pos` (a header's worth, or to the file's end) are all zero: the
/// unwritten end of a file made ahead rather than a torn write.
pub(crate) fn zeros_at(f: &SegFile, pos: u64, file_len: u64) -> Result<bool, StorageError> {
    let mut head = [0u8; HEADER_LEN];
    let n = file_len.saturating_sub(pos).min(HEADER_LEN as u64) as usize;
    Ok(f.read_at(&mut head[..n], pos)? && head[..n].iter().all(|b| *b == 0))
}

/// Hands `each` the whole batches from `pos` on that continue the log at `next` (then each
/// one's next offset): what was written after the last batch the index knows of. Whole batches
/// below `next` are passed over (batches retention or compaction already removed, before the
/// ones appended after them). Stops at the first thing that is neither; returns where the whole
/// batches end. One batch is in memory at a time, however long the tail.
pub(crate) fn scan(
    f: &SegFile,
    mut pos: u64,
    file_len: u64,
    mut next: i64,
    mut each: impl FnMut(Found),
) -> Result<u64, StorageError> {
    while let Some(found) = batch_at(f, pos, file_len)? {
        if found.header.base_offset > next {
            break;
        }
        pos += found.bytes.len() as u64;
        if found.header.base_offset == next {
            next = found.header.next_offset();
            each(found);
        }
    }
    Ok(pos)
}
