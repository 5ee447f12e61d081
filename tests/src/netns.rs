//! Emulated internets of Linux network namespaces, for NAT, hole-punching and partition tests
//! that run real `cocoon` processes.
//!
//! A [`NetBuilder`] describes the network; [`NetBuilder::build`] creates it and returns a
//! [`Net`], which removes everything it created when dropped (also when a test fails).
//!
//! # Topology
//!
//! ```text
//!          internet namespace: bridge "inet", 198.51.100.1/23 (the "core")
//!     |               |                    |                         |
//! public host    public host        router (Nat)              router (Nat, upnp)
//! eth0 .100.2    eth0 .100.3        wan 198.51.100.4          wan 198.51.101.5
//!                                   lan 192.168.1.1/24        lan 192.168.2.1/24
//!                                     |                         |
//!                                   home host 192.168.1.2     home host 192.168.2.2
//! ```
//!
//! * The **internet** is one namespace holding a bridge. Every public host and every router
//!   WAN is a veth on it, in 198.51.100.0/23, with the default route via the core
//!   (198.51.100.1), which forwards nothing: a packet to an address nobody on the internet
//!   holds (a private LAN address) is dropped there, as on the real internet. The bridge also
//!   drops IPv4 multicast, so mDNS and SSDP stay on their LAN.
//! * Public hosts and routers without UPnP get 198.51.100.N: documentation space (RFC 5737),
//!   which is *not* in the private ranges cocoon's p2p code knows (10/8, 172.16/12,
//!   192.168/16, 100.64/10, 169.254/16, loopback), so these hosts look public to it.
//! * Routers with UPnP get 198.51.101.N instead (same /23, same bridge): miniupnpd 2.3
//!   refuses to map ports when its WAN address is reserved ("Reserved / private IP address
//!   … Port forwarding is impossible"), and libp2p's UPnP behaviour reports a gateway whose
//!   external address is documentation space as `NonRoutableGateway`. 198.51.101.0/24 is
//!   neither, and nothing outside these namespaces is ever reached.
//! * A **router** is a namespace with `wan` (the veth on the internet) and `lan` (a bridge,
//!   192.168.X.1/24, X = 1, 2, … in the order routers are declared), IP forwarding on. Each
//!   **home host** is a veth on its router's `lan` bridge at 192.168.X.(2, 3, …) with the
//!   default route via the router.
//! * Only IPv4: IPv6 is disabled in every namespace.
//!
//! # NAT kinds
//!
//! Every router has one nftables table, `inet cocoon_router` (see [`router_ruleset`]):
//! outbound LAN→WAN is masqueraded, forwarding WAN→LAN accepts only `ct state
//! established,related` (plus what the NAT kind or UPnP adds), and new inbound connections to
//! the router itself from the WAN are dropped silently, as home routers do. The kinds differ
//! in the mapping and filtering (RFC 4787 terms):
//!
//! * [`Nat::FullCone`]: endpoint-independent mapping and filtering. `masquerade` keeps the
//!   source port when it is free (it always is with one LAN host), and the prerouting chain
//!   DNATs every new inbound TCP/UDP packet to the LAN host, port unchanged
//!   (`iifname "wan" meta l4proto { tcp, udp } dnat ip to 192.168.X.2`, accepted in forward by
//!   `ct status dnat`): anyone who learns the mapping reaches the host. A full-cone router has
//!   at most one home host (the builder says so otherwise).
//! * [`Nat::PortRestricted`]: endpoint-independent mapping (port-preserving `masquerade`),
//!   address-and-port-dependent filtering (only conntrack replies come in). Most home routers.
//! * [`Nat::Symmetric`]: `masquerade fully-random`, a fresh random external port for every
//!   new conntrack entry (so per destination), address-and-port-dependent filtering. Carrier-
//!   grade NATs and some corporate firewalls.
//!
//! None of them hairpins (a LAN host cannot reach its own router's WAN mappings).
//!
//! # UPnP
//!
//! [`RouterSpec::upnp`] runs Debian's `miniupnpd` (nftables build) in the router: listening
//! on `lan` (SSDP on 239.255.255.250:1900, the IGD HTTP service on a free port, NAT-PMP),
//! external interface `wan`, adding its rules to chains of the router's own table
//! (`upnp_forward`, `upnp_pre`, `upnp_post`, jumped to from the hook chains). It accepts
//! mappings of ports 1024-65535 for the LAN's own hosts only (`secure_mode`). Its config,
//! lease file and log are in [`Net::dir`]; [`Router::upnp_log`] names the log.
//!
//! libp2p's UPnP behaviour (libp2p-upnp 0.7, igd-next) works against it: in a home host behind
//! such a router, a swarm listening on `/ip4/0.0.0.0/udp/4001/quic-v1` gets
//! `NewExternalAddr(/ip4/198.51.101.N/udp/4001/quic-v1)` (IGDv2 description, v1 SOAP calls,
//! both accepted). miniupnpd 2.3.1 adds only the inbound DNAT and forward rules for a mapping,
//! no SNAT: behind a [`Nat::Symmetric`] router, what the host *sends* from a mapped port still
//! leaves from a random port.
//!
//! # Links
//!
//! A [`Link`] adds netem delay and loss to the packets *delivered to* a node, on the far
//! side of its uplink: the internet side for public hosts and routers, the router's LAN side
//! for home hosts. So one-way latency from A to B is B's delay (plus B's router's, for a home
//! host), and a round trip between A and B costs A's delay plus B's. netem needs the kernel's
//! `sch_netem` (`CONFIG_NET_SCH_NETEM`); without it, a network with a non-default link fails to
//! build with an error saying so. Links are clean by default, and need no netem then.
//!
//! # Names and cleanup
//!
//! Namespaces are named `cn{pid}x{n}-{node}` (`cn{pid}x{n}-inet` for the internet), `n`
//! counting the networks built by this process, so tests run in parallel, with each other and
//! with the rest of the workspace. Interface names are fixed per namespace (`eth0`, `wan`,
//! `lan`, `p-{node}` and `l-{node}` for the far ends), at most 10 characters. Node names are
//! 1 to 8 characters of `a-z0-9`. Nothing outside the namespaces created here is touched:
//! veths are created from inside them (`ip -n NS link add … peer … netns NS2`), and every
//! `nft`, `tc` and `sysctl` runs inside one. Dropping the [`Net`] kills its miniupnpd daemons
//! and deletes its namespaces, which deletes their interfaces, rules and qdiscs. Processes a
//! test started inside a namespace (nodes, probes) are the test's to stop; they may outlive
//! the names, and their namespace goes away when they exit.
//!
//! # Requirements
//!
//! Root, `ip` (iproute2) and `nft` (nftables); `tc` for links with netem, `miniupnpd` for
//! UPnP routers, `python3` for [`UdpProbe`]. When one is missing [`NetBuilder::build`] fails
//! with a message naming it: tests are never skipped silently.
//!
//! # Example
//!
//! ```no_run
//! use std::net::SocketAddrV4;
//! use std::time::Duration;
//! use cocoon_tests::netns::{Nat, NetBuilder, RouterSpec};
//!
//! # fn main() -> anyhow::Result<()> {
//! let net = NetBuilder::new()
//!     .public("boot")
//!     .router("home", RouterSpec::new(Nat::PortRestricted))
//!     .home("worker", "home")
//!     .build()?;
//! let boot = net.host("boot")?;
//! let worker = net.host("worker")?;
//! let mut listener = boot.udp_probe(7000)?;
//! let mut sender = worker.udp_probe(5000)?;
//! sender.send(SocketAddrV4::new(boot.addr(), 7000), "hello")?;
//! let seen = listener.expect("hello", Duration::from_secs(3))?;
//! assert_eq!(*seen.from.ip(), net.router("home")?.wan_addr());
//! // Real nodes: `worker.spawn_node(dir, "w0", "/ip4/0.0.0.0/udp/0/quic-v1", &flags)?`, and
//! // `worker.infer_command(…)` for a client. Partitions: `net.router("home")?.set_uplink(false)`.
//! # Ok(())
//! # }
//! ```

use std::collections::{BTreeSet, VecDeque};
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use cocoon_worker::launch::NodeProcess;

/// The core's address: the internet namespace's own address on its bridge, every public
/// host's and router's default gateway. It forwards nothing.
pub const CORE_ADDR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);

/// Prefix length of the internet's subnet, 198.51.100.0/23.
pub const INTERNET_PREFIX_LEN: u8 = 23;

/// The third octet of public hosts' and non-UPnP routers' addresses (198.51.100.N).
const PUBLIC_OCTET: u8 = 100;

/// The third octet of UPnP routers' WAN addresses (198.51.101.N): not reserved, see the
/// module docs.
const UPNP_WAN_OCTET: u8 = 101;

/// The longest node name: keeps `p-{name}` and `l-{name}` far below the kernel's 15.
pub const MAX_NAME_LEN: usize = 8;

/// How many nodes (public hosts plus routers) one internet holds: 198.51.10x.2 to .254.
const MAX_INTERNET_NODES: usize = 253;

/// How many routers one network holds: LANs 192.168.1.0/24 to 192.168.254.0/24.
const MAX_ROUTERS: usize = 254;

/// How many home hosts one LAN holds: 192.168.X.2 to .254.
const MAX_LAN_HOSTS: usize = 253;

/// How long miniupnpd may take to start listening.
const UPNP_READY: Duration = Duration::from_secs(10);

/// How long a [`UdpProbe`] may take to start (python) and to acknowledge a send.
const PROBE_READY: Duration = Duration::from_secs(10);

/// The nftables table every router gets (family `inet`, as miniupnpd requires).
pub const ROUTER_TABLE: &str = "cocoon_router";

/// Networks built by this process, for unique namespace names.
static NETS: AtomicUsize = AtomicUsize::new(0);

/// How a router translates and filters (RFC 4787); see the module docs for the rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Nat {
    /// Endpoint-independent mapping and filtering: once the LAN host sent from a port, anyone
    /// reaching the router's WAN address on that port reaches the host. One LAN host at most.
    FullCone,
    /// Endpoint-independent, port-preserving mapping; only the address and port the host sent
    /// to get through. What most home routers do.
    PortRestricted,
    /// A new random external port per destination; only that destination gets through.
    Symmetric,
}

/// Delay and loss of the packets delivered to a node over its uplink (netem). The default is
/// a clean link, which needs no netem.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Link {
    /// Added to every packet towards the node.
    pub delay: Duration,
    /// Percent (0 to 100) of the packets towards the node that are lost.
    pub loss_percent: f64,
}

impl Link {
    /// A link delaying packets towards the node by `delay`.
    pub fn delay(delay: Duration) -> Self {
        Link {
            delay,
            loss_percent: 0.0,
        }
    }

    /// This link, also losing `percent` of the packets towards the node.
    pub fn with_loss(self, percent: f64) -> Self {
        Link {
            loss_percent: percent,
            ..self
        }
    }

    /// Whether it adds nothing (no netem qdisc is installed then).
    pub fn is_clean(&self) -> bool {
        self.delay.is_zero() && self.loss_percent == 0.0
    }

    fn check(&self) -> Result<()> {
        ensure!(
            self.loss_percent.is_finite() && (0.0..=100.0).contains(&self.loss_percent),
            "link loss must be a percentage from 0 to 100, not {}",
            self.loss_percent
        );
        ensure!(
            self.delay <= Duration::from_secs(60),
            "link delay {:?} is longer than a minute",
            self.delay
        );
        Ok(())
    }

    /// `netem delay …us loss …%`.
    fn netem_args(&self) -> Vec<String> {
        vec![
            "netem".into(),
            "delay".into(),
            format!("{}us", self.delay.as_micros()),
            "loss".into(),
            format!("{}%", self.loss_percent),
        ]
    }
}

/// A router's description for [`NetBuilder::router`].
#[derive(Clone, Debug)]
pub struct RouterSpec {
    nat: Nat,
    upnp: bool,
    link: Link,
}

impl RouterSpec {
    /// A router with this NAT, no UPnP, a clean WAN link.
    pub fn new(nat: Nat) -> Self {
        RouterSpec {
            nat,
            upnp: false,
            link: Link::default(),
        }
    }

    /// Runs miniupnpd on it when `on` (see the module docs); its WAN address is then
    /// 198.51.101.N.
    pub fn upnp(self, on: bool) -> Self {
        RouterSpec { upnp: on, ..self }
    }

    /// Delay and loss towards the router from the internet.
    pub fn link(self, link: Link) -> Self {
        RouterSpec { link, ..self }
    }
}

/// One declared node, in declaration order (which fixes the addresses).
#[derive(Clone, Debug)]
enum NodeSpec {
    Public {
        name: String,
        link: Link,
    },
    Router {
        name: String,
        spec: RouterSpec,
    },
    Home {
        name: String,
        router: String,
        link: Link,
    },
}

impl NodeSpec {
    fn name(&self) -> &str {
        match self {
            NodeSpec::Public { name, .. }
            | NodeSpec::Router { name, .. }
            | NodeSpec::Home { name, .. } => name,
        }
    }
}

/// Describes a network: public hosts, routers, home hosts behind them. Nothing happens until
/// [`Self::build`].
#[derive(Clone, Debug, Default)]
pub struct NetBuilder {
    nodes: Vec<NodeSpec>,
}

impl NetBuilder {
    /// An empty internet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A host on the internet with a clean link.
    pub fn public(self, name: &str) -> Self {
        self.public_with_link(name, Link::default())
    }

    /// A host on the internet; `link` shapes what it receives.
    pub fn public_with_link(mut self, name: &str, link: Link) -> Self {
        self.nodes.push(NodeSpec::Public {
            name: name.to_string(),
            link,
        });
        self
    }

    /// A NAT router on the internet with its own LAN.
    pub fn router(mut self, name: &str, spec: RouterSpec) -> Self {
        self.nodes.push(NodeSpec::Router {
            name: name.to_string(),
            spec,
        });
        self
    }

    /// A host on `router`'s LAN with a clean link.
    pub fn home(self, name: &str, router: &str) -> Self {
        self.home_with_link(name, router, Link::default())
    }

    /// A host on `router`'s LAN; `link` shapes what it receives from the router.
    pub fn home_with_link(mut self, name: &str, router: &str, link: Link) -> Self {
        self.nodes.push(NodeSpec::Home {
            name: name.to_string(),
            router: router.to_string(),
            link,
        });
        self
    }

    /// Checks the description, checks this machine can build it (root, tools), and creates
    /// the namespaces, links, rules and daemons. On error, what was created is removed.
    pub fn build(self) -> Result<Net> {
        let plan = self.plan()?;
        preflight(&plan)?;
        Net::create(plan)
    }

    /// Names and addresses for everything, or why the description is wrong.
    fn plan(&self) -> Result<Plan> {
        let mut names = BTreeSet::new();
        for node in &self.nodes {
            let name = node.name();
            ensure!(
                !name.is_empty()
                    && name.len() <= MAX_NAME_LEN
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
                "node name {name:?}: use 1 to {MAX_NAME_LEN} characters of a-z and 0-9 \
                 (interface names derive from it)"
            );
            ensure!(
                name != "inet",
                "node name \"inet\" is the internet's own namespace"
            );
            ensure!(names.insert(name), "node name {name:?} is used twice");
            if let NodeSpec::Public { link, .. } | NodeSpec::Home { link, .. } = node {
                link.check().with_context(|| format!("link of {name:?}"))?;
            }
            if let NodeSpec::Router { spec, .. } = node {
                spec.link
                    .check()
                    .with_context(|| format!("link of {name:?}"))?;
            }
        }
        let mut plan = Plan::default();
        let mut internet_nodes = 0usize;
        let mut next_internet_addr = || -> Result<u8> {
            internet_nodes += 1;
            ensure!(
                internet_nodes <= MAX_INTERNET_NODES,
                "more than {MAX_INTERNET_NODES} public hosts and routers on one internet"
            );
            u8::try_from(internet_nodes + 1).context("internet address")
        };
        for node in &self.nodes {
            match node {
                NodeSpec::Public { name, link } => {
                    let n = next_internet_addr()?;
                    plan.public.push(PublicPlan {
                        name: name.clone(),
                        addr: Ipv4Addr::new(198, 51, PUBLIC_OCTET, n),
                        link: *link,
                    });
                }
                NodeSpec::Router { name, spec } => {
                    let n = next_internet_addr()?;
                    ensure!(
                        plan.routers.len() < MAX_ROUTERS,
                        "more than {MAX_ROUTERS} routers"
                    );
                    let lan = u8::try_from(plan.routers.len() + 1).context("LAN number")?;
                    let octet = if spec.upnp {
                        UPNP_WAN_OCTET
                    } else {
                        PUBLIC_OCTET
                    };
                    plan.routers.push(RouterPlan {
                        name: name.clone(),
                        spec: spec.clone(),
                        wan: Ipv4Addr::new(198, 51, octet, n),
                        lan: Ipv4Addr::new(192, 168, lan, 1),
                        hosts: Vec::new(),
                    });
                }
                NodeSpec::Home { .. } => {}
            }
        }
        for node in &self.nodes {
            let NodeSpec::Home { name, router, link } = node else {
                continue;
            };
            let Some(r) = plan.routers.iter_mut().find(|r| &r.name == router) else {
                bail!("home host {name:?} is behind router {router:?}, which is not declared");
            };
            ensure!(
                r.hosts.len() < MAX_LAN_HOSTS,
                "more than {MAX_LAN_HOSTS} hosts behind router {router:?}"
            );
            ensure!(
                r.spec.nat != Nat::FullCone || r.hosts.is_empty(),
                "full-cone router {router:?} forwards all inbound traffic to its one LAN host; \
                 it cannot also have {name:?}"
            );
            let [a, b, c, _] = r.lan.octets();
            let last = u8::try_from(r.hosts.len() + 2).context("LAN address")?;
            r.hosts.push(HomePlan {
                name: name.clone(),
                addr: Ipv4Addr::new(a, b, c, last),
                link: *link,
            });
        }
        Ok(plan)
    }
}

/// What [`NetBuilder::plan`] decided.
#[derive(Debug, Default)]
struct Plan {
    public: Vec<PublicPlan>,
    routers: Vec<RouterPlan>,
}

impl Plan {
    fn links(&self) -> impl Iterator<Item = &Link> {
        let public = self.public.iter().map(|p| &p.link);
        let routers = self
            .routers
            .iter()
            .flat_map(|r| std::iter::once(&r.spec.link).chain(r.hosts.iter().map(|h| &h.link)));
        public.chain(routers)
    }
}

#[derive(Debug)]
struct PublicPlan {
    name: String,
    addr: Ipv4Addr,
    link: Link,
}

#[derive(Debug)]
struct RouterPlan {
    name: String,
    spec: RouterSpec,
    wan: Ipv4Addr,
    lan: Ipv4Addr,
    hosts: Vec<HomePlan>,
}

#[derive(Debug)]
struct HomePlan {
    name: String,
    addr: Ipv4Addr,
    link: Link,
}

/// The nftables ruleset of a router with `nat` whose LAN host (the one a full-cone router
/// forwards to) is `lan_host`; loaded with `nft -f` into a fresh router namespace.
/// The WAN interface is `wan`, the LAN bridge `lan`.
pub fn router_ruleset(nat: Nat, lan_host: Option<Ipv4Addr>) -> String {
    let dnat = match (nat, lan_host) {
        (Nat::FullCone, Some(host)) => {
            format!("\t\tiifname \"wan\" meta l4proto {{ tcp, udp }} dnat ip to {host}\n")
        }
        _ => String::new(),
    };
    let accept_dnat = match nat {
        Nat::FullCone => "\t\tiifname \"wan\" ct status dnat accept\n",
        Nat::PortRestricted | Nat::Symmetric => "",
    };
    let masquerade = match nat {
        Nat::FullCone | Nat::PortRestricted => "masquerade",
        Nat::Symmetric => "masquerade fully-random",
    };
    format!(
        "table inet {ROUTER_TABLE} {{
\t# miniupnpd's chains (empty without UPnP)
\tchain upnp_forward {{
\t}}
\tchain upnp_pre {{
\t}}
\tchain upnp_post {{
\t}}
\tchain prerouting {{
\t\ttype nat hook prerouting priority dstnat; policy accept;
\t\tjump upnp_pre
{dnat}\t}}
\tchain postrouting {{
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tjump upnp_post
\t\toifname \"wan\" {masquerade}
\t}}
\tchain forward_filter {{
\t\ttype filter hook forward priority filter; policy drop;
\t\tct state established,related accept
\t\tiifname \"lan\" oifname \"wan\" accept
\t\tjump upnp_forward
{accept_dnat}\t}}
\tchain input_filter {{
\t\ttype filter hook input priority filter; policy accept;
\t\tiifname \"wan\" ct state established,related accept
\t\tiifname \"wan\" drop
\t}}
}}
"
    )
}

/// The internet namespace's ruleset: no multicast across the internet.
const INTERNET_RULESET: &str = "table bridge cocoon_internet {
\tchain forward {
\t\ttype filter hook forward priority filter; policy accept;
\t\tip daddr 224.0.0.0/4 drop
\t}
}
";

/// A UDP socket in a host, driven by a small python script: it sends datagrams on request
/// and reports every datagram it receives with its source address. For checking what gets
/// through which NAT. Killed when dropped.
#[derive(Debug)]
pub struct UdpProbe {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    pending: VecDeque<Datagram>,
    port: u16,
    label: String,
    stderr: PathBuf,
}

/// A datagram a [`UdpProbe`] received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Datagram {
    /// What it carried.
    pub payload: String,
    /// Where it came from, as the receiver saw it (after any NAT).
    pub from: SocketAddrV4,
}

/// The probe's python side: `python3 probe.py PORT`. Prints `ready PORT` once bound, then
/// `recv PAYLOAD IP:PORT` per datagram; reads `send IP PORT PAYLOAD` lines from stdin and
/// answers each with `sent` or `error WHY`; exits at end of input.
const PROBE_PY: &str = r#"import os, select, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
print("ready %d" % s.getsockname()[1], flush=True)
buf = b""
while True:
    readable, _, _ = select.select([s, 0], [], [])
    if s in readable:
        data, (ip, port) = s.recvfrom(65535)
        text = data.decode("utf-8", "replace").replace(" ", "_").replace("\n", "_") or "_"
        print("recv %s %s:%d" % (text, ip, port), flush=True)
    if 0 in readable:
        chunk = os.read(0, 4096)
        if not chunk:
            break
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            parts = line.decode().split()
            if len(parts) != 4 or parts[0] != "send":
                print("error bad command %r" % line, flush=True)
                continue
            try:
                s.sendto(parts[3].encode(), (parts[1], int(parts[2])))
                print("sent", flush=True)
            except OSError as e:
                print("error %s" % e, flush=True)
"#;

impl UdpProbe {
    fn spawn(host: &Host, port: u16) -> Result<Self> {
        static PROBES: AtomicUsize = AtomicUsize::new(0);
        let n = PROBES.fetch_add(1, Ordering::Relaxed);
        let stderr_path = host
            .dir
            .join(format!("probe-{}-{port}-{n}.stderr", host.name));
        let stderr = std::fs::File::create(&stderr_path)
            .with_context(|| format!("creating {}", stderr_path.display()))?;
        let mut child = host
            .command(
                "python3",
                [
                    host.dir.join("probe.py").as_os_str(),
                    port.to_string().as_ref(),
                ],
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting the UDP probe (python3) in {}", host.name))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the UDP probe in {} has no stdin/stdout pipe", host.name);
        };
        let (tx, lines) = mpsc::sync_channel(1024);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut probe = UdpProbe {
            child,
            stdin,
            lines,
            pending: VecDeque::new(),
            port,
            label: format!("probe {}:{port}", host.name),
            stderr: stderr_path,
        };
        let line = probe.next_line(Instant::now() + PROBE_READY)?;
        let Some(bound) = line
            .as_deref()
            .and_then(|l| l.strip_prefix("ready "))
            .and_then(|p| p.trim().parse().ok())
        else {
            bail!(
                "{} did not start (first line {line:?}); its stderr: {}",
                probe.label,
                probe.stderr_text()
            );
        };
        probe.port = bound;
        probe.label = format!("probe {}:{bound}", host.name);
        Ok(probe)
    }

    /// The local port it is bound to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Sends `payload` (1 to 1000 bytes, no whitespace) to `to` from its port; returns once
    /// the socket took it (an error if `sendto` failed, e.g. no route).
    pub fn send(&mut self, to: SocketAddrV4, payload: &str) -> Result<()> {
        ensure!(
            !payload.is_empty()
                && payload.len() <= 1000
                && !payload.chars().any(char::is_whitespace),
            "{}: payload {payload:?} must be 1 to 1000 bytes without whitespace",
            self.label
        );
        writeln!(self.stdin, "send {} {} {payload}", to.ip(), to.port())
            .and_then(|()| self.stdin.flush())
            .with_context(|| format!("{}: writing to the probe", self.label))?;
        let deadline = Instant::now() + PROBE_READY;
        loop {
            let Some(line) = self.next_line(deadline)? else {
                bail!("{}: no answer to sending {payload:?} to {to}", self.label);
            };
            if line == "sent" {
                return Ok(());
            }
            if let Some(why) = line.strip_prefix("error ") {
                bail!("{}: sending {payload:?} to {to} failed: {why}", self.label);
            }
            let datagram = self.parse(&line)?;
            self.pending.push_back(datagram);
        }
    }

    /// The next datagram, waiting up to `timeout`; `None` if none came.
    pub fn recv(&mut self, timeout: Duration) -> Result<Option<Datagram>> {
        if let Some(d) = self.pending.pop_front() {
            return Ok(Some(d));
        }
        match self.next_line(Instant::now() + timeout)? {
            Some(line) => Ok(Some(self.parse(&line)?)),
            None => Ok(None),
        }
    }

    /// The first datagram carrying `payload` within `timeout`, or `None`. Others received
    /// meanwhile are kept for [`Self::recv`].
    pub fn wait_for(&mut self, payload: &str, timeout: Duration) -> Result<Option<Datagram>> {
        if let Some(i) = self.pending.iter().position(|d| d.payload == payload) {
            return Ok(self.pending.remove(i));
        }
        let deadline = Instant::now() + timeout;
        while let Some(line) = self.next_line(deadline)? {
            let datagram = self.parse(&line)?;
            if datagram.payload == payload {
                return Ok(Some(datagram));
            }
            self.pending.push_back(datagram);
        }
        Ok(None)
    }

    /// Like [`Self::wait_for`], an error naming the probe if it does not come.
    pub fn expect(&mut self, payload: &str, timeout: Duration) -> Result<Datagram> {
        match self.wait_for(payload, timeout)? {
            Some(d) => Ok(d),
            None => bail!(
                "{}: no datagram {payload:?} within {timeout:?} (received instead: {:?})",
                self.label,
                self.pending
            ),
        }
    }

    /// Everything received so far and within `wait` from now.
    pub fn drain(&mut self, wait: Duration) -> Result<Vec<Datagram>> {
        let deadline = Instant::now() + wait;
        while let Some(line) = self.next_line(deadline)? {
            let datagram = self.parse(&line)?;
            self.pending.push_back(datagram);
        }
        Ok(self.pending.drain(..).collect())
    }

    /// The next line before `deadline`, `None` at the deadline; an error if the probe died.
    fn next_line(&mut self, deadline: Instant) -> Result<Option<String>> {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(left) {
            Ok(line) => Ok(Some(line)),
            Err(mpsc::RecvTimeoutError::Timeout) => Ok(None),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = self.child.wait().map(|s| s.to_string()).unwrap_or_default();
                bail!(
                    "{} exited ({status}); its stderr: {}",
                    self.label,
                    self.stderr_text()
                )
            }
        }
    }

    fn parse(&self, line: &str) -> Result<Datagram> {
        let parsed = line.strip_prefix("recv ").and_then(|rest| {
            let (payload, from) = rest.split_once(' ')?;
            Some(Datagram {
                payload: payload.to_string(),
                from: from.trim().parse().ok()?,
            })
        });
        parsed.with_context(|| format!("{}: unexpected line {line:?}", self.label))
    }

    fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for UdpProbe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The far end of a node's uplink: the interface that [`Link`]s shape and partitions cut.
#[derive(Clone, Debug)]
struct Uplink {
    /// The namespace it is in (the internet's, or the router's for home hosts).
    ns: String,
    /// Its name there.
    port: String,
}

impl Uplink {
    fn set_up(&self, up: bool) -> Result<()> {
        let state = if up { "up" } else { "down" };
        run(Command::new("ip").args(["-n", &self.ns, "link", "set", &self.port, state]))?;
        Ok(())
    }

    fn set_link(&self, link: &Link) -> Result<()> {
        link.check()?;
        if link.is_clean() {
            let qdiscs = run(&mut ns_command(
                &self.ns,
                "tc",
                ["qdisc", "show", "dev", self.port.as_str()],
            ))?;
            if qdiscs.contains("netem") {
                run(&mut ns_command(
                    &self.ns,
                    "tc",
                    ["qdisc", "del", "dev", self.port.as_str(), "root"],
                ))?;
            }
            return Ok(());
        }
        let mut args: Vec<String> = ["qdisc", "replace", "dev", self.port.as_str(), "root"]
            .map(String::from)
            .to_vec();
        args.extend(link.netem_args());
        run(&mut ns_command(&self.ns, "tc", &args)).map_err(|e| {
            if format!("{e:#}").contains("qdisc kind is unknown") {
                e.context(
                    "this kernel has no netem qdisc (sch_netem, CONFIG_NET_SCH_NETEM): \
                     links with delay or loss need it",
                )
            } else {
                e
            }
        })?;
        Ok(())
    }
}

/// A host (a namespace) on the internet or on a router's LAN. A cheap handle: clone it freely;
/// it works while its [`Net`] lives.
#[derive(Clone, Debug)]
pub struct Host {
    name: String,
    ns: String,
    addr: Ipv4Addr,
    router: Option<String>,
    uplink: Uplink,
    dir: PathBuf,
}

impl Host {
    /// Its name in the description.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its network namespace (`ip netns` name).
    pub fn namespace(&self) -> &str {
        &self.ns
    }

    /// Its address: public (198.51.100.N) or private on its LAN (192.168.X.N).
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The router it is behind; `None` for a public host.
    pub fn router(&self) -> Option<&str> {
        self.router.as_deref()
    }

    /// `ip netns exec NS`: put it before a program to run the program in this host; see
    /// [`NodeProcess::spawn_via`].
    pub fn prefix(&self) -> Vec<String> {
        ["ip", "netns", "exec", &self.ns].map(String::from).to_vec()
    }

    /// `program args…` in this host, not started. `ip netns exec` execs the program, so the
    /// child's pid is the program's.
    pub fn command<I, S>(&self, program: impl AsRef<OsStr>, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        ns_command(&self.ns, program, args)
    }

    /// Starts `cocoon node` in this host, named `name` with its data dir and log under `dir`,
    /// listening on `listen` (e.g. `/ip4/0.0.0.0/udp/0/quic-v1`), with `extra` flags; waits
    /// until it is ready. As [`crate::spawn_node`], in this namespace.
    pub fn spawn_node(
        &self,
        dir: &Path,
        name: &str,
        listen: &str,
        extra: &[String],
    ) -> Result<NodeProcess> {
        crate::spawn_node_via(&self.prefix(), dir, name, listen, extra)
            .with_context(|| format!("starting node {name:?} in host {}", self.name))
    }

    /// Starts a worker serving the default model in this host, as
    /// [`crate::LoopbackNet`] starts its workers: `--no-mdns --bootstrap BOOTSTRAP --model
    /// PATH --attestation dev-insecure` (unless `extra` names an attestation), listening on
    /// QUIC on every address of the host, then `extra`.
    pub fn spawn_worker(
        &self,
        dir: &Path,
        name: &str,
        bootstrap: &str,
        extra: &[String],
    ) -> Result<NodeProcess> {
        let model = crate::model_path()?;
        let mut args = vec![
            "--no-mdns".to_string(),
            "--bootstrap".into(),
            bootstrap.to_string(),
            "--model".into(),
            model.display().to_string(),
        ];
        if !extra.iter().any(|a| a == "--attestation") {
            args.extend(["--attestation".into(), "dev-insecure".into()]);
        }
        args.extend(extra.iter().cloned());
        self.spawn_node(dir, name, "/ip4/0.0.0.0/udp/0/quic-v1", &args)
    }

    /// The listen address of `node` (started in this host) that others reach it on: the one
    /// with this host's address, not loopback.
    pub fn node_addr(&self, node: &NodeProcess) -> Result<String> {
        let ip = format!("/ip4/{}/", self.addr);
        node.listen
            .iter()
            .find(|a| a.starts_with(&ip))
            .cloned()
            .with_context(|| {
                format!(
                    "node in host {} does not listen on {}: {:?}",
                    self.name, self.addr, node.listen
                )
            })
    }

    /// `cocoon infer --bootstrap BOOTSTRAP FLAGS… --insecure-dev-attestation -- PROMPT` in this
    /// host, not started, with its client data dir (identity, payment journal) `data_dir`
    /// unless `flags` name one. It accepts the workers' dev evidence, as
    /// [`crate::LoopbackNet::infer_command`] does.
    pub fn infer_command(
        &self,
        bootstrap: &str,
        flags: &[&str],
        prompt: &str,
        data_dir: &Path,
    ) -> Result<Command> {
        let bin = crate::cocoon_bin()?;
        let mut cmd = self.command(&bin, ["infer", "--bootstrap", bootstrap]);
        cmd.args(flags);
        if !flags.contains(&"--data-dir") {
            cmd.env("COCOON_CLIENT_DATA_DIR", data_dir);
        }
        cmd.arg("--insecure-dev-attestation").arg("--").arg(prompt);
        Ok(cmd)
    }

    /// A [`UdpProbe`] bound to `port` (0: any free port) in this host, once it is ready.
    pub fn udp_probe(&self, port: u16) -> Result<UdpProbe> {
        UdpProbe::spawn(self, port)
    }

    /// Cuts (`false`) or heals (`true`) this host's uplink: the far end of its cable (on the
    /// internet, or on its router's LAN) goes down, so the host keeps its address and routes
    /// but every packet either way is lost, as when a cable is pulled upstream.
    pub fn set_uplink(&self, up: bool) -> Result<()> {
        self.uplink
            .set_up(up)
            .with_context(|| format!("uplink of host {}", self.name))
    }

    /// Changes the delay and loss of what this host receives (a clean link removes netem).
    pub fn set_link(&self, link: &Link) -> Result<()> {
        self.uplink
            .set_link(link)
            .with_context(|| format!("link of host {}", self.name))
    }
}

/// A NAT router (a namespace) between the internet and its LAN. A cheap handle: clone it
/// freely; it works while its [`Net`] lives.
#[derive(Clone, Debug)]
pub struct Router {
    name: String,
    ns: String,
    nat: Nat,
    wan: Ipv4Addr,
    lan: Ipv4Addr,
    uplink: Uplink,
    upnp_log: Option<PathBuf>,
}

impl Router {
    /// Its name in the description.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its network namespace (`ip netns` name).
    pub fn namespace(&self) -> &str {
        &self.ns
    }

    /// Its NAT kind.
    pub fn nat(&self) -> Nat {
        self.nat
    }

    /// Its public address, the source of everything its LAN sends to the internet.
    pub fn wan_addr(&self) -> Ipv4Addr {
        self.wan
    }

    /// Its address on its LAN (192.168.X.1), its hosts' gateway.
    pub fn lan_addr(&self) -> Ipv4Addr {
        self.lan
    }

    /// Where miniupnpd logs, when the router runs it.
    pub fn upnp_log(&self) -> Option<&Path> {
        self.upnp_log.as_deref()
    }

    /// `program args…` in the router's namespace, not started (e.g. `nft list ruleset`).
    pub fn command<I, S>(&self, program: impl AsRef<OsStr>, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        ns_command(&self.ns, program, args)
    }

    /// Its current nftables ruleset, including what miniupnpd added: for failure messages.
    pub fn ruleset(&self) -> Result<String> {
        run(&mut self.command("nft", ["list", "ruleset"]))
    }

    /// Cuts (`false`) or heals (`true`) the router's WAN uplink (its internet side goes down):
    /// its whole LAN is cut off, while LAN traffic and NAT state stay.
    pub fn set_uplink(&self, up: bool) -> Result<()> {
        self.uplink
            .set_up(up)
            .with_context(|| format!("uplink of router {}", self.name))
    }

    /// Changes the delay and loss of what the router receives from the internet.
    pub fn set_link(&self, link: &Link) -> Result<()> {
        self.uplink
            .set_link(link)
            .with_context(|| format!("link of router {}", self.name))
    }
}

/// A built network. Dropping it kills its miniupnpd daemons and deletes its namespaces.
#[derive(Debug)]
pub struct Net {
    internet: String,
    hosts: Vec<Host>,
    routers: Vec<Router>,
    /// Namespaces created, in order; deleted in reverse on drop.
    namespaces: Vec<String>,
    daemons: Vec<Child>,
    dir: tempfile::TempDir,
}

impl Net {
    /// The host named `name`.
    pub fn host(&self, name: &str) -> Result<&Host> {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .with_context(|| format!("no host named {name:?} in this network"))
    }

    /// The router named `name`.
    pub fn router(&self, name: &str) -> Result<&Router> {
        self.routers
            .iter()
            .find(|r| r.name == name)
            .with_context(|| format!("no router named {name:?} in this network"))
    }

    /// All hosts, public and home, in declaration order.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// All routers, in declaration order.
    pub fn routers(&self) -> &[Router] {
        &self.routers
    }

    /// The internet's namespace (e.g. to watch the bridge with `ip netns exec`).
    pub fn internet_namespace(&self) -> &str {
        &self.internet
    }

    /// A scratch directory that lives as long as the network: miniupnpd's config, leases and
    /// logs, the probe script; tests may put node data here too.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn create(plan: Plan) -> Result<Net> {
        let serial = NETS.fetch_add(1, Ordering::Relaxed);
        let id = format!("cn{}x{serial}", std::process::id());
        let dir = tempfile::Builder::new()
            .prefix(&format!("cocoon-netns-{id}-"))
            .tempdir()
            .context("creating the network's scratch dir")?;
        std::fs::write(dir.path().join("probe.py"), PROBE_PY).context("writing probe.py")?;
        let mut net = Net {
            internet: format!("{id}-inet"),
            hosts: Vec::new(),
            routers: Vec::new(),
            namespaces: Vec::new(),
            daemons: Vec::new(),
            dir,
        };
        // On any error below, dropping `net` removes what exists so far.
        let inet = net.internet.clone();
        net.add_namespace(&inet, false)?;
        ip(&inet, "link add inet type bridge")?;
        ip(&inet, "link set inet up")?;
        ip(
            &inet,
            &format!("addr add {CORE_ADDR}/{INTERNET_PREFIX_LEN} dev inet"),
        )?;
        nft_load(&inet, INTERNET_RULESET)?;

        for public in &plan.public {
            let ns = format!("{id}-{}", public.name);
            net.add_namespace(&ns, false)?;
            let uplink = net.wire(&inet, "inet", &ns, "eth0", &public.name, "p")?;
            ip(
                &ns,
                &format!("addr add {}/{INTERNET_PREFIX_LEN} dev eth0", public.addr),
            )?;
            ip(&ns, "link set eth0 up")?;
            ip(&ns, &format!("route add default via {CORE_ADDR}"))?;
            if !public.link.is_clean() {
                uplink.set_link(&public.link)?;
            }
            net.hosts.push(Host {
                name: public.name.clone(),
                ns,
                addr: public.addr,
                router: None,
                uplink,
                dir: net.dir.path().to_path_buf(),
            });
        }

        for (i, r) in plan.routers.iter().enumerate() {
            let ns = format!("{id}-{}", r.name);
            net.add_namespace(&ns, true)?;
            let uplink = net.wire(&inet, "inet", &ns, "wan", &r.name, "p")?;
            ip(
                &ns,
                &format!("addr add {}/{INTERNET_PREFIX_LEN} dev wan", r.wan),
            )?;
            ip(&ns, "link set wan up")?;
            ip(&ns, &format!("route add default via {CORE_ADDR}"))?;
            ip(&ns, "link add lan type bridge mcast_snooping 0")?;
            ip(&ns, &format!("addr add {}/24 dev lan", r.lan))?;
            ip(&ns, "link set lan up")?;
            nft_load(
                &ns,
                &router_ruleset(r.spec.nat, r.hosts.first().map(|h| h.addr)),
            )?;
            if !r.spec.link.is_clean() {
                uplink.set_link(&r.spec.link)?;
            }
            for h in &r.hosts {
                let host_ns = format!("{id}-{}", h.name);
                net.add_namespace(&host_ns, false)?;
                let host_uplink = net.wire(&ns, "lan", &host_ns, "eth0", &h.name, "l")?;
                ip(&host_ns, &format!("addr add {}/24 dev eth0", h.addr))?;
                ip(&host_ns, "link set eth0 up")?;
                ip(&host_ns, &format!("route add default via {}", r.lan))?;
                if !h.link.is_clean() {
                    host_uplink.set_link(&h.link)?;
                }
                net.hosts.push(Host {
                    name: h.name.clone(),
                    ns: host_ns,
                    addr: h.addr,
                    router: Some(r.name.clone()),
                    uplink: host_uplink,
                    dir: net.dir.path().to_path_buf(),
                });
            }
            let upnp_log = if r.spec.upnp {
                Some(net.start_upnp(serial, i, r, &ns)?)
            } else {
                None
            };
            net.routers.push(Router {
                name: r.name.clone(),
                ns,
                nat: r.spec.nat,
                wan: r.wan,
                lan: r.lan,
                uplink,
                upnp_log,
            });
        }
        Ok(net)
    }

    /// Creates namespace `ns` (replacing a stale one of the same name, which can only be left
    /// by a killed process that had this pid), loopback up, IPv6 off, forwarding as asked.
    fn add_namespace(&mut self, ns: &str, forward: bool) -> Result<()> {
        if Path::new("/run/netns").join(ns).exists() {
            run(Command::new("ip").args(["netns", "del", ns]))?;
        }
        run(Command::new("ip").args(["netns", "add", ns]))?;
        self.namespaces.push(ns.to_string());
        ip(ns, "link set lo up")?;
        let forward = if forward { "1" } else { "0" };
        run(&mut ns_command(
            ns,
            "sysctl",
            [
                "-qw",
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
                &format!("net.ipv4.ip_forward={forward}"),
            ],
        ))?;
        Ok(())
    }

    /// A veth from bridge `bridge` in namespace `outer` (end `{kind}-{name}`) to `inner`
    /// (end `inner_if`, left down); returns the outer end as the uplink.
    fn wire(
        &self,
        outer: &str,
        bridge: &str,
        inner: &str,
        inner_if: &str,
        name: &str,
        kind: &str,
    ) -> Result<Uplink> {
        let port = format!("{kind}-{name}");
        ip(
            outer,
            &format!("link add {port} type veth peer name {inner_if} netns {inner}"),
        )?;
        ip(outer, &format!("link set {port} master {bridge} up"))?;
        Ok(Uplink {
            ns: outer.to_string(),
            port,
        })
    }

    /// Starts miniupnpd in router `r` (namespace `ns`) and waits until it listens; returns
    /// its log's path.
    fn start_upnp(
        &mut self,
        serial: usize,
        index: usize,
        r: &RouterPlan,
        ns: &str,
    ) -> Result<PathBuf> {
        let dir = self.dir.path();
        let conf = dir.join(format!("{}-miniupnpd.conf", r.name));
        let log = dir.join(format!("{}-miniupnpd.log", r.name));
        let [a, b, c, _] = r.lan.octets();
        let leases = dir.join(format!("{}-miniupnpd.leases", r.name));
        // Unique per router: pid, network, router.
        let uuid = format!(
            "{:08x}-c0c0-4000-8000-{:06x}{:06x}",
            std::process::id(),
            serial & 0xff_ffff,
            index & 0xff_ffff
        );
        let text = format!(
            "ext_ifname=wan
listening_ip=lan
http_port=0
enable_upnp=yes
enable_natpmp=yes
secure_mode=yes
system_uptime=yes
ipv6_disable=yes
notify_interval=30
clean_ruleset_interval=600
lease_file={leases}
uuid={uuid}
upnp_table_name={ROUTER_TABLE}
upnp_nat_table_name={ROUTER_TABLE}
upnp_forward_chain=upnp_forward
upnp_nat_chain=upnp_pre
upnp_nat_postrouting_chain=upnp_post
allow 1024-65535 {a}.{b}.{c}.0/24 1024-65535
deny 0-65535 0.0.0.0/0 0-65535
",
            leases = leases.display(),
        );
        std::fs::write(&conf, text).with_context(|| format!("writing {}", conf.display()))?;
        let out =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone().context("miniupnpd log")?;
        let pid_file = dir.join(format!("{}-miniupnpd.pid", r.name));
        let mut cmd = ns_command(ns, "miniupnpd", ["-d", "-f"]);
        cmd.arg(&conf).arg("-P").arg(&pid_file);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting miniupnpd in router {}", r.name))?;
        self.daemons.push(child);
        let deadline = Instant::now() + UPNP_READY;
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("Port forwarding is impossible") {
                bail!(
                    "miniupnpd in router {} cannot map ports; its log ({}):\n{text}",
                    r.name,
                    log.display()
                );
            }
            if text.contains("HTTP listening on port") {
                return Ok(log);
            }
            let exited = self
                .daemons
                .last_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                bail!(
                    "miniupnpd in router {} exited ({status}); its log ({}):\n{text}",
                    r.name,
                    log.display()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "miniupnpd in router {} did not listen within {UPNP_READY:?}; its log ({}):\n{text}",
                    r.name,
                    log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for daemon in &mut self.daemons {
            let _ = daemon.kill();
            let _ = daemon.wait();
        }
        for ns in self.namespaces.iter().rev() {
            if let Err(e) = run(Command::new("ip").args(["netns", "del", ns])) {
                eprintln!("netns: could not delete namespace {ns}: {e:#}");
            }
        }
    }
}

/// `program args…` run by `ip netns exec NS`.
fn ns_command<I, S>(ns: &str, program: impl AsRef<OsStr>, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).arg(program).args(args);
    cmd
}

/// `ip -n NS ARGS` (whitespace-separated, none contains spaces).
fn ip(ns: &str, args: &str) -> Result<String> {
    run(Command::new("ip")
        .args(["-n", ns])
        .args(args.split_whitespace()))
}

/// Loads an nftables ruleset into namespace `ns`.
fn nft_load(ns: &str, ruleset: &str) -> Result<()> {
    run_with_input(&mut ns_command(ns, "nft", ["-f", "-"]), ruleset)
        .with_context(|| format!("loading this ruleset into {ns}:\n{ruleset}"))?;
    Ok(())
}

/// The command line, for messages.
fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` to completion; its stdout, or an error with the command and its stderr.
fn run(cmd: &mut Command) -> Result<String> {
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run `{}`", describe(cmd)))?;
    check_output(cmd, output)
}

/// Like [`run`], writing `input` to its stdin.
fn run_with_input(cmd: &mut Command, input: &str) -> Result<String> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run `{}`", describe(cmd)))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .with_context(|| format!("writing to `{}`", describe(cmd)))?;
    }
    let output = child
        .wait_with_output()
        .with_context(|| format!("waiting for `{}`", describe(cmd)))?;
    check_output(cmd, output)
}

fn check_output(cmd: &Command, output: std::process::Output) -> Result<String> {
    ensure!(
        output.status.success(),
        "`{}` failed ({}): {}",
        describe(cmd),
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Whether this machine can build `plan`: root, and the tools it needs. The errors say what
/// to install; tests fail with them rather than skip.
fn preflight(plan: &Plan) -> Result<()> {
    let status = std::fs::read_to_string("/proc/self/status")
        .context("reading /proc/self/status (network-namespace tests need Linux)")?;
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .context("no effective uid in /proc/self/status")?;
    ensure!(
        euid == "0",
        "network-namespace tests need root (they create namespaces, veths and nftables rules); \
         this process runs as uid {euid}. Run them as root, as CI does"
    );
    let mut tools = vec![("ip", "-V", "iproute2"), ("nft", "--version", "nftables")];
    if plan.links().any(|l| !l.is_clean()) {
        tools.push(("tc", "-V", "iproute2"));
    }
    if plan.routers.iter().any(|r| r.spec.upnp) {
        tools.push(("miniupnpd", "--version", "miniupnpd-nftables"));
    }
    for (tool, flag, package) in tools {
        match Command::new(tool).arg(flag).output() {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                "network-namespace tests need `{tool}`, which is not installed \
                 (Debian/Ubuntu package {package})"
            ),
            Err(e) => bail!("cannot run `{tool} {flag}`: {e}"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error planning `builder` gives.
    fn error(builder: NetBuilder) -> Result<String> {
        match builder.plan() {
            Ok(plan) => bail!("expected an error, planned {plan:?}"),
            Err(e) => Ok(format!("{e:#}")),
        }
    }

    #[test]
    fn addresses_follow_declaration_order() -> Result<()> {
        let plan = NetBuilder::new()
            .public("a")
            .router("r1", RouterSpec::new(Nat::PortRestricted))
            .home("h1", "r1")
            .home("h2", "r1")
            .router("r2", RouterSpec::new(Nat::Symmetric).upnp(true))
            .home("h3", "r2")
            .public("b")
            .plan()?;
        let public: Vec<_> = plan.public.iter().map(|p| p.addr.to_string()).collect();
        assert_eq!(public, ["198.51.100.2", "198.51.100.5"]);
        assert_eq!(plan.routers[0].wan, Ipv4Addr::new(198, 51, 100, 3));
        assert_eq!(plan.routers[0].lan, Ipv4Addr::new(192, 168, 1, 1));
        // UPnP routers are outside documentation space (see the module docs).
        assert_eq!(plan.routers[1].wan, Ipv4Addr::new(198, 51, 101, 4));
        assert_eq!(plan.routers[1].lan, Ipv4Addr::new(192, 168, 2, 1));
        let home: Vec<_> = plan.routers[0]
            .hosts
            .iter()
            .map(|h| h.addr.to_string())
            .collect();
        assert_eq!(home, ["192.168.1.2", "192.168.1.3"]);
        assert_eq!(plan.routers[1].hosts[0].addr, Ipv4Addr::new(192, 168, 2, 2));
        Ok(())
    }

    #[test]
    fn bad_descriptions_are_refused_with_reasons() -> Result<()> {
        let e = error(NetBuilder::new().public("a").public("a"))?;
        assert!(e.contains("used twice"), "{e}");
        let e = error(NetBuilder::new().public("toolongname"))?;
        assert!(e.contains("1 to 8 characters"), "{e}");
        let e = error(NetBuilder::new().public("Big"))?;
        assert!(e.contains("a-z"), "{e}");
        let e = error(NetBuilder::new().public("inet"))?;
        assert!(e.contains("internet"), "{e}");
        let e = error(NetBuilder::new().home("h", "nowhere"))?;
        assert!(e.contains("not declared"), "{e}");
        let e = error(
            NetBuilder::new()
                .router("r", RouterSpec::new(Nat::FullCone))
                .home("h1", "r")
                .home("h2", "r"),
        )?;
        assert!(e.contains("full-cone"), "{e}");
        let e = error(NetBuilder::new().public_with_link("a", Link::default().with_loss(120.0)))?;
        assert!(e.contains("percentage"), "{e}");
        Ok(())
    }

    #[test]
    fn rulesets_differ_in_mapping_and_filtering_only() {
        let host = Some(Ipv4Addr::new(192, 168, 1, 2));
        let full = router_ruleset(Nat::FullCone, host);
        assert!(full.contains("dnat ip to 192.168.1.2"), "{full}");
        assert!(full.contains("ct status dnat accept"), "{full}");
        assert!(full.contains("oifname \"wan\" masquerade\n"), "{full}");
        let restricted = router_ruleset(Nat::PortRestricted, host);
        assert!(!restricted.contains("dnat"), "{restricted}");
        assert!(
            restricted.contains("oifname \"wan\" masquerade\n"),
            "{restricted}"
        );
        let symmetric = router_ruleset(Nat::Symmetric, host);
        assert!(!symmetric.contains("dnat"), "{symmetric}");
        assert!(symmetric.contains("masquerade fully-random"), "{symmetric}");
        for rules in [&full, &restricted, &symmetric] {
            assert!(rules.contains("policy drop"), "{rules}");
            assert!(
                rules.contains("ct state established,related accept"),
                "{rules}"
            );
        }
    }

    #[test]
    fn netem_arguments() {
        let link = Link::delay(Duration::from_millis(40)).with_loss(1.5);
        assert_eq!(
            link.netem_args(),
            ["netem", "delay", "40000us", "loss", "1.5%"]
        );
        assert!(Link::default().is_clean());
        assert!(!link.is_clean());
    }
}
