//! Self-test of the network-namespace harness (`cocoon_tests::netns`): each NAT kind maps and
//! filters as its docs say, private addresses are unreachable across the internet, uplinks
//! cut and heal, links add their delay, and a UPnP router's miniupnpd maps a port.
//!
//! Needs root, `ip` and `nft` (and `miniupnpd` for the UPnP test); without them the tests fail
//! with the reason. Every receive has a timeout; each test takes about a second.

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use cocoon_tests::netns::{Link, Nat, Net, NetBuilder, RouterSpec, UdpProbe};

/// How long we wait for a datagram that should arrive (they take microseconds).
const ARRIVES: Duration = Duration::from_secs(3);

/// How long we wait for one that should not arrive, after one sent later did.
const QUIET: Duration = Duration::from_millis(300);

/// The port home hosts send from.
const HOME_PORT: u16 = 5000;

/// The port public hosts listen on.
const PUBLIC_PORT: u16 = 7000;

/// What one home host behind a router of some NAT kind sees.
#[derive(Debug)]
struct Observed {
    /// H's source address as A saw it.
    toward_a: SocketAddrV4,
    /// H's source address as B saw it.
    toward_b: SocketAddrV4,
    /// The router's WAN address.
    wan: std::net::Ipv4Addr,
    /// C (a host H never sent to) reached H through H's mapping towards A.
    from_c: bool,
    /// A, from a port H never sent to, reached H through that mapping.
    from_a_other_port: bool,
    /// A, from the port H sent to, reached H (the reply every NAT lets through).
    from_a_same_port: bool,
}

/// Public hosts A, B, C; a router of kind `nat` with one home host H. H sends from one port
/// to A and to B; A and B report the source they saw; C, A from another port and A from the
/// port H sent to send to the mapping A saw.
fn observe(nat: Nat) -> Result<Observed> {
    let net = NetBuilder::new()
        .public("a")
        .public("b")
        .public("c")
        .router("r", RouterSpec::new(nat))
        .home("h", "r")
        .build()?;
    let (a, b, c, h) = (
        net.host("a")?,
        net.host("b")?,
        net.host("c")?,
        net.host("h")?,
    );
    let mut at_a = a.udp_probe(PUBLIC_PORT)?;
    let mut at_a_other = a.udp_probe(PUBLIC_PORT + 1)?;
    let mut at_b = b.udp_probe(PUBLIC_PORT)?;
    let mut at_c = c.udp_probe(PUBLIC_PORT)?;
    let mut at_h = h.udp_probe(HOME_PORT)?;

    at_h.send(SocketAddrV4::new(a.addr(), PUBLIC_PORT), "to-a")?;
    at_h.send(SocketAddrV4::new(b.addr(), PUBLIC_PORT), "to-b")?;
    let toward_a = at_a.expect("to-a", ARRIVES)?.from;
    let toward_b = at_b.expect("to-b", ARRIVES)?.from;

    at_c.send(toward_a, "from-c")?;
    at_a_other.send(toward_a, "from-a-other-port")?;
    at_a.send(toward_a, "from-a-same-port")?;
    // Sent last: once it is in, the others had their chance too.
    let from_a_same_port = at_h.wait_for("from-a-same-port", ARRIVES)?.is_some();
    let rest = at_h.drain(QUIET)?;
    let got = |payload: &str| rest.iter().any(|d| d.payload == payload);
    let observed = Observed {
        toward_a,
        toward_b,
        wan: net.router("r")?.wan_addr(),
        from_c: got("from-c"),
        from_a_other_port: got("from-a-other-port"),
        from_a_same_port,
    };
    eprintln!("{nat:?}: {observed:?}");
    Ok(observed)
}

#[test]
fn full_cone_maps_and_filters_independently_of_the_endpoint() -> Result<()> {
    let o = observe(Nat::FullCone)?;
    ensure!(*o.toward_a.ip() == o.wan, "{o:?}");
    ensure!(o.toward_a == o.toward_b, "one mapping for all: {o:?}");
    ensure!(o.toward_a.port() == HOME_PORT, "port preserved: {o:?}");
    ensure!(o.from_c, "anyone reaches the mapping: {o:?}");
    ensure!(o.from_a_other_port, "from any port: {o:?}");
    ensure!(o.from_a_same_port, "{o:?}");
    Ok(())
}

#[test]
fn port_restricted_maps_independently_but_filters_by_address_and_port() -> Result<()> {
    let o = observe(Nat::PortRestricted)?;
    ensure!(*o.toward_a.ip() == o.wan, "{o:?}");
    ensure!(o.toward_a == o.toward_b, "one mapping for all: {o:?}");
    ensure!(o.toward_a.port() == HOME_PORT, "port preserved: {o:?}");
    ensure!(!o.from_c, "a stranger is filtered: {o:?}");
    ensure!(!o.from_a_other_port, "another port is filtered: {o:?}");
    ensure!(o.from_a_same_port, "the reply gets in: {o:?}");
    Ok(())
}

#[test]
fn symmetric_maps_each_destination_to_a_new_port() -> Result<()> {
    let o = observe(Nat::Symmetric)?;
    ensure!(
        *o.toward_a.ip() == o.wan && *o.toward_b.ip() == o.wan,
        "{o:?}"
    );
    ensure!(
        o.toward_a.port() != o.toward_b.port(),
        "a port per destination: {o:?}"
    );
    ensure!(!o.from_c, "a stranger is filtered: {o:?}");
    ensure!(!o.from_a_other_port, "another port is filtered: {o:?}");
    ensure!(o.from_a_same_port, "the reply gets in: {o:?}");
    Ok(())
}

/// Sends `payload` from `from` to `to` and says whether `at` received it within [`QUIET`].
fn arrives(
    from: &mut UdpProbe,
    to: SocketAddrV4,
    at: &mut UdpProbe,
    payload: &str,
) -> Result<bool> {
    from.send(to, payload)?;
    Ok(at.wait_for(payload, QUIET)?.is_some())
}

#[test]
fn private_addresses_are_unreachable_across_the_internet() -> Result<()> {
    // Full-cone routers: the most open NAT still does not route to private addresses.
    let net = NetBuilder::new()
        .public("a")
        .router("r1", RouterSpec::new(Nat::FullCone))
        .home("h1", "r1")
        .router("r2", RouterSpec::new(Nat::FullCone))
        .home("h2", "r2")
        .build()?;
    let (a, h1, h2) = (net.host("a")?, net.host("h1")?, net.host("h2")?);
    ensure!(h1.addr().is_private() && h2.addr().is_private());
    ensure!(!a.addr().is_private() && !net.router("r1")?.wan_addr().is_private());
    let mut at_a = a.udp_probe(PUBLIC_PORT)?;
    let mut at_h1 = h1.udp_probe(HOME_PORT)?;
    let mut at_h2 = h2.udp_probe(HOME_PORT)?;

    let h1_private = SocketAddrV4::new(h1.addr(), HOME_PORT);
    ensure!(
        !arrives(&mut at_a, h1_private, &mut at_h1, "a-to-private")?,
        "a public host reached a LAN host's private address"
    );
    ensure!(
        !arrives(&mut at_h2, h1_private, &mut at_h1, "lan-to-lan")?,
        "a LAN host reached another LAN's private address"
    );
    // The probes would have seen them: the public mapping works both ways.
    let h1_public = SocketAddrV4::new(net.router("r1")?.wan_addr(), HOME_PORT);
    ensure!(arrives(&mut at_a, h1_public, &mut at_h1, "a-to-mapping")?);
    ensure!(arrives(
        &mut at_h2,
        h1_public,
        &mut at_h1,
        "lan-to-mapping"
    )?);
    let a_addr = SocketAddrV4::new(a.addr(), PUBLIC_PORT);
    ensure!(arrives(&mut at_h1, a_addr, &mut at_a, "h1-to-a")?);
    Ok(())
}

#[test]
fn uplinks_cut_and_heal() -> Result<()> {
    let net = NetBuilder::new()
        .public("a")
        .router("r", RouterSpec::new(Nat::PortRestricted))
        .home("h", "r")
        .build()?;
    let (a, h, r) = (net.host("a")?, net.host("h")?, net.router("r")?);
    let mut at_a = a.udp_probe(PUBLIC_PORT)?;
    let mut at_h = h.udp_probe(HOME_PORT)?;
    let to_a = SocketAddrV4::new(a.addr(), PUBLIC_PORT);
    ensure!(arrives(&mut at_h, to_a, &mut at_a, "before")?);

    r.set_uplink(false)?;
    ensure!(!arrives(&mut at_h, to_a, &mut at_a, "router-cut")?);
    r.set_uplink(true)?;
    at_h.send(to_a, "router-healed")?;
    at_a.expect("router-healed", ARRIVES)?;

    h.set_uplink(false)?;
    ensure!(!arrives(&mut at_h, to_a, &mut at_a, "home-cut")?);
    h.set_uplink(true)?;
    at_h.send(to_a, "home-healed")?;
    at_a.expect("home-healed", ARRIVES)?;

    a.set_uplink(false)?;
    ensure!(!arrives(&mut at_h, to_a, &mut at_a, "public-cut")?);
    a.set_uplink(true)?;
    at_h.send(to_a, "public-healed")?;
    at_a.expect("public-healed", ARRIVES)?;
    Ok(())
}

/// A link's delay is added to what its node receives. Kernels without netem (some CI VMs)
/// cannot build such a network: then the error must say so, and the test says which it saw.
#[test]
fn link_delay_is_added_or_netem_is_named() -> Result<()> {
    let delay = Duration::from_millis(150);
    let built = NetBuilder::new()
        .public_with_link("a", Link::delay(delay))
        .public("b")
        .build();
    let net: Net = match built {
        Ok(net) => net,
        Err(e) => {
            let message = format!("{e:#}");
            ensure!(
                message.contains("no netem qdisc"),
                "building a delayed link failed without naming netem: {message}"
            );
            eprintln!("this kernel has no netem; checked the error instead: {message}");
            return Ok(());
        }
    };
    let (a, b) = (net.host("a")?, net.host("b")?);
    let mut at_a = a.udp_probe(PUBLIC_PORT)?;
    let mut at_b = b.udp_probe(PUBLIC_PORT)?;
    let started = Instant::now();
    at_b.send(SocketAddrV4::new(a.addr(), PUBLIC_PORT), "slow")?;
    at_a.expect("slow", ARRIVES + delay)?;
    let took = started.elapsed();
    ensure!(took >= delay, "towards a took {took:?}, under {delay:?}");
    let started = Instant::now();
    at_a.send(SocketAddrV4::new(b.addr(), PUBLIC_PORT), "fast")?;
    at_b.expect("fast", ARRIVES)?;
    let took = started.elapsed();
    ensure!(took < delay, "towards b took {took:?}, b's link is clean");

    a.set_link(&Link::default())?;
    let started = Instant::now();
    at_b.send(SocketAddrV4::new(a.addr(), PUBLIC_PORT), "cleaned")?;
    at_a.expect("cleaned", ARRIVES)?;
    ensure!(started.elapsed() < delay, "the cleaned link still delays");
    Ok(())
}

/// A UPnP IGD client: SSDP M-SEARCH on the LAN, the device description, then
/// GetExternalIPAddress and AddPortMapping (UDP, external port argv[1] to this host's
/// argv[2]) over SOAP. Prints `external IP`, then `mapped`.
const UPNP_CLIENT_PY: &str = r#"import re, socket, sys, urllib.request
ext_port, int_port = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1)
search = ("M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nMAN: \"ssdp:discover\"\r\n"
          "MX: 1\r\nST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n\r\n").encode()
reply = None
for _ in range(3):
    s.sendto(search, ("239.255.255.250", 1900))
    try:
        reply = s.recvfrom(4096)[0].decode()
        break
    except socket.timeout:
        pass
if reply is None:
    sys.exit("no SSDP answer on the LAN")
location = re.search(r"(?im)^location:\s*(\S+)", reply).group(1)
desc = urllib.request.urlopen(location, timeout=3).read().decode()
control = re.search(
    r"<serviceType>urn:schemas-upnp-org:service:WANIPConnection:\d</serviceType>.*?"
    r"<controlURL>([^<]+)</controlURL>", desc, re.S).group(1)
# As igd-next (libp2p's UPnP client) does: the v1 service type whatever the description says.
service = "urn:schemas-upnp-org:service:WANIPConnection:1"
base = re.match(r"http://[^/]+", location).group(0)
local_ip = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
local_ip.connect((re.match(r"http://([^:/]+)", location).group(1), 1))
local_ip = local_ip.getsockname()[0]
def soap(action, args):
    body = ('<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"'
            ' s:encodingStyle="http://schemas.xmlsoap.org/soap/encoding/"><s:Body>'
            '<u:%s xmlns:u="%s">%s</u:%s></s:Body></s:Envelope>'
            % (action, service, "".join("<%s>%s</%s>" % (k, v, k) for k, v in args), action))
    request = urllib.request.Request(base + control, data=body.encode(), headers={
        "Content-Type": 'text/xml; charset="utf-8"', "SOAPAction": '"%s#%s"' % (service, action)})
    return urllib.request.urlopen(request, timeout=3).read().decode()
ip = re.search(r"<NewExternalIPAddress>([^<]*)<", soap("GetExternalIPAddress", [])).group(1)
print("external", ip, flush=True)
soap("AddPortMapping", [("NewRemoteHost", ""), ("NewExternalPort", ext_port),
    ("NewProtocol", "UDP"), ("NewInternalPort", int_port), ("NewInternalClient", local_ip),
    ("NewEnabled", "1"), ("NewPortMappingDescription", "netns-self-test"),
    ("NewLeaseDuration", "600")])
print("mapped", flush=True)
"#;

#[test]
fn upnp_router_maps_a_port_for_its_lan_host() -> Result<()> {
    let net = NetBuilder::new()
        .public("c")
        .router("r", RouterSpec::new(Nat::PortRestricted).upnp(true))
        .home("h", "r")
        .build()?;
    let (c, h, r) = (net.host("c")?, net.host("h")?, net.router("r")?);
    let mut at_c = c.udp_probe(PUBLIC_PORT)?;
    let mut at_h = h.udp_probe(HOME_PORT)?;
    let external = SocketAddrV4::new(r.wan_addr(), 40000);
    ensure!(
        !arrives(&mut at_c, external, &mut at_h, "before-mapping")?,
        "port-restricted router let a stranger in without a mapping"
    );

    let script = net.dir().join("upnp_client.py");
    std::fs::write(&script, UPNP_CLIENT_PY)?;
    let output = h
        .command("timeout", ["20", "python3"])
        .arg(&script)
        .args(["40000".to_string(), HOME_PORT.to_string()])
        .output()
        .context("running the UPnP client")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let log = r
        .upnp_log()
        .map(|p| std::fs::read_to_string(p).unwrap_or_default())
        .unwrap_or_default();
    ensure!(
        output.status.success() && stdout.contains("mapped"),
        "UPnP client failed ({}): {stdout}{}\nminiupnpd log:\n{log}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    ensure!(
        stdout.contains(&format!("external {}", r.wan_addr())),
        "GetExternalIPAddress: {stdout}"
    );
    at_c.send(external, "through-mapping")?;
    let got = at_h.wait_for("through-mapping", ARRIVES)?;
    ensure!(
        got.is_some(),
        "the mapped port did not forward; ruleset:\n{}\nminiupnpd log:\n{log}",
        r.ruleset()?
    );
    Ok(())
}

/// Real `cocoon node` processes run inside hosts: a bootstrap node on the internet, and a
/// node behind a port-restricted NAT that bootstraps through it; the bootstrap node sees it
/// come from the router's WAN address.
#[test]
fn nodes_run_inside_hosts() -> Result<()> {
    let net = NetBuilder::new()
        .public("boot")
        .router("r", RouterSpec::new(Nat::PortRestricted))
        .home("h", "r")
        .build()?;
    let (boot_host, h) = (net.host("boot")?, net.host("h")?);
    let wan = net.router("r")?.wan_addr();
    // The prefix composes: `ip netns exec NS env RUST_LOG=… cocoon node …`; libp2p's swarm
    // logs each connection with the address it came from at debug.
    let mut prefix = boot_host.prefix();
    prefix.extend(["env".into(), "RUST_LOG=info,libp2p_swarm=debug".into()]);
    let listen = format!("/ip4/{}/udp/0/quic-v1", boot_host.addr());
    let no_mdns = ["--no-mdns".to_string()];
    let boot = cocoon_tests::spawn_node_via(&prefix, net.dir(), "boot", &listen, &no_mdns)?;
    let boot_addr = boot_host.node_addr(&boot)?;
    let flags = ["--no-mdns".into(), "--bootstrap".into(), boot_addr];
    let home = h.spawn_node(net.dir(), "home", "/ip4/0.0.0.0/udp/0/quic-v1", &flags)?;
    // It listens on its private address; the bootstrap node sees the router's.
    h.node_addr(&home)?;
    let from_wan = format!("/ip4/{wan}/udp/");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = std::fs::read_to_string(&boot.log)?;
        if log
            .lines()
            .any(|l| l.contains(&home.peer_id) && l.contains(&from_wan))
        {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "the bootstrap node never saw {} from {from_wan}; its log:\n{log}",
            home.peer_id
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
