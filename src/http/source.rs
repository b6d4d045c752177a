//! Which peers may call the callback listener: `--allow-source` ranges (Tencent's callback
//! egress addresses in production). Checked at accept, before a byte of the request is read: a
//! refused peer's request is answered 403 (`source_not_allowed`, nothing read, nothing
//! published) and its connection closed.

use std::net::IpAddr;

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

#[cfg(test)]
mod tests {
    use super::*;

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
