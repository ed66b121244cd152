//! Quotas (ARCHITECTURE.md, "Security", Quotas): per-principal rates held by delaying, and
//! connection limits per client address and per principal.
//!
//! Rates are token buckets shared by all of a principal's connections, one per kind (produced
//! bytes, fetched bytes, requests), refilled at the quota's rate and holding at most one second
//! of it. A charge takes what it costs even when that leaves the bucket in debt; the debt,
//! divided by the rate, is how long the request (or its answer) is held. So a principal that
//! asks for more than its rate gets exactly its rate, over any number of connections, without
//! an error: the connection layer sleeps, and the connection reads nothing meanwhile.
//! The quotas themselves live with the users and ACLs (`auth::SecurityState`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a bucket meters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Produce,
    Fetch,
    Requests,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Produce => "produce",
            Kind::Fetch => "fetch",
            Kind::Requests => "requests",
        }
    }
}

/// Longest burst a bucket allows: this long at its rate.
const BURST: Duration = Duration::from_secs(1);
/// Longest a single charge holds a request (a huge request against a tiny rate).
const MAX_HOLD: Duration = Duration::from_secs(30);

#[derive(Debug)]
struct Bucket {
    /// Units available (negative: debt).
    tokens: f64,
    last: Instant,
}

#[derive(Debug)]
pub struct Quotas {
    buckets: Mutex<HashMap<(Arc<str>, Kind), Bucket>>,
    per_ip: usize,
    per_principal: usize,
    ips: Mutex<HashMap<IpAddr, usize>>,
    principals: Mutex<HashMap<Arc<str>, usize>>,
}

/// A connection counted against a limit until dropped.
#[derive(Debug)]
pub struct Held {
    quotas: Arc<Quotas>,
    key: Key,
}

#[derive(Debug)]
enum Key {
    Ip(IpAddr),
    Principal(Arc<str>),
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Quotas {
    /// Limits of `per_ip` and `per_principal` connections at once (0: none).
    pub fn new(per_ip: usize, per_principal: usize) -> Arc<Quotas> {
        Arc::new(Quotas {
            buckets: Mutex::new(HashMap::new()),
            per_ip,
            per_principal,
            ips: Mutex::new(HashMap::new()),
            principals: Mutex::new(HashMap::new()),
        })
    }

    /// Charges `amount` units of `kind` to `principal`, whose quota is `rate` per second;
    /// returns how long to hold the request so that the rate is kept.
    pub fn charge(&self, principal: &Arc<str>, kind: Kind, rate: u64, amount: u64) -> Duration {
        if rate == 0 {
            return MAX_HOLD;
        }
        let rate = rate as f64;
        let capacity = rate * BURST.as_secs_f64();
        let now = Instant::now();
        let mut buckets = lock(&self.buckets);
        let bucket = buckets.entry((principal.clone(), kind)).or_insert(Bucket {
            tokens: capacity,
            last: now,
        });
        let refill = now.saturating_duration_since(bucket.last).as_secs_f64() * rate;
        bucket.tokens = (bucket.tokens + refill).min(capacity) - amount as f64;
        bucket.last = now;
        if bucket.tokens >= 0.0 {
            return Duration::ZERO;
        }
        let hold = Duration::from_secs_f64(-bucket.tokens / rate).min(MAX_HOLD);
        crate::metrics::global().record_throttle(kind, hold);
        hold
    }

    /// Counts a connection from `ip`; `None` if that address has its limit open already.
    pub fn admit_ip(self: &Arc<Self>, ip: IpAddr) -> Option<Held> {
        self.admit(&self.ips, ip, self.per_ip).map(|_| Held {
            quotas: self.clone(),
            key: Key::Ip(ip),
        })
    }

    /// Counts a connection authenticated as `principal`; `None` if it has its limit open.
    pub fn admit_principal(self: &Arc<Self>, principal: &Arc<str>) -> Option<Held> {
        self.admit(&self.principals, principal.clone(), self.per_principal)
            .map(|_| Held {
                quotas: self.clone(),
                key: Key::Principal(principal.clone()),
            })
    }

    fn admit<K: std::hash::Hash + Eq>(
        &self,
        counts: &Mutex<HashMap<K, usize>>,
        key: K,
        limit: usize,
    ) -> Option<()> {
        let mut counts = lock(counts);
        let n = counts.entry(key).or_insert(0);
        if limit > 0 && *n >= limit {
            return None;
        }
        *n += 1;
        Some(())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        fn release<K: std::hash::Hash + Eq>(counts: &Mutex<HashMap<K, usize>>, key: &K) {
            let mut counts = lock(counts);
            if let Some(n) = counts.get_mut(key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    counts.remove(key);
                }
            }
        }
        match &self.key {
            Key::Ip(ip) => release(&self.quotas.ips, ip),
            Key::Principal(p) => release(&self.quotas.principals, p),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_is_kept_over_every_connection_after_a_burst_of_one_second() {
        let q = Quotas::new(0, 0);
        let alice: Arc<str> = Arc::from("alice");
        let bob: Arc<str> = Arc::from("bob");
        // 1,000 units/s: the first second's worth passes at once, the next charge waits for
        // its units to accrue.
        assert_eq!(q.charge(&alice, Kind::Produce, 1000, 1000), Duration::ZERO);
        let hold = q.charge(&alice, Kind::Produce, 1000, 500);
        assert!(
            hold > Duration::from_millis(450) && hold <= Duration::from_millis(500),
            "{hold:?}"
        );
        // Debts add up: another 500 is due 0.5 s after the first.
        let hold = q.charge(&alice, Kind::Produce, 1000, 500);
        assert!(
            hold > Duration::from_millis(950) && hold <= Duration::from_secs(1),
            "{hold:?}"
        );
        // Other kinds and other principals have their own buckets.
        assert_eq!(q.charge(&alice, Kind::Fetch, 1000, 1000), Duration::ZERO);
        assert_eq!(q.charge(&bob, Kind::Produce, 1000, 1000), Duration::ZERO);
        // A charge far beyond the rate is held at most 30 s.
        assert_eq!(q.charge(&bob, Kind::Requests, 1, 1_000_000), MAX_HOLD);
    }

    #[test]
    fn connection_limits_count_until_the_connection_is_dropped() {
        let q = Quotas::new(2, 1);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let a = q.admit_ip(ip).unwrap();
        let _b = q.admit_ip(ip).unwrap();
        assert!(q.admit_ip(ip).is_none());
        assert!(q.admit_ip("10.0.0.2".parse().unwrap()).is_some());
        drop(a);
        assert!(q.admit_ip(ip).is_some());
        let p: Arc<str> = Arc::from("alice");
        let held = q.admit_principal(&p).unwrap();
        assert!(q.admit_principal(&p).is_none());
        drop(held);
        assert!(q.admit_principal(&p).is_some());
        let open = Quotas::new(0, 0);
        let all: Vec<Held> = (0..100).filter_map(|_| open.admit_ip(ip)).collect();
        assert_eq!(all.len(), 100, "0 is no limit");
    }
}
