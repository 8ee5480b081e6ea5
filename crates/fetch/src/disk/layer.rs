//! The disk cache as a [`RangeSource`] layer ([`DiskCache`]): `get_range` serves what the
//! store holds (a whole product's run in one read, else block by block) and fetches only the
//! missing runs from below, then stores them; `info` is answered from the store's `info.json`;
//! a file of a product (a node id) is read from its product's cached zip when that is held;
//! `backing_file` hands out a product's whole file for passthrough. Without a store everything
//! passes through, so the mount has one type either way.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};

use super::members::{self, ZipDirectory};
use super::DiskStore;
use crate::{FetchError, ObjectInfo, RangeSource, RangeSupport};

/// The disk cache as a [`RangeSource`] layer. See the module doc.
pub struct DiskCache<S> {
    inner: S,
    store: Option<Arc<DiskStore>>,
    infos: Mutex<HashMap<String, ObjectInfo>>,
    /// Central directories of products whose zip tail is held, by product id (`members`),
    /// with the store's count of dropped products when each was read.
    zips: Mutex<HashMap<String, (u64, Arc<ZipDirectory>)>>,
}

impl<S: RangeSource> DiskCache<S> {
    /// `store: None` passes everything through to `inner`.
    pub fn new(inner: S, store: Option<Arc<DiskStore>>) -> Self {
        DiskCache {
            inner,
            store,
            infos: Mutex::default(),
            zips: Mutex::default(),
        }
    }

    pub fn source(&self) -> &S {
        &self.inner
    }

    pub fn store(&self) -> Option<&Arc<DiskStore>> {
        self.store.as_ref()
    }

    /// Where the bytes of node `id` (a file of a product, [`crate::nodes`]) sit in its
    /// product's cached zip: `(product id, data offset in the zip, member size, zip size)`.
    /// `None` when `id` is not a node id, when the product's info or the blocks of its
    /// central directory or of the member's local header are not held, or when the member is
    /// not stored as it is. The directory is parsed once per product and kept until a product
    /// is dropped from the store (its bytes changed at the source); the local header is read
    /// and checked (signature and name) on every call, so blocks dropped or replaced since
    /// give `None`, never another member's bytes.
    async fn in_cached_zip(
        &self,
        store: &Arc<DiskStore>,
        id: &str,
    ) -> Option<(String, u64, u64, u64)> {
        let (uuid, path) = crate::nodes::split_node_id(id)?;
        let (uuid, name) = (uuid.to_string(), path.join("/"));
        let dropped = store.dropped.load(Ordering::Relaxed);
        let known = self
            .zips
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&uuid)
            .filter(|(gen, _)| *gen == dropped)
            .map(|(_, dir)| Arc::clone(dir));
        let (s, key) = (Arc::clone(store), uuid.clone());
        let (dir, at, size) = blocking(move || {
            let dir = match known {
                Some(d) => d,
                None => {
                    let zip_size = s.load_info(&key)?.size;
                    let read = |r: Range<u64>| s.read_held(&key, zip_size, r);
                    Arc::new(ZipDirectory::read(zip_size, read)?)
                }
            };
            let entry = dir.get(&name)?;
            let read = |r: Range<u64>| s.read_held(&key, dir.zip_size, r);
            let at = members::locate(&dir, &name, entry, read)?;
            let size = entry.size;
            Some((dir, at, size))
        })
        .await?;
        let zip_size = dir.zip_size;
        let mut zips = self.zips.lock().unwrap_or_else(|p| p.into_inner());
        if !zips.contains_key(&uuid) {
            tracing::info!(
                id = %uuid,
                "the product's zip is in the disk cache: its files are read from there"
            );
        }
        zips.insert(uuid.clone(), (dropped, dir));
        Some((uuid, at, size, zip_size))
    }

    /// Bytes `range` of node `id` from its product's cached zip, when held (see
    /// [`Self::in_cached_zip`]); `None`: the caller fetches them as usual.
    async fn read_cached_zip(
        &self,
        store: &Arc<DiskStore>,
        id: &str,
        range: &Range<u64>,
    ) -> Option<Bytes> {
        let (uuid, at, size, zip_size) = self.in_cached_zip(store, id).await?;
        if range.start >= size || range.start >= range.end {
            return None;
        }
        let want = (at + range.start)..(at + range.end.min(size));
        let s = Arc::clone(store);
        let bytes = blocking(move || s.read_held(&uuid, zip_size, want)).await?;
        Some(Bytes::from(bytes))
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("disk cache task panicked")
}

impl<S: RangeSource> RangeSource for DiskCache<S> {
    async fn info(&self, id: &str) -> Result<ObjectInfo, FetchError> {
        let Some(store) = &self.store else {
            return self.inner.info(id).await;
        };
        if let Some(i) = self.infos.lock().unwrap_or_else(|p| p.into_inner()).get(id) {
            return Ok(i.clone());
        }
        let (s, key) = (Arc::clone(store), id.to_string());
        let info = match blocking(move || s.load_info(&key)).await {
            Some(info) => info,
            None => match self.in_cached_zip(store, id).await {
                // A file of a product whose zip is held: its size is the member's.
                Some((_, _, size, _)) => ObjectInfo {
                    size,
                    filename: None,
                    ranges: RangeSupport::Honoured,
                },
                None => {
                    let info = self.inner.info(id).await?;
                    let (s, key, i) = (Arc::clone(store), id.to_string(), info.clone());
                    blocking(move || s.save_info(&key, &i)).await;
                    info
                }
            },
        };
        self.infos
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string(), info.clone());
        Ok(info)
    }

    async fn get_range(&self, id: &str, range: Range<u64>) -> Result<Bytes, FetchError> {
        let Some(store) = &self.store else {
            return self.inner.get_range(id, range).await;
        };
        if let Some(bytes) = self.read_cached_zip(store, id, &range).await {
            return Ok(bytes);
        }
        let size = self.info(id).await?.size;
        let Some(Range { start, end }) = crate::clamp_range(id, range, Some(size))? else {
            return Ok(Bytes::new());
        };
        let bs = store.block_size();
        let (first, last) = (start / bs, (end - 1) / bs);
        let (skip, want) = ((start - first * bs) as usize, (end - start) as usize);
        let (s, key) = (Arc::clone(store), id.to_string());
        // The whole run in one read when every block is held, else each block held: one trip
        // to a blocking thread either way.
        let held = blocking(move || {
            s.read_run(&key, size, first, last)
                .ok_or_else(|| s.held_blocks(&key, size, first, last))
        })
        .await;
        let mut blocks = match held {
            Ok(run) => return Ok(run.slice(skip..skip + want)),
            Err(blocks) => blocks,
        };
        let run = Run { first, size, bs };
        if let Some(one_answer) = self.fetch_missing(store, id, run, &mut blocks).await? {
            return Ok(one_answer.slice(skip..skip + want));
        }
        Ok(join(blocks, skip, want))
    }

    /// Whether the store holds every block of `range` (of a product whose info this layer has
    /// seen).
    fn holds_locally(&self, id: &str, range: Range<u64>) -> bool {
        let Some(store) = &self.store else {
            return false;
        };
        let Some(size) = self
            .infos
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .map(|i| i.size)
        else {
            return false;
        };
        let bs = store.block_size();
        let end = range.end.min(size);
        end > range.start && (range.start / bs..=(end - 1) / bs).all(|i| store.has(id, size, i))
    }

    /// The product's whole file when the store holds one of the product's size. A product
    /// whose every block is held but not yet assembled starts its assembly (the next open
    /// finds the file).
    async fn backing_file(&self, id: &str) -> Option<std::fs::File> {
        let store = self.store.as_ref()?;
        let size = self.info(id).await.ok()?.size;
        let (s, key) = (Arc::clone(store), id.to_string());
        blocking(move || {
            let file = s.whole_file(&key, size);
            if file.is_none() {
                s.assemble_soon(&key, size, true);
            }
            file
        })
        .await
    }
}

/// Blocks from `first` of a download of `size` bytes, in blocks of `bs`.
#[derive(Clone, Copy)]
struct Run {
    first: u64,
    size: u64,
    bs: u64,
}

impl Run {
    fn block_len(&self, i: u64) -> u64 {
        self.bs.min(self.size - i * self.bs)
    }
}

impl<S: RangeSource> DiskCache<S> {
    /// Fetches each run of missing blocks with one request, fills them in and stores them.
    /// When one answer held every block, that answer: the caller serves a slice of it instead
    /// of a copy (a fresh 8 MiB buffer per read-ahead request was a quarter of the mount's
    /// page faults in a loopback `cp`, scripts/bench P1).
    async fn fetch_missing(
        &self,
        store: &Arc<DiskStore>,
        id: &str,
        run: Run,
        blocks: &mut [Option<Bytes>],
    ) -> Result<Option<Bytes>, FetchError> {
        let mut one_answer = None;
        let mut i = 0;
        while i < blocks.len() {
            if blocks[i].is_some() {
                i += 1;
                continue;
            }
            let j = (i..blocks.len())
                .find(|&j| blocks[j].is_some())
                .unwrap_or(blocks.len());
            let (a, b) = (run.first + i as u64, run.first + j as u64);
            let want = (a * run.bs)..(b * run.bs).min(run.size);
            let got = self.inner.get_range(id, want.clone()).await?;
            if got.len() as u64 != want.end - want.start {
                return Err(FetchError::Protocol(format!(
                    "asked for bytes {want:?} of {id} and got {} bytes",
                    got.len()
                )));
            }
            if i == 0 && j == blocks.len() {
                one_answer = Some(got.clone());
            }
            let mut fetched = Vec::with_capacity(j - i);
            for k in a..b {
                let from = ((k - a) * run.bs) as usize;
                let block = got.slice(from..from + run.block_len(k) as usize);
                blocks[(k - run.first) as usize] = Some(block.clone());
                fetched.push((k, block));
            }
            let (s, key) = (Arc::clone(store), id.to_string());
            blocking(move || {
                for (k, block) in fetched {
                    s.put(&key, run.size, k, &block);
                }
            })
            .await;
            i = j;
        }
        Ok(one_answer)
    }
}

/// `want` bytes from `skip` into the run's blocks, all present: a slice of the one block it
/// falls in, else one copy.
fn join(mut blocks: Vec<Option<Bytes>>, skip: usize, want: usize) -> Bytes {
    if blocks.len() == 1 {
        let b = blocks.pop().flatten().expect("every block filled");
        return b.slice(skip..skip + want);
    }
    let mut out = BytesMut::with_capacity(want);
    let mut pos = 0;
    for b in blocks.into_iter().flatten() {
        let (from, to) = (skip.max(pos), (skip + want).min(pos + b.len()));
        if from < to {
            out.extend_from_slice(&b[from - pos..to - pos]);
        }
        pos += b.len();
    }
    out.freeze()
}
