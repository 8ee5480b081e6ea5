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
//! without a lock. A record is one 16-byte append (`O_APPEND`); a record cut short (a full disk)
//! is skipped by the next reader, which looks for the next whole one. Creating the pair,
//! dropping blocks (eviction), deleting it and making it whole are done under the product's
//! `assemble.lock` ([`super::whole::lock_wait`]), after checking that the pair is still the one
//! on disk. A block dropped while another process writes it may end up logged but punched out:
//! its CRC then fails, and it is fetched again. A handle keeps no file open between calls (the
//! files are opened by name and checked against the inodes it knows), so a pair deleted by
//! another process frees its room at once.

use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// The data file, in the product's directory.
pub const DATA: &str = "part.data";
/// The log beside it.
pub const LOG: &str = "part.log";
const MAGIC: &[u8; 8] = b"EOPRT01\n";
/// magic, size, block size, data file inode, nonce (8 bytes each), CRC-32 of those. The nonce
/// tells this log from a later one that got the same inode number (inodes are reused once
/// freed, and a handle keeps no file open).
const HEAD: usize = 44;
/// block index (top bit set: dropped), CRC-32 of the block, CRC-32 of the first 12 bytes.
const REC: usize = 16;
const DROPPED: u64 = 1 << 63;
/// Most blocks a log may describe (16 TiB in 1 MiB blocks): a header saying more is not ours.
const MAX_BLOCKS: u64 = 1 << 24;

/// A pair of `part.data` and `part.log` known to this process, and what it has read of the
/// log. The files are opened by name for each call and checked against the inodes recorded.
pub struct Partial {
    dir: PathBuf,
    pub size: u64,
    pub block_size: u64,
    data_ino: u64,
    log_ino: u64,
    nonce: u64,
    /// Direct I/O refused once (a filesystem without it): buffered from then on.
    no_direct: AtomicBool,
    view: Mutex<View>,
}

#[derive(Default)]
struct View {
    /// CRC of each block held, by index.
    crcs: Vec<Option<u32>>,
    /// Records saying each block held, as read (more than one: written twice, perhaps by two
    /// processes at once, so its bytes are read back before the product is made whole).
    logged: Vec<u8>,
    /// Blocks written through this handle.
    mine: Vec<bool>,
    held: u64,
    /// Bytes of the log applied so far.
    read: u64,
}

impl View {
    /// Applies one record; false when it fails its check (not a whole record there).
    fn apply(&mut self, rec: &[u8]) -> bool {
        let word = u64::from_le_bytes(rec[..8].try_into().expect("8 bytes"));
        let crc = u32::from_le_bytes(rec[8..12].try_into().expect("4 bytes"));
        let check = u32::from_le_bytes(rec[12..16].try_into().expect("4 bytes"));
        if crc32fast::hash(&rec[..12]) != check {
            return false;
        }
        let index = (word & !DROPPED) as usize;
        let Some(slot) = self.crcs.get_mut(index) else {
            return true;
        };
        let was = slot.is_some();
        *slot = (word & DROPPED == 0).then_some(crc);
        if slot.is_some() {
            self.logged[index] = self.logged[index].saturating_add(1);
        }
        match (was, slot.is_some()) {
            (false, true) => self.held += 1,
            (true, false) => self.held -= 1,
            _ => {}
        }
        true
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

fn header(size: u64, block_size: u64, ino: u64, nonce: u64) -> [u8; HEAD] {
    let mut h = [0u8; HEAD];
    h[..8].copy_from_slice(MAGIC);
    h[8..16].copy_from_slice(&size.to_le_bytes());
    h[16..24].copy_from_slice(&block_size.to_le_bytes());
    h[24..32].copy_from_slice(&ino.to_le_bytes());
    h[32..40].copy_from_slice(&nonce.to_le_bytes());
    let crc = crc32fast::hash(&h[..40]);
    h[40..].copy_from_slice(&crc.to_le_bytes());
    h
}

/// A value no other log made on this machine is likely to have: the time, the process and a
/// count.
fn nonce() -> u64 {
    use std::sync::atomic::AtomicU64;
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ (u64::from(std::process::id()) << 32) ^ COUNT.fetch_add(1, Ordering::Relaxed)
}

/// The fields of a header that checks out: (size, block size, data inode, nonce).
fn parse_header(h: &[u8; HEAD]) -> Option<(u64, u64, u64, u64)> {
    let u64_at = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().expect("8 bytes"));
    let f = (u64_at(8), u64_at(16), u64_at(24), u64_at(32));
    (header(f.0, f.1, f.2, f.3) == *h).then_some(f)
}

/// `path` opened read-write when it is a regular file itself (never through a symlink).
fn open_rw(path: &Path, append: bool) -> std::io::Result<(std::fs::File, std::fs::Metadata)> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .append(append)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    Ok((f, meta))
}

impl Partial {
    /// The pair in `dir`, if there is one for a product of `size` bytes in blocks of
    /// `block_size` whose log pairs with its data file.
    pub fn open(dir: &Path, size: u64, block_size: u64) -> Option<Partial> {
        Partial::open_if(dir, |s, bs| s == size && bs == block_size)
    }

    /// The pair in `dir`, whatever its size, if its log pairs with its data file.
    pub fn open_any(dir: &Path) -> Option<Partial> {
        Partial::open_if(dir, |_, _| true)
    }

    /// The pair in `dir` if its log pairs with its data file and `wanted(size, block size)`;
    /// nothing is allocated for a log that is not wanted.
    fn open_if(dir: &Path, wanted: impl Fn(u64, u64) -> bool) -> Option<Partial> {
        let (log, log_meta) = open_rw(&dir.join(LOG), true).ok()?;
        let mut head = [0u8; HEAD];
        log.read_exact_at(&mut head, 0).ok()?;
        let (size, block_size, data_ino, nonce) = parse_header(&head)?;
        if block_size < 512 || size.div_ceil(block_size) > MAX_BLOCKS || !wanted(size, block_size) {
            return None;
        }
        if std::fs::symlink_metadata(dir.join(DATA)).ok()?.ino() != data_ino {
            return None;
        }
        let n = size.div_ceil(block_size) as usize;
        let p = Partial {
            dir: dir.to_path_buf(),
            log_ino: log_meta.ino(),
            size,
            block_size,
            data_ino,
            nonce,
            no_direct: AtomicBool::new(false),
            view: Mutex::new(View {
                crcs: vec![None; n],
                logged: vec![0; n],
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
            log.write_all(&header(size, block_size, data.metadata()?.ino(), nonce()))?;
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
        let mut raw = header(size, block_size, ino, nonce()).to_vec();
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

    /// Whether this pair is still the one under the names in its directory (not deleted,
    /// replaced or made whole since it was opened): the data file's inode, and the log's
    /// inode and header.
    pub fn current(&self) -> bool {
        self.log().is_ok()
            && std::fs::symlink_metadata(self.dir.join(DATA))
                .is_ok_and(|m| m.ino() == self.data_ino)
    }

    /// `name` opened now, if it is still the file of inode `ino`.
    fn reopen(&self, name: &str, ino: u64, append: bool) -> std::io::Result<std::fs::File> {
        let (f, meta) = open_rw(&self.dir.join(name), append)?;
        if meta.ino() != ino {
            return Err(std::io::Error::other("the pair was replaced"));
        }
        Ok(f)
    }

    /// The data file, opened now (`None` once it was deleted, replaced or made whole).
    pub fn data(&self) -> Option<std::fs::File> {
        self.reopen(DATA, self.data_ino, false).ok()
    }

    /// The log, opened now, if it is still this pair's (its inode and its header's nonce).
    fn log(&self) -> std::io::Result<std::fs::File> {
        let log = self.reopen(LOG, self.log_ino, true)?;
        let mut head = [0u8; HEAD];
        log.read_exact_at(&mut head, 0)?;
        match parse_header(&head) {
            Some((_, _, ino, nonce)) if ino == self.data_ino && nonce == self.nonce => Ok(log),
            _ => Err(std::io::Error::other("the pair was replaced")),
        }
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

    fn view(&self) -> std::sync::MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies what was appended to the log since the last look (by any process, this one
    /// too), in the log's order. A stretch that is not a whole record (an append cut short) is
    /// stepped over a byte at a time to the next whole one.
    pub fn refresh(&self) {
        let Ok(log) = self.log() else { return };
        let mut view = self.view();
        let Ok(len) = log.metadata().map(|m| m.len()) else {
            return;
        };
        if len < view.read + REC as u64 {
            return;
        }
        let mut buf = vec![0u8; (len - view.read) as usize];
        if log.read_exact_at(&mut buf, view.read).is_err() {
            return;
        }
        let mut at = 0;
        while at + REC <= buf.len() {
            at += if view.apply(&buf[at..at + REC]) {
                REC
            } else {
                1
            };
        }
        view.read += at as u64;
    }

    /// The CRC of block `index` when the log says it is held.
    pub fn crc(&self, index: u64) -> Option<u32> {
        self.refresh();
        self.view().crcs.get(index as usize).copied().flatten()
    }

    /// CRCs of blocks `first..=last`, `None` unless every one is held.
    pub fn crcs(&self, first: u64, last: u64) -> Option<Vec<u32>> {
        self.refresh();
        let view = self.view();
        (first..=last)
            .map(|i| view.crcs.get(i as usize).copied().flatten())
            .collect()
    }

    /// Whether each block of `first..=last` is held (one look at the log).
    pub fn held_of(&self, first: u64, last: u64) -> Vec<bool> {
        self.refresh();
        let view = self.view();
        (first..=last)
            .map(|i| view.crcs.get(i as usize).is_some_and(|c| c.is_some()))
            .collect()
    }

    /// Blocks held.
    pub fn held(&self) -> u64 {
        self.refresh();
        self.view().held
    }

    /// Blocks held, as this handle last read the log (after its own write: no new look).
    pub fn held_now(&self) -> u64 {
        self.view().held
    }

    /// The CRC of every block, when all are held.
    pub fn all_crcs(&self) -> Option<Vec<u32>> {
        self.refresh();
        self.view().crcs.iter().copied().collect()
    }

    /// Writes block `index` (`data`, its whole length) and logs it.
    pub fn write(&self, index: u64, data: &[u8]) -> std::io::Result<()> {
        if data.len() as u64 != self.block_len(index) || index >= self.blocks() {
            return Err(std::io::Error::other("a block of the wrong length"));
        }
        self.write_data(data, index * self.block_size)?;
        let crc = crc32fast::hash(data);
        self.log()?.write_all(&record(index, crc))?;
        self.refresh();
        self.view().mine[index as usize] = true;
        Ok(())
    }

    /// Whether block `index` was written through this handle, and logged only once: its CRC
    /// is of the very bytes written, and no other write of it raced this one.
    pub fn is_own(&self, index: u64) -> bool {
        let view = self.view();
        let i = index as usize;
        view.mine.get(i).copied().unwrap_or(false) && view.logged.get(i) == Some(&1)
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
        let aligned = data.len().is_multiple_of(PAGE) && at.is_multiple_of(PAGE as u64);
        if aligned && !self.no_direct.load(Ordering::Relaxed) {
            let direct = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_DIRECT)
                .open(self.dir.join(DATA));
            let written = direct.and_then(|f| {
                if f.metadata()?.ino() != self.data_ino {
                    return Err(std::io::Error::other("the pair was replaced"));
                }
                bounce::with_aligned(data, |aligned| f.write_all_at(aligned, at))
            });
            match written {
                Ok(()) => return Ok(()),
                // Refused (a filesystem without direct I/O): buffered, now and from now on.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    self.no_direct.store(true, Ordering::Relaxed);
                }
                Err(e) => return Err(e),
            }
        }
        self.reopen(DATA, self.data_ino, false)?
            .write_all_at(data, at)
    }

    /// Logs block `index` as not held (it failed its check): it is fetched and written again.
    pub fn forget(&self, index: u64) {
        if let Ok(mut log) = self.log() {
            if log.write_all(&record(index | DROPPED, 0)).is_ok() {
                self.refresh();
            }
        }
        if let Some(m) = self.view().mine.get_mut(index as usize) {
            *m = false;
        }
    }

    /// Drops blocks `indices`: logged as dropped, then punched out of the data file. The
    /// caller holds the product's lock.
    pub fn drop_blocks(&self, indices: &[u64]) {
        use std::os::fd::AsRawFd;
        let Some(data) = self.data() else { return };
        for &i in indices {
            self.forget(i);
            // SAFETY: fallocate on a descriptor we own; punching frees the range's blocks and
            // leaves the file's length as it is.
            unsafe {
                libc::fallocate(
                    data.as_raw_fd(),
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    (i * self.block_size) as libc::off_t,
                    self.block_len(i) as libc::off_t,
                );
            }
        }
    }

    /// Blocks that overlap a hole in `data` (this pair's data file): punched out after they
    /// were logged (an eviction racing their write), or all zeros on a filesystem that stores
    /// those as holes.
    pub fn blocks_in_holes(&self, data: &std::fs::File) -> Vec<u64> {
        use std::os::fd::AsRawFd;
        let fd = data.as_raw_fd();
        let mut out = Vec::new();
        let mut at: libc::off_t = 0;
        while (at as u64) < self.size {
            // SAFETY: lseek on a descriptor we own; SEEK_HOLE/SEEK_DATA only report.
            let hole = unsafe { libc::lseek(fd, at, libc::SEEK_HOLE) };
            if hole < 0 || hole as u64 >= self.size {
                break;
            }
            // SAFETY: as above.
            let data_at = unsafe { libc::lseek(fd, hole, libc::SEEK_DATA) };
            let end = if data_at < 0 {
                self.size
            } else {
                (data_at as u64).min(self.size)
            };
            if end <= hole as u64 {
                // Filled between the two looks: look again past it.
                at = hole + 1;
                continue;
            }
            let (first, last) = (hole as u64 / self.block_size, (end - 1) / self.block_size);
            out.extend(first..=last);
            at = end as libc::off_t;
        }
        out.dedup();
        out
    }

    /// Indices of the blocks held, lowest first.
    pub fn held_indices(&self) -> Vec<u64> {
        self.refresh();
        let view = self.view();
        (0..view.crcs.len() as u64)
            .filter(|&i| view.crcs[i as usize].is_some())
            .collect()
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
    fn blocks_written_by_one_handle_are_seen_by_another_and_dropped_ones_by_both() {
        let dir = tempfile::tempdir().unwrap();
        let a = Partial::create(dir.path(), 2 * 1024 + 5, 1024, &temp).unwrap();
        let b = Partial::open(dir.path(), 2 * 1024 + 5, 1024).unwrap();
        a.write(2, &[7u8; 5]).unwrap();
        a.write(0, &[1u8; 1024]).unwrap();
        assert_eq!(b.crc(2), Some(crc32fast::hash(&[7u8; 5])));
        assert_eq!(b.crc(1), None);
        assert!(a.write(1, &[1u8; 10]).is_err(), "wrong length refused");
        // `a` has seen block 0 held; `b` drops it: `a` knows at its next look.
        assert!(a.crc(0).is_some());
        b.drop_blocks(&[0]);
        assert_eq!(
            a.crc(0),
            None,
            "a block dropped by another handle is not held"
        );
        assert_eq!(a.all_crcs(), None);
        assert_eq!(a.held(), 1);
        let mut back = [9u8; 1024];
        a.data().unwrap().read_exact_at(&mut back, 0).unwrap();
        assert_eq!(back, [0u8; 1024], "punched out");
    }

    #[test]
    fn blocks_never_written_or_punched_out_are_found_in_holes() {
        let dir = tempfile::tempdir().unwrap();
        let p = Partial::create(dir.path(), 4 * 4096, 4096, &temp).unwrap();
        for i in [0u64, 2, 3] {
            p.write(i, &[i as u8 + 1; 4096]).unwrap();
        }
        let data = p.data().unwrap();
        data.sync_all().unwrap();
        assert_eq!(p.blocks_in_holes(&data), [1]);
        p.drop_blocks(&[2]);
        assert_eq!(p.blocks_in_holes(&data), [1, 2]);
    }

    #[test]
    fn a_record_cut_short_is_stepped_over_and_records_after_it_still_count() {
        let dir = tempfile::tempdir().unwrap();
        let a = Partial::create(dir.path(), 4 * 1024, 1024, &temp).unwrap();
        a.write(0, &[1u8; 1024]).unwrap();
        let log = dir.path().join(LOG);
        let mut raw = std::fs::read(&log).unwrap();
        raw[HEAD + 3] ^= 1; // block 0's record altered
        raw.extend_from_slice(&record(1, 5)[..7]); // a record cut short (a full disk)
        std::fs::write(&log, &raw).unwrap();
        // Appends after it, by this handle and another.
        a.write(2, &[2u8; 1024]).unwrap();
        let b = Partial::open(dir.path(), 4 * 1024, 1024).unwrap();
        b.write(3, &[3u8; 1024]).unwrap();
        // `a` had read block 0's record before it was altered; the others never see it.
        assert!(a.crc(0).is_some());
        assert_eq!(b.crc(0), None);
        for p in [&a, &b] {
            assert_eq!(p.crc(1), None);
            assert_eq!(p.crc(2), Some(crc32fast::hash(&[2u8; 1024])));
            assert_eq!(p.crc(3), Some(crc32fast::hash(&[3u8; 1024])));
        }
        let c = Partial::open(dir.path(), 4 * 1024, 1024).unwrap();
        assert_eq!(c.held_indices(), [2, 3]);
    }

    #[test]
    fn a_foreign_pair_or_an_absurd_header_is_not_this_pair() {
        let dir = tempfile::tempdir().unwrap();
        let a = Partial::create(dir.path(), 3 * 1024, 1024, &temp).unwrap();
        // Another size, or another data file under the name: not this pair.
        assert!(Partial::open(dir.path(), 3 * 1024 + 1, 1024).is_none());
        std::fs::write(dir.path().join("x"), vec![0u8; 3 * 1024]).unwrap();
        std::fs::rename(dir.path().join("x"), dir.path().join(DATA)).unwrap();
        assert!(Partial::open(dir.path(), 3 * 1024, 1024).is_none());
        assert!(!a.current());
        assert!(a.data().is_none() && a.write(0, &[0u8; 1024]).is_err());
        // A header of 2^40 one-byte blocks (with the data file's inode): refused, not allocated.
        let ino = std::fs::metadata(dir.path().join(DATA)).unwrap().ino();
        std::fs::write(dir.path().join(LOG), header(1 << 40, 1, ino, 7)).unwrap();
        assert!(Partial::open_any(dir.path()).is_none());
    }

    #[test]
    fn a_log_made_anew_under_the_same_inode_is_not_this_handles() {
        let dir = tempfile::tempdir().unwrap();
        let a = Partial::create(dir.path(), 2 * 1024, 1024, &temp).unwrap();
        a.write(0, &[1u8; 1024]).unwrap();
        assert!(a.current());
        // Rewritten in place (same inode), as a reused inode number would look: a new nonce.
        let ino = std::fs::metadata(dir.path().join(DATA)).unwrap().ino();
        std::fs::write(dir.path().join(LOG), header(2 * 1024, 1024, ino, nonce())).unwrap();
        assert!(!a.current());
        assert!(a.write(1, &[2u8; 1024]).is_err());
        let b = Partial::open(dir.path(), 2 * 1024, 1024).unwrap();
        assert_eq!(b.held_indices(), Vec::<u64>::new());
    }

    #[test]
    fn a_block_written_twice_is_not_counted_as_this_handles_own() {
        let dir = tempfile::tempdir().unwrap();
        let a = Partial::create(dir.path(), 2 * 1024, 1024, &temp).unwrap();
        let b = Partial::open(dir.path(), 2 * 1024, 1024).unwrap();
        a.write(0, &[1u8; 1024]).unwrap();
        a.write(1, &[2u8; 1024]).unwrap();
        b.write(1, &[2u8; 1024]).unwrap();
        a.refresh();
        assert!(a.is_own(0));
        assert!(!a.is_own(1), "logged twice: read back before it is trusted");
        assert!(!b.is_own(0));
    }
}
