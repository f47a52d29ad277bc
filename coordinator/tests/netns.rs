//! The multi-host harness on real etcd: etcd in one network namespace, reached from another;
//! that host's link down makes it unreachable, up makes it reachable again.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::etcd::{Etcd, Placement};
use common::netns::Hosts;

/// `etcdctl put KEY VALUE` from host `i` against `url`, with short deadlines and no proxy
/// (these machines set proxy variables, which etcdctl's gRPC would honour).
fn put(hosts: &Hosts, i: usize, url: &str, key: &str) -> std::process::Output {
    let mut cmd: Command = hosts.command(i, "etcdctl");
    cmd.args(["--endpoints", url, "--dial-timeout=1s", "--command-timeout=2s", "put", key, "v"]);
    for var in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"] {
        cmd.env_remove(var);
    }
    cmd.env("ETCDCTL_API", "3").output().expect("run etcdctl")
}

#[test]
fn etcd_in_one_namespace_is_reached_from_another_until_the_link_goes_down() {
    let hosts = Hosts::new(2).expect("make hosts");
    // Declared after the hosts: dropped (stopped) before their namespaces are removed.
    let etcd = Etcd::start_at(Placement { ip: hosts.hosts[0].ip, netns: hosts.hosts[0].netns.clone() }).expect("start etcd in host 0");
    let url = etcd.url();

    let first = put(&hosts, 1, &url, "from-host-1");
    assert!(first.status.success(), "host 1 -> etcd on host 0: {}", String::from_utf8_lossy(&first.stderr));
    if !hosts.isolated() {
        eprintln!("!!! NO NETWORK NAMESPACES: the link-down/up part of this test was SKIPPED (see above)");
        return;
    }

    hosts.link_down(1).unwrap();
    let cut = Instant::now();
    let refused = put(&hosts, 1, &url, "while-down");
    assert!(!refused.status.success(), "a put with host 1's link down succeeded");
    println!("link down: put failed after {:.2} s: {}", cut.elapsed().as_secs_f64(), String::from_utf8_lossy(&refused.stderr).trim());

    hosts.link_up(1).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let again = put(&hosts, 1, &url, "after-up");
        if again.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "host 1 did not reach etcd within 15 s of link up: {}", String::from_utf8_lossy(&again.stderr));
        std::thread::sleep(Duration::from_millis(200));
    }
}
