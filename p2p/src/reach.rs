//! Reachability: which of a node's addresses others can use, and what follows from that.
//!
//! A pure core (no I/O, no clock) fed by the swarm shell with what libp2p confirms:
//! AutoNAT v2 dial-backs, UPnP port mappings, relay reservations (`/p2p-circuit` addresses)
//! and the operator's `--external-addr`. From those it derives, in one place:
//!
//! - the node's [`Reachability`] (public, mapped, relayed, or only on its own network), which
//!   `cocoon node` prints and logs when it changes;
//! - the Kademlia mode under [`DhtMode::Auto`]: a server only with a confirmed *direct*
//!   address (libp2p's automatic mode would also count a relayed one, and a node answering
//!   DHT queries through a relay slows every lookup that meets it);
//! - whether this node offers relay reservations (only with a confirmed public address) and
//!   whether it wants reservations on others (a full node with none);
//! - the addresses it publishes ([`Reach::shareable`]): its widest-reaching confirmed ones, so
//!   an advert never hands strangers a loopback or LAN address that leads nowhere (a node
//!   with no confirmed address at all publishes its listen addresses: on a single host or a
//!   LAN those are exactly the way in);
//! - which of a peer's self-reported addresses go into our routing table
//!   ([`Reach::usable_from`]): public and relayed ones, and private ones only from a peer that
//!   reached us over the same kind of network.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

use crate::swarm::DhtMode;

/// How far an address reaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// This host only (127.0.0.0/8, ::1).
    Loopback,
    /// A private network: RFC 1918, carrier-grade NAT (100.64.0.0/10), link-local, IPv6
    /// unique-local and link-local.
    Private,
    /// Anything else: reachable, if at all, from the whole internet.
    Public,
}

/// The scope of an address's IP, or `None` for an address without one (DNS, or relayed:
/// see [`is_relayed`]) and for an unspecified IP (0.0.0.0, ::).
pub fn scope(addr: &Multiaddr) -> Option<Scope> {
    if is_relayed(addr) {
        return None;
    }
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => ipv4_scope(ip),
        Protocol::Ip6(ip) => ipv6_scope(ip),
        _ => None,
    })
}

fn ipv4_scope(ip: Ipv4Addr) -> Option<Scope> {
    let [a, b, ..] = ip.octets();
    if ip.is_unspecified() {
        None
    } else if ip.is_loopback() {
        Some(Scope::Loopback)
    } else if ip.is_private() || ip.is_link_local() || (a == 100 && (64..128).contains(&b)) {
        Some(Scope::Private)
    } else {
        Some(Scope::Public)
    }
}

fn ipv6_scope(ip: Ipv6Addr) -> Option<Scope> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return ipv4_scope(v4);
    }
    let first = ip.segments()[0];
    if ip.is_unspecified() {
        None
    } else if ip.is_loopback() {
        Some(Scope::Loopback)
    } else if (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80 {
        Some(Scope::Private)
    } else {
        Some(Scope::Public)
    }
}

/// Whether `addr` goes through a relay (`/p2p-circuit`).
pub fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::P2pCircuit))
}

/// The relay a relayed address goes through: the `/p2p/<id>` before `/p2p-circuit`.
pub fn relay_of(addr: &Multiaddr) -> Option<PeerId> {
    let mut last = None;
    for p in addr.iter() {
        match p {
            Protocol::P2p(id) => last = Some(id),
            Protocol::P2pCircuit => return last,
            _ => {}
        }
    }
    None
}

/// Who vouched for an external address, most telling first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    /// The operator (`--external-addr`).
    Configured,
    /// The home router mapped it (UPnP IGD).
    Mapped,
    /// A peer dialled it back (AutoNAT v2), or libp2p confirmed it without saying how (the
    /// UPnP behaviour confirms its mapping before reporting it as one).
    Probed,
    /// A relay holds a reservation for us there.
    Relay,
}

/// How others can reach this node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Reachability {
    /// Nothing confirmed yet.
    #[default]
    Unknown,
    /// Only from its own host or network (a confirmed loopback or private address).
    Local,
    /// Through relays only: they hold reservations for it.
    Relayed {
        /// The relays.
        relays: Vec<PeerId>,
    },
    /// Directly, at an address its router maps for it (UPnP).
    Mapped {
        /// The mapped addresses.
        addrs: Vec<Multiaddr>,
    },
    /// Directly, at a public address confirmed by a peer's dial-back or by the operator.
    Public {
        /// The confirmed addresses.
        addrs: Vec<Multiaddr>,
    },
}

impl Reachability {
    /// Whether strangers on the internet can dial this node directly.
    pub fn is_direct_public(&self) -> bool {
        matches!(self, Self::Public { .. } | Self::Mapped { .. })
    }
}

impl fmt::Display for Reachability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |addrs: &[Multiaddr]| {
            addrs
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self {
            Self::Unknown => write!(f, "unknown (no address confirmed yet)"),
            Self::Local => write!(f, "local network only"),
            Self::Relayed { relays } => {
                let relays: Vec<String> = relays.iter().map(ToString::to_string).collect();
                write!(f, "relayed through {}", relays.join(", "))
            }
            Self::Mapped { addrs } => write!(f, "mapped by the router at {}", list(addrs)),
            Self::Public { addrs } => write!(f, "public at {}", list(addrs)),
        }
    }
}

/// The reachability core: confirmed addresses in, decisions out.
#[derive(Clone, Debug)]
pub struct Reach {
    mode: DhtMode,
    relay_server: RelayServe,
    wanted_relays: usize,
    confirmed: BTreeMap<Multiaddr, Source>,
    listen: BTreeSet<Multiaddr>,
}

/// Whether a node offers relay reservations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RelayServe {
    /// Once it has a confirmed public address (the default for full nodes).
    #[default]
    Auto,
    /// Always (an operator's relay for its own workers, e.g. with larger limits).
    On,
    /// Never.
    Off,
}

impl Reach {
    /// A node in DHT `mode` that serves relays per `relay_server` and, while it cannot be
    /// reached directly, keeps `wanted_relays` reservations.
    pub fn new(mode: DhtMode, relay_server: RelayServe, wanted_relays: usize) -> Self {
        Self {
            mode,
            relay_server,
            wanted_relays,
            confirmed: BTreeMap::new(),
            listen: BTreeSet::new(),
        }
    }

    /// An external address was confirmed by `source`.
    pub fn confirmed(&mut self, addr: Multiaddr, source: Source) {
        let entry = self.confirmed.entry(addr).or_insert(source);
        // The operator's word and a router's mapping say more than a probe.
        if source < *entry {
            *entry = source;
        }
    }

    /// An external address is no longer confirmed.
    pub fn expired(&mut self, addr: &Multiaddr) {
        self.confirmed.remove(addr);
    }

    /// We listen on `addr` now.
    pub fn listening(&mut self, addr: Multiaddr) {
        self.listen.insert(addr);
    }

    /// We no longer listen on `addr`.
    pub fn not_listening(&mut self, addr: &Multiaddr) {
        self.listen.remove(addr);
    }

    fn direct(&self) -> impl Iterator<Item = (&Multiaddr, Source)> {
        self.confirmed
            .iter()
            .filter(|(a, _)| !is_relayed(a))
            .map(|(a, s)| (a, *s))
    }

    fn direct_public(&self) -> impl Iterator<Item = (&Multiaddr, Source)> {
        self.direct()
            .filter(|(a, _)| scope(a).is_none_or(|s| s == Scope::Public))
    }

    /// How others can reach us.
    pub fn reachability(&self) -> Reachability {
        let public: Vec<Multiaddr> = self
            .direct_public()
            .filter(|(_, s)| *s != Source::Mapped)
            .map(|(a, _)| a.clone())
            .collect();
        if !public.is_empty() {
            return Reachability::Public { addrs: public };
        }
        let mapped: Vec<Multiaddr> = self.direct_public().map(|(a, _)| a.clone()).collect();
        if !mapped.is_empty() {
            return Reachability::Mapped { addrs: mapped };
        }
        let relays = self.relays();
        if !relays.is_empty() {
            return Reachability::Relayed { relays };
        }
        if self.direct().next().is_some() {
            return Reachability::Local;
        }
        Reachability::Unknown
    }

    /// The relays holding a reservation for us.
    pub fn relays(&self) -> Vec<PeerId> {
        let set: BTreeSet<PeerId> = self.confirmed.keys().filter_map(relay_of).collect();
        set.into_iter().collect()
    }

    /// Whether Kademlia should answer queries: always for [`DhtMode::Server`], never for
    /// [`DhtMode::Client`], and under [`DhtMode::Auto`] only with a confirmed direct address
    /// (of any scope: a loopback network's nodes serve each other).
    pub fn dht_server(&self) -> bool {
        match self.mode {
            DhtMode::Server => true,
            DhtMode::Client => false,
            DhtMode::Auto => self.direct().next().is_some(),
        }
    }

    /// Whether this node offers relay reservations now.
    pub fn relay_server(&self) -> bool {
        match self.relay_server {
            RelayServe::On => true,
            RelayServe::Off => false,
            RelayServe::Auto => {
                self.mode != DhtMode::Client && self.reachability().is_direct_public()
            }
        }
    }

    /// How many more relay reservations this node wants, holding `held` (made or under way):
    /// a full node that strangers cannot dial directly keeps [`Self::new`]'s number.
    pub fn relays_wanted(&self, held: usize) -> usize {
        if self.mode == DhtMode::Client || self.reachability().is_direct_public() {
            return 0;
        }
        self.wanted_relays.saturating_sub(held)
    }

    /// Whether the reservations held should be dropped: the node is reachable directly now.
    pub fn relays_unneeded(&self) -> bool {
        self.reachability().is_direct_public()
    }

    /// The addresses to publish (adverts): the widest-reaching confirmed ones (public,
    /// mapped and relayed when there are any; else the confirmed local ones), or, with
    /// nothing confirmed, the listen addresses (a lone host or LAN, where they are the way in).
    pub fn shareable(&self) -> Vec<Multiaddr> {
        let wide: Vec<Multiaddr> = self
            .confirmed
            .keys()
            .filter(|a| is_relayed(a) || scope(a).is_none_or(|s| s == Scope::Public))
            .cloned()
            .collect();
        if !wide.is_empty() {
            return wide;
        }
        let local: Vec<Multiaddr> = self.confirmed.keys().cloned().collect();
        if !local.is_empty() {
            return local;
        }
        self.listen
            .iter()
            .filter(|a| scope(a).is_some() || is_relayed(a))
            .cloned()
            .collect()
    }

    /// Confirmed addresses narrower than the widest we have: libp2p shares every external
    /// address (identify, Kademlia provider records), so these leave the swarm's list once a
    /// wider one is confirmed.
    pub fn narrower_than_widest(&self) -> Vec<Multiaddr> {
        let widest = self
            .confirmed
            .keys()
            .map(|a| {
                if is_relayed(a) {
                    Scope::Public
                } else {
                    scope(a).unwrap_or(Scope::Public)
                }
            })
            .max();
        let Some(widest) = widest else {
            return Vec::new();
        };
        self.confirmed
            .keys()
            .filter(|a| !is_relayed(a) && scope(a).is_some_and(|s| s < widest))
            .cloned()
            .collect()
    }

    /// Which of a peer's self-reported `addrs` are worth keeping (our routing table, and so
    /// every DHT answer we give), given the address it reached us from (`via`): public and
    /// relayed ones always; loopback and private ones only from a peer on that same kind of
    /// network, since to anyone else they lead nowhere (or somewhere else).
    pub fn usable_from(
        via: &Multiaddr,
        addrs: impl IntoIterator<Item = Multiaddr>,
    ) -> Vec<Multiaddr> {
        let via_scope = if is_relayed(via) {
            Some(Scope::Public)
        } else {
            scope(via)
        };
        addrs
            .into_iter()
            .filter(|a| {
                if is_relayed(a) {
                    return true;
                }
                match scope(a) {
                    None => !a
                        .iter()
                        .any(|p| matches!(p, Protocol::Ip4(_) | Protocol::Ip6(_))),
                    Some(Scope::Public) => true,
                    Some(s) => via_scope == Some(s),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    fn relay_addr(relay: &PeerId, me: &PeerId) -> Multiaddr {
        a(&format!(
            "/ip4/198.51.100.1/udp/4001/quic-v1/p2p/{relay}/p2p-circuit/p2p/{me}"
        ))
    }

    #[test]
    fn scopes() {
        assert_eq!(
            scope(&a("/ip4/127.0.0.1/udp/1/quic-v1")),
            Some(Scope::Loopback)
        );
        for private in [
            "10.1.2.3",
            "172.20.0.1",
            "192.168.50.2",
            "100.64.0.9",
            "169.254.1.1",
        ] {
            assert_eq!(
                scope(&a(&format!("/ip4/{private}/tcp/1"))),
                Some(Scope::Private),
                "{private}"
            );
        }
        for public in ["198.51.100.7", "8.8.8.8", "100.128.0.1", "172.32.0.1"] {
            assert_eq!(
                scope(&a(&format!("/ip4/{public}/tcp/1"))),
                Some(Scope::Public),
                "{public}"
            );
        }
        assert_eq!(scope(&a("/ip6/::1/tcp/1")), Some(Scope::Loopback));
        assert_eq!(scope(&a("/ip6/fd00::1/tcp/1")), Some(Scope::Private));
        assert_eq!(scope(&a("/ip6/fe80::1/tcp/1")), Some(Scope::Private));
        assert_eq!(scope(&a("/ip6/2001:db8::1/tcp/1")), Some(Scope::Public));
        assert_eq!(scope(&a("/ip4/0.0.0.0/tcp/1")), None);
        let (r, me) = (PeerId::random(), PeerId::random());
        let relayed = relay_addr(&r, &me);
        assert_eq!(scope(&relayed), None);
        assert!(is_relayed(&relayed));
        assert_eq!(relay_of(&relayed), Some(r));
        assert_eq!(relay_of(&a("/ip4/1.2.3.4/tcp/1")), None);
    }

    #[test]
    fn a_node_behind_nat_relays_and_publishes_only_what_strangers_can_use() {
        let mut reach = Reach::new(DhtMode::Auto, RelayServe::Auto, 2);
        reach.listening(a("/ip4/192.168.50.2/udp/4001/quic-v1"));
        reach.listening(a("/ip4/127.0.0.1/udp/4001/quic-v1"));
        assert_eq!(reach.reachability(), Reachability::Unknown);
        assert!(!reach.dht_server());
        assert_eq!(reach.relays_wanted(0), 2);
        // Nothing confirmed: the listen addresses are all there is.
        assert_eq!(reach.shareable().len(), 2);

        // A LAN peer's dial-back confirms the private address: reachable on the LAN only.
        reach.confirmed(a("/ip4/192.168.50.2/udp/4001/quic-v1"), Source::Probed);
        assert_eq!(reach.reachability(), Reachability::Local);
        assert!(reach.dht_server(), "its LAN peers can reach it");
        assert!(!reach.relay_server());
        assert_eq!(reach.relays_wanted(1), 1);

        // A relay reservation: relayed, and the private address is no longer published.
        let (relay, me) = (PeerId::random(), PeerId::random());
        reach.confirmed(relay_addr(&relay, &me), Source::Relay);
        assert_eq!(
            reach.reachability(),
            Reachability::Relayed {
                relays: vec![relay]
            }
        );
        assert_eq!(reach.shareable(), vec![relay_addr(&relay, &me)]);
        assert_eq!(
            reach.narrower_than_widest(),
            vec![a("/ip4/192.168.50.2/udp/4001/quic-v1")]
        );
        assert!(!reach.relay_server(), "a relayed node relays nobody");

        // The router maps a port (libp2p confirms the address before the UPnP behaviour says
        // it is a mapping): direct, reservations no longer wanted.
        reach.confirmed(a("/ip4/198.51.100.9/udp/4001/quic-v1"), Source::Probed);
        assert!(matches!(reach.reachability(), Reachability::Public { .. }));
        reach.confirmed(a("/ip4/198.51.100.9/udp/4001/quic-v1"), Source::Mapped);
        assert!(matches!(reach.reachability(), Reachability::Mapped { .. }));
        assert_eq!(reach.relays_wanted(0), 0);
        assert!(reach.relays_unneeded());
        assert!(reach.relay_server());
        reach.expired(&a("/ip4/198.51.100.9/udp/4001/quic-v1"));
        assert_eq!(reach.relays_wanted(1), 1);
    }

    #[test]
    fn a_relayed_address_does_not_make_a_dht_server() {
        let mut reach = Reach::new(DhtMode::Auto, RelayServe::Auto, 2);
        let (relay, me) = (PeerId::random(), PeerId::random());
        reach.confirmed(relay_addr(&relay, &me), Source::Relay);
        assert!(!reach.dht_server());
        reach.confirmed(a("/ip4/198.51.100.4/udp/4001/quic-v1"), Source::Probed);
        assert!(reach.dht_server());
        assert!(matches!(reach.reachability(), Reachability::Public { .. }));
        assert!(reach.relay_server());
        // Fixed modes ignore reachability.
        assert!(Reach::new(DhtMode::Server, RelayServe::Auto, 2).dht_server());
        let mut client = Reach::new(DhtMode::Client, RelayServe::Auto, 2);
        client.confirmed(a("/ip4/198.51.100.5/udp/1/quic-v1"), Source::Probed);
        assert!(!client.dht_server());
        assert!(!client.relay_server());
        assert_eq!(client.relays_wanted(0), 0);
        assert!(Reach::new(DhtMode::Auto, RelayServe::On, 2).relay_server());
    }

    #[test]
    fn peers_addresses_are_kept_only_where_they_lead_somewhere() {
        let (relay, peer) = (PeerId::random(), PeerId::random());
        let addrs = vec![
            a("/ip4/127.0.0.1/udp/1/quic-v1"),
            a("/ip4/192.168.1.5/udp/1/quic-v1"),
            a("/ip4/198.51.100.3/udp/1/quic-v1"),
            relay_addr(&relay, &peer),
            a("/dns4/example.org/tcp/1"),
        ];
        let from_internet =
            Reach::usable_from(&a("/ip4/198.51.100.77/udp/9/quic-v1"), addrs.clone());
        assert_eq!(from_internet, addrs[2..].to_vec());
        let from_lan = Reach::usable_from(&a("/ip4/192.168.1.9/udp/9/quic-v1"), addrs.clone());
        assert_eq!(from_lan, addrs[1..].to_vec());
        let from_host = Reach::usable_from(&a("/ip4/127.0.0.1/udp/9/quic-v1"), addrs.clone());
        assert_eq!(from_host, [&addrs[..1], &addrs[2..]].concat());
    }
}
