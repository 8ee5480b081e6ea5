//! Several machines on one account, coordinated through Redis (or Valkey).
//!
//! The provider's limits belong to the account, not to a machine: TOTP codes are single-use
//! (two machines logging in within one 30 s step: one is refused, and refusals lock the
//! account), CDSE allows about 100 sessions and 4 concurrent downloads. On one machine the
//! token manager's locked state file and the zipper's connection budget keep every process
//! within them; this crate extends both to every machine that names the same Redis:
//!
//! - [`tokens::RedisStore`] is the token manager's [`eodata_auth::token::SharedStore`] in
//!   Redis: the same state document (tokens and expiries, the last TOTP step, the refusal
//!   record; never the password or the TOTP secret) and a renewal lock with a lease, so one
//!   renewal runs at a time across the cluster and every machine reuses its result;
//! - [`slots::RedisSlots`] is the zipper's [`eodata_fetch::zipper::AccountSlots`]: a fair (first
//!   come, first served) semaphore of `--account-connections` slots, each held under a lease
//!   that its holder renews, so the slots of a machine that dies come back when the lease
//!   lapses.
//!
//! Both go through one [`link::Link`]: when Redis cannot be reached, the link says so once,
//! and both fall back to the machine's own behaviour (the local token cache, the local budget)
//! without failing a read; the link tries again every few seconds and says when Redis is back.
//!
//! Keys are per account: `eodata-mount:v1:<account key>:...`, where the account key is a hash
//! of the token URL and the user ([`eodata_auth::token::account_key`]).

pub mod link;
pub mod slots;
/// A real `redis-server` for tests, behind the `testing` feature (this crate's integration
/// tests and the root crate's cluster tests turn it on through their dev-dependencies).
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod tokens;

use std::sync::Arc;

pub use link::Link;
pub use slots::RedisSlots;
pub use tokens::RedisStore;

/// Default account-wide connections: CDSE allows 4 concurrent downloads per user and refuses
/// more with 429 "Max session number 4 exceeded" (docs/protocol.md); the same cap one process
/// keeps to by default, so it is that constant.
pub const DEFAULT_ACCOUNT_CONNECTIONS: usize = eodata_fetch::zipper::DEFAULT_MAX_CONNECTIONS;

/// A coordinator address that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AddressError {
    #[error("coordinator address {shown}: {problem}")]
    Bad { shown: String, problem: String },
}

/// A checked coordinator address: `redis://[user:pass@]host[:port][/db]`, or `rediss://` for
/// TLS. Its password never appears in messages ([`Address::shown`]).
#[derive(Clone)]
pub struct Address {
    url: url::Url,
}

impl std::fmt::Debug for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown())
    }
}

impl Address {
    /// Parses `text`. A plain `redis://` address off this machine is refused unless `insecure`:
    /// the Redis holds live tokens, which would cross the network in clear.
    pub fn parse(text: &str, insecure: bool) -> Result<Address, AddressError> {
        let text = text.trim();
        let url = url::Url::parse(text).map_err(|e| AddressError::Bad {
            shown: shown(text),
            problem: format!(
                "not a URL ({e}); write redis://host:6379 or rediss://:PASSWORD@host:6380"
            ),
        })?;
        let address = Address { url };
        let bad = |problem: String| AddressError::Bad {
            shown: address.shown(),
            problem,
        };
        match address.url.scheme() {
            "redis" | "rediss" => {}
            other => {
                return Err(bad(format!(
                    "scheme {other}: is not redis:// or rediss:// (TLS)"
                )))
            }
        }
        let host = match address.url.host() {
            Some(url::Host::Domain("")) | None => return Err(bad("no host".into())),
            Some(h) => h,
        };
        let loopback = match host {
            // A URL of a scheme unknown to the URL standard keeps its host as written.
            url::Host::Domain(d) => {
                d.eq_ignore_ascii_case("localhost")
                    || d.trim_start_matches('[')
                        .trim_end_matches(']')
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            }
            url::Host::Ipv4(ip) => ip.is_loopback(),
            url::Host::Ipv6(ip) => ip.is_loopback(),
        };
        if address.url.scheme() == "redis" && !loopback && !insecure {
            return Err(bad(
                "plain redis:// to another machine would carry live tokens in clear; use \
                 rediss:// (TLS) with a password, or pass --coordinator-insecure if the network \
                 is private to the cluster"
                    .into(),
            ));
        }
        let db = address.url.path().trim_start_matches('/');
        if !db.is_empty() && db.parse::<u32>().is_err() {
            return Err(bad(format!("database {db:?} is not a number")));
        }
        Ok(address)
    }

    /// The address with its password replaced by `***`, for messages.
    pub fn shown(&self) -> String {
        shown(self.url.as_str())
    }

    fn client(&self) -> redis::RedisResult<redis::Client> {
        redis::Client::open(self.url.as_str())
    }
}

/// `text` with the password of its userinfo replaced by `***` (also when it does not parse:
/// everything between `://` and the last `@` goes).
fn shown(text: &str) -> String {
    if let Ok(mut url) = url::Url::parse(text) {
        if url.password().is_some() {
            let _ = url.set_password(Some("***"));
        }
        return url.to_string();
    }
    match (text.find("://"), text.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***{}", &text[..s], &text[at..]),
        _ => text.to_string(),
    }
}

/// The coordinator of one account: the link to Redis and the account's key.
#[derive(Debug, Clone)]
pub struct Coordinator {
    link: Arc<Link>,
    key: String,
}

impl Coordinator {
    /// A coordinator for the account of `user` at `token_url`. Contacts nobody yet: the first
    /// use connects, and an unreachable Redis is reported then (once) and worked around.
    pub fn new(address: &Address, user: &str, token_url: &str) -> Result<Self, AddressError> {
        let link = Link::new(address).map_err(|e| AddressError::Bad {
            shown: address.shown(),
            problem: e.to_string(),
        })?;
        Ok(Coordinator {
            link: Arc::new(link),
            key: eodata_auth::token::account_key(user, token_url),
        })
    }

    /// The Redis key of `what` for this account.
    pub(crate) fn key(&self, what: &str) -> String {
        format!("eodata-mount:v1:{}:{what}", self.key)
    }

    /// The link, for status lines and tests.
    pub fn link(&self) -> &Arc<Link> {
        &self.link
    }

    /// Asks the coordinator's Redis, for `doctor`: its version and the account's slots held
    /// now, or why it cannot be reached (in words for the user).
    pub async fn probe(&self) -> Result<String, String> {
        let Some(mut conn) = self.link.get().await else {
            return Err(format!(
                "{} cannot be reached (see the warning above); mounts carry on with this \
                 machine's own token cache and connection budget",
                self.link.shown()
            ));
        };
        let info: String = match redis::cmd("INFO")
            .arg("server")
            .query_async(&mut conn)
            .await
        {
            Ok(i) => i,
            Err(e) => {
                self.link.failed(&e).await;
                return Err(format!(
                    "{} answered INFO with an error: {e}",
                    self.link.shown()
                ));
            }
        };
        let version = info
            .lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .unwrap_or("unknown")
            .trim()
            .to_string();
        let held: usize = redis::cmd("ZCARD")
            .arg(self.key("slots"))
            .query_async(&mut conn)
            .await
            .unwrap_or(0);
        Ok(format!(
            "{} answers (Redis {version}); {held} of the account's download slots held now",
            self.link.shown()
        ))
    }

    /// The token store for this account, falling back to `local` while Redis is away.
    pub fn token_store(
        &self,
        local: Option<Arc<dyn eodata_auth::token::SharedStore>>,
    ) -> Arc<dyn eodata_auth::token::SharedStore> {
        Arc::new(RedisStore::new(self.clone(), local))
    }

    /// The account-wide connection cap of `slots` connections, for the zipper.
    pub fn account_slots(&self, slots: usize) -> Arc<dyn eodata_fetch::zipper::AccountSlots> {
        Arc::new(slots::SharedSlots(RedisSlots::new(self.clone(), slots)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_checked_and_passwords_never_shown() {
        for ok in [
            "redis://127.0.0.1:6379",
            "redis://localhost/2",
            "redis://[::1]:7000",
            "rediss://:pw@redis.cluster.local:6380/0",
            "rediss://user:pw@10.0.0.5",
        ] {
            let a = Address::parse(ok, false).unwrap_or_else(|e| panic!("{ok}: {e}"));
            assert!(!a.shown().contains("pw"), "{}", a.shown());
            assert!(!format!("{a:?}").contains("pw"));
        }
        let e = Address::parse("redis://:secretpw@10.0.0.5:6379", false).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("--coordinator-insecure"), "{text}");
        assert!(!text.contains("secretpw"), "{text}");
        assert!(Address::parse("redis://10.0.0.5:6379", true).is_ok());
        for bad in [
            "http://127.0.0.1:6379",
            "redis://",
            "127.0.0.1:6379",
            "redis://localhost/x",
        ] {
            assert!(Address::parse(bad, false).is_err(), "{bad}");
        }
        let e = Address::parse("nonsense://u:hunter2@", false)
            .unwrap_err()
            .to_string();
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn keys_are_per_account() {
        let a = Address::parse("redis://127.0.0.1:1", false).unwrap();
        let x = Coordinator::new(&a, "Me@example.com", "https://id/token").unwrap();
        let y = Coordinator::new(&a, "me@example.com", "https://id/token").unwrap();
        let z = Coordinator::new(&a, "me@example.com", "https://other/token").unwrap();
        assert_eq!(x.key("tokens"), y.key("tokens"));
        assert_ne!(x.key("tokens"), z.key("tokens"));
        assert!(!x.key("tokens").contains("example"));
    }
}
