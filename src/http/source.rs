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

use http::HeaderMap;
use ipnet::IpNet;

/// The source ranges allowed, never empty (no `--allow-source`: no list, every peer served,
/// nothing checked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowList {
    nets: Vec<IpNet>,
}

impl AllowList {
    /// `None` for no ranges.
    pub fn new(nets: Vec<IpNet>) -> Option<AllowList> {
        (!nets.is_empty()).then_some(AllowList { nets })
    }

    /// Whether `ip` may call. An IPv4 peer on a dual-stack listener (`::ffff:a.b.c.d`) is
    /// matched as the IPv4 address it is.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets.iter().any(|net| net.contains(&ip))
    }
}

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
