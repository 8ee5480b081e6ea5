//! Several machines on one account, coordinated through a real `redis-server` (Debian's,
//! started on 127.0.0.1 by each test): three mounts with their own runtime and cache
//! directories play three nodes of a cluster against one double whose account allows 4
//! connections and issues 3 s tokens. What a cluster must keep: one password login and no 429
//! for the whole cluster, a killed node's slots coming back within the lease, copies finishing
//! exact when Redis goes away (one warning per node), sixteen `token` processes on four nodes
//! logging in once, and a plain `redis://` to another host refused.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use eodata_coord::slots::SLOT_LEASE;
use eodata_coord::testing::RedisServer;
use support::*;

/// The account's cap, as CDSE's.
const CAP: usize = 4;

/// A double for a cluster: 3 s access tokens, 8 s refresh tokens, `cap` connections for the
/// account, bodies at `bandwidth` bytes per second per connection (so copies last seconds and
/// tokens renew during them).
fn cluster_double(products: &std::path::Path, cap: usize, bandwidth: u64) -> fake_creodias::Double {
    let mut cfg = double_config(Some(products));
    cfg.access_lifetime = Duration::from_secs(3);
    cfg.refresh_lifetime = Duration::from_secs(8);
    cfg.faults.max_connections_per_user = Some(cap);
    cfg.faults.bandwidth_per_conn = Some(bandwidth);
    start_double(cfg)
}

/// A node: its own workspace (HOME, runtime dir for tokens, disk cache), mounted with the
/// coordinator.
fn node(double: &fake_creodias::Double, redis: &RedisServer, cap: usize) -> (Workspace, Mount) {
    let ws = Workspace::new();
    let cap = cap.to_string();
    let m = Mount::start(
        &ws,
        double,
        &["--coordinator", &redis.url(), "--account-connections", &cap],
    );
    (ws, m)
}

fn name(products: &std::path::Path, i: usize) -> String {
    format!("{}.zip", index(products)[i]["Name"].as_str().unwrap())
}

fn cp(m: &Mount, file: &str, dst: &std::path::Path) -> std::process::Child {
    Command::new("cp")
        .arg(m.path(file))
        .arg(dst)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Starts one `cp` of product `i` on node `i` for every node, into `out`.
fn copy_on_each(
    nodes: &[(Workspace, Mount)],
    products: &std::path::Path,
    out: &std::path::Path,
) -> Vec<std::process::Child> {
    nodes
        .iter()
        .enumerate()
        .map(|(i, (_, m))| cp(m, &name(products, i), &out.join(format!("{i}.zip"))))
        .collect()
}

/// Waits for the copies; each must succeed and equal its product, but the one at `skip`.
fn all_exact(
    copies: Vec<std::process::Child>,
    products: &std::path::Path,
    out: &std::path::Path,
    skip: Option<usize>,
) {
    for (i, c) in copies.into_iter().enumerate() {
        let o = c.wait_with_output().unwrap();
        if Some(i) == skip {
            continue;
        }
        assert!(
            o.status.success(),
            "cp {i}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(
            file_sha256(&out.join(format!("{i}.zip"))),
            file_sha256(&product_file(products, i)),
            "copy {i} differs"
        );
    }
}

fn refused_connections(log: &[fake_creodias::LogEntry]) -> usize {
    log.iter()
        .filter(|e| e.status == 429 || e.outcome == "max_connections")
        .count()
}

/// The slots of the account held now in Redis (holder ids: host:pid:tag:n), lapsed leases
/// left out (on the server's clock, as the semaphore counts them).
fn slot_holders(redis: &RedisServer, token_url: &str) -> Vec<String> {
    let key = format!(
        "eodata-mount:v1:{}:slots",
        eodata_auth::token::account_key(USER, token_url)
    );
    let time = redis.cli(&["TIME"]);
    let mut t = time.lines();
    let (secs, micros): (u64, u64) = (
        t.next().unwrap().parse().unwrap(),
        t.next().unwrap().parse().unwrap(),
    );
    let now_ms = (secs * 1000 + micros / 1000).to_string();
    redis
        .cli(&["ZRANGEBYSCORE", &key, &format!("({now_ms}"), "+inf"])
        .lines()
        .map(str::to_string)
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn three_nodes_share_one_login_and_the_accounts_connections() {
    if !support::fuse_or_skip() {
        return;
    }
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let products = products(3, 12);
    // 12 MiB at 2 MB/s: each copy lasts ~6 s, two access-token lifetimes.
    let double = cluster_double(&products, CAP, 2_000_000);
    let nodes: Vec<_> = (0..3).map(|_| node(&double, &redis, CAP)).collect();
    let out = tempfile::tempdir().unwrap();
    let copies = copy_on_each(&nodes, &products, out.path());
    all_exact(copies, &products, out.path(), None);
    let log = double.log();
    assert_eq!(
        password_logins(&log).len(),
        1,
        "one password login for the cluster"
    );
    assert!(reused_steps(&log).is_empty());
    assert_eq!(
        refused_connections(&log),
        0,
        "no 429 from the account's cap"
    );
    let status = std::fs::read_to_string(nodes[0].1.path(".eodata-status")).unwrap();
    assert!(
        status.contains("coordinator: redis://127.0.0.1"),
        "{status}"
    );
    assert!(status.contains(" shared"), "{status}");
}

#[test]
fn a_killed_nodes_slots_come_back_within_the_lease() {
    if !support::fuse_or_skip() {
        return;
    }
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let products = products(3, 12);
    // A cap of 2 for three nodes: the third waits for a slot.
    let double = cluster_double(&products, 2, 1_500_000);
    let token_url = double.token_url();
    let mut nodes: Vec<_> = (0..3).map(|_| node(&double, &redis, 2)).collect();
    let out = tempfile::tempdir().unwrap();
    let copies = copy_on_each(&nodes, &products, out.path());
    // Wait until both slots are held, then kill -9 a node that holds one.
    let started = Instant::now();
    let victim = loop {
        let holders = slot_holders(&redis, &token_url);
        let holder = nodes.iter().position(|(_, m)| {
            holders
                .iter()
                .any(|h| h.split(':').nth(1) == Some(&m.child.id().to_string()))
        });
        if holders.len() == 2 {
            if let Some(v) = holder {
                break v;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "slots never taken: {holders:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let pid = nodes[victim].1.child.id();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let killed = Instant::now();
    let mine = |h: &String| h.split(':').nth(1) == Some(&pid.to_string());
    while slot_holders(&redis, &token_url).iter().any(mine) {
        assert!(
            killed.elapsed() < SLOT_LEASE + Duration::from_secs(3),
            "the killed node's slot is still held after {:?}: {:?}; logs:\n{}",
            killed.elapsed(),
            slot_holders(&redis, &token_url),
            nodes
                .iter()
                .map(|(_, m)| m.log_text())
                .collect::<Vec<_>>()
                .join("\n-----\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The others finish, exact.
    all_exact(copies, &products, out.path(), Some(victim));
    // The waiting node's session may have lapsed meanwhile (8 s refresh tokens, and nobody
    // needed one while the others streamed): a new login is fair, a reused code is not.
    assert!(reused_steps(&double.log()).is_empty());
    let (_ws, dead) = nodes.remove(victim);
    drop(dead); // Unmounts the dead node's mountpoint.
}

#[test]
fn copies_finish_exact_when_redis_goes_away_with_one_warning() {
    if !support::fuse_or_skip() {
        return;
    }
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let products = products(2, 16);
    // 16 MiB at 1.5 MB/s: ~11 s per copy; Redis goes away after 2 s.
    let double = cluster_double(&products, CAP, 1_500_000);
    let nodes: Vec<_> = (0..2).map(|_| node(&double, &redis, CAP)).collect();
    let out = tempfile::tempdir().unwrap();
    let copies = copy_on_each(&nodes, &products, out.path());
    std::thread::sleep(Duration::from_secs(2));
    redis.stop();
    all_exact(copies, &products, out.path(), None);
    for (_, m) in &nodes {
        let log = m.log_text();
        let warnings = log
            .lines()
            .filter(|l| l.contains("coordinator unreachable"))
            .count();
        assert_eq!(warnings, 1, "one warning per node:\n{log}");
        let status = std::fs::read_to_string(m.path(".eodata-status")).unwrap();
        assert!(status.contains("unreachable"), "{status}");
    }
}

#[test]
fn sixteen_token_processes_on_four_nodes_log_in_once() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let mut cfg = double_config(None);
    cfg.access_lifetime = Duration::from_secs(60);
    let double = start_double(cfg);
    let nodes: Vec<_> = (0..4).map(|_| Workspace::new()).collect();
    let children: Vec<_> = (0..16)
        .map(|i| {
            nodes[i % 4]
                .command(&double)
                .args(["token", "--coordinator", &redis.url()])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut tokens = Vec::new();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        tokens.push(String::from_utf8(o.stdout).unwrap());
    }
    let log = double.log();
    assert_eq!(
        password_logins(&log).len(),
        1,
        "one password login for 16 processes"
    );
    assert!(reused_steps(&log).is_empty());
    assert!(
        tokens.iter().all(|t| *t == tokens[0]),
        "every process got the one token"
    );
}

#[test]
fn a_plain_redis_address_to_another_host_is_refused_and_nothing_is_mounted() {
    if !support::fuse_or_skip() {
        return;
    }
    let double = start_double(double_config(None));
    let ws = Workspace::new();
    let dir = ws.path().join("mnt");
    std::fs::create_dir_all(&dir).unwrap();
    let out = ws
        .command(&double)
        .arg(&dir)
        .args([
            "--foreground",
            "--coordinator",
            "redis://:hunter2@10.9.8.7:6379",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--coordinator-insecure"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(!is_mounted(&dir));
    assert!(
        password_logins(&double.log()).is_empty(),
        "refused before logging in"
    );
}

#[test]
fn doctor_reports_the_coordinator_answering_or_away() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let double = start_double(double_config(None));
    let ws = Workspace::new();
    let out = ws.run(&double, &["doctor", "--coordinator", &redis.url()]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let line = stdout
        .lines()
        .find(|l| l.contains("coordinator"))
        .unwrap_or_else(|| panic!("no coordinator line:\n{stdout}"));
    assert!(line.contains("answers (Redis 7"), "{line}");
    redis.stop();
    let out = ws.run(&double, &["doctor", "--coordinator", &redis.url()]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let line = stdout
        .lines()
        .find(|l| l.contains("coordinator") && l.contains("cannot be reached"))
        .unwrap_or_else(|| panic!("no unreachable coordinator line:\n{stdout}"));
    assert!(line.contains(&redis.url()), "{line}");
}
