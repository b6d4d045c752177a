//! Who the client is, and whether it may call the callback listener.
//!
//! - `--allow-source` ranges (Tencent's callback egress addresses in production): a refused
//!   client's request is answered 403 (`source_not_allowed`, its body not read, nothing
//!   published) and its connection closed.
//! - `--trusted-proxy` ranges: the load balancers whose word on the client is taken, from a
//!   PROXY protocol header ([`super::proxy`]) or from `X-Forwarded-For`. From anyone else
//!   both are ignored: the client is the TCP peer.
//!
//! Without trusted proxies the check is made once per connection, at accept; with them, once
//! per request, since each request may name another client.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};

use http::HeaderMap;
use ipnet::IpNet;

/// The source ranges allowed: the fixed ones (`--allow-source`) and those learnt from Tencent
/// (`--allow-tencent-egress`), never both empty (no ranges at all: no list, every client
/// served, nothing checked).
#[derive(Debug, Clone)]
pub struct AllowList {
    nets: Vec<IpNet>,
    /// Replaced whole at each refresh, never by an empty list.
    learnt: Option<Arc<RwLock<Vec<IpNet>>>>,
}

impl AllowList {
    /// `None` for no ranges.
    pub fn new(nets: Vec<IpNet>) -> Option<AllowList> {
        (!nets.is_empty()).then_some(AllowList { nets, learnt: None })
    }

    /// The fixed ranges and a first non-empty learnt list, which [`AllowList::learn`]
    /// replaces later.
    pub fn with_learnt(nets: Vec<IpNet>, learnt: Vec<IpNet>) -> Option<AllowList> {
        (!learnt.is_empty()).then(|| AllowList {
            nets,
            learnt: Some(Arc::new(RwLock::new(learnt))),
        })
    }

    /// The fixed ranges (`--allow-source`).
    pub fn fixed(&self) -> &[IpNet] {
        &self.nets
    }

    /// Replaces the learnt ranges; an empty list is refused (false) and the last one kept.
    pub fn learn(&self, nets: Vec<IpNet>) -> bool {
        match &self.learnt {
            Some(learnt) if !nets.is_empty() => {
                *learnt.write().unwrap_or_else(|p| p.into_inner()) = nets;
                true
            }
            _ => false,
        }
    }

    /// How many ranges are allowed now.
    pub fn len(&self) -> usize {
        self.nets.len()
            + self
                .learnt
                .as_ref()
                .map_or(0, |l| l.read().unwrap_or_else(|p| p.into_inner()).len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `ip` may call. An IPv4 peer on a dual-stack listener (`::ffff:a.b.c.d`) is
    /// matched as the IPv4 address it is.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets.iter().any(|net| net.contains(&ip))
            || self.learnt.as_ref().is_some_and(|learnt| {
                learnt
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .any(|net| net.contains(&ip))
            })
    }
}

impl PartialEq for AllowList {
    /// The same fixed ranges, and the same learnt list (not a copy of it).
    fn eq(&self, other: &AllowList) -> bool {
        self.nets == other.nets
            && match (&self.learnt, &other.learnt) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            }
    }
}

impl Eq for AllowList {}

/// The `--trusted-proxy` ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedProxies(AllowList);

impl TrustedProxies {
    /// `None` for no ranges.
    pub fn new(nets: Vec<IpNet>) -> Option<TrustedProxies> {
        AllowList::new(nets).map(TrustedProxies)
    }

    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.0.allows(ip)
    }

    /// The client of a request that came from `peer`: when `peer` is a trusted proxy, the
    /// rightmost address of `X-Forwarded-For` that is not itself a trusted proxy (addresses
    /// left of it were written by the client, who can write anything). `peer` when it is not
    /// trusted or the header is absent; the last trusted hop when an entry cannot be read or
    /// every entry is trusted. An address from the header has port 0.
    pub fn client(&self, peer: SocketAddr, headers: &HeaderMap) -> SocketAddr {
        let mut client = peer;
        if !self.trusts(peer.ip()) {
            return client;
        }
        // Several X-Forwarded-For fields are one list, in order (RFC 9110 §5.3).
        let fields: Vec<&[u8]> = headers
            .get_all("x-forwarded-for")
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        for entry in fields
            .iter()
            .rev()
            .flat_map(|field| field.rsplit(|b| *b == b','))
        {
            let Some(ip) = forwarded_ip(entry) else {
                return client;
            };
            client = SocketAddr::new(ip, 0);
            if !self.trusts(ip) {
                return client;
            }
        }
        client
    }
}

/// One `X-Forwarded-For` entry: an address, with or without a port (`192.0.2.1:5`,
/// `[2001:db8::1]:5`).
fn forwarded_ip(entry: &[u8]) -> Option<IpAddr> {
    let entry = std::str::from_utf8(entry).ok()?.trim();
    entry
        .parse::<IpAddr>()
        .or_else(|_| entry.parse::<SocketAddr>().map(|a| a.ip()))
        .ok()
        .map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies(nets: &[&str]) -> TrustedProxies {
        TrustedProxies::new(nets.iter().map(|n| n.parse().unwrap()).collect()).unwrap()
    }

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append("x-forwarded-for", v.parse().unwrap());
        }
        headers
    }

    #[test]
    fn the_client_is_the_rightmost_untrusted_hop_and_only_through_a_trusted_proxy() {
        let trusted = proxies(&["10.0.0.0/8"]);
        let proxy: SocketAddr = "10.0.0.5:4000".parse().unwrap();
        let stranger: SocketAddr = "192.0.2.9:4000".parse().unwrap();
        let ip = |a: SocketAddr| a.ip().to_string();
        // The client wrote 6.6.6.6 itself; the proxies appended the rest.
        let h = forwarded(&["6.6.6.6, 203.0.113.7", "10.1.1.1"]);
        assert_eq!(ip(trusted.client(proxy, &h)), "203.0.113.7");
        // From an untrusted peer the header means nothing.
        assert_eq!(trusted.client(stranger, &h), stranger);
        // No header: the proxy itself.
        assert_eq!(trusted.client(proxy, &HeaderMap::new()), proxy);
        // Ports and brackets.
        let h = forwarded(&["[2001:db8::7]:5060"]);
        assert_eq!(ip(trusted.client(proxy, &h)), "2001:db8::7");
        let h = forwarded(&["203.0.113.7:80"]);
        assert_eq!(ip(trusted.client(proxy, &h)), "203.0.113.7");
        // An unreadable entry stops the walk at the last trusted hop.
        let h = forwarded(&["203.0.113.7, garbage, 10.2.2.2"]);
        assert_eq!(ip(trusted.client(proxy, &h)), "10.2.2.2");
        // Every hop trusted: the leftmost.
        let h = forwarded(&["10.3.3.3, 10.2.2.2"]);
        assert_eq!(ip(trusted.client(proxy, &h)), "10.3.3.3");
    }

    fn list(nets: &[&str]) -> Option<AllowList> {
        AllowList::new(nets.iter().map(|n| n.parse().unwrap()).collect())
    }

    #[test]
    fn no_ranges_is_no_list() {
        assert_eq!(list(&[]), None);
        assert_eq!(AllowList::with_learnt(vec![], vec![]), None);
    }

    #[test]
    fn learnt_ranges_are_replaced_but_never_by_nothing() {
        let nets = |n: &[&str]| n.iter().map(|n| n.parse().unwrap()).collect::<Vec<IpNet>>();
        let allowed =
            AllowList::with_learnt(nets(&["10.0.0.0/8"]), nets(&["127.0.0.2/32"])).unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(allowed.allows(ip("10.1.1.1")) && allowed.allows(ip("127.0.0.2")));
        assert!(allowed.learn(nets(&["127.0.0.3/32"])));
        assert!(!allowed.allows(ip("127.0.0.2")) && allowed.allows(ip("127.0.0.3")));
        assert!(!allowed.learn(vec![]));
        assert!(allowed.allows(ip("127.0.0.3")));
        assert_eq!(allowed.len(), 2);
        // A fixed list learns nothing.
        assert!(!list(&["10.0.0.0/8"])
            .unwrap()
            .learn(nets(&["127.0.0.2/32"])));
    }

    #[test]
    fn only_the_listed_ranges_are_allowed() {
        let allowed = list(&["127.0.0.2/32", "10.0.0.0/8", "2001:db8::/32"]).unwrap();
        for ip in ["127.0.0.2", "10.1.2.3", "2001:db8::1", "::ffff:127.0.0.2"] {
            assert!(allowed.allows(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["127.0.0.3", "11.0.0.1", "2001:db9::1", "::ffff:127.0.0.3"] {
            assert!(!allowed.allows(ip.parse().unwrap()), "{ip}");
        }
    }
}
