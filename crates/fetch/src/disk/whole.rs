//! A product held whole in the disk cache: one file, `whole.data`, holding exactly the
//! download's bytes at the download's offsets, so the kernel can read it directly (FUSE
//! passthrough: no daemon round trip per read); and beside it `whole.idx`, the block size, the
//! data file's inode number and a CRC-32 per block, so every read the daemon still serves from
//! it is checked as a block file's is.
//!
//! Made from the product's block files once every one is held ([`assemble`]): each block is
//! verified and copied, the data file is `fsync`ed, then the index and the data are renamed into
//! place, index first, and only then are the block files deleted. A reader finds either the
//! blocks or the whole file at every moment (the store looks in both). The index names the data
//! file's inode: a data file whose inode differs (two assemblies interleaved, a crash between
//! the two renames) is not whole, never a wrong file under the final name.
//!
//! Why assemble rather than write one sparse file as blocks arrive: block files keep the
//! store's every other property (atomic rename per block, any process may write any block, a
//! torn write only ever loses one block), and a product is assembled once, by the one process
//! that wins the `assemble.lock` `flock`; the copy is local and costs about as much as reading
//! the product once from disk.
//!
//! This file holds the format and the assembly, and the store's methods for whole products
//! (found, read, split back into blocks when corrupt, handed out for passthrough).

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use super::{touch, verify, DiskStore, DISK_BLOCK_SIZE, HEADER};

/// How often [`DiskStore::finish_assembly`] looks whether the assemblies are done: a copy of a
/// product takes about a second per GiB, so a few tens of ms late is nothing.
const ASSEMBLY_POLL: Duration = Duration::from_millis(20);

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

    /// The length of block `index`.
    pub fn block_len(&self, index: u64) -> u64 {
        self.block_size
            .min(self.size.saturating_sub(index * self.block_size))
    }
}

/// One block, as [`assemble`] reads it: its payload and CRC, or `None` when the block is
/// missing or fails its check.
pub type ReadBlock<'a> = dyn Fn(u64) -> Option<(Vec<u8>, u32)> + 'a;

/// A whole file just made, and the product's assemble lock, held until the caller has
/// finished (its blocks deleted, its bytes counted).
pub struct Assembled {
    pub index: WholeIndex,
    _lock: std::fs::File,
}

/// Assembles `dir`'s whole file of `size` bytes from its blocks, read (and verified) by
/// `block`. `Ok(None)`: another process is assembling it, or a block is missing. `temp` names
/// this process's temp files (`.tmp` at the end, so a crash's leftovers are swept at open).
pub fn assemble(
    dir: &Path,
    size: u64,
    block_size: u64,
    temp: &dyn Fn(&str) -> String,
    block: &ReadBlock,
) -> std::io::Result<Option<Assembled>> {
    let Some(lock) = lock(dir)? else {
        return Ok(None);
    };
    let data_tmp = dir.join(temp(DATA));
    let index_tmp = dir.join(temp(INDEX));
    let result = (|| -> std::io::Result<Option<WholeIndex>> {
        let mut out = create_new(&data_tmp)?;
        let n = size.div_ceil(block_size);
        let mut crcs = Vec::with_capacity(n as usize);
        for i in 0..n {
            let Some((payload, crc)) = block(i) else {
                return Ok(None);
            };
            out.write_all(&payload)?;
            crcs.push(crc);
        }
        // The bytes reach the disk before the name does: after a power loss the final name
        // holds the whole product or nothing.
        out.sync_all()?;
        let index = WholeIndex {
            size,
            block_size,
            ino: out.metadata()?.ino(),
            crcs,
        };
        let mut f = create_new(&index_tmp)?;
        f.write_all(&index.encode())?;
        f.sync_all()?;
        std::fs::rename(&index_tmp, dir.join(INDEX))?;
        std::fs::rename(&data_tmp, dir.join(DATA))?;
        Ok(Some(index))
    })();
    if !matches!(result, Ok(Some(_))) {
        let _ = std::fs::remove_file(&data_tmp);
        let _ = std::fs::remove_file(&index_tmp);
    }
    Ok(result?.map(|index| Assembled { index, _lock: lock }))
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

/// `flock(LOCK_EX | LOCK_NB)` on the product's assemble lock: `None` while another holds it.
fn lock(dir: &Path) -> std::io::Result<Option<std::fs::File>> {
    flock(dir, libc::LOCK_EX | libc::LOCK_NB)
}

/// The product's assemble lock, waited for: whoever deletes a product holds it, so that an
/// assembly that had read the old blocks cannot rename a whole file in after the deletion.
/// `None` when the directory is gone or the filesystem has no locks.
pub fn lock_wait(dir: &Path) -> Option<std::fs::File> {
    flock(dir, libc::LOCK_EX).ok().flatten()
}

fn flock(dir: &Path, how: libc::c_int) -> std::io::Result<Option<std::fs::File>> {
    use std::os::fd::AsRawFd;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(LOCK))?;
    // SAFETY: flock on a descriptor we own; released when it closes.
    if unsafe { libc::flock(file.as_raw_fd(), how) } == 0 {
        Ok(Some(file))
    } else {
        Ok(None)
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

    /// Block `index` (of `len` bytes) from `id`'s whole file, checked against its index's CRC
    /// ([`Self::read_run`]).
    pub(super) fn get_from_whole(&self, id: &str, index: u64, len: u64) -> Option<Bytes> {
        let w = self.whole(id)?;
        if index >= w.crcs.len() as u64 || w.block_len(index) != len {
            return None;
        }
        self.read_run(id, &w, index, index)
    }

    /// Blocks `first..=last` of `id` (a download of `size` bytes) from its whole file
    /// ([`Self::read_run`]): the disk cache's answer for a product held whole, with no copy to
    /// assemble the run. `None` when the product is not whole at that size. Blocking.
    pub fn read_whole_run(&self, id: &str, size: u64, first: u64, last: u64) -> Option<Bytes> {
        let w = self.whole(id).filter(|w| w.size == size)?;
        if last >= w.crcs.len() as u64 || first > last {
            return None;
        }
        self.read_run(id, &w, first, last)
    }

    /// Blocks `first..=last` of the whole file `w` indexes, read at once into one buffer (huge
    /// pages where the kernel has them), each block checked against its CRC. `None` when the
    /// file is not the one `w` pairs with, the read fails, or a block fails its check (the file
    /// is then split back into its good blocks).
    fn read_run(&self, id: &str, w: &Arc<WholeIndex>, first: u64, last: u64) -> Option<Bytes> {
        use std::os::fd::AsRawFd;
        let bs = DISK_BLOCK_SIZE;
        let start = first * bs;
        let len = ((last + 1) * bs).min(w.size) - start;
        let path = self.product_dir(id).join(DATA);
        let file = open_regular(&path).filter(|f| f.metadata().is_ok_and(|m| w.pairs_with(&m)))?;
        let mut buf = BytesMut::with_capacity(len as usize);
        crate::zipper::huge_pages_for(&mut buf);
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
        for (k, block) in buf.chunks(bs as usize).enumerate() {
            if crc32fast::hash(block) != w.crcs[first as usize + k] {
                tracing::warn!(path = %path.display(), index = first + k as u64, "corrupt block in a whole product in the disk cache; keeping its good blocks and fetching the bad one again");
                self.corrupt.fetch_add(1, Ordering::Relaxed);
                self.split_whole(id, w);
                return None;
            }
        }
        self.hits.fetch_add(last - first + 1, Ordering::Relaxed);
        touch(&path);
        Some(buf.freeze())
    }

    /// Turns `id`'s whole file, found corrupt, back into block files: the blocks that pass
    /// their check are kept, the others are fetched again (and the product assembled again once
    /// they are held). Rare (bit rot), so copying is fine.
    pub(super) fn split_whole(&self, id: &str, w: &WholeIndex) {
        let dir = self.product_dir(id);
        let Some(_lock) = lock_wait(&dir) else {
            return;
        };
        // Split (and reassembled) by another process meanwhile: not ours to touch any more.
        if WholeIndex::read(&dir).as_ref() != Some(w) {
            self.wholes_map().remove(id);
            return;
        }
        if let Some(file) = open_regular(&dir.join(DATA)) {
            for (i, crc) in w.crcs.iter().enumerate() {
                let i = i as u64;
                let mut buf = vec![0u8; w.block_len(i) as usize];
                let good = file.read_exact_at(&mut buf, i * DISK_BLOCK_SIZE).is_ok()
                    && crc32fast::hash(&buf) == *crc;
                if good && self.write_block(id, i, &buf).is_ok() {
                    self.used
                        .fetch_add(HEADER as u64 + buf.len() as u64, Ordering::Relaxed);
                }
            }
        }
        if std::fs::remove_file(dir.join(DATA)).is_ok() {
            self.sub_used(w.size);
        }
        let _ = std::fs::remove_file(dir.join(INDEX));
        self.wholes_map().remove(id);
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

    /// Assembles `id` (a download of `size` bytes) into one file on a thread of its own, when
    /// its every block is held and no thread here is at it already. `force`: count its blocks
    /// now (at an open), whatever this process stored since the last count.
    pub fn assemble_soon(&self, id: &str, size: u64, force: bool) {
        if !self.auto_assemble.load(Ordering::Relaxed) || size == 0 {
            return;
        }
        if force {
            self.assemble_waits
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(id);
        }
        if !self.may_be_complete(id, size) || self.whole(id).is_some() {
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

    /// Whether `id` may hold every block now, cheaply: a count of its block files (one
    /// directory read) says how many are missing, and no new count is made before this process
    /// has stored that many more (another process's blocks are counted at the next open,
    /// [`DiskStore::assemble_soon`] from `DiskCache::backing_file` passes `force`).
    fn may_be_complete(&self, id: &str, size: u64) -> bool {
        let n = size.div_ceil(DISK_BLOCK_SIZE);
        let mut waits = self
            .assemble_waits
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(left) = waits.get_mut(id) {
            if *left > 1 {
                *left -= 1;
                return false;
            }
        }
        let missing = n.saturating_sub(self.block_files(id));
        if missing == 0 {
            waits.remove(id);
            return true;
        }
        waits.insert(id.to_string(), missing);
        false
    }

    /// How many block files `id` has.
    pub(super) fn block_files(&self, id: &str) -> u64 {
        let Ok(files) = std::fs::read_dir(self.product_dir(id)) else {
            return 0;
        };
        files
            .flatten()
            .filter(|f| {
                let name = f.file_name();
                let name = name.to_string_lossy();
                !name.starts_with('.') && name.ends_with(".blk")
            })
            .count() as u64
    }

    /// Assembles `id` (a download of `size` bytes) into one file from its blocks, each
    /// verified, then deletes the blocks; true when the product is whole afterwards. Blocking.
    pub fn assemble(&self, id: &str, size: u64) -> bool {
        if self.whole(id).is_some() {
            return true;
        }
        let bs = DISK_BLOCK_SIZE;
        let n = size.div_ceil(bs);
        let len = |i: u64| bs.min(size - i * bs);
        if size == 0 || !(0..n).all(|i| self.has_block_file(id, i, len(i))) {
            return false;
        }
        let dir = self.product_dir(id);
        let read = |i: u64| {
            let mut raw = std::fs::read(self.block_path(id, i)).ok()?;
            verify(&raw, len(i)).ok()?;
            let crc = u32::from_le_bytes(raw[16..20].try_into().expect("4 bytes"));
            Some((raw.split_off(HEADER), crc))
        };
        let pid = std::process::id();
        let temp = |name: &str| {
            let k = self.temp_counter.fetch_add(1, Ordering::Relaxed);
            format!(".{name}.{pid}.{k}.tmp")
        };
        // The copy needs the product's size again until its blocks go: not at the cost of the
        // budget (or of the room the budget keeps free for the user's own files).
        if self.excess_with(size) > 0 {
            tracing::debug!(id, "no room to assemble the product in the disk cache now");
            return false;
        }
        match assemble(&dir, size, bs, &temp, &read) {
            Ok(Some(Assembled { index, _lock })) => {
                self.used.fetch_add(size, Ordering::Relaxed);
                self.wholes_map().insert(id.to_string(), Arc::new(index));
                for i in 0..n {
                    if std::fs::remove_file(self.block_path(id, i)).is_ok() {
                        self.sub_used(HEADER as u64 + len(i));
                    }
                }
                self.assembled.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    id,
                    "the product is whole in the disk cache: kept as one file"
                );
                true
            }
            Ok(None) => self.whole(id).is_some(),
            Err(e) => {
                tracing::warn!(id, error = %e, "cannot assemble the product in the disk cache");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn a_missing_block_leaves_no_whole_file_and_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let temp = |name: &str| format!(".{name}.test.tmp");
        let block = |i: u64| (i != 1).then(|| (vec![i as u8; 1024], 0));
        let got = assemble(dir.path(), 3 * 1024, 1024, &temp, &block).unwrap();
        assert!(got.is_none());
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, [LOCK]);
    }

    #[test]
    fn the_index_pairs_only_with_the_data_file_it_was_written_for() {
        let dir = tempfile::tempdir().unwrap();
        let temp = |name: &str| format!(".{name}.test.tmp");
        let block = |i: u64| Some((vec![i as u8; 1024], crc32fast::hash(&[i as u8; 1024])));
        let index = assemble(dir.path(), 2 * 1024, 1024, &temp, &block)
            .unwrap()
            .unwrap()
            .index;
        assert_eq!(WholeIndex::read(dir.path()), Some(index));
        // Another file of the same length under the data file's name: a different inode.
        let other = dir.path().join("other");
        std::fs::write(&other, vec![0u8; 2048]).unwrap();
        std::fs::rename(&other, dir.path().join(DATA)).unwrap();
        assert_eq!(WholeIndex::read(dir.path()), None);
    }

    #[test]
    fn only_one_assembler_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock(dir.path()).unwrap();
        assert!(held.is_some());
        let temp = |name: &str| format!(".{name}.test.tmp");
        let block = |_: u64| -> Option<(Vec<u8>, u32)> { panic!("must not read while locked") };
        assert!(assemble(dir.path(), 10, 1024, &temp, &block)
            .unwrap()
            .is_none());
        drop(held);
        assert!(lock(dir.path()).unwrap().is_some());
    }
}
