//! Several hosts on one machine: each host a Linux network namespace with a veth pair to a
//! bridge in the test's own namespace, on addresses that exist only inside those namespaces.
//! Names carry a per-run prefix (`tn<pid><letter>`); everything is removed on drop, and a
//! start removes what runs of dead processes left.
//!
//! Where namespaces are not permitted (no root, no CAP_NET_ADMIN, a seccomp'd container) the
//! harness says so loudly on stderr and falls back to one distinct 127.x address per host in
//! this namespace: the same commands run, but links cannot be cut ([`Hosts::isolated`] is
//! false, and [`Hosts::link_down`] reports that it cannot).
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU8, Ordering};

use anyhow::{Context, bail};

/// Prefix of every namespace and link name this harness makes.
const PREFIX: &str = "tn";

/// One host.
#[derive(Debug, Clone)]
pub struct Host {
    /// Its namespace (`None` in the loopback fallback).
    pub netns: Option<String>,
    /// Its address (inside its namespace only, or a 127.x address in the fallback).
    pub ip: IpAddr,
    /// Its end of the veth pair (inside its namespace).
    link: String,
}

/// A set of hosts; removed on drop.
pub struct Hosts {
    /// The hosts, by index.
    pub hosts: Vec<Host>,
    prefix: String,
    bridge: Option<String>,
}

impl Hosts {
    /// Makes `n` hosts (at most 9), as namespaces if permitted, else on 127.x addresses.
    pub fn new(n: usize) -> anyhow::Result<Self> {
        assert!((1..=9).contains(&n), "1 to 9 hosts");
        sweep_leftovers();
        static RUN: AtomicU8 = AtomicU8::new(0);
        let letter = (b'a' + RUN.fetch_add(1, Ordering::Relaxed) % 26) as char;
        let prefix = format!("{PREFIX}{}{letter}", std::process::id());
        let mut hosts = Self { hosts: Vec::new(), prefix: prefix.clone(), bridge: None };
        match hosts.build(n) {
            Ok(()) => Ok(hosts),
            Err(e) => {
                hosts.remove();
                let why = format!("{e:#}");
                if !why.contains("Operation not permitted") && !why.contains("Permission denied") {
                    return Err(e);
                }
                eprintln!("\n{}", "!".repeat(100));
                eprintln!("!!! NETWORK NAMESPACES ARE NOT PERMITTED HERE: {why}");
                eprintln!("!!! FALLING BACK to one 127.x address per host in ONE namespace: links cannot be cut,");
                eprintln!("!!! so the link-failure parts of this test are NOT exercised.");
                eprintln!("{}\n", "!".repeat(100));
                // 127.<pid-derived>.<run>.<host>: distinct per host and per concurrent run.
                let b = (std::process::id() % 250) as u8 + 1;
                let c = letter as u8 - b'a' + 1;
                let hosts = (0..n)
                    .map(|i| Host { netns: None, ip: IpAddr::V4(Ipv4Addr::new(127, b, c, i as u8 + 1)), link: String::new() })
                    .collect();
                Ok(Self { hosts, prefix, bridge: None })
            }
        }
    }

    /// Whether the hosts are real namespaces (links can be cut).
    pub fn isolated(&self) -> bool {
        self.bridge.is_some()
    }

    /// Creates the bridge, then each host's namespace, veth pair and address.
    fn build(&mut self, n: usize) -> anyhow::Result<()> {
        let bridge = format!("{}br", self.prefix);
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        self.bridge = Some(bridge.clone());
        ip(&["link", "set", &bridge, "up"])?;
        // 10.<b>.<c>.0/24, derived from the run: addresses exist only inside the namespaces,
        // but distinct subnets keep concurrent runs readable in `ip` output.
        let b = (std::process::id() % 200) as u8 + 20;
        let c = self.prefix.as_bytes()[self.prefix.len() - 1] - b'a' + 1;
        for i in 0..n {
            let ns = format!("{}h{i}", self.prefix);
            let outer = format!("{}v{i}", self.prefix);
            let inner = format!("{}p{i}", self.prefix);
            ip(&["netns", "add", &ns])?;
            let addr = Ipv4Addr::new(10, b, c, i as u8 + 1);
            self.hosts.push(Host { netns: Some(ns.clone()), ip: IpAddr::V4(addr), link: inner.clone() });
            ip(&["link", "add", &outer, "type", "veth", "peer", "name", &inner])?;
            ip(&["link", "set", &inner, "netns", &ns])?;
            ip(&["link", "set", &outer, "master", &bridge, "up"])?;
            ip(&["-n", &ns, "addr", "add", &format!("{addr}/24"), "dev", &inner])?;
            ip(&["-n", &ns, "link", "set", &inner, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    /// A command that runs `program` on host `i` (`ip netns exec`, or directly in the fallback).
    pub fn command(&self, i: usize, program: &str) -> Command {
        match &self.hosts[i].netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, program]);
                c
            }
            None => Command::new(program),
        }
    }

    /// Takes host `i`'s link down (its traffic fails at once: "Network is unreachable").
    pub fn link_down(&self, i: usize) -> anyhow::Result<()> {
        self.set_link(i, "down")
    }

    /// Brings host `i`'s link back up.
    pub fn link_up(&self, i: usize) -> anyhow::Result<()> {
        self.set_link(i, "up")
    }

    fn set_link(&self, i: usize, state: &str) -> anyhow::Result<()> {
        let host = &self.hosts[i];
        let Some(ns) = &host.netns else { bail!("host {i} is a 127.x fallback address: its link cannot be cut") };
        ip(&["-n", ns, "link", "set", &host.link, state])
    }

    /// Removes the namespaces (their veth ends go with them, and so the outer ends) and the
    /// bridge. Processes still running in a namespace keep it alive unnamed: stop them first.
    fn remove(&mut self) {
        for host in self.hosts.drain(..) {
            if let Some(ns) = host.netns {
                let _ = ip(&["netns", "del", &ns]);
            }
        }
        if let Some(bridge) = self.bridge.take() {
            let _ = ip(&["link", "del", &bridge]);
        }
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Runs `ip ARGS`, failing with its stderr.
fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out: Output = Command::new("ip").args(args).output().context("run ip (iproute2)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Removes namespaces and links of earlier runs whose process is gone (`tn<pid><letter>…`).
fn sweep_leftovers() {
    let dead = |name: &str| {
        let digits: String = name.strip_prefix(PREFIX).unwrap_or("").chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<u32>().is_ok_and(|pid| pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists())
    };
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if name.starts_with(PREFIX) && dead(name) {
                let _ = ip(&["netns", "del", name]);
            }
        }
    }
    if let Ok(out) = Command::new("ip").args(["-o", "link", "show"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            // "12: tn123abr: <...>" or "13: tn123av0@if12: <...>"
            let name = line.split(": ").nth(1).unwrap_or("").split('@').next().unwrap_or("");
            if name.starts_with(PREFIX) && dead(name) {
                let _ = ip(&["link", "del", name]);
            }
        }
    }
}
