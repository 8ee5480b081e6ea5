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

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

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

/// Assembles `dir`'s whole file of `size` bytes from its blocks, read (and verified) by
/// `block`. `Ok(None)`: another process is assembling it, or a block is missing. `temp` names
/// this process's temp files (`.tmp` at the end, so a crash's leftovers are swept at open).
pub fn assemble(
    dir: &Path,
    size: u64,
    block_size: u64,
    temp: &dyn Fn(&str) -> String,
    block: &ReadBlock,
) -> std::io::Result<Option<WholeIndex>> {
    let Some(_lock) = lock(dir)? else {
        return Ok(None);
    };
    let data_tmp = dir.join(temp(DATA));
    let index_tmp = dir.join(temp(INDEX));
    let result = (|| {
        let mut out = std::fs::File::create(&data_tmp)?;
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
        let mut f = std::fs::File::create(&index_tmp)?;
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
    result
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
        assert_eq!(got, None);
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
            .unwrap();
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
        assert_eq!(assemble(dir.path(), 10, 1024, &temp, &block).unwrap(), None);
        drop(held);
        assert!(lock(dir.path()).unwrap().is_some());
    }
}
