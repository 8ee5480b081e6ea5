//! FUSE passthrough, the kernel-free part: a product held whole in the disk cache is opened with
//! its cache file as the kernel's backing file, so its reads go straight to that file's page
//! cache with no round trip through this process (Linux 6.9+, and the privilege to register a
//! backing file: root or CAP_SYS_ADMIN). Anything else is read through the daemon as before.
//!
//! Two pieces:
//! - [`Status`], on the [`Fs`]: whether passthrough is on (off by `--no-passthrough`, without a
//!   disk cache, or once the kernel refused it, logged once at info), and how many opens used it;
//!   both shown in `.eodata-status`;
//! - [`Modes`], the open files' modes per inode, for the adapter. The kernel holds one mode per
//!   inode at a time: while a file of the inode is open through the daemon, another open of it
//!   with a backing file fails (and the reverse), and every passthrough open of one inode must
//!   name the same backing file. So: an inode open through the daemon stays so until its last
//!   handle closes; one open with a backing file shares it with every later open of the inode
//!   while any is open; the backing registration is dropped with the last handle (the kernel
//!   needs it until then).
//!
//! A product evicted from the disk cache while open this way reads on: the kernel holds the
//! file open, and eviction only unlinks it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use eodata_fetch::RangeSource;

use super::{Fs, Open, Resolver};

/// Whether passthrough is on, and how often it was used. See the module doc.
#[derive(Debug)]
pub struct Status {
    /// Why it is off; `None`: on.
    off: Mutex<Option<String>>,
    opens: AtomicU64,
}

impl Status {
    /// On, or off for `why`.
    pub fn new(off: Option<String>) -> Self {
        Status {
            off: Mutex::new(off),
            opens: AtomicU64::new(0),
        }
    }

    pub fn is_on(&self) -> bool {
        self.off.lock().unwrap().is_none()
    }

    /// Turns it off for good (the kernel refused it); logged the first time only.
    pub fn turn_off(&self, why: &str) {
        let mut off = self.off.lock().unwrap();
        if off.is_none() {
            tracing::info!(
                "FUSE passthrough off: {why}; products whole in the disk cache are read through \
                 this process"
            );
            *off = Some(why.to_string());
        }
    }

    pub fn note_open(&self) {
        self.opens.fetch_add(1, Ordering::Relaxed);
    }

    /// The status file's lines.
    pub fn lines(&self) -> String {
        let state = match &*self.off.lock().unwrap() {
            None => "on".to_string(),
            Some(why) => format!("off ({why})"),
        };
        format!(
            "passthrough: {state}\nfs.passthrough_opens: {}\n",
            self.opens.load(Ordering::Relaxed)
        )
    }
}

impl<R: Resolver, S: RangeSource> Fs<R, S> {
    /// Passthrough's state for this mount.
    pub fn passthrough(&self) -> &Status {
        &self.passthrough
    }

    /// The disk cache's file of the product open as `fh`, when it is held whole there and is
    /// exactly the size the handle reads: for the kernel to read directly. `None` for anything
    /// else (the status file, a folder view's file, a product not whole on disk) and while
    /// passthrough is off.
    pub async fn backing_file(&self, fh: u64) -> Option<std::fs::File> {
        if !self.passthrough.is_on() {
            return None;
        }
        let handle = self.handles.lock().unwrap().get(&fh).cloned()?;
        let (id, size) = match &*handle {
            Open::Product { node, reader } if node.is_exact() => {
                (reader.id().to_string(), node.size())
            }
            _ => return None,
        };
        let file = self.cache.source().backing_file(&id).await?;
        (file.metadata().ok()?.len() == size).then_some(file)
    }
}

/// How one open file is read.
#[derive(Debug)]
pub enum Mode<B> {
    /// Through this process.
    Daemon,
    /// By the kernel from the backing file registered as `B`.
    Backing(Arc<B>),
}

/// The open files' modes per inode (see the module doc); `B` is the kernel's backing
/// registration (fuser's `BackingId`), dropped with the last handle that uses it.
#[derive(Debug)]
pub struct Modes<B> {
    state: Mutex<State<B>>,
}

#[derive(Debug)]
struct State<B> {
    inodes: HashMap<u64, InodeModes<B>>,
    handles: HashMap<u64, (u64, Mode<B>)>,
}

#[derive(Debug)]
struct InodeModes<B> {
    /// Handles open through the daemon.
    daemon: usize,
    /// The backing registration the inode's passthrough handles share.
    backing: Weak<B>,
}

impl<B> Default for Modes<B> {
    fn default() -> Self {
        Modes {
            state: Mutex::new(State {
                inodes: HashMap::new(),
                handles: HashMap::new(),
            }),
        }
    }
}

impl<B> Modes<B> {
    /// The mode of handle `fh` of inode `ino`, now opening. `file`: the product's backing file,
    /// when it has one; `register` makes it the kernel's (called at most once, only when the
    /// inode has no open file). A refused registration is returned, and the handle is then
    /// read through the daemon.
    pub fn open<F, E>(
        &self,
        ino: u64,
        fh: u64,
        file: Option<F>,
        register: impl FnOnce(F) -> Result<B, E>,
    ) -> (Mode<B>, Option<E>) {
        let mut guard = self.state.lock().unwrap();
        let state = &mut *guard;
        let modes = state.inodes.entry(ino).or_insert_with(|| InodeModes {
            daemon: 0,
            backing: Weak::new(),
        });
        let mut refused = None;
        let mode = match (modes.daemon, modes.backing.upgrade(), file) {
            (0, Some(shared), _) => Mode::Backing(shared),
            (0, None, Some(file)) => match register(file) {
                Ok(b) => {
                    let b = Arc::new(b);
                    modes.backing = Arc::downgrade(&b);
                    Mode::Backing(b)
                }
                Err(e) => {
                    refused = Some(e);
                    Mode::Daemon
                }
            },
            _ => Mode::Daemon,
        };
        let kept = match &mode {
            Mode::Daemon => {
                modes.daemon += 1;
                Mode::Daemon
            }
            Mode::Backing(b) => Mode::Backing(Arc::clone(b)),
        };
        state.handles.insert(fh, (ino, kept));
        (mode, refused)
    }

    /// Handle `fh` closed.
    pub fn release(&self, fh: u64) {
        let mut guard = self.state.lock().unwrap();
        let state = &mut *guard;
        let Some((ino, mode)) = state.handles.remove(&fh) else {
            return;
        };
        if let (Mode::Daemon, Some(m)) = (&mode, state.inodes.get_mut(&ino)) {
            m.daemon = m.daemon.saturating_sub(1);
        }
        // A backing handle's share of the registration goes here.
        drop(mode);
        let idle = state
            .inodes
            .get(&ino)
            .is_some_and(|m| m.daemon == 0 && m.backing.strong_count() == 0);
        if idle {
            state.inodes.remove(&ino);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A registration that counts how many are alive.
    struct Reg(#[allow(dead_code)] Arc<()>);

    fn register(alive: &Arc<()>) -> impl FnOnce(&'static str) -> Result<Reg, String> + '_ {
        move |_file| Ok(Reg(Arc::clone(alive)))
    }

    fn is_backing<B>(m: &Mode<B>) -> bool {
        matches!(m, Mode::Backing(_))
    }

    #[test]
    fn every_open_of_an_inode_shares_one_registration_dropped_with_the_last_handle() {
        let modes = Modes::default();
        let alive = Arc::new(());
        let (a, _) = modes.open(7, 1, Some("file"), register(&alive));
        let (b, _) = modes.open(7, 2, Some("file"), |_| -> Result<Reg, String> {
            panic!("a second registration for one inode")
        });
        let (Mode::Backing(a), Mode::Backing(b)) = (a, b) else {
            panic!("both by the kernel")
        };
        assert!(Arc::ptr_eq(&a, &b));
        drop((a, b));
        assert_eq!(Arc::strong_count(&alive), 2, "kept while handles are open");
        modes.release(1);
        assert_eq!(Arc::strong_count(&alive), 2);
        modes.release(2);
        assert_eq!(Arc::strong_count(&alive), 1, "dropped with the last handle");
        // The next open registers afresh.
        let (c, _) = modes.open(7, 3, Some("file"), register(&alive));
        assert!(is_backing(&c));
    }

    #[test]
    fn an_inode_open_through_the_daemon_stays_so_until_its_last_handle_closes() {
        let modes = Modes::default();
        let alive = Arc::new(());
        // Opened before the product was whole on disk.
        let (a, _) = modes.open(7, 1, None::<&str>, register(&alive));
        assert!(!is_backing(&a));
        // Whole now, but the inode has a daemon handle: the kernel would refuse a backing one.
        let (b, _) = modes.open(7, 2, Some("file"), |_| -> Result<Reg, String> {
            panic!("must not register while a daemon handle is open")
        });
        assert!(!is_backing(&b));
        modes.release(1);
        let (c, _) = modes.open(7, 3, Some("file"), |_| -> Result<Reg, String> {
            panic!("still one daemon handle")
        });
        assert!(!is_backing(&c));
        modes.release(2);
        modes.release(3);
        let (d, _) = modes.open(7, 4, Some("file"), register(&alive));
        assert!(is_backing(&d), "all closed: the next open may pass through");
        // Other inodes are independent.
        let (e, _) = modes.open(8, 5, None::<&str>, register(&alive));
        assert!(!is_backing(&e));
    }

    #[test]
    fn an_inode_with_a_backing_file_open_gives_it_to_opens_without_one() {
        let modes = Modes::default();
        let alive = Arc::new(());
        let (a, _) = modes.open(7, 1, Some("file"), register(&alive));
        assert!(is_backing(&a));
        // Passthrough turned off meanwhile (no file offered): the kernel still needs the
        // inode's one mode, so the open shares the registration.
        let (b, _) = modes.open(7, 2, None::<&str>, register(&alive));
        assert!(is_backing(&b));
    }

    #[test]
    fn a_refused_registration_is_returned_and_the_handle_read_through_the_daemon() {
        let modes: Modes<Reg> = Modes::default();
        let (a, refused) = modes.open(7, 1, Some("file"), |_| Err("EPERM".to_string()));
        assert!(!is_backing(&a));
        assert_eq!(refused.as_deref(), Some("EPERM"));
        modes.release(1);
        modes.release(1); // a second release of one handle is harmless
        assert!(modes.state.lock().unwrap().inodes.is_empty());
    }

    #[test]
    fn status_says_on_or_why_off_and_counts_opens() {
        let s = Status::new(None);
        assert!(s.is_on());
        s.note_open();
        assert_eq!(s.lines(), "passthrough: on\nfs.passthrough_opens: 1\n");
        s.turn_off("the kernel said EPERM");
        s.turn_off("a second reason is not kept");
        assert!(!s.is_on());
        assert!(s
            .lines()
            .starts_with("passthrough: off (the kernel said EPERM)\n"));
    }
}
