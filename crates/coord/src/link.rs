//! The one connection to Redis, and what happens when Redis is away.
//!
//! Every user of the coordinator (token store, connection slots) asks the [`Link`] for a
//! connection, runs its command, and reports a failure back. While Redis cannot be reached the
//! link is *down*: callers get `None` at once (no connect attempt per read) and fall back to
//! the machine's own behaviour; one warning says so, and the link tries to connect again at
//! most every [`RECONNECT_EVERY`]. When a try succeeds, one line says Redis is back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;

use crate::Address;

/// How long a connection attempt may take: Redis on the cluster's network answers in
/// milliseconds; a host that does not answer within this is treated as away, so a read waits
/// at most this long for the coordinator before falling back.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// How long one command may take before Redis is treated as away (same reasoning).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// While Redis is away, a new connection is tried at most this often: often enough that the
/// cluster is coordinated again within seconds of Redis coming back, rarely enough that an
/// outage costs nothing on the read path.
pub const RECONNECT_EVERY: Duration = Duration::from_secs(3);

/// The connection to the coordinator's Redis, shared by the token store and the slots.
pub struct Link {
    client: redis::Client,
    shown: String,
    state: tokio::sync::Mutex<State>,
    /// Said once per outage: the warning that Redis is away.
    down: AtomicBool,
    /// Tries and failures, for status lines and tests.
    failures: Mutex<u64>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("address", &self.shown)
            .finish()
    }
}

#[derive(Default)]
struct State {
    conn: Option<MultiplexedConnection>,
    /// When the last connection attempt failed.
    failed_at: Option<Instant>,
}

impl Link {
    pub(crate) fn new(address: &Address) -> redis::RedisResult<Link> {
        Ok(Link {
            client: address.client()?,
            shown: address.shown(),
            state: tokio::sync::Mutex::new(State::default()),
            down: AtomicBool::new(false),
            failures: Mutex::new(0),
        })
    }

    /// The address, password hidden.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// Whether the last use found Redis away.
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }

    /// A connection, or `None` while Redis is away (then the caller falls back).
    ///
    /// During an outage one caller at a time tries to reconnect and the others fall back at once
    /// instead of queueing behind it: against a host that drops packets a try takes the whole
    /// connect timeout, and reads must not wait for it every few seconds. Before the first
    /// failure callers do wait for the connection being made, so that the first requests of a
    /// mount are counted against the account's cap like all later ones.
    pub async fn get(&self) -> Option<MultiplexedConnection> {
        let mut st = match self.state.try_lock() {
            Ok(st) => st,
            Err(_) if self.is_down() => return None,
            Err(_) => self.state.lock().await,
        };
        if let Some(conn) = &st.conn {
            return Some(conn.clone());
        }
        if st.failed_at.is_some_and(|t| t.elapsed() < RECONNECT_EVERY) {
            return None;
        }
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        let attempt = tokio::time::timeout(
            CONNECT_TIMEOUT * 2,
            self.client
                .get_multiplexed_async_connection_with_config(&config),
        )
        .await;
        match attempt {
            Ok(Ok(mut conn)) => {
                // A connection is not proof that the server is usable (a wrong password, a
                // Redis still loading): one PING before it serves.
                match redis::cmd("PING").query_async::<String>(&mut conn).await {
                    Ok(_) => {
                        st.conn = Some(conn.clone());
                        st.failed_at = None;
                        if self.down.swap(false, Ordering::Relaxed) {
                            tracing::info!(
                                coordinator = %self.shown,
                                "coordinator reachable again: tokens and connections are shared with the other machines again"
                            );
                        } else {
                            tracing::debug!(coordinator = %self.shown, "coordinator connected");
                        }
                        Some(conn)
                    }
                    Err(e) => {
                        st.failed_at = Some(Instant::now());
                        self.went_down(&e.to_string());
                        None
                    }
                }
            }
            Ok(Err(e)) => {
                st.failed_at = Some(Instant::now());
                self.went_down(&e.to_string());
                None
            }
            Err(_) => {
                st.failed_at = Some(Instant::now());
                self.went_down("no answer within the connect timeout");
                None
            }
        }
    }

    /// A command on a connection from [`Link::get`] failed: drop the connection, so the next
    /// [`Link::get`] reconnects (no sooner than [`RECONNECT_EVERY`]).
    pub async fn failed(&self, error: &redis::RedisError) {
        {
            let mut st = self.state.lock().await;
            st.conn = None;
            st.failed_at = Some(Instant::now());
        }
        self.went_down(&error.to_string());
    }

    fn went_down(&self, why: &str) {
        *self.failures.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        if !self.down.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                coordinator = %self.shown,
                "coordinator unreachable ({}); carrying on with this machine's own token cache and connection budget until it is back",
                redact(why)
            );
        }
    }

    /// How many times Redis was found away.
    pub fn failures(&self) -> u64 {
        *self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// An error text of the redis client: its messages name host and port, never the password,
/// but a userinfo-looking part (`scheme://...@`) is cut all the same.
fn redact(why: &str) -> String {
    match (why.find("://"), why.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***{}", &why[..s], &why[at..]),
        _ => why.to_string(),
    }
}
