//! `BPF_PROG_TEST_RUN` of the sk_lookup program: synthetic lookups, no
//! network, checking each verdict and the socket it selects.

use std::{
    net::{Ipv4Addr, TcpListener},
    os::fd::{AsFd, AsRawFd},
};

use aya::{maps::SockHash, programs::SkLookup};
use pillion_common::{IpKey, PROBE_SOURCE4, names};

const SK_DROP: u32 = 0;
const SK_PASS: u32 = 1;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const SO_COOKIE: libc::c_int = 57;
/// The input context ends at `ingress_ifindex` (which must be zero): the
/// kernel refuses the trailing alignment padding as input but writes it out.
const CTX_SIZE_IN: u32 = 68;

/// `struct bpf_sk_lookup` as the kernel lays it out.
#[repr(C)]
#[derive(Default, Clone, Copy, Debug)]
struct SkLookupCtx {
    cookie: u64,
    family: u32,
    protocol: u32,
    remote_ip4: u32,
    remote_ip6: [u32; 4],
    remote_port: u16,
    _pad: u16,
    local_ip4: u32,
    local_ip6: [u32; 4],
    local_port: u32,
    ingress_ifindex: u32,
}

/// The `test` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

fn v4(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

fn lookup(tcp: bool, remote: Ipv4Addr, local: Ipv4Addr, port: u16) -> SkLookupCtx {
    SkLookupCtx {
        family: libc::AF_INET as u32,
        protocol: if tcp { libc::IPPROTO_TCP as u32 } else { libc::IPPROTO_UDP as u32 },
        remote_ip4: v4(remote),
        remote_port: 40000u16.to_be(),
        local_ip4: v4(local),
        local_port: u32::from(port),
        ..Default::default()
    }
}

/// Runs the program once; returns (verdict, selected socket cookie).
fn run(prog: &SkLookup, ctx: SkLookupCtx) -> (u32, u64) {
    let fd = prog.fd().expect("program fd");
    let mut out = SkLookupCtx::default();
    let mut attr = TestRunAttr {
        prog_fd: fd.as_fd().as_raw_fd() as u32,
        repeat: 1,
        ctx_size_in: CTX_SIZE_IN,
        ctx_size_out: size_of::<SkLookupCtx>() as u32,
        ctx_in: (&raw const ctx) as u64,
        ctx_out: (&raw mut out) as u64,
        ..Default::default()
    };
    // SAFETY: attr is a valid BPF_PROG_TEST_RUN argument with live buffers.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_TEST_RUN, &raw mut attr, size_of::<TestRunAttr>() as u32) };
    assert_eq!(rc, 0, "BPF_PROG_TEST_RUN: {}", std::io::Error::last_os_error());
    (attr.retval, out.cookie)
}

fn socket_cookie(sock: &impl AsRawFd) -> u64 {
    let mut cookie = 0u64;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: valid fd and out-buffer.
    let rc =
        unsafe { libc::getsockopt(sock.as_raw_fd(), libc::SOL_SOCKET, SO_COOKIE, (&raw mut cookie).cast(), &mut len) };
    assert_eq!(rc, 0);
    cookie
}

#[test]
fn sk_lookup_verdicts_under_prog_test_run() {
    pillion_e2e::require_root();
    let scratch = std::path::PathBuf::from(format!("/sys/fs/bpf/pillion/pe{}x-progtest", std::process::id()));
    std::fs::create_dir_all(&scratch).expect("scratch pin dir on bpffs");
    let cleanup = scopeguard(scratch.clone());
    let mut ebpf = pillion_agent::kernel::load_detached(&scratch).expect("load the object");
    let prog: &mut SkLookup = ebpf.program_mut(names::PROG_SK_LOOKUP).unwrap().try_into().unwrap();
    prog.load().expect("verifier accepts sk_lookup");

    let pod = Ipv4Addr::new(10, 77, 0, 2);
    let peer = Ipv4Addr::new(10, 77, 1, 2);
    let node = Ipv4Addr::new(10, 77, 0, 1);
    let prog: &SkLookup = ebpf.program(names::PROG_SK_LOOKUP).unwrap().try_into().unwrap();
    // No listener registered for the pod: dropped, never passed to the app.
    assert_eq!(run(prog, lookup(true, peer, pod, 80)), (SK_DROP, 0));
    // HBONE, UDP and the pod talking to itself pass untouched.
    assert_eq!(run(prog, lookup(true, peer, pod, 15008)), (SK_PASS, 0));
    assert_eq!(run(prog, lookup(false, peer, pod, 53)), (SK_PASS, 0));
    assert_eq!(run(prog, lookup(true, pod, pod, 80)), (SK_PASS, 0));

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let key = |ip: Ipv4Addr| IpKey { family: libc::AF_INET as u32, addr: [v4(ip), 0, 0, 0] };
    {
        let mut inbound: SockHash<_, IpKey> = ebpf.map_mut(names::MAP_INBOUND).unwrap().try_into().unwrap();
        inbound.insert(key(pod), listener.as_raw_fd(), 0).unwrap();
    }
    let prog: &SkLookup = ebpf.program(names::PROG_SK_LOOKUP).unwrap().try_into().unwrap();
    // Steered to the agent's listener, the original destination untouched.
    assert_eq!(run(prog, lookup(true, peer, pod, 80)), (SK_PASS, socket_cookie(&listener)));
    // From the node's own address (a host-network client, a masqueraded
    // NodePort client): steered to the agent like any other source.
    assert_eq!(run(prog, lookup(true, node, pod, 80)), (SK_PASS, socket_cookie(&listener)));
    // From the probe source (the kubelet, bound to it by cgroup): passed to the app.
    assert_eq!(run(prog, lookup(true, Ipv4Addr::from(PROBE_SOURCE4), pod, 80)), (SK_PASS, 0));
    drop(listener);
    // Listener gone (agent dead): the kernel dropped the entry, so we drop.
    assert_eq!(run(prog, lookup(true, peer, pod, 80)), (SK_DROP, 0));
    drop(ebpf);
    drop(cleanup);
}

/// Removes the scratch pin directory even if an assertion fails.
fn scopeguard(dir: std::path::PathBuf) -> impl Drop {
    struct Guard(std::path::PathBuf);
    impl Drop for Guard {
        fn drop(&mut self) {
            if let Ok(rd) = std::fs::read_dir(&self.0) {
                for e in rd.flatten() {
                    let _ = std::fs::remove_file(e.path());
                }
            }
            let _ = std::fs::remove_dir(&self.0);
        }
    }
    Guard(dir)
}
