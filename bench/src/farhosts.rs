//! Endpoints on "other hosts" for the health-checks scenario: a network namespace
//! reached over a veth pair, every address of 198.18.0.0/16 (RFC 2544's benchmarking
//! range) local inside it.
//!
//! Why not loopback alone: on loopback the kernel delivers a packet into the
//! receiving socket, and wakes its reader, inside the sender's `send`, so a checker
//! is charged for its endpoints' TCP receive work, and an endpoint woken on the
//! checker's CPU preempts it. Here the far side's receive processing is steered to
//! the load CPUs (RPS on its end of the pair), as a remote host does it on its own
//! CPUs; what remains on the checker's core is its own send, receive and scheduling.
//!
//! Needs root and iproute2; `create` says why it cannot when it cannot. Dropping the
//! value deletes the namespace (and with it both ends of the pair) and the route.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};

/// The far side's addresses: 198.18.0.0/16, every one local in the namespace.
const FAR_NET: &str = "198.18.0.0/16";
/// The link between the two ends of the pair.
const NEAR_END: &str = "198.19.255.1/30";
const FAR_END: &str = "198.19.255.2";

pub struct FarHosts {
    namespace: String,
    near: String,
}

impl FarHosts {
    /// Makes the namespace, with the far side's receive work steered to `cpus`.
    pub fn create(cpus: &[usize]) -> io::Result<FarHosts> {
        let id = std::process::id();
        let hosts = FarHosts {
            namespace: format!("weft-bench-{id}"),
            near: format!("wb{id}a"),
        };
        let far = format!("wb{id}b");
        let ns = hosts.namespace.as_str();
        let far_end = format!("{FAR_END}/30");
        let rps = format!("{:x}", cpus.iter().fold(0u64, |m, c| m | 1 << (c % 64)));
        let steps: Vec<Vec<&str>> = vec![
            vec!["netns", "add", ns],
            vec![
                "link",
                "add",
                &hosts.near,
                "type",
                "veth",
                "peer",
                "name",
                &far,
            ],
            vec!["link", "set", &far, "netns", ns],
            vec!["addr", "add", NEAR_END, "dev", &hosts.near],
            vec!["link", "set", &hosts.near, "up"],
            vec!["-n", ns, "addr", "add", &far_end, "dev", &far],
            vec!["-n", ns, "link", "set", &far, "up"],
            vec!["-n", ns, "link", "set", "lo", "up"],
            vec!["-n", ns, "route", "add", "local", FAR_NET, "dev", "lo"],
            vec!["route", "add", FAR_NET, "via", FAR_END],
        ];
        for step in steps {
            ip(&step)?;
        }
        if !cpus.is_empty() {
            let knob = format!("/sys/class/net/{far}/queues/rx-0/rps_cpus");
            in_namespace(ns, "sh", &["-c", &format!("echo {rps} > {knob}")])?;
        }
        Ok(hosts)
    }

    /// The `i`th far endpoint on `port` (i below 62,500).
    pub fn endpoint(i: usize, port: u16) -> SocketAddr {
        nth_address([198, 18], i, port)
    }

    /// `program args...` inside the namespace.
    pub fn command(&self, program: &std::path::Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.namespace]).arg(program);
        c
    }
}

impl Drop for FarHosts {
    fn drop(&mut self) {
        let _ = ip(&["route", "del", FAR_NET]);
        let _ = ip(&["link", "del", &self.near]);
        let _ = ip(&["netns", "del", &self.namespace]);
    }
}

/// The `i`th of the addresses `a.b.x.y` (250 to a `x`, `y` from 1), on `port`: the
/// health-checks scenario's endpoints, on loopback (127.0) or here (198.18).
pub fn nth_address([a, b]: [u8; 2], i: usize, port: u16) -> SocketAddr {
    let ip = Ipv4Addr::new(a, b, (i / 250) as u8, (i % 250 + 1) as u8);
    SocketAddr::from((ip, port))
}

fn ip(args: &[&str]) -> io::Result<()> {
    run(
        Command::new("ip").args(args),
        &format!("ip {}", args.join(" ")),
    )
}

fn in_namespace(ns: &str, program: &str, args: &[&str]) -> io::Result<()> {
    run(
        Command::new("ip")
            .args(["netns", "exec", ns, program])
            .args(args),
        &format!("{program} in {ns}"),
    )
}

fn run(command: &mut Command, what: &str) -> io::Result<()> {
    let out = command.stdin(Stdio::null()).output()?;
    if out.status.success() {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "{what}: {} (the far-host point needs root and iproute2)",
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}
