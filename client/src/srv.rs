//! Finding the broker of `ID@DOMAIN`: the DNS SRV record `_fedbroker._tcp.DOMAIN` (RFC 2782),
//! its targets ordered by priority, then by weighted random choice within a priority
//! ([`order`]), each tried in turn until one accepts a connection.
//!
//! No SRV record means a clear error (exit code 6), not a guess at `DOMAIN:443`: a web server on
//! the domain would answer `/42` with its own `404`, which would read as "nobody listens".

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;

use crate::address::SRV_PREFIX;
use crate::outcome::{Failure, Kind};

/// One SRV record's data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SrvRecord {
    /// Lower is tried first.
    pub priority: u16,
    /// Within a priority, the relative chance of being tried first.
    pub weight: u16,
    /// The broker's port.
    pub port: u16,
    /// The broker's host name, without the trailing dot.
    pub target: String,
}

/// A source of randomness for [`order`]: injectable, so the order is testable.
pub trait Random {
    /// A number from 0 to `max`, both included, uniformly.
    fn up_to(&mut self, max: u32) -> u32;
}

/// The randomness used outside tests: xorshift64* seeded from std's per-process random hash keys.
/// Load spreading needs no cryptographic quality, and this avoids a dependency for it.
pub struct SystemRandom(u64);

impl SystemRandom {
    /// A generator seeded from the operating system's randomness (through `RandomState`).
    pub fn new() -> SystemRandom {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(0x9e37_79b9_7f4a_7c15);
        SystemRandom(h.finish() | 1)
    }
}

impl Default for SystemRandom {
    fn default() -> Self {
        SystemRandom::new()
    }
}

impl Random for SystemRandom {
    fn up_to(&mut self, max: u32) -> u32 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        let r = x.wrapping_mul(0x2545_f491_4f6c_dd1d);
        // The modulo bias is at most 2^32 / 2^64: irrelevant for load spreading.
        (r % (u64::from(max) + 1)) as u32
    }
}

/// The order in which to try the targets (RFC 2782, "Usage rules"): ascending priority; within a
/// priority, repeatedly pick one at random with chance proportional to its weight (weight-0
/// records first in the running sum, so they are picked only when the random number is 0) until
/// none is left.
pub fn order(mut records: Vec<SrvRecord>, random: &mut impl Random) -> Vec<SrvRecord> {
    // Stable: records of equal priority keep the DNS answer's order before the weighted picks.
    records.sort_by_key(|r| r.priority);
    let mut ordered = Vec::with_capacity(records.len());
    let mut rest = records.as_slice();
    while let Some(first) = rest.first() {
        let same = rest.iter().take_while(|r| r.priority == first.priority).count();
        let (group, after) = rest.split_at(same);
        let mut group: Vec<SrvRecord> = group.to_vec();
        // Weight 0 first, otherwise in the order given.
        group.sort_by_key(|r| r.weight != 0);
        while !group.is_empty() {
            let total: u32 = group.iter().map(|r| u32::from(r.weight)).sum();
            let pick = random.up_to(total);
            let mut running = 0u32;
            let index = group
                .iter()
                .position(|r| {
                    running += u32::from(r.weight);
                    running >= pick
                })
                .unwrap_or(group.len() - 1);
            ordered.push(group.remove(index));
        }
        rest = after;
    }
    ordered
}

/// A DNS resolver: the system's configuration (`/etc/resolv.conf`, `/etc/hosts`), or only the
/// server given with `--dns`.
pub struct Dns {
    runtime: tokio::runtime::Runtime,
    resolver: TokioResolver,
    server: Option<SocketAddr>,
}

impl Dns {
    /// A resolver asking `server` only, or the system's name servers when `None`; every query is
    /// bounded by `timeout` (and hickory's own retry count).
    pub fn new(server: Option<SocketAddr>, timeout: Duration) -> Result<Dns, Failure> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Failure::new(Kind::Local, format!("cannot start the DNS resolver: {e}")))?;
        let builder = match server {
            Some(addr) => {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                let ns = NameServerConfig::new(addr.ip(), true, vec![udp, tcp]);
                TokioResolver::builder_with_config(
                    ResolverConfig::from_name_servers(vec![ns]),
                    TokioRuntimeProvider::default(),
                )
            }
            None => TokioResolver::builder_tokio().map_err(|e| {
                Failure::new(
                    Kind::Resolve,
                    format!(
                        "cannot read the system's DNS configuration (/etc/resolv.conf): {e}; name a server with --dns"
                    ),
                )
            })?,
        };
        let mut options = ResolverOpts::default();
        options.timeout = timeout.min(Duration::from_secs(5));
        if server.is_some() {
            // --dns: that server answers every name; /etc/hosts would be a second source.
            options.use_hosts_file = hickory_resolver::config::ResolveHosts::Never;
        }
        let resolver = {
            let _guard = runtime.enter();
            builder
                .with_options(options)
                .build()
                .map_err(|e| Failure::new(Kind::Resolve, format!("cannot set up the DNS resolver: {e}")))?
        };
        Ok(Dns {
            runtime,
            resolver,
            server,
        })
    }

    fn which(&self) -> String {
        match self.server {
            Some(s) => format!("DNS server {s}"),
            None => "the system's DNS servers".to_owned(),
        }
    }

    /// The SRV records of `_fedbroker._tcp.DOMAIN`, in the DNS answer's order.
    pub fn srv(&self, domain: &str) -> Result<Vec<SrvRecord>, Failure> {
        let name = format!("{SRV_PREFIX}{domain}.");
        let lookup = self
            .runtime
            .block_on(self.resolver.srv_lookup(name.as_str()))
            .map_err(|e| {
                let why = if e.is_no_records_found() || e.is_nx_domain() {
                    format!(
                        "no such record (publish one such as `{name} 3600 IN SRV 10 5 8443 broker1.{domain}.`, \
                         or address the broker by URL)"
                    )
                } else {
                    format!("{e} (is the DNS server answering? see --dns)")
                };
                Failure::new(
                    Kind::Resolve,
                    format!(
                        "cannot find the broker of {domain}: SRV lookup of {name} at {}: {why}",
                        self.which()
                    ),
                )
            })?;
        let records: Vec<SrvRecord> = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(srv) => Some(SrvRecord {
                    priority: srv.priority,
                    weight: srv.weight,
                    port: srv.port,
                    target: srv.target.to_utf8().trim_end_matches('.').to_ascii_lowercase(),
                }),
                _ => None,
            })
            .collect();
        if records.is_empty() {
            return Err(Failure::new(
                Kind::Resolve,
                format!("cannot find the broker of {domain}: {name} has no SRV record"),
            ));
        }
        // RFC 2782: a single record with target "." means the service is decidedly not available.
        if records.len() == 1 && records[0].target.is_empty() {
            return Err(Failure::new(
                Kind::Resolve,
                format!("{domain} has no fedbroker broker: its SRV record {name} has the target \".\""),
            ));
        }
        Ok(records)
    }

    /// The IP addresses of `host` (an IP address is returned as it is).
    pub fn ips(&self, host: &str) -> Result<Vec<IpAddr>, Failure> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        let fqdn = format!("{host}.");
        let lookup = self
            .runtime
            .block_on(self.resolver.lookup_ip(fqdn.as_str()))
            .map_err(|e| Failure::new(Kind::Resolve, format!("cannot resolve {host} at {}: {e}", self.which())))?;
        Ok(lookup.iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Returns the scripted numbers in turn (each must be within range).
    struct Scripted(Vec<u32>);

    impl Random for Scripted {
        fn up_to(&mut self, max: u32) -> u32 {
            let n = self.0.remove(0);
            assert!(n <= max, "scripted {n} above {max}");
            n
        }
    }

    fn rec(priority: u16, weight: u16, target: &str) -> SrvRecord {
        SrvRecord {
            priority,
            weight,
            port: 8443,
            target: target.to_owned(),
        }
    }

    fn targets(v: &[SrvRecord]) -> Vec<&str> {
        v.iter().map(|r| r.target.as_str()).collect()
    }

    #[test]
    fn priority_first_then_weight() {
        let records = vec![rec(20, 1, "c"), rec(10, 1, "a"), rec(10, 3, "b"), rec(30, 0, "d")];
        // Priority 10: total 4; running sums a=1, b=4. Pick 2 → b, then a (total 1, pick 0 → a).
        // Priority 20: c alone (total 1). Priority 30: d alone (total 0).
        let ordered = order(records.clone(), &mut Scripted(vec![2, 0, 1, 0]));
        assert_eq!(targets(&ordered), ["b", "a", "c", "d"]);
        // Pick 1 → a first (running sum 1 ≥ 1), then b.
        let ordered = order(records, &mut Scripted(vec![1, 3, 0, 0]));
        assert_eq!(targets(&ordered), ["a", "b", "c", "d"]);
    }

    #[test]
    fn zero_weight_first_in_the_sum_so_picked_only_on_zero() {
        let records = vec![rec(10, 5, "heavy"), rec(10, 0, "zero")];
        // Running sums: zero=0, heavy=5. A 0 picks the weight-0 record; anything else the other.
        assert_eq!(
            targets(&order(records.clone(), &mut Scripted(vec![0, 0]))),
            ["zero", "heavy"]
        );
        assert_eq!(targets(&order(records, &mut Scripted(vec![3, 0]))), ["heavy", "zero"]);
    }

    #[test]
    fn all_zero_weights_keep_answer_order() {
        let records = vec![rec(1, 0, "x"), rec(1, 0, "y"), rec(1, 0, "z")];
        assert_eq!(targets(&order(records, &mut Scripted(vec![0, 0, 0]))), ["x", "y", "z"]);
    }

    #[test]
    fn weights_spread_the_first_pick() {
        // With the real generator, weights 1 and 3 make "b" first 3 times in 5: RFC 2782 draws
        // from 0 to the sum *inclusive*, so "a" (running sum 1) wins on 0 and 1. Bounds are
        // six standard deviations wide (σ ≈ 31).
        let records = vec![rec(10, 1, "a"), rec(10, 3, "b")];
        let mut random = SystemRandom::new();
        let runs = 4000;
        let b_first = (0..runs)
            .filter(|_| order(records.clone(), &mut random)[0].target == "b")
            .count();
        assert!((2200..=2600).contains(&b_first), "b first {b_first} of {runs}");
    }

    #[test]
    fn system_random_stays_in_range() {
        let mut r = SystemRandom::new();
        assert!((0..1000).all(|_| r.up_to(3) <= 3));
        assert!((0..100).all(|_| r.up_to(0) == 0));
    }
}
