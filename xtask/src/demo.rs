//! `cargo xtask demo`: the main job on the embedded local configuration.
//! A node with two pods, a real agent, captured traffic with its access-log
//! lines, a summary — and everything removed again, also on Ctrl-C.

use std::{
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::{Context, bail, ensure};
use pillion_e2e::{Agent, Topology};
use serde_json::Value;

use crate::{run::run, setup};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Fails the demo (and so runs all cleanup) if Ctrl-C was pressed.
fn checkpoint() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted; cleaning up");
    }
    Ok(())
}

fn say(step: &str) {
    println!("\n── {step}");
}

pub fn demo() -> anyhow::Result<()> {
    // SAFETY: installs a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    ensure!(
        pillion_e2e::is_root(),
        "the demo creates network namespaces and loads eBPF programs: run `sudo cargo xtask demo`"
    );
    if setup::needed() {
        setup::setup()?;
    }
    say("building the agent (with its kernel programs) and the pod workload tool");
    run(Command::new(env!("CARGO")).current_dir(crate::workspace()).args([
        "build",
        "-p",
        "pillion-agent",
        "-p",
        "pillion-e2e",
        "--bins",
    ]))?;
    checkpoint()?;

    say("creating a node and two pods (network namespaces, veth pairs, a cgroup per pod)");
    let topo = Topology::with_prefix("pd");
    let node = topo.add_node("node");
    let client = topo.add_pod(&node, "client");
    let server = topo.add_pod(&node, "server");
    println!("   node   {}   (pods' gateway {} …)", node.full, client.gw4);
    println!("   client {} / {}   cgroup {}", client.ip4, client.ip6, client.cgroup.display());
    println!("   server {} / {}   cgroup {}", server.ip4, server.ip6, server.cgroup.display());
    checkpoint()?;

    say("starting pillion-agent in the node (loads, attaches and pins the kernel programs)");
    let agent = Agent::start(&topo, &node);
    let status = agent.status();
    println!(
        "   agent pid {} — programs {} — pins {}",
        status["pid"],
        status["origin"],
        format_args!("/sys/fs/bpf/pillion/{}", node.full)
    );
    checkpoint()?;

    say("enrolling both pods through the agent's local API");
    for pod in [&client, &server] {
        agent.enrol(pod).map_err(anyhow::Error::msg).with_context(|| format!("enrol {}", pod.name))?;
        println!("   enrolled default/{}", pod.name);
    }
    let _app = server.echo_server("[::]:8080".parse()?, Some("hello-from-server"));
    checkpoint()?;

    say("client → server:8080 over IPv4 and IPv6 (captured outbound at the client, inbound at the server)");
    for target in [server.addr4(8080), server.addr6(8080)] {
        let result = client.client(target, 256 * 1024, &[]);
        ensure!(result["ok"] == Value::Bool(true), "connection to {target} failed: {result}");
        println!("   {target}: 256 KiB echoed back intact");
        checkpoint()?;
    }

    say("a probe from the node reaches the app directly (not captured)");
    let probe = topo.run_on_node(&node, &["client", &server.addr4(8080).to_string(), "64"]);
    ensure!(probe["ok"] == Value::Bool(true), "probe failed: {probe}");
    println!("   app answered: {}", probe["banner"].as_str().unwrap_or_default());

    say("the agent's access log");
    // Four proxied connections: two outbound (client), two inbound (server).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let lines = loop {
        let lines = agent.access_logs();
        if lines.len() >= 4 || std::time::Instant::now() > deadline {
            break lines;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    for l in &lines {
        println!(
            "   {} {:<8} src.addr={} dst.addr={} bytes_sent={} bytes_recv={} duration={}",
            l["message"].as_str().unwrap_or_default(),
            l["direction"].as_str().unwrap_or_default(),
            l["src.addr"].as_str().unwrap_or_default(),
            l["dst.addr"].as_str().unwrap_or_default(),
            l["bytes_sent"],
            l["bytes_recv"],
            l["duration"].as_str().unwrap_or_default(),
        );
    }
    ensure!(lines.len() == 4, "expected 4 access-log lines, found {}", lines.len());

    let status = agent.status();
    say("summary");
    for pod in status["pods"].as_array().into_iter().flatten() {
        let c = &pod["counters"];
        println!(
            "   default/{:<8} outbound accepted {}  inbound accepted {}  no-original-destination {}",
            pod["pod"]["name"].as_str().unwrap_or_default(),
            c["outbound_accepted"],
            c["inbound_accepted"],
            c["no_orig_dst"],
        );
    }
    let k = &status["kernel"];
    println!(
        "   kernel: connects redirected {}  inbound steered {}  probes passed {}  inbound dropped {}",
        k["connect_redirected"], k["inbound_steered"], k["inbound_probe_passed"], k["inbound_dropped"]
    );
    say("cleaning up (agent, namespaces, cgroups, pins)");
    drop(agent);
    drop(topo);
    println!("   done: everything the demo created is removed");
    Ok(())
}
