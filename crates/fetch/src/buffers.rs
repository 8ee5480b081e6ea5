//! Big buffers (response bodies, runs read from the disk cache) reused instead of freed: a
//! buffer whose last slice is dropped (its blocks evicted from the memory cache, a reply sent)
//! goes back to a small pool, and the next body of about its size is read into it.
//!
//! Why: buffers of 1 MiB and more get their own mapping (`stack.rs` in the binary, to keep the
//! mount's RSS near its cache budget), so each fresh one is page-faulted in and zeroed by the
//! kernel, and on a VM with free page reporting each page is also faulted in by the host. In a
//! loopback `cp` of 1 GiB (`perf`, 2 cores) zeroing fresh huge pages was a quarter of the
//! mount's CPU.
//!
//! Only a buffer's written bytes are ever exposed (a `Vec`'s length), so a reused buffer never
//! shows what it held before.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use bytes::Bytes;

/// Idle buffers kept, in bytes: enough for the runs in flight at once (read-ahead on a few
/// connections, 8 MiB a request) to find one when the blocks they replace are evicted; the
/// mount's RSS goal (cache budget + 64 MiB) leaves room for it.
pub const POOL_BYTES: usize = 48 << 20;
/// Buffers smaller than this are left to the allocator (its own free lists reuse them).
const MIN_POOLED: usize = 1 << 20;
/// Capacity is rounded up to this, so runs of a few sizes share buffers.
const GRAIN: usize = 1 << 20;

static POOL: Mutex<VecDeque<Vec<u8>>> = Mutex::new(VecDeque::new());
static POOLED: AtomicUsize = AtomicUsize::new(0);
static REUSED: AtomicU64 = AtomicU64::new(0);
static FRESH: AtomicU64 = AtomicU64::new(0);

/// An empty buffer with room for `n` bytes: a pooled one when one fits (no larger than twice
/// `n`), else a new one (backed by huge pages where the kernel has them).
pub fn with_capacity(n: usize) -> Vec<u8> {
    if n >= MIN_POOLED {
        let mut pool = POOL.lock().unwrap_or_else(|p| p.into_inner());
        let best = pool
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= n && b.capacity() <= 2 * n)
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i);
        if let Some(i) = best {
            let buf = pool.remove(i).expect("found above");
            POOLED.fetch_sub(buf.capacity(), Ordering::Relaxed);
            REUSED.fetch_add(1, Ordering::Relaxed);
            return buf;
        }
        FRESH.fetch_add(1, Ordering::Relaxed);
    }
    let cap = if n >= MIN_POOLED {
        n.next_multiple_of(GRAIN)
    } else {
        n
    };
    let mut buf = Vec::with_capacity(cap);
    huge_pages_for(&mut buf);
    buf
}

/// `buf` as [`Bytes`] whose memory goes back to the pool when its last slice is dropped.
pub fn freeze(buf: Vec<u8>) -> Bytes {
    if buf.capacity() < MIN_POOLED {
        return Bytes::from(buf);
    }
    Bytes::from_owner(Pooled(buf))
}

/// Buffers of a pooled size handed out since the process started: `(reused, fresh)`.
pub fn counts() -> (u64, u64) {
    (
        REUSED.load(Ordering::Relaxed),
        FRESH.load(Ordering::Relaxed),
    )
}

/// Idle bytes in the pool now.
pub fn pooled_bytes() -> usize {
    POOLED.load(Ordering::Relaxed)
}

struct Pooled(Vec<u8>);

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// A buffer back goes in at the back; the ones at the front (idle longest: sizes no longer
/// asked for, say a reader's small runs) are freed to make room, so the pool follows what is
/// asked for now.
impl Drop for Pooled {
    fn drop(&mut self) {
        let mut buf = std::mem::take(&mut self.0);
        let cap = buf.capacity();
        if cap > POOL_BYTES {
            return;
        }
        buf.clear();
        let mut freed = Vec::new();
        let mut pool = POOL.lock().unwrap_or_else(|p| p.into_inner());
        while POOLED.load(Ordering::Relaxed) + cap > POOL_BYTES {
            let Some(old) = pool.pop_front() else { break };
            POOLED.fetch_sub(old.capacity(), Ordering::Relaxed);
            freed.push(old);
        }
        POOLED.fetch_add(cap, Ordering::Relaxed);
        pool.push_back(buf);
        drop(pool);
        drop(freed); // unmapped outside the lock
    }
}

/// Asks the kernel to back a big, fresh buffer with transparent huge pages (the whole 2 MiB
/// pages inside it; a no-op where THP is off): faulting in 4 KiB pages was most of the cost of
/// a fresh buffer (scripts/bench P1 profile: 285k page faults per GiB, 88k with this).
fn huge_pages_for(buf: &mut Vec<u8>) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let spare = buf.spare_capacity_mut();
        let start = spare.as_mut_ptr() as usize;
        let first = start.next_multiple_of(HUGE);
        let last = (start + spare.len()) / HUGE * HUGE;
        if last > first {
            // SAFETY: advice on whole pages inside this buffer's own allocation; MADV_HUGEPAGE
            // changes how they are backed, never their contents.
            unsafe {
                libc::madvise(
                    first as *mut libc::c_void,
                    last - first,
                    libc::MADV_HUGEPAGE,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_comes_back_when_its_last_slice_goes_and_shows_none_of_its_old_bytes() {
        let n = 3 << 20;
        let mut buf = with_capacity(n);
        buf.extend_from_slice(&vec![7u8; n]);
        let ptr = buf.as_ptr();
        let bytes = freeze(buf);
        let slice = bytes.slice(10..20);
        drop(bytes);
        let before = pooled_bytes();
        drop(slice);
        assert!(pooled_bytes() >= before + n, "back in the pool");
        // Other tests may take it meanwhile: look for ours among a few.
        let mut taken = Vec::new();
        for _ in 0..8 {
            let b = with_capacity(n);
            assert!(b.is_empty(), "no old bytes");
            let ours = b.as_ptr() == ptr;
            taken.push(b);
            if ours {
                return;
            }
        }
        panic!("the buffer was not reused");
    }
}
