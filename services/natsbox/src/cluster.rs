//! A local nats-server cluster for tests and the loadtest: N nodes with
//! JetStream, `server_name`s, full-mesh routes and their own stores, on
//! loopback or, for partition tests, each node in a network namespace of its
//! own joined by a bridge, so one node's link can be cut and healed.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::{ClusterSpec, LocalServer, NatsboxError, ServerOptions};

/// How to start a cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// The nats-server binary.
    pub binary: PathBuf,
    /// Each node's store goes in `<root>/<server_name>`.
    pub root: PathBuf,
    /// Number of nodes (3 for R3).
    pub size: usize,
    /// `sync_interval: always` on every node.
    pub sync_always: bool,
    /// Each node in a network namespace of its own, so that [`LocalCluster::partition`]
    /// can cut it off (needs root and `ip`).
    pub isolated: bool,
}

impl ClusterOptions {
    /// Three loopback nodes with the server's default sync interval.
    pub fn new(binary: PathBuf, root: PathBuf) -> Self {
        ClusterOptions { binary, root, size: 3, sync_always: false, isolated: false }
    }
}

/// A running cluster; every node is killed (and any namespace removed) on drop.
#[derive(Debug)]
pub struct LocalCluster {
    nodes: Vec<LocalServer>,
    net: Option<Partition>,
}

impl LocalCluster {
    /// Starts every node and waits until each accepts clients (JetStream may
    /// still be electing its meta leader for a few seconds after).
    pub fn start(options: ClusterOptions) -> Result<LocalCluster, NatsboxError> {
        let name = format!("jetsched-{}", std::process::id());
        let net = if options.isolated { Some(Partition::create(options.size)?) } else { None };
        let hosts: Vec<String> =
            (0..options.size).map(|i| net.as_ref().map_or_else(|| "127.0.0.1".to_string(), |n| n.address(i))).collect();
        // A port found free can be taken before the node binds it (by
        // another test's server): start again on other ports.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match start_nodes(&options, &name, &hosts, net.as_ref()) {
                Ok(nodes) => return Ok(LocalCluster { nodes, net }),
                Err(err) if attempt < 5 => tracing::debug!(%err, "cluster did not start; trying other ports"),
                Err(err) => return Err(err),
            }
        }
    }

    /// The seed list every client takes: `nats://a:p1,nats://b:p2,...`.
    pub fn urls(&self) -> String {
        self.nodes.iter().map(LocalServer::url).collect::<Vec<_>>().join(",")
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the cluster has no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node `i` (0-based), to kill, stop or restart it.
    pub fn node(&mut self, i: usize) -> &mut LocalServer {
        &mut self.nodes[i]
    }

    /// Cuts node `i` off from the other nodes and from every client (its
    /// link goes down); clients connected to it reconnect elsewhere.
    pub fn partition(&self, i: usize) -> Result<(), NatsboxError> {
        match &self.net {
            Some(net) => net.set_link(i, false),
            None => Err(NatsboxError::Start("partitions need a cluster started with `isolated`".to_string())),
        }
    }

    /// Restores node `i`'s link.
    pub fn heal(&self, i: usize) -> Result<(), NatsboxError> {
        match &self.net {
            Some(net) => net.set_link(i, true),
            None => Ok(()),
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        // Servers first: a namespace with a process in it lingers.
        for node in &mut self.nodes {
            node.kill();
        }
        self.net.take();
    }
}

/// Starts every node on fresh ports; a node that fails stops those started.
fn start_nodes(
    options: &ClusterOptions,
    name: &str,
    hosts: &[String],
    net: Option<&Partition>,
) -> Result<Vec<LocalServer>, NatsboxError> {
    // In namespaces every node has its own port space; on loopback they
    // share one, so each needs a free client and route port.
    let ports = free_ports(options.size * 2)?;
    let (client_ports, route_ports) = ports.split_at(options.size);
    let mut nodes = Vec::with_capacity(options.size);
    for i in 0..options.size {
        let server_name = format!("n{}", i + 1);
        let routes = (0..options.size).filter(|j| *j != i).map(|j| format!("{}:{}", hosts[j], route_ports[j]));
        let node = ServerOptions {
            port: client_ports[i],
            host: hosts[i].clone(),
            server_name: Some(server_name.clone()),
            cluster: Some(ClusterSpec { name: name.to_string(), port: route_ports[i], routes: routes.collect() }),
            sync_always: options.sync_always,
            netns: net.map(|n| n.namespace(i)),
            ..ServerOptions::new(options.binary.clone(), options.root.join(&server_name))
        };
        // Dropping the nodes started so far kills them.
        nodes.push(LocalServer::start(node)?);
    }
    Ok(nodes)
}

/// `n` distinct ports free on loopback right now, drawn from below the
/// kernel's ephemeral range: a port from inside it (what binding port 0
/// gives) is soon used again by some outgoing connection, and a node
/// restarted on its port after an outage would find it taken.
fn free_ports(n: usize) -> Result<Vec<u16>, NatsboxError> {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next().and_then(|p| p.parse::<u16>().ok()))
        .unwrap_or(32768);
    let mut out = Vec::with_capacity(n);
    if low > 12000 {
        for _ in 0..n * 200 {
            if out.len() == n {
                break;
            }
            let port = fastrand::u16(10000..low);
            if !out.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
                out.push(port);
            }
        }
    }
    if out.len() == n {
        return Ok(out);
    }
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()
        .map_err(crate::io("pick a free port"))?;
    listeners.iter().map(|l| l.local_addr().map(|a| a.port()).map_err(crate::io("read a port"))).collect()
}

/// Network namespaces, one per node, on a bridge in the host namespace that
/// clients on the host reach them through. Addresses come from 198.18.0.0/15,
/// the range reserved for network tests (RFC 2544); the traffic never leaves
/// this machine. Removed on drop.
#[derive(Debug)]
pub struct Partition {
    id: u32,
    size: usize,
}

static NEXT_NET: AtomicU32 = AtomicU32::new(0);

impl Partition {
    fn create(size: usize) -> Result<Partition, NatsboxError> {
        // A subnet no other cluster on this machine uses: the first bridge
        // name that can be created wins it.
        let base = std::process::id().wrapping_mul(7);
        for _ in 0..250 {
            let id = (base.wrapping_add(NEXT_NET.fetch_add(1, Ordering::Relaxed))) % 250 + 1;
            if ip(&["link", "add", &bridge_name(id), "type", "bridge"]).is_err() {
                continue;
            }
            // From here on, drop removes what was made.
            let net = Partition { id, size };
            ip(&["addr", "add", &format!("198.18.{id}.254/24"), "dev", &net.bridge()])?;
            ip(&["link", "set", &net.bridge(), "up"])?;
            for i in 0..size {
                let ns = net.namespace(i);
                ip(&["netns", "add", &ns])?;
                ip(&["link", "add", &net.veth(i), "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
                ip(&["link", "set", &net.veth(i), "master", &net.bridge(), "up"])?;
                ip(&["-n", &ns, "addr", "add", &format!("{}/24", net.address(i)), "dev", "eth0"])?;
                ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
                ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            }
            return Ok(net);
        }
        Err(NatsboxError::Start("no free test subnet for network namespaces".to_string()))
    }

    fn bridge(&self) -> String {
        bridge_name(self.id)
    }

    fn veth(&self, i: usize) -> String {
        format!("jsv{}n{}", self.id, i + 1)
    }

    fn namespace(&self, i: usize) -> String {
        format!("jetsched-{}-n{}", self.id, i + 1)
    }

    fn address(&self, i: usize) -> String {
        format!("198.18.{}.{}", self.id, i + 1)
    }

    fn set_link(&self, i: usize, up: bool) -> Result<(), NatsboxError> {
        ip(&["link", "set", &self.veth(i), if up { "up" } else { "down" }])
    }

    /// Whether this machine lets the tests make namespaces (root and `ip`).
    pub fn available() -> bool {
        Command::new("ip").args(["netns", "list"]).output().is_ok_and(|o| o.status.success())
            && Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0")
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        for i in 0..self.size {
            let _ = ip(&["netns", "del", &self.namespace(i)]);
        }
        let _ = ip(&["link", "del", &self.bridge()]);
    }
}

fn bridge_name(id: u32) -> String {
    format!("jsbr{id}")
}

fn ip(args: &[&str]) -> Result<(), NatsboxError> {
    let out = Command::new("ip").args(args).output().map_err(crate::io("run ip"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NatsboxError::Start(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim())))
    }
}
