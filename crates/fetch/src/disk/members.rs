//! Files of a product served from its zip in the disk cache: where a member's bytes sit in
//! the zip, read from the zip's own cached blocks.
//!
//! Why: once a product's zip has been read (a `cp` of the `.zip`, a download through the
//! mount), the disk cache holds every byte of every file of the product. The folder view asks
//! for those files by node id (`<uuid>/<Name>/.../<file>`, see [`crate::nodes`]); without this
//! module each would be downloaded again through OData Nodes. Products are zipped with every
//! member *stored* (docs/protocol.md), so a member's bytes are a plain slice of the zip: the
//! central directory gives the member's local header offset, and the data starts at
//! `header offset + 30 + name length + extra length` (the local header's own lengths, which may
//! differ from the central directory's extra). Zip64 (products over 4 GiB) is read through the
//! zip64 end record and each entry's zip64 extra field.
//!
//! This file owns the parsing ([`ZipDirectory`], [`locate`]) over a byte reader that returns
//! `None` for bytes not held; the [`super::DiskCache`] layer calls it and falls back to the
//! network whenever anything is missing, compressed, or does not check out (a member served from
//! here is always the exact slice the local header names).

use std::collections::HashMap;
use std::ops::Range;

/// End of central directory record: 22 bytes, then a comment of up to 65535 bytes.
const EOCD_LEN: u64 = 22;
const EOCD_SIG: u32 = 0x0605_4b50;
const MAX_COMMENT: u64 = 0xFFFF;
/// Zip64 end of central directory locator: 20 bytes right before the end record.
const LOCATOR_LEN: u64 = 20;
const LOCATOR_SIG: u32 = 0x0706_4b50;
/// Zip64 end of central directory record: 56 bytes (without extensible data).
const EOCD64_LEN: u64 = 56;
const EOCD64_SIG: u32 = 0x0606_4b50;
const CENTRAL_SIG: u32 = 0x0201_4b50;
const CENTRAL_LEN: usize = 46;
const LOCAL_SIG: u32 = 0x0403_4b50;
const LOCAL_LEN: u64 = 30;
/// Zip64 extended information extra field.
const ZIP64_EXTRA: u16 = 0x0001;
/// A central directory larger than this is not believed (bytes): a Sentinel product's holds a
/// few hundred entries of under 200 bytes each, so 64 MiB is far beyond any real one and keeps
/// a garbled record from making us read gigabytes.
const MAX_DIRECTORY: u64 = 64 << 20;

/// One file of the zip as the central directory describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Offset of the member's local header in the zip.
    pub header_offset: u64,
    /// Uncompressed size in bytes.
    pub size: u64,
    /// Stored (method 0), not encrypted, and compressed size == size: a plain slice.
    pub stored: bool,
}

/// The files of one zip by member name (`<Name>/GRANULE/.../file`), with the zip's size.
#[derive(Debug)]
pub(crate) struct ZipDirectory {
    pub zip_size: u64,
    entries: HashMap<String, Entry>,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Where the central directory of a zip of `zip_size` bytes lies, `(offset, size)`, from its
/// end record (and the zip64 record the locator before it points at).
fn directory_span(
    zip_size: u64,
    read: &impl Fn(Range<u64>) -> Option<Vec<u8>>,
) -> Option<(u64, u64)> {
    // The end record: the last signature whose comment runs exactly to the end.
    let tail_len = zip_size.min(EOCD_LEN + MAX_COMMENT + LOCATOR_LEN);
    if tail_len < EOCD_LEN {
        return None;
    }
    let tail_start = zip_size - tail_len;
    let tail = read(tail_start..zip_size)?;
    let at = (0..=tail.len() - EOCD_LEN as usize).rev().find(|&i| {
        u32_at(&tail, i) == Some(EOCD_SIG)
            && u16_at(&tail, i + 20)
                .is_some_and(|c| i + EOCD_LEN as usize + c as usize == tail.len())
    })?;
    let count = u16_at(&tail, at + 10)? as u64;
    let mut cd_size = u32_at(&tail, at + 12)? as u64;
    let mut cd_offset = u32_at(&tail, at + 16)? as u64;
    // Zip64: the locator sits right before the end record and points at the zip64 record.
    if at >= LOCATOR_LEN as usize && u32_at(&tail, at - LOCATOR_LEN as usize) == Some(LOCATOR_SIG) {
        let record = u64_at(&tail, at - LOCATOR_LEN as usize + 8)?;
        if record.checked_add(EOCD64_LEN)? > zip_size {
            return None;
        }
        let r = read(record..record + EOCD64_LEN)?;
        if u32_at(&r, 0)? != EOCD64_SIG {
            return None;
        }
        cd_size = u64_at(&r, 40)?;
        cd_offset = u64_at(&r, 48)?;
    } else if count == 0xFFFF || cd_size == 0xFFFF_FFFF || cd_offset == 0xFFFF_FFFF {
        return None;
    }
    if cd_size > MAX_DIRECTORY || cd_offset.checked_add(cd_size)? > zip_size {
        return None;
    }
    Some((cd_offset, cd_size))
}

/// The files of a central directory, by name (directories and names that are not UTF-8 left
/// out); `None` when a record does not parse.
fn entries(cd: &[u8]) -> Option<HashMap<String, Entry>> {
    let mut entries = HashMap::new();
    let mut pos = 0usize;
    while pos + CENTRAL_LEN <= cd.len() {
        if u32_at(cd, pos)? != CENTRAL_SIG {
            return None;
        }
        let flags = u16_at(cd, pos + 8)?;
        let method = u16_at(cd, pos + 10)?;
        let mut csize = u32_at(cd, pos + 20)? as u64;
        let mut size = u32_at(cd, pos + 24)? as u64;
        let name_len = u16_at(cd, pos + 28)? as usize;
        let extra_len = u16_at(cd, pos + 30)? as usize;
        let comment_len = u16_at(cd, pos + 32)? as usize;
        let mut header_offset = u32_at(cd, pos + 42)? as u64;
        let name_at = pos + CENTRAL_LEN;
        let name = cd.get(name_at..name_at + name_len)?;
        let extra = cd.get(name_at + name_len..name_at + name_len + extra_len)?;
        zip64_fields(extra, [&mut size, &mut csize, &mut header_offset])?;
        pos = name_at + name_len + extra_len + comment_len;
        let Ok(name) = std::str::from_utf8(name) else {
            continue;
        };
        if name.ends_with('/') {
            continue;
        }
        entries.insert(
            name.to_string(),
            Entry {
                header_offset,
                size,
                stored: method == 0 && flags & 1 == 0 && csize == size,
            },
        );
    }
    Some(entries)
}

/// Replaces each saturated field (size, compressed size, header offset, in that order) with
/// its value from the zip64 extra field, which holds only the saturated ones.
fn zip64_fields(extra: &[u8], fields: [&mut u64; 3]) -> Option<()> {
    let mut e = 0usize;
    let mut fields = fields;
    while e + 4 <= extra.len() {
        let id = u16_at(extra, e)?;
        let len = u16_at(extra, e + 2)? as usize;
        let body = extra.get(e + 4..e + 4 + len)?;
        if id == ZIP64_EXTRA {
            let mut f = 0usize;
            for v in fields.iter_mut() {
                if **v == 0xFFFF_FFFF {
                    **v = u64_at(body, f)?;
                    f += 8;
                }
            }
        }
        e += 4 + len;
    }
    Some(())
}

impl ZipDirectory {
    /// Reads the central directory of a zip of `zip_size` bytes through `read` (exactly the
    /// bytes asked for, or `None` when they are not at hand). `None` when a piece is missing or
    /// the records do not parse.
    pub fn read(
        zip_size: u64,
        read: impl Fn(Range<u64>) -> Option<Vec<u8>>,
    ) -> Option<ZipDirectory> {
        let (cd_offset, cd_size) = directory_span(zip_size, &read)?;
        let cd = read(cd_offset..cd_offset + cd_size)?;
        Some(ZipDirectory {
            zip_size,
            entries: entries(&cd)?,
        })
    }

    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.entries.get(name)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

/// Where the data of the stored member `name` starts in the zip: its local header is read
/// and must carry the signature and the same name; the data must end inside the zip.
pub(crate) fn locate(
    dir: &ZipDirectory,
    name: &str,
    entry: &Entry,
    read: impl Fn(Range<u64>) -> Option<Vec<u8>>,
) -> Option<u64> {
    if !entry.stored {
        return None;
    }
    let header_end = entry
        .header_offset
        .checked_add(LOCAL_LEN + name.len() as u64)?;
    if header_end > dir.zip_size {
        return None;
    }
    let h = read(entry.header_offset..header_end)?;
    if u32_at(&h, 0)? != LOCAL_SIG || h.get(LOCAL_LEN as usize..)? != name.as_bytes() {
        return None;
    }
    let name_len = u16_at(&h, 26)? as u64;
    let extra_len = u16_at(&h, 28)? as u64;
    let data = entry.header_offset + LOCAL_LEN + name_len + extra_len;
    (data.checked_add(entry.size)? <= dir.zip_size).then_some(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A zip written by Python's `zipfile`, with `ZIP64_LIMIT` lowered so that every record
    /// it can make zip64 is zip64 (end record, locator, entries' extras), as in a product of
    /// several GiB; one member deflated.
    fn python_zip(force_zip64: bool) -> Option<Vec<u8>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("z.zip");
        let script = r#"
import sys, zipfile
if sys.argv[2] == "1":
    zipfile.ZIP64_LIMIT = 0
    zipfile.ZIP_FILECOUNT_LIMIT = 0
with zipfile.ZipFile(sys.argv[1], "w", zipfile.ZIP_STORED) as z:
    z.writestr("P.SAFE/", b"")
    z.writestr("P.SAFE/manifest.safe", b"<xfdu/>" * 100)
    z.writestr("P.SAFE/GRANULE/a/IMG_DATA/B01.jp2", bytes(range(256)) * 4000)
    z.writestr("P.SAFE/deflated.xml", b"x" * 5000, compress_type=zipfile.ZIP_DEFLATED)
    z.comment = b"a comment"
"#;
        let ok = std::process::Command::new("python3")
            .args(["-c", script])
            .arg(&path)
            .arg(if force_zip64 { "1" } else { "0" })
            .status()
            .ok()?
            .success();
        assert!(ok, "python3 failed to write the zip");
        Some(std::fs::read(&path).unwrap())
    }

    fn check(zip: &[u8]) {
        let read = |r: Range<u64>| {
            zip.get(r.start as usize..r.end as usize)
                .map(<[u8]>::to_vec)
        };
        let dir = ZipDirectory::read(zip.len() as u64, read).expect("directory");
        assert_eq!(dir.len(), 3);
        for (name, want) in [
            ("P.SAFE/manifest.safe", b"<xfdu/>".repeat(100)),
            (
                "P.SAFE/GRANULE/a/IMG_DATA/B01.jp2",
                (0..=255u8).collect::<Vec<u8>>().repeat(4000),
            ),
        ] {
            let e = dir.get(name).unwrap();
            assert_eq!(e.size, want.len() as u64);
            let at = locate(&dir, name, e, read).unwrap() as usize;
            assert_eq!(&zip[at..at + want.len()], &want[..], "{name}");
        }
        let deflated = dir.get("P.SAFE/deflated.xml").unwrap();
        assert!(!deflated.stored);
        assert_eq!(locate(&dir, "P.SAFE/deflated.xml", deflated, read), None);
        // A missing piece (here: the central directory's bytes) gives no answer, not a guess.
        let holes = |r: Range<u64>| (r.end < zip.len() as u64 - 200).then(|| read(r)).flatten();
        assert!(ZipDirectory::read(zip.len() as u64, holes).is_none());
        // A name the local header does not carry is not located.
        let e = dir.get("P.SAFE/manifest.safe").unwrap();
        assert_eq!(locate(&dir, "P.SAFE/manifest.safX", e, read), None);
    }

    #[test]
    fn members_are_located_in_classic_and_zip64_zips() {
        for zip64 in [false, true] {
            let Some(zip) = python_zip(zip64) else {
                eprintln!("NOTE: python3 absent, skipped");
                return;
            };
            if zip64 {
                let has = |sig: u32| zip.windows(4).any(|w| w == sig.to_le_bytes());
                assert!(has(EOCD64_SIG) && has(LOCATOR_SIG), "not a zip64 zip");
            }
            check(&zip);
        }
    }

    #[test]
    fn garbage_is_not_a_directory() {
        let junk = vec![7u8; 5000];
        let read = |r: Range<u64>| {
            junk.get(r.start as usize..r.end as usize)
                .map(<[u8]>::to_vec)
        };
        assert!(ZipDirectory::read(junk.len() as u64, read).is_none());
        assert!(ZipDirectory::read(3, |_| Some(vec![0; 3])).is_none());
    }
}
