//! A product held whole in the disk cache: one file, `whole.data`, holding exactly the
//! download's bytes at the download's offsets, so the kernel can read it directly (FUSE
//! passthrough: no daemon round trip per read); and beside it `whole.idx`, the block size, the
//! data file's inode number and a CRC-32 per block, so every read the daemon still serves from
//! it is checked as a block in part is.
//!
//! Made from the product's partial file once its log holds every block ([`promote`]): each
//! block is checked against its logged CRC (read back, unless this process wrote it and no one
//! else did), the file is `fsync`ed, the index is written and renamed into place, then the data
//! file is renamed from `part.data` to `whole.data` and the log deleted: no copy. A reader finds either the partial file or the
//! whole one at every moment (the store looks in both). The index names the data file's inode:
//! a data file whose inode differs (a crash between the renames, a product dropped and cached
//! again) is not whole, never a wrong file under the final name. Done by the one process that
//! holds the product's `assemble.lock`.
//!
//! This file holds the format and the promotion, and the store's methods for whole products
//! (found, read, turned back into a partial file when corrupt, handed out for passthrough).

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::partial::{self, Partial};
use super::{touch, DiskStore, DISK_BLOCK_SIZE};

/// How often [`DiskStore::finish_assembly`] looks whether the promotions are done: checking
/// and `fsync`ing a product takes about a second per GiB, so a few tens of ms late is nothing.
const ASSEMBLY_POLL: Duration = Duration::from_millis(20);
/// Blocks read back at once while checking a product before it is made whole.
const CHECK_RUN: u64 = 8;

/// The data file, in the product's directory.
pub const DATA: &str = "whole.data";
/// The index beside it.
pub const INDEX: &str = "whole.idx";
/// Held (`flock`) by the one process assembling the product.
const LOCK: &str = "assemble.lock";
const MAGIC: &[u8; 8] = b"EOWHL01\n";
/// magic, size, block size, inode, block count: 8 bytes each.
const FIXED: usize = 40;

/// What `whole.idx` says of `whole.data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WholeIndex {
    /// The download's size: the data file's length.
    pub size: u64,
    pub block_size: u64,
    /// The data file's inode number when it was written.
    pub ino: u64,
    /// CRC-32 of each block of the data file.
    pub crcs: Vec<u32>,
}

impl WholeIndex {
    /// The index's bytes: the fixed fields, the CRCs, and a CRC-32 of all that.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(FIXED + 4 * self.crcs.len() + 4);
        out.extend_from_slice(MAGIC);
        for v in [self.size, self.block_size, self.ino, self.crcs.len() as u64] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for c in &self.crcs {
            out.extend_from_slice(&c.to_le_bytes());
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// `None` for anything [`WholeIndex::encode`] did not write whole.
    pub fn decode(raw: &[u8]) -> Option<WholeIndex> {
        if raw.len() < FIXED + 4 || &raw[..8] != MAGIC {
            return None;
        }
        let (body, crc) = raw.split_at(raw.len() - 4);
        if crc32fast::hash(body).to_le_bytes() != crc {
            return None;
        }
        let u64_at = |i: usize| u64::from_le_bytes(body[i..i + 8].try_into().expect("8 bytes"));
        let (size, block_size, ino, n) = (u64_at(8), u64_at(16), u64_at(24), u64_at(32));
        if block_size == 0
            || n != size.div_ceil(block_size)
            || (body.len() - FIXED) as u64 != n.checked_mul(4)?
        {
            return None;
        }
        let crcs = body[FIXED..]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        Some(WholeIndex {
            size,
            block_size,
            ino,
            crcs,
        })
    }

    /// The index of `dir`'s data file, if it pairs with the data file there now.
    pub fn read(dir: &Path) -> Option<WholeIndex> {
        let meta = std::fs::metadata(dir.join(DATA)).ok()?;
        let index = WholeIndex::decode(&std::fs::read(dir.join(INDEX)).ok()?)?;
        index.pairs_with(&meta).then_some(index)
    }

    /// Whether `meta` is the data file this index was written for.
    pub fn pairs_with(&self, meta: &std::fs::Metadata) -> bool {
        meta.ino() == self.ino && meta.len() == self.size
    }
}

/// Makes the partial file `p` in `dir` whole. Every block is checked against `crcs` (its
/// log's) first: the blocks this process wrote once and alone were checked as they were
/// written; the others (written by another process, logged twice, or overlapping a hole: a
/// block punched out by an eviction racing its write) are read back. Then the file is
/// `fsync`ed, the index written and renamed in, the data file renamed to [`DATA`] and the log
/// deleted. `Ok(None)` when a block fails its check (those are dropped from the log, to be
/// fetched again). The caller holds the product's lock, so no block is punched meanwhile.
pub fn promote(
    dir: &Path,
    p: &Partial,
    crcs: Vec<u32>,
    temp: &dyn Fn(&str) -> String,
) -> std::io::Result<Option<WholeIndex>> {
    let bs = p.block_size;
    let data = p
        .data()
        .ok_or_else(|| std::io::Error::other("the partial file is gone"))?;
    let holes = p.blocks_in_holes(&data);
    let check = |i: u64| !p.is_own(i) || holes.binary_search(&i).is_ok();
    let mut bad = Vec::new();
    let mut first = 0;
    while first < p.blocks() {
        if !check(first) {
            first += 1;
            continue;
        }
        let last = (first..(first + CHECK_RUN).min(p.blocks()))
            .take_while(|&i| check(i))
            .last()
            .unwrap_or(first);
        let start = first * bs;
        let len = ((last + 1) * bs).min(p.size) - start;
        let buf = pread_run(&data, start, len)
            .ok_or_else(|| std::io::Error::other("cannot read the partial file back"))?;
        for (k, block) in buf.chunks(bs as usize).enumerate() {
            let i = first + k as u64;
            if crc32fast::hash(block) != crcs[i as usize] {
                bad.push(i);
            }
        }
        first = last + 1;
    }
    if !bad.is_empty() {
        for i in bad {
            p.forget(i);
        }
        return Ok(None);
    }
    // The bytes reach the disk before the name does: after a power loss the final name holds
    // the whole product or nothing.
    data.sync_all()?;
    let index = WholeIndex {
        size: p.size,
        block_size: bs,
        ino: p.data_ino(),
        crcs,
    };
    let index_tmp = dir.join(temp(INDEX));
    let written = (|| {
        let mut f = create_new(&index_tmp)?;
        f.write_all(&index.encode())?;
        f.sync_all()?;
        std::fs::rename(&index_tmp, dir.join(INDEX))
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&index_tmp);
        return Err(e);
    }
    std::fs::rename(dir.join(partial::DATA), dir.join(DATA))?;
    let _ = std::fs::remove_file(dir.join(partial::LOG));
    Ok(Some(index))
}

/// Bytes `start..start + len` of `file`, read at once into one buffer (a reused one when the
/// pool has one, `crate::buffers`); `None` when the read fails or ends early.
pub fn pread_run(file: &std::fs::File, start: u64, len: u64) -> Option<Bytes> {
    use std::os::fd::AsRawFd;
    let mut buf = crate::buffers::with_capacity(len as usize);
    let spare = buf.spare_capacity_mut();
    let mut done = 0usize;
    while done < len as usize {
        // SAFETY: pread writes at most `len - done` bytes into the buffer's own spare
        // capacity, which holds `len`; the bytes count as initialised only once written.
        let n = unsafe {
            libc::pread(
                file.as_raw_fd(),
                spare.as_mut_ptr().add(done).cast(),
                len as usize - done,
                (start + done as u64) as libc::off_t,
            )
        };
        if n <= 0 {
            return None;
        }
        done += n as usize;
    }
    // SAFETY: the loop above wrote all `len` bytes.
    unsafe { buf.set_len(len as usize) };
    Some(crate::buffers::freeze(buf))
}

/// The first block of `buf` (blocks of `block_size`) whose CRC is not its entry in `crcs`.
pub fn first_bad(buf: &[u8], block_size: u64, crcs: &[u32]) -> Option<usize> {
    buf.chunks(block_size as usize)
        .zip(crcs)
        .position(|(block, crc)| crc32fast::hash(block) != *crc)
}

/// A new file at `path`, never one already there (nor what a symlink there points to).
pub fn create_new(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

/// `path` opened for reading when it is a regular file itself (a symlink planted in a shared
/// cache directory is not followed).
pub fn open_regular(path: &Path) -> Option<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .ok()?;
    file.metadata().ok()?.is_file().then_some(file)
}

/// `flock(LOCK_EX | LOCK_NB)` on the product's assemble lock: `None` while another holds it
/// (or the directory is gone).
pub fn try_lock(dir: &Path) -> Option<std::fs::File> {
    flock(dir, libc::LOCK_EX | libc::LOCK_NB).ok().flatten()
}

/// The product's assemble lock, waited for: whoever creates, trims, deletes or makes whole a
/// product's files holds it, so that none of these sees another half done.
/// `None` when the directory is gone or the filesystem has no locks.
pub fn lock_wait(dir: &Path) -> Option<std::fs::File> {
    flock(dir, libc::LOCK_EX).ok().flatten()
}

/// The lock, or `None` while another holds it. On a filesystem without `flock` (some network
/// filesystems) the file is returned unlocked: the store then works as if alone, as it would
/// with no lock at all, rather than never evicting or making a product whole. Two mounts
/// sharing such a cache can then race: one's eviction may punch a block out after the other
/// checked the file for holes and before it renamed it whole, and passthrough would read that
/// hole as zeros (the daemon's reads check CRCs and fetch it again). Share a cache on such a
/// filesystem with `--no-passthrough`, or not at all.
fn flock(dir: &Path, how: libc::c_int) -> std::io::Result<Option<std::fs::File>> {
    use std::os::fd::AsRawFd;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(LOCK))?;
    // SAFETY: flock on a descriptor we own; released when it closes.
    if unsafe { libc::flock(file.as_raw_fd(), how) } == 0 {
        return Ok(Some(file));
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::EWOULDBLOCK) | Some(libc::EINTR) => Ok(None),
        _ => Ok(Some(file)),
    }
}

impl DiskStore {
    /// Waits, at most `within`, for the assemblies this process has started: called before
    /// the process exits, so that a product whose last block just landed is kept as one file
    /// now rather than at its next open.
    pub fn finish_assembly(&self, within: Duration) {
        let until = std::time::Instant::now() + within;
        while !self
            .assembling
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
            && std::time::Instant::now() < until
        {
            std::thread::sleep(ASSEMBLY_POLL);
        }
    }

    /// The index of `id`'s whole file, when it has one that pairs with its data file.
    pub(super) fn whole(&self, id: &str) -> Option<Arc<WholeIndex>> {
        let dir = self.product_dir(id);
        let Ok(meta) = std::fs::metadata(dir.join(DATA)) else {
            self.wholes_map().remove(id);
            return None;
        };
        if let Some(w) = self.wholes_map().get(id).filter(|w| w.pairs_with(&meta)) {
            return Some(Arc::clone(w));
        }
        let w = Arc::new(WholeIndex::read(&dir).filter(|w| w.block_size == DISK_BLOCK_SIZE)?);
        self.wholes_map().insert(id.to_string(), Arc::clone(&w));
        Some(w)
    }

    pub(super) fn wholes_map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<WholeIndex>>> {
        self.wholes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Blocks `first..=last` of `id` (a download of `size` bytes) from its whole file: one
    /// read into one buffer, each block checked against its CRC. `None` when the product is not
    /// whole at that size, the file is not the one the index pairs with, the read fails, or a
    /// block fails its check (the file is then turned back into a partial one, its good blocks
    /// kept). Blocking.
    pub fn read_whole_run(&self, id: &str, size: u64, first: u64, last: u64) -> Option<Bytes> {
        let w = self.whole(id).filter(|w| w.size == size)?;
        if last >= w.crcs.len() as u64 || first > last {
            return None;
        }
        let bs = DISK_BLOCK_SIZE;
        let start = first * bs;
        let len = ((last + 1) * bs).min(w.size) - start;
        let path = self.product_dir(id).join(DATA);
        let file = open_regular(&path).filter(|f| f.metadata().is_ok_and(|m| w.pairs_with(&m)))?;
        let buf = pread_run(&file, start, len)?;
        if let Some(k) = first_bad(&buf, bs, &w.crcs[first as usize..=last as usize]) {
            tracing::warn!(path = %path.display(), index = first + k as u64, "corrupt block in a whole product in the disk cache; keeping its good blocks and fetching the bad one again");
            self.corrupt.fetch_add(1, Ordering::Relaxed);
            self.split_whole(id, &w, first + k as u64);
            return None;
        }
        self.hits.fetch_add(last - first + 1, Ordering::Relaxed);
        touch(&path);
        Some(buf)
    }

    /// Turns `id`'s whole file, whose block `bad` failed its check, back into a partial file:
    /// a log of every block but that one, then the data file renamed back. The bad block is
    /// fetched again, and the product made whole again once it is written.
    pub(super) fn split_whole(&self, id: &str, w: &WholeIndex, bad: u64) {
        let dir = self.product_dir(id);
        let Some(_lock) = lock_wait(&dir) else {
            return;
        };
        self.wholes_map().remove(id);
        // Split (and made whole again) by another process meanwhile: not ours to touch.
        if WholeIndex::read(&dir).as_ref() != Some(w) {
            return;
        }
        let good = |i: u64| (i != bad).then(|| w.crcs[i as usize]);
        let temp = |name: &str| self.temp_name(name);
        match Partial::from_whole(&dir, w.size, w.block_size, w.ino, good, &temp) {
            Ok(()) => {
                let _ = std::fs::rename(dir.join(DATA), dir.join(partial::DATA));
                let _ = std::fs::remove_file(dir.join(INDEX));
            }
            Err(e) => {
                tracing::warn!(id, error = %e, "cannot keep the good blocks of a corrupt product; dropping it");
                if let Ok(meta) = std::fs::symlink_metadata(dir.join(DATA)) {
                    if std::fs::remove_file(dir.join(DATA)).is_ok() {
                        self.sub_used(super::disk_len(&meta));
                    }
                }
                let _ = std::fs::remove_file(dir.join(INDEX));
            }
        }
    }

    /// `id`'s whole file, opened for reading, when the product (a download of `size` bytes)
    /// is held whole: for the kernel to read directly. While it is open the bytes stay
    /// readable even if the file is evicted (unlinked) meanwhile.
    pub fn whole_file(&self, id: &str, size: u64) -> Option<std::fs::File> {
        let w = self.whole(id).filter(|w| w.size == size)?;
        let path = self.product_dir(id).join(DATA);
        let file = open_regular(&path)?;
        // The file opened is the one the index pairs with (not one renamed in since).
        if !w.pairs_with(&file.metadata().ok()?) {
            return None;
        }
        touch(&path);
        Some(file)
    }

    /// Makes `id` (a download of `size` bytes) whole on a thread of its own, when its every
    /// block is held and no thread here is at it already. `force`: look at the log again first
    /// (at an open: other processes may have written the last blocks).
    pub fn assemble_soon(&self, id: &str, size: u64, force: bool) {
        if !self.auto_assemble.load(Ordering::Relaxed) || size == 0 {
            return;
        }
        let Some(p) = self.partial(id, size, false) else {
            return;
        };
        if force {
            p.refresh();
        }
        if p.held() < p.blocks() {
            return;
        }
        let Some(me) = self.me.upgrade() else { return };
        if !self
            .assembling
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string())
        {
            return;
        }
        let id = id.to_string();
        let spawned = std::thread::Builder::new()
            .name("disk-assemble".into())
            .spawn({
                let id = id.clone();
                move || {
                    me.assemble(&id, size);
                    me.assembling
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&id);
                }
            });
        if spawned.is_err() {
            self.assembling
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
        }
    }

    /// Makes `id` (a download of `size` bytes) whole from its partial file ([`promote`]); true
    /// when the product is whole afterwards. Blocking.
    pub fn assemble(&self, id: &str, size: u64) -> bool {
        if self.whole(id).is_some() {
            return true;
        }
        let dir = self.product_dir(id);
        let Some(_lock) = try_lock(&dir) else {
            // Another process is at it (or deleting the product).
            return false;
        };
        // Under the lock: the pair on disk now (this process's handle when still current, as
        // it knows which blocks it wrote), with every block logged.
        let Some(p) = self.partial(id, size, false) else {
            return self.whole(id).is_some();
        };
        let Some(crcs) = p.all_crcs() else {
            return false;
        };
        match promote(&dir, &p, crcs, &|name| self.temp_name(name)) {
            Ok(Some(index)) => {
                self.partials_map().remove(id);
                self.wholes_map().insert(id.to_string(), Arc::new(index));
                self.assembled.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    id,
                    "the product is whole in the disk cache: kept as one file"
                );
                true
            }
            Ok(None) => {
                self.corrupt.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    id,
                    "a block in the disk cache is not what its log says; fetching it again"
                );
                false
            }
            Err(e) => {
                tracing::warn!(id, error = %e, "cannot make the product whole in the disk cache");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    fn index() -> WholeIndex {
        WholeIndex {
            size: 2 * 1024 + 5,
            block_size: 1024,
            ino: 77,
            crcs: vec![1, 2, 3],
        }
    }

    #[test]
    fn an_index_reads_back_and_any_changed_byte_is_refused() {
        let raw = index().encode();
        assert_eq!(WholeIndex::decode(&raw), Some(index()));
        for i in 0..raw.len() {
            let mut bad = raw.clone();
            bad[i] ^= 0x40;
            assert_eq!(WholeIndex::decode(&bad), None, "byte {i}");
        }
        assert_eq!(WholeIndex::decode(&raw[..raw.len() - 1]), None);
        // A block count that does not fit the size is refused even with a right checksum.
        let wrong = WholeIndex {
            crcs: vec![1, 2],
            ..index()
        };
        assert_eq!(WholeIndex::decode(&wrong.encode()), None);
    }

    fn temp(name: &str) -> String {
        format!(".{name}.test.tmp")
    }

    /// A partial file of 3 blocks of 1024 bytes in `dir`, every block written.
    fn full_partial(dir: &Path) -> Partial {
        let p = Partial::create(dir, 3 * 1024, 1024, &temp).unwrap();
        for i in 0..3u8 {
            p.write(i as u64, &[i + 1; 1024]).unwrap();
        }
        p
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_block_another_process_wrote_is_checked_and_leaves_no_whole_file_when_bad() {
        let dir = tempfile::tempdir().unwrap();
        drop(full_partial(dir.path()));
        // Another process's handle: none of the blocks are its own, so each is read back.
        let p = Partial::open(dir.path(), 3 * 1024, 1024).unwrap();
        p.data().unwrap().write_all_at(&[9], 1500).unwrap();
        let crcs = p.all_crcs().unwrap();
        assert_eq!(promote(dir.path(), &p, crcs, &temp).unwrap(), None);
        assert_eq!(names(dir.path()), [partial::DATA, partial::LOG]);
        let again = Partial::open(dir.path(), 3 * 1024, 1024).unwrap();
        assert_eq!(again.held_indices(), [0, 2]);
    }

    #[test]
    fn a_block_punched_out_after_it_was_logged_leaves_no_whole_file() {
        use std::os::fd::AsRawFd;
        let dir = tempfile::tempdir().unwrap();
        let p = Partial::create(dir.path(), 3 * 4096, 4096, &temp).unwrap();
        for i in 0..3u8 {
            p.write(i as u64, &[i + 1; 4096]).unwrap();
        }
        // An eviction in another process punched block 1 after this one logged it.
        let punched = unsafe {
            libc::fallocate(
                p.data().unwrap().as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                4096,
                4096,
            )
        };
        assert_eq!(punched, 0);
        let crcs = p.all_crcs().unwrap();
        assert_eq!(promote(dir.path(), &p, crcs, &temp).unwrap(), None);
        assert!(!dir.path().join(DATA).exists());
    }

    #[test]
    fn a_promoted_file_is_the_same_inode_and_its_index_pairs_only_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = full_partial(dir.path());
        let ino = p.data_ino();
        let crcs = p.all_crcs().unwrap();
        let index = promote(dir.path(), &p, crcs, &temp).unwrap().unwrap();
        assert_eq!(names(dir.path()), [DATA, INDEX]);
        assert_eq!(index.ino, ino, "renamed, not copied");
        assert_eq!(WholeIndex::read(dir.path()), Some(index.clone()));
        let bytes = std::fs::read(dir.path().join(DATA)).unwrap();
        assert_eq!(bytes, [[1u8; 1024], [2; 1024], [3; 1024]].concat());
        assert_eq!(index.crcs[1], crc32fast::hash(&[2u8; 1024]));
        // Another file of the same length under the data file's name: a different inode.
        let other = dir.path().join("other");
        std::fs::write(&other, vec![0u8; 3 * 1024]).unwrap();
        std::fs::rename(&other, dir.path().join(DATA)).unwrap();
        assert_eq!(WholeIndex::read(dir.path()), None);
    }

    #[test]
    fn only_one_holder_of_the_lock_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let held = try_lock(dir.path());
        assert!(held.is_some());
        assert!(try_lock(dir.path()).is_none());
        drop(held);
        assert!(try_lock(dir.path()).is_some());
    }
}
