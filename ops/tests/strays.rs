//! Stray, wrong-secret and wrong-generation connections to ring and rendezvous ports are refused
//! and do not disturb the job.

mod common;

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use tessera_ops::{Collective, JobAuth, JoinRequest, OpsError, Rank, ReduceOp, RendezvousServer, Secret, TcpRing, join};

#[test]
fn ring_listener_refuses_strays_and_accepts_the_real_neighbour() {
    let good = common::config(4096, Duration::from_secs(10));
    let (mut ls, addrs) = common::listeners(2);
    let l1 = ls.pop().unwrap();
    let l0 = ls.pop().unwrap();

    // Strays reach rank 1's listener before the real rank 0 does.
    let mut garbage = TcpStream::connect(addrs[1]).unwrap();
    garbage.write_all(&[0x55; 200]).unwrap();
    let _silent = TcpStream::connect(addrs[1]).unwrap();
    let strays: Vec<_> = [
        JobAuth { secret: Secret::new(*b"wrong secret"), ..common::auth() },
        JobAuth { generation: common::auth().generation + 1, ..common::auth() },
    ]
    .into_iter()
    .map(|auth| {
        let mut cfg = good.clone();
        cfg.auth = auth;
        cfg.connect_timeout = Duration::from_secs(1);
        let stray_listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let peers = vec![stray_listener.local_addr().unwrap(), addrs[1]];
        std::thread::spawn(move || TcpRing::connect(stray_listener, Rank(0), &peers, cfg))
    })
    .collect();
    let rank1 = {
        let (addrs, cfg) = (addrs.clone(), good.clone());
        std::thread::spawn(move || TcpRing::connect(l1, Rank(1), &addrs, cfg))
    };
    // Let rank 1 deal with the strays first.
    std::thread::sleep(Duration::from_millis(300));
    let mut r0 = TcpRing::connect(l0, Rank(0), &addrs, good.clone()).unwrap();
    let mut r1 = rank1.join().unwrap().unwrap();
    for s in strays {
        let err = s.join().unwrap().map(|_| ()).unwrap_err();
        assert!(matches!(err, OpsError::Handshake { .. } | OpsError::Unreachable { .. }), "{err:?}");
    }

    // The ring works, and its listener is gone: a late stray cannot even connect.
    let t = std::thread::spawn(move || {
        let mut b = vec![2.0f32; 1000];
        r1.all_reduce(&mut b, ReduceOp::Sum).map(|()| b)
    });
    let mut b = vec![1.0f32; 1000];
    r0.all_reduce(&mut b, ReduceOp::Sum).unwrap();
    assert!(b.iter().all(|&x| x == 3.0));
    assert!(t.join().unwrap().unwrap().iter().all(|&x| x == 3.0));
    assert!(TcpStream::connect(addrs[1]).is_err(), "ring listener still open");
}

#[test]
fn rendezvous_refuses_strays_and_serves_the_job() {
    let auth = common::auth();
    let world = 3;
    let server = RendezvousServer::bind("127.0.0.1:0", world, auth.clone()).unwrap();
    let addr = server.local_addr().unwrap();
    let served = server.spawn(Duration::from_secs(20));

    let mut garbage = TcpStream::connect(addr).unwrap();
    garbage.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let fake_listen = "127.0.0.1:9".parse().unwrap();
    let wrong = JobAuth { secret: Secret::new(*b"not the secret"), ..auth.clone() };
    let req = |rank: u32, listen_addr| JoinRequest { rank: Rank(rank), world, listen_addr, timeout: Duration::from_secs(10) };
    let err = join(addr, &wrong, &req(0, fake_listen)).unwrap_err();
    assert!(matches!(err, OpsError::Handshake { .. }), "{err:?}");
    let other_gen = JobAuth { generation: 9, ..auth.clone() };
    assert!(join(addr, &other_gen, &req(1, fake_listen)).is_err());

    // The real ranks bind ring listeners, join, and build a working ring from the table.
    let threads: Vec<_> = (0..world as u32)
        .map(|r| {
            let auth = auth.clone();
            std::thread::spawn(move || {
                let l = TcpListener::bind("127.0.0.1:0").unwrap();
                let me = l.local_addr().unwrap();
                let peers = join(addr, &auth, &JoinRequest { rank: Rank(r), world, listen_addr: me, timeout: Duration::from_secs(10) })?;
                assert_eq!(peers[r as usize], me);
                let mut ring = TcpRing::connect(l, Rank(r), &peers, common::config(4096, Duration::from_secs(10)))?;
                let mut b = vec![r as i64; 7];
                ring.all_reduce(&mut b, ReduceOp::Sum)?;
                Ok::<_, OpsError>(b)
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap().unwrap(), vec![3i64; 7]);
    }
    assert_eq!(served.join().unwrap().unwrap().len(), world);
}
