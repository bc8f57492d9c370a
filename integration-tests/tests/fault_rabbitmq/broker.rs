//! The shared RabbitMQ node, bounced: `rabbitmqctl stop_app` / `start_app`, a readiness
//! check (the AMQP handshake), and a guard that leaves the node running and answering
//! when the test ends, pass or fail.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs as _};
use std::process::Command;
use std::time::{Duration, Instant};

use tracehop_integration_tests::{amqp_url, env_or};

/// How long the node may take to answer AMQP again after `start_app`.
pub(crate) const READY_WAIT: Duration = Duration::from_secs(60);

/// Marks this test's own connections (their `connection_name`), so the guard can tell
/// them from other clients of the shared node.
pub(crate) const CONNECTION_NAME: &str = "tracehop-bounce-test";

/// `rabbitmqctl`: `TRACEHOP_RABBITMQCTL`, default `rabbitmqctl` on the PATH.
fn rabbitmqctl(args: &[&str]) -> Result<String, String> {
    let program = env_or("TRACEHOP_RABBITMQCTL", "rabbitmqctl");
    let out = Command::new(&program)
        .args(args)
        .output()
        .map_err(|e| format!("running {program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The broker's host and port, from `TRACEHOP_AMQP_URL`.
fn address() -> SocketAddr {
    let url = amqp_url();
    let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host_port = if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:5672")
    };
    host_port
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .unwrap_or_else(|| panic!("the broker address in {url}"))
}

/// Whether the node speaks AMQP: it answers the protocol header with `connection.start`
/// (a method frame, type 1). It accepts TCP before that.
pub(crate) fn amqp_ready() -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&address(), Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
    let mut first = [0u8; 1];
    s.write_all(b"AMQP\x00\x00\x09\x01").is_ok()
        && s.read_exact(&mut first).is_ok()
        && first[0] == 1
}

/// Wait (blocking, up to [`READY_WAIT`]) until the node answers AMQP.
fn wait_ready() -> Result<(), String> {
    let start = Instant::now();
    while start.elapsed() < READY_WAIT {
        if amqp_ready() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!(
        "RabbitMQ did not answer AMQP within {READY_WAIT:?}"
    ))
}

/// The node's client connections that are not this test's, by their client properties.
pub(crate) fn other_clients() -> Result<Vec<String>, String> {
    let listed = rabbitmqctl(&[
        "list_connections",
        "--quiet",
        "--no-table-headers",
        "peer_host",
        "peer_port",
        "client_properties",
    ])?;
    Ok(listed
        .lines()
        .filter(|line| !line.trim().is_empty() && !line.contains(CONNECTION_NAME))
        .map(|line| line.chars().take(160).collect())
        .collect())
}

/// Wait (up to `wait`) until no other client is connected to the node: the bounce would
/// break whatever they are doing.
pub(crate) async fn wait_until_alone(wait: Duration) {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let others = tokio::task::spawn_blocking(other_clients)
            .await
            .expect("rabbitmqctl task")
            .unwrap_or_else(|e| panic!("listing the node's connections: {e}"));
        if others.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "other clients are connected to the shared RabbitMQ node; not bouncing it \
             under them (run this test alone, as `cargo xtask test` does): {others:#?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The node, bounced by this test: [`stop`](Self::stop) and [`start`](Self::start) it;
/// when the guard goes (the test passed, failed or panicked), the node is started again
/// if it is down and answers AMQP before the test ends.
pub(crate) struct Bounce {
    /// When the test started, for its log lines.
    started: Instant,
}

impl Bounce {
    pub(crate) fn new(started: Instant) -> Bounce {
        Bounce { started }
    }

    /// `rabbitmqctl stop_app`: the node closes every client connection and stops.
    pub(crate) async fn stop(&self) {
        eprintln!("{:?}: rabbitmqctl stop_app", self.started.elapsed());
        run_blocking(|| rabbitmqctl(&["stop_app"]).map(drop)).await;
        eprintln!("{:?}: stopped", self.started.elapsed());
    }

    /// `rabbitmqctl start_app`, then wait until the node answers AMQP.
    pub(crate) async fn start(&self) {
        eprintln!("{:?}: rabbitmqctl start_app", self.started.elapsed());
        run_blocking(|| rabbitmqctl(&["start_app"]).map(drop)).await;
        run_blocking(wait_ready).await;
        eprintln!("{:?}: answering again", self.started.elapsed());
    }
}

impl Drop for Bounce {
    fn drop(&mut self) {
        if amqp_ready() {
            return;
        }
        // start_app on a running node does nothing; on a stopped one it starts it.
        if let Err(e) = rabbitmqctl(&["start_app"]) {
            eprintln!("restoring RabbitMQ: {e}");
        }
        match wait_ready() {
            Ok(()) => eprintln!("RabbitMQ restored after the test"),
            Err(e) => eprintln!("restoring RabbitMQ: {e}"),
        }
    }
}

async fn run_blocking(work: impl FnOnce() -> Result<(), String> + Send + 'static) {
    tokio::task::spawn_blocking(work)
        .await
        .expect("rabbitmqctl task")
        .unwrap_or_else(|e| panic!("{e}"));
}
