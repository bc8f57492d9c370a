//! A private `nats-server` for fault tests: the installed binary on a free loopback port,
//! JetStream with a file store in a folder of its own, stopped by its own pid (SIGTERM or
//! SIGKILL) and restarted on the same port and store. The shared server is never touched.
//!
//! The guard kills the server and removes its store when it is dropped, so a failing
//! test leaves nothing running.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The installed server binary: `TRACEHOP_NATS_SERVER`, default `/usr/sbin/nats-server`.
pub fn binary() -> String {
    crate::env_or("TRACEHOP_NATS_SERVER", "/usr/sbin/nats-server")
}

/// How long a start, a restart or a stop may take before the test fails.
const READY_WAIT: Duration = Duration::from_secs(30);

/// How a server is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM: the server shuts down cleanly (closes its clients, writes its store).
    Term,
    /// SIGKILL: the process ends at once; the store is what it had written by then.
    Kill,
}

impl Signal {
    fn name(self) -> &'static str {
        match self {
            Signal::Term => "TERM",
            Signal::Kill => "KILL",
        }
    }
}

/// A private nats-server process (see the [module docs](self)).
#[derive(Debug)]
pub struct NatsServer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
    starts: u32,
}

impl NatsServer {
    /// Start a server on a free port with a new store, and wait until it answers.
    pub async fn start() -> NatsServer {
        let dir = std::env::temp_dir().join(crate::unique("nats-fault"));
        std::fs::create_dir_all(dir.join("store")).expect("create the server's store folder");
        let mut server = NatsServer {
            port: free_port(),
            dir,
            child: None,
            starts: 0,
        };
        server.restart().await;
        server
    }

    /// The server's client URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The folder holding the store and the server's log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The process id of the running server, if it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Start the server again on the same port and store, and wait until it answers and
    /// JetStream responds.
    ///
    /// # Panics
    /// If it is already running, cannot be started, or is not ready within 30 s.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "the server is already running");
        self.starts += 1;
        let log = self.dir.join(format!("server-{}.log", self.starts));
        let child = Command::new(binary())
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.dir.join("store"))
            .arg("-l")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary()));
        self.child = Some(child);
        self.wait_ready().await;
    }

    /// Stop the server with `signal` and wait until the process has exited.
    ///
    /// # Panics
    /// If it is not running, or has not exited within 30 s.
    pub async fn stop(&mut self, signal: Signal) {
        let mut child = self.child.take().expect("the server is running");
        let status = Command::new("kill")
            .args(["-s", signal.name(), &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -s {} failed", signal.name());
        let deadline = tokio::time::Instant::now() + READY_WAIT;
        loop {
            if child.try_wait().expect("wait for nats-server").is_some() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "nats-server did not exit within {READY_WAIT:?} of SIG{}",
                signal.name()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Wait until the port accepts connections and JetStream answers an account query
    /// on a connection of its own.
    async fn wait_ready(&mut self) {
        let deadline = tokio::time::Instant::now() + READY_WAIT;
        let mut last = String::new();
        while tokio::time::Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok()?) {
                panic!(
                    "nats-server exited at start ({status}); log:\n{}",
                    self.log_tail()
                );
            }
            match self.jetstream_answers().await {
                Ok(()) => return,
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "nats-server on {} not ready within {READY_WAIT:?} ({last}); log:\n{}",
            self.url(),
            self.log_tail()
        );
    }

    async fn jetstream_answers(&self) -> Result<(), String> {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("port: {e}"))?;
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(2))
            .connect(self.url())
            .await
            .map_err(|e| format!("connect: {e}"))?;
        // The raw account info request: async-nats' typed one does not parse this
        // server's (2.9) answer.
        let info = client.request("$JS.API.INFO", "".into());
        let answered = tokio::time::timeout(Duration::from_secs(2), info).await;
        drop(client);
        match answered {
            Ok(Ok(reply)) => {
                let text = String::from_utf8_lossy(&reply.payload);
                if text.contains("account_info_response") && !text.contains("\"error\"") {
                    Ok(())
                } else {
                    Err(format!("JetStream answered {text}"))
                }
            }
            Ok(Err(e)) => Err(format!("JetStream: {e}")),
            Err(_) => Err("JetStream: no answer within 2 s".to_owned()),
        }
    }

    /// The end of the current server log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = self.dir.join(format!("server-{}.log", self.starts));
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A loopback port nothing listens on (the OS picks it; it stays free once released,
/// barring a race with another process binding port 0 at the same moment).
fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}
