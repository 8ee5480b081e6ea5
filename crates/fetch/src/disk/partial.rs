//! A product held in part: one file, `part.data`, with the product's size and each held block
//! at its own offset (the rest are holes), and beside it `part.log`, an append-only list of the
//! blocks written (index and CRC-32) and dropped. Once every block is held, the data file is
//! checked, `fsync`ed and renamed to `whole.data` beside a `whole.idx` ([`super::whole`]): a
//! product becomes whole with no copy.
//!
//! Why one sparse file rather than a file per block: on ext4 after a day of churn, creating a
//! file per 1 MiB block (a temp file renamed into place) was a quarter of the mount's CPU in a
//! loopback `cp` (`perf`: the inode allocator's `find_inode_bit` and `recently_deleted`, and the
//! directory lock), and a whole product was then written a second time to assemble it.
//!
//! Safety of what is served, as with block files before: a block is served only when the log
//! has its CRC and the bytes read match it. A record is appended after its bytes are written,
//! and a record cut short (a crash mid-append) is ignored, so a torn write or a power loss
//! costs the blocks involved, never a wrong byte. The log's header names the data file's inode,
//! so a log pairs with its own data file only (a product dropped and cached again meanwhile
//! gets a new pair).
//!
//! Sharing between processes: any process may write any block (two write identical bytes)
//! without a lock; appends of one record are atomic (`O_APPEND`, 16 bytes). Creating the pair,
//! dropping blocks (eviction, a corrupt block), deleting it and making it whole are done under
//! the product's `assemble.lock` ([`super::whole::lock_wait`]), after checking that the pair is
//! still the one on disk. A block dropped while another process writes it may end up logged
//! but punched out: its CRC then fails, and it is fetched again.

use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Mutex;

/// The data file, in the product's directory.
pub const DATA: &str = "part.data";
/// The log beside it.
pub const LOG: &str = "part.log";
const MAGIC: &[u8; 8] = b"EOPRT01\n";
/// magic, size, block size, data file inode (8 bytes each), CRC-32 of those.
const HEAD: usize = 36;
/// block index (top bit set: dropped), CRC-32 of the block, CRC-32 of the first 12 bytes.
const REC: usize = 16;
const DROPPED: u64 = 1 << 63;

/// An open pair of `part.data` and `part.log`, and what this process has read of the log.
pub struct Partial {
    data: std::fs::File,
    /// The data file opened `O_DIRECT`, for writing whole pages (`None` where the filesystem
    /// has no direct I/O, e.g. tmpfs).
    direct: Option<std::fs::File>,
    log: std::fs::File,
    pub size: u64,
    pub block_size: u64,
    data_ino: u64,
    log_ino: u64,
    view: Mutex<View>,
}

#[derive(Default)]
struct View {
    /// CRC of each block held, by index.
    crcs: Vec<Option<u32>>,
    /// Blocks written through this handle (their CRCs are of the very bytes written).
    mine: Vec<bool>,
    held: u64,
    /// Bytes of the log applied so far.
    read: u64,
}

impl View {
    fn apply(&mut self, rec: &[u8]) {
        let word = u64::from_le_bytes(rec[..8].try_into().expect("8 bytes"));
        let crc = u32::from_le_bytes(rec[8..12].try_into().expect("4 bytes"));
        let check = u32::from_le_bytes(rec[12..16].try_into().expect("4 bytes"));
        if crc32fast::hash(&rec[..12]) != check {
            return;
        }
        let index = (word & !DROPPED) as usize;
        let Some(slot) = self.crcs.get_mut(index) else {
            return;
        };
        let was = slot.is_some();
        *slot = (word & DROPPED == 0).then_some(crc);
        match (was, slot.is_some()) {
            (false, true) => self.held += 1,
            (true, false) => self.held -= 1,
            _ => {}
        }
    }
}

fn record(index: u64, crc: u32) -> [u8; REC] {
    let mut rec = [0u8; REC];
    rec[..8].copy_from_slice(&index.to_le_bytes());
    rec[8..12].copy_from_slice(&crc.to_le_bytes());
    let check = crc32fast::hash(&rec[..12]);
    rec[12..].copy_from_slice(&check.to_le_bytes());
    rec
}

fn header(size: u64, block_size: u64, ino: u64) -> [u8; HEAD] {
    let mut h = [0u8; HEAD];
    h[..8].copy_from_slice(MAGIC);
    h[8..16].copy_from_slice(&size.to_le_bytes());
    h[16..24].copy_from_slice(&block_size.to_le_bytes());
    h[24..32].copy_from_slice(&ino.to_le_bytes());
    let crc = crc32fast::hash(&h[..32]);
    h[32..].copy_from_slice(&crc.to_le_bytes());
    h
}

/// `path` opened read-write when it is a regular file itself (never through a symlink).
fn open_rw(path: &Path, append: bool) -> std::io::Result<std::fs::File> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .append(append)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    Ok(f)
}

impl Partial {
    /// The pair in `dir`, if there is one for a product of `size` bytes in blocks of
    /// `block_size` whose log pairs with its data file.
    pub fn open(dir: &Path, size: u64, block_size: u64) -> Option<Partial> {
        Partial::open_any(dir).filter(|p| p.size == size && p.block_size == block_size)
    }

    /// The pair in `dir`, whatever its size, if its log pairs with its data file.
    pub fn open_any(dir: &Path) -> Option<Partial> {
        let log = open_rw(&dir.join(LOG), true).ok()?;
        let mut head = [0u8; HEAD];
        log.read_exact_at(&mut head, 0).ok()?;
        let data = open_rw(&dir.join(DATA), false).ok()?;
        let data_ino = data.metadata().ok()?.ino();
        let u64_at = |i: usize| u64::from_le_bytes(head[i..i + 8].try_into().expect("8 bytes"));
        let (size, block_size) = (u64_at(8), u64_at(16));
        if block_size == 0 || head != header(size, block_size, data_ino) {
            return None;
        }
        let n = size.div_ceil(block_size) as usize;
        let direct = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_DIRECT)
            .open(dir.join(DATA))
            .ok()
            .filter(|f| f.metadata().is_ok_and(|m| m.ino() == data_ino));
        let p = Partial {
            log_ino: log.metadata().ok()?.ino(),
            direct,
            data,
            log,
            size,
            block_size,
            data_ino,
            view: Mutex::new(View {
                crcs: vec![None; n],
                mine: vec![false; n],
                held: 0,
                read: HEAD as u64,
            }),
        };
        p.refresh();
        Some(p)
    }

    /// A new, empty pair in `dir` (replacing any there), made under temp names from `temp` and
    /// renamed into place, log first. The caller holds the product's lock.
    pub fn create(
        dir: &Path,
        size: u64,
        block_size: u64,
        temp: &dyn Fn(&str) -> String,
    ) -> std::io::Result<Partial> {
        let (data_tmp, log_tmp) = (dir.join(temp(DATA)), dir.join(temp(LOG)));
        let result = (|| {
            let data = super::whole::create_new(&data_tmp)?;
            data.set_len(size)?;
            let mut log = super::whole::create_new(&log_tmp)?;
            log.write_all(&header(size, block_size, data.metadata()?.ino()))?;
            std::fs::rename(&log_tmp, dir.join(LOG))?;
            std::fs::rename(&data_tmp, dir.join(DATA))
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_file(&data_tmp);
            let _ = std::fs::remove_file(&log_tmp);
            return Err(e);
        }
        Partial::open(dir, size, block_size)
            .ok_or_else(|| std::io::Error::other("the new pair was replaced at once"))
    }

    /// A log for the data file of inode `ino` (a whole file about to be renamed back to
    /// [`DATA`]) holding the blocks `good` gives a CRC for, renamed into place as [`LOG`]. The
    /// caller holds the product's lock.
    pub fn from_whole(
        dir: &Path,
        size: u64,
        block_size: u64,
        ino: u64,
        good: impl Fn(u64) -> Option<u32>,
        temp: &dyn Fn(&str) -> String,
    ) -> std::io::Result<()> {
        let mut raw = header(size, block_size, ino).to_vec();
        for i in 0..size.div_ceil(block_size) {
            if let Some(crc) = good(i) {
                raw.extend_from_slice(&record(i, crc));
            }
        }
        let tmp = dir.join(temp(LOG));
        let result = super::whole::create_new(&tmp)
            .and_then(|mut f| f.write_all(&raw))
            .and_then(|_| std::fs::rename(&tmp, dir.join(LOG)));
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// Whether this pair is still the one under the names in `dir` (not deleted, replaced or
    /// made whole since it was opened): two `stat`s.
    pub fn current(&self, dir: &Path) -> bool {
        let ino = |name: &str| std::fs::symlink_metadata(dir.join(name)).map(|m| m.ino());
        ino(LOG).is_ok_and(|i| i == self.log_ino) && ino(DATA).is_ok_and(|i| i == self.data_ino)
    }

    pub fn data_ino(&self) -> u64 {
        self.data_ino
    }

    pub fn blocks(&self) -> u64 {
        self.size.div_ceil(self.block_size)
    }

    pub fn block_len(&self, index: u64) -> u64 {
        self.block_size
            .min(self.size.saturating_sub(index * self.block_size))
    }

    /// Applies what other processes appended to the log since the last look.
    pub fn refresh(&self) {
        let mut view = self.view.lock().unwrap_or_else(|p| p.into_inner());
        let Ok(len) = self.log.metadata().map(|m| m.len()) else {
            return;
        };
        if len <= view.read {
            return;
        }
        let whole = (len - view.read) / REC as u64 * REC as u64;
        let mut buf = vec![0u8; whole as usize];
        if self.log.read_exact_at(&mut buf, view.read).is_err() {
            return;
        }
        for rec in buf.chunks_exact(REC) {
            view.apply(rec);
        }
        view.read += whole;
    }

    /// The CRC of block `index` when the log says it is held (looking at the log again when
    /// this process's view says not).
    pub fn crc(&self, index: u64) -> Option<u32> {
        let known = |p: &Partial| {
            let view = p.view.lock().unwrap_or_else(|p| p.into_inner());
            view.crcs.get(index as usize).copied().flatten()
        };
        known(self).or_else(|| {
            self.refresh();
            known(self)
        })
    }

    /// CRCs of blocks `first..=last`, `None` unless every one is held.
    pub fn crcs(&self, first: u64, last: u64) -> Option<Vec<u32>> {
        (first..=last).map(|i| self.crc(i)).collect()
    }

    /// Blocks held, as this process last read the log.
    pub fn held(&self) -> u64 {
        self.view.lock().unwrap_or_else(|p| p.into_inner()).held
    }

    /// The CRC of every block, when all are held (after a fresh look at the log).
    pub fn all_crcs(&self) -> Option<Vec<u32>> {
        self.refresh();
        let view = self.view.lock().unwrap_or_else(|p| p.into_inner());
        view.crcs.iter().copied().collect()
    }

    /// Writes block `index` (`data`, its whole length) and logs it.
    pub fn write(&self, index: u64, data: &[u8]) -> std::io::Result<()> {
        if data.len() as u64 != self.block_len(index) || index >= self.blocks() {
            return Err(std::io::Error::other("a block of the wrong length"));
        }
        self.write_data(data, index * self.block_size)?;
        let crc = crc32fast::hash(data);
        let rec = record(index, crc);
        (&self.log).write_all(&rec)?;
        // Applied here too, so this process knows without reading the log back; the log is
        // read from where this process last looked, so the record is applied once more later
        // (harmless: records are states, not changes).
        let mut view = self.view.lock().unwrap_or_else(|p| p.into_inner());
        view.apply(&rec);
        view.mine[index as usize] = true;
        Ok(())
    }

    /// Whether block `index` was written through this handle.
    pub fn is_mine(&self, index: u64) -> bool {
        let view = self.view.lock().unwrap_or_else(|p| p.into_inner());
        view.mine.get(index as usize).copied().unwrap_or(false)
    }

    /// Whether the data file has a hole before its end (a block punched out after it was
    /// logged: a race with an eviction in another process). Asked once the file is synced.
    pub fn has_hole(&self) -> bool {
        use std::os::fd::AsRawFd;
        // SAFETY: lseek on a descriptor we own; SEEK_HOLE only reports, it moves no data.
        let at = unsafe { libc::lseek(self.data.as_raw_fd(), 0, libc::SEEK_HOLE) };
        at >= 0 && (at as u64) < self.size
    }

    /// Writes `data` at `at` in the data file: by direct I/O when it is whole pages (the
    /// bytes go to the disk without passing through the page cache), else buffered.
    ///
    /// Why direct: a product streamed into the cache was written into fresh page-cache pages
    /// as fast as it arrived, and with four products at once (scripts/bench P8, 2 cores) the
    /// copies into those pages took most of the mount's CPU (`perf`: 23 s of CPU for 4 GiB, 3.5 s
    /// without the disk cache). The disk takes 1 MiB writes at about 1.3 GB/s.
    fn write_data(&self, data: &[u8], at: u64) -> std::io::Result<()> {
        const PAGE: usize = 4096;
        if let Some(direct) = &self.direct {
            if data.len().is_multiple_of(PAGE) && at.is_multiple_of(PAGE as u64) {
                let written =
                    bounce::with_aligned(data, |aligned| direct.write_all_at(aligned, at));
                match written {
                    Ok(()) => return Ok(()),
                    // Refused (an odd filesystem): buffered, as below.
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        self.data.write_all_at(data, at)
    }

    /// Logs block `index` as not held (it failed its check): it is fetched and written again.
    pub fn forget(&self, index: u64) {
        let rec = record(index | DROPPED, 0);
        if (&self.log).write_all(&rec).is_ok() {
            self.view
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .apply(&rec);
        }
    }

    /// Drops blocks `indices`: punched out of the data file and logged as dropped; the bytes
    /// freed. The caller holds the product's lock and has checked [`Partial::current`].
    pub fn drop_blocks(&self, indices: &[u64]) -> u64 {
        use std::os::fd::AsRawFd;
        let mut freed = 0;
        for &i in indices {
            let (at, len) = (i * self.block_size, self.block_len(i));
            self.forget(i);
            if let Some(m) = self
                .view
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .mine
                .get_mut(i as usize)
            {
                *m = false;
            }
            // SAFETY: fallocate on a descriptor we own; punching frees the range's blocks and
            // leaves the file's length as it is.
            let punched = unsafe {
                libc::fallocate(
                    self.data.as_raw_fd(),
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    at as libc::off_t,
                    len as libc::off_t,
                )
            } == 0;
            if punched {
                freed += len;
            }
        }
        freed
    }

    /// Indices of the blocks held, lowest first.
    pub fn held_indices(&self) -> Vec<u64> {
        self.refresh();
        let view = self.view.lock().unwrap_or_else(|p| p.into_inner());
        (0..view.crcs.len() as u64)
            .filter(|&i| view.crcs[i as usize].is_some())
            .collect()
    }

    pub fn data(&self) -> &std::fs::File {
        &self.data
    }
}

/// A page-aligned copy of a block for direct I/O: one buffer per thread, reused.
mod bounce {
    use std::alloc::{alloc, dealloc, Layout};
    use std::cell::RefCell;

    const ALIGN: usize = 4096;

    struct Aligned {
        ptr: *mut u8,
        layout: Layout,
    }

    impl Drop for Aligned {
        fn drop(&mut self) {
            // SAFETY: allocated by `alloc` with this layout, freed once.
            unsafe { dealloc(self.ptr, self.layout) }
        }
    }

    thread_local! {
        static BUF: RefCell<Option<Aligned>> = const { RefCell::new(None) };
    }

    /// Calls `f` with a page-aligned copy of `data`.
    pub fn with_aligned<T>(
        data: &[u8],
        f: impl FnOnce(&[u8]) -> std::io::Result<T>,
    ) -> std::io::Result<T> {
        BUF.with(|cell| {
            let mut slot = cell.borrow_mut();
            if slot.as_ref().is_none_or(|b| b.layout.size() < data.len()) {
                *slot = None;
                let layout = Layout::from_size_align(data.len().max(ALIGN), ALIGN)
                    .map_err(std::io::Error::other)?;
                // SAFETY: a non-zero size; the null case is handled.
                let ptr = unsafe { alloc(layout) };
                if ptr.is_null() {
                    return Err(std::io::Error::from(std::io::ErrorKind::OutOfMemory));
                }
                *slot = Some(Aligned { ptr, layout });
            }
            let b = slot.as_ref().expect("just set");
            // SAFETY: the buffer holds at least `data.len()` bytes, and `data` does not
            // overlap it (ours alone); the slice covers only the bytes just copied.
            let aligned = unsafe {
                std::ptr::copy_nonoverlapping(data.as_ptr(), b.ptr, data.len());
                std::slice::from_raw_parts(b.ptr, data.len())
            };
            f(aligned)
        })
    }
}

/// Bytes the pair in `dir` takes on disk (its data file's allocated blocks), 0 when absent.
pub fn disk_bytes(dir: &Path) -> u64 {
    std::fs::symlink_metadata(dir.join(DATA)).map_or(0, |m| m.blocks() * 512)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> String {
        format!(".{name}.test.tmp")
    }

    #[test]
    fn blocks_written_by_one_pair_are_seen_by_another_and_dropped_ones_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let a = Partial::create(dir.path(), 2 * 1024 + 5, 1024, &temp).unwrap();
        let b = Partial::open(dir.path(), 2 * 1024 + 5, 1024).unwrap();
        a.write(2, &[7u8; 5]).unwrap();
        a.write(0, &[1u8; 1024]).unwrap();
        assert_eq!(b.crc(2), Some(crc32fast::hash(&[7u8; 5])));
        assert_eq!(b.crc(1), None);
        assert!(a.write(1, &[1u8; 10]).is_err(), "wrong length refused");
        assert_eq!(b.drop_blocks(&[0]), 1024);
        assert_eq!(a.all_crcs(), None);
        assert_eq!(a.crc(0), None, "a dropped block is not held");
        assert_eq!(a.held(), 1);
        let mut back = [9u8; 1024];
        a.data().read_exact_at(&mut back, 0).unwrap();
        assert_eq!(back, [0u8; 1024], "punched out");
    }

    #[test]
    fn a_torn_or_altered_record_and_a_foreign_pair_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let a = Partial::create(dir.path(), 3 * 1024, 1024, &temp).unwrap();
        a.write(0, &[1u8; 1024]).unwrap();
        a.write(1, &[2u8; 1024]).unwrap();
        let log = dir.path().join(LOG);
        let mut raw = std::fs::read(&log).unwrap();
        raw[HEAD + REC + 3] ^= 1; // block 1's record altered
        raw.extend_from_slice(&record(2, 5)[..7]); // a record cut short
        std::fs::write(&log, &raw).unwrap();
        let b = Partial::open(dir.path(), 3 * 1024, 1024).unwrap();
        assert!(b.crc(0).is_some());
        assert_eq!(b.crc(1), None);
        assert_eq!(b.crc(2), None);
        // Another size, or another data file under the name: not this pair.
        assert!(Partial::open(dir.path(), 3 * 1024 + 1, 1024).is_none());
        std::fs::write(dir.path().join("x"), vec![0u8; 3 * 1024]).unwrap();
        std::fs::rename(dir.path().join("x"), dir.path().join(DATA)).unwrap();
        assert!(Partial::open(dir.path(), 3 * 1024, 1024).is_none());
        assert!(!a.current(dir.path()));
    }
}
