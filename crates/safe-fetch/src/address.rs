//! Classification of IP addresses the fetcher must never connect to.
//!
//! The rules are deliberately broad: anything that is not a globally routable
//! unicast address is refused, because the service only ever needs to talk to
//! public storage hosts and public webhook endpoints. IPv6 forms that carry an
//! IPv4 address (mapped, compatible, NAT64, 6to4, Teredo) are judged by the
//! IPv4 address they carry, so `::ffff:169.254.169.254` cannot sneak the cloud
//! metadata endpoint past an IPv4-only rule.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why an address is refused. Shown in error messages and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForbiddenClass {
    /// 0.0.0.0/8 ("this network"; on Linux 0.x reaches the local host) and `::`.
    Unspecified,
    /// 127.0.0.0/8 and `::1`.
    Loopback,
    /// RFC 1918: 10/8, 172.16/12, 192.168/16.
    Private,
    /// 169.254/16 (cloud metadata lives here) and fe80::/10.
    LinkLocal,
    /// 100.64/10, carrier-grade NAT space that is often internal to a provider.
    SharedCgnat,
    /// 224/4 and ff00::/8.
    Multicast,
    /// 255.255.255.255.
    Broadcast,
    /// 192.0.2/24, 198.51.100/24, 203.0.113/24, 2001:db8::/32.
    Documentation,
    /// 198.18/15 and 2001:2::/48.
    Benchmarking,
    /// 240/4, 192.0.0/24 (protocol assignments), 100::/64 (discard),
    /// fec0::/10 (deprecated site-local), 64:ff9b:1::/48 (local NAT64).
    Reserved,
    /// fc00::/7.
    UniqueLocal,
}

impl fmt::Display for ForbiddenClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Self::Unspecified => "unspecified",
            Self::Loopback => "loopback",
            Self::Private => "private",
            Self::LinkLocal => "link-local",
            Self::SharedCgnat => "shared (CGNAT)",
            Self::Multicast => "multicast",
            Self::Broadcast => "broadcast",
            Self::Documentation => "documentation",
            Self::Benchmarking => "benchmarking",
            Self::Reserved => "reserved",
            Self::UniqueLocal => "unique-local",
        };
        f.write_str(name)
    }
}

/// Returns why `ip` must not be connected to, or `None` if it is a public
/// unicast address.
pub fn forbidden_class(ip: IpAddr) -> Option<ForbiddenClass> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

/// Convenience wrapper around [`forbidden_class`].
pub fn is_forbidden(ip: IpAddr) -> bool {
    forbidden_class(ip).is_some()
}

fn in_v4_net(ip: Ipv4Addr, net: [u8; 4], prefix: u32) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    (u32::from(ip) & mask) == (u32::from(Ipv4Addr::from(net)) & mask)
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<ForbiddenClass> {
    use ForbiddenClass::*;
    // Ordered so that the most specific, most useful label wins.
    let rules: &[([u8; 4], u32, ForbiddenClass)] = &[
        ([255, 255, 255, 255], 32, Broadcast),
        ([0, 0, 0, 0], 8, Unspecified),
        ([127, 0, 0, 0], 8, Loopback),
        ([10, 0, 0, 0], 8, Private),
        ([172, 16, 0, 0], 12, Private),
        ([192, 168, 0, 0], 16, Private),
        ([169, 254, 0, 0], 16, LinkLocal),
        ([100, 64, 0, 0], 10, SharedCgnat),
        ([192, 0, 0, 0], 24, Reserved),
        ([192, 0, 2, 0], 24, Documentation),
        ([198, 51, 100, 0], 24, Documentation),
        ([203, 0, 113, 0], 24, Documentation),
        ([198, 18, 0, 0], 15, Benchmarking),
        ([224, 0, 0, 0], 4, Multicast),
        ([240, 0, 0, 0], 4, Reserved),
    ];
    rules
        .iter()
        .find(|(net, prefix, _)| in_v4_net(ip, *net, *prefix))
        .map(|(_, _, class)| *class)
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<ForbiddenClass> {
    use ForbiddenClass::*;
    let seg = ip.segments();
    let bits = u128::from(ip);

    if ip.is_unspecified() {
        return Some(Unspecified);
    }
    if ip.is_loopback() {
        return Some(Loopback);
    }
    // IPv4-mapped ::ffff:a.b.c.d: the socket layer talks IPv4 to a.b.c.d.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return forbidden_v4(v4);
    }
    // IPv4-compatible ::a.b.c.d (deprecated, but some stacks still route it).
    if bits >> 32 == 0 {
        return forbidden_v4(Ipv4Addr::from(bits as u32));
    }
    // NAT64 well-known prefix 64:ff9b::/96 translates to the embedded IPv4.
    if bits >> 32 == 0x0064_ff9b_0000_0000_0000_0000 {
        return forbidden_v4(Ipv4Addr::from(bits as u32));
    }
    // Local-use NAT64 64:ff9b:1::/48 points into someone's private network.
    if seg[0] == 0x0064 && seg[1] == 0xff9b && seg[2] == 0x0001 {
        return Some(Reserved);
    }
    // 6to4 2002::/16 embeds the IPv4 of the relay-side host in bits 16..48.
    if seg[0] == 0x2002 {
        let embedded = Ipv4Addr::from(((bits >> 80) & 0xffff_ffff) as u32);
        return forbidden_v4(embedded);
    }
    // Teredo 2001::/32 embeds the server IPv4 (bits 32..64) and the client
    // IPv4 inverted (last 32 bits). Refuse if either is forbidden.
    if seg[0] == 0x2001 && seg[1] == 0x0000 {
        let server = Ipv4Addr::from(((bits >> 64) & 0xffff_ffff) as u32);
        let client = Ipv4Addr::from(!(bits as u32));
        return forbidden_v4(server).or_else(|| forbidden_v4(client));
    }
    if seg[0] & 0xff00 == 0xff00 {
        return Some(Multicast);
    }
    if seg[0] & 0xffc0 == 0xfe80 {
        return Some(LinkLocal);
    }
    if seg[0] & 0xffc0 == 0xfec0 {
        return Some(Reserved);
    }
    if seg[0] & 0xfe00 == 0xfc00 {
        return Some(UniqueLocal);
    }
    if seg[0] == 0x2001 && seg[1] == 0x0db8 {
        return Some(Documentation);
    }
    if seg[0] == 0x2001 && seg[1] == 0x0002 && seg[2] == 0x0000 {
        return Some(Benchmarking);
    }
    // Discard-only prefix 100::/64.
    if seg[0] == 0x0100 && seg[1] == 0 && seg[2] == 0 && seg[3] == 0 {
        return Some(Reserved);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use ForbiddenClass::*;

    fn class(s: &str) -> Option<ForbiddenClass> {
        forbidden_class(s.parse().expect("test address parses"))
    }

    #[test]
    fn classifies_table_of_addresses() {
        let table: &[(&str, Option<ForbiddenClass>)] = &[
            // IPv4 forbidden ranges, including their edges.
            ("0.0.0.0", Some(Unspecified)),
            ("0.1.2.3", Some(Unspecified)),
            ("127.0.0.1", Some(Loopback)),
            ("127.255.255.254", Some(Loopback)),
            ("10.0.0.1", Some(Private)),
            ("10.255.255.255", Some(Private)),
            ("172.16.0.1", Some(Private)),
            ("172.31.255.255", Some(Private)),
            ("192.168.1.1", Some(Private)),
            ("169.254.169.254", Some(LinkLocal)),
            ("100.64.0.1", Some(SharedCgnat)),
            ("100.127.255.255", Some(SharedCgnat)),
            ("224.0.0.1", Some(Multicast)),
            ("239.255.255.250", Some(Multicast)),
            ("255.255.255.255", Some(Broadcast)),
            ("192.0.0.8", Some(Reserved)),
            ("192.0.2.1", Some(Documentation)),
            ("198.51.100.7", Some(Documentation)),
            ("203.0.113.9", Some(Documentation)),
            ("198.18.0.1", Some(Benchmarking)),
            ("198.19.255.255", Some(Benchmarking)),
            ("240.0.0.1", Some(Reserved)),
            // IPv4 public neighbours of forbidden ranges.
            ("1.1.1.1", None),
            ("8.8.8.8", None),
            ("11.0.0.1", None),
            ("172.15.255.255", None),
            ("172.32.0.1", None),
            ("100.63.255.255", None),
            ("100.128.0.1", None),
            ("169.253.255.255", None),
            ("198.17.255.255", None),
            ("198.20.0.1", None),
            ("223.255.255.255", None),
            // IPv6 native ranges.
            ("::", Some(Unspecified)),
            ("::1", Some(Loopback)),
            ("fe80::1", Some(LinkLocal)),
            ("febf::1", Some(LinkLocal)),
            ("fec0::1", Some(Reserved)),
            ("fc00::1", Some(UniqueLocal)),
            ("fd00::1", Some(UniqueLocal)),
            ("ff02::1", Some(Multicast)),
            ("2001:db8::1", Some(Documentation)),
            ("2001:2::1", Some(Benchmarking)),
            ("100::1", Some(Reserved)),
            ("64:ff9b:1::1", Some(Reserved)),
            // IPv6 forms embedding IPv4.
            ("::ffff:169.254.169.254", Some(LinkLocal)),
            ("::ffff:127.0.0.1", Some(Loopback)),
            ("::ffff:10.1.2.3", Some(Private)),
            ("::ffff:8.8.8.8", None),
            ("::127.0.0.1", Some(Loopback)),
            ("::10.0.0.1", Some(Private)),
            ("::8.8.8.8", None),
            ("64:ff9b::a9fe:a9fe", Some(LinkLocal)),
            ("64:ff9b::7f00:1", Some(Loopback)),
            ("64:ff9b::808:808", None),
            ("2002:a00:1::1", Some(Private)),
            ("2002:7f00:1::1", Some(Loopback)),
            ("2002:808:808::1", None),
            // Teredo: server 65.54.227.120, client 10.0.0.1 (inverted f5ff:fffe).
            ("2001:0:4136:e378:8000:63bf:f5ff:fffe", Some(Private)),
            // Teredo: server 127.0.0.1.
            ("2001:0:7f00:1::1", Some(Loopback)),
            // Teredo: server 65.54.227.120, client 8.8.8.8 (inverted f7f7:f7f7).
            ("2001:0:4136:e378:8000:63bf:f7f7:f7f7", None),
            // Public IPv6.
            ("2606:4700:4700::1111", None),
            ("2a00:1450:4001:81c::200e", None),
        ];
        for (addr, expected) in table {
            assert_eq!(class(addr), *expected, "address {addr}");
        }
    }
}
