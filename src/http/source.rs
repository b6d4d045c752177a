//! Which peers may call the callback listener: `--allow-source` ranges (Tencent's callback
//! egress addresses in production). Checked at accept, before a byte of the request is read: a
//! refused peer's request is answered 403 (`source_not_allowed`, nothing read, nothing
//! published) and its connection closed.

use std::net::IpAddr;

use ipnet::IpNet;

/// The source ranges allowed; empty: every source.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    nets: Vec<IpNet>,
}

impl AllowList {
    pub fn new(nets: Vec<IpNet>) -> AllowList {
        AllowList { nets }
    }

    /// Whether `ip` may call. An IPv4 peer on a dual-stack listener (`::ffff:a.b.c.d`) is
    /// matched as the IPv4 address it is.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets.is_empty() || self.nets.iter().any(|net| net.contains(&ip))
    }

    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(nets: &[&str]) -> AllowList {
        AllowList::new(nets.iter().map(|n| n.parse().unwrap()).collect())
    }

    #[test]
    fn an_empty_list_allows_every_source() {
        assert!(list(&[]).allows("203.0.113.9".parse().unwrap()));
    }

    #[test]
    fn only_the_listed_ranges_are_allowed() {
        let allowed = list(&["127.0.0.2/32", "10.0.0.0/8", "2001:db8::/32"]);
        for ip in ["127.0.0.2", "10.1.2.3", "2001:db8::1", "::ffff:127.0.0.2"] {
            assert!(allowed.allows(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["127.0.0.3", "11.0.0.1", "2001:db9::1", "::ffff:127.0.0.3"] {
            assert!(!allowed.allows(ip.parse().unwrap()), "{ip}");
        }
    }
}
