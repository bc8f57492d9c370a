//! `cargo xtask test` — make sure the brokers the integration tests talk to are answering
//! (NATS with JetStream, RabbitMQ, and tansu as the Kafka-protocol broker), starting or
//! installing them if needed, then run the whole test suite, and after it, alone, the
//! fault tests that bounce a shared broker ([`ALONE`]).
//!
//! `cargo xtask services` does only the first part (and installs Debian's `chromium`
//! for the HTML view tests when no browser is there). Addresses are the loopback defaults
//! the tests use; set `TRACEHOP_SKIP_SERVICES=1` to use brokers you run yourself (with
//! `TRACEHOP_NATS_URL`, `TRACEHOP_AMQP_URL`, `TRACEHOP_KAFKA_BROKERS`).

mod instructions;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// The test command: every crate, every feature.
const TEST_ARGS: &[&str] = &["test", "--workspace", "--all-features"];

/// Test targets that stop and start a SHARED broker (a RabbitMQ bounce: a second node
/// cannot be started here). Their tests are `#[ignore]`d, so the workspace run skips
/// them; they run afterwards, one target at a time, with nothing else running, whether
/// or not the workspace run passed (each leaves its broker running).
const ALONE: &[&str] = &["fault_rabbitmq"];

fn main() -> ExitCode {
    let task = std::env::args().nth(1).unwrap_or_default();
    let result = match task.as_str() {
        "test" => services().and_then(|()| run_tests()),
        "services" => services(),
        "bench-instructions" => {
            let args: Vec<String> = std::env::args().skip(2).collect();
            services().and_then(|()| instructions::run(&args))
        }
        _ => {
            eprintln!("usage: cargo xtask <test|services|bench-instructions>");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_tests() -> Result<(), String> {
    let mut failed = Vec::new();
    if !cargo_test(&["--no-fail-fast"])? {
        failed.push("the workspace tests".to_owned());
    }
    for target in ALONE {
        if !cargo_test(&["--test", target, "--", "--ignored"])? {
            failed.push(format!("{target} (run alone)"));
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("cargo test failed: {}", failed.join(", ")))
    }
}

/// `cargo test --workspace --all-features` with `args` (the same features each time, so
/// nothing is rebuilt); whether it passed.
fn cargo_test(args: &[&str]) -> Result<bool, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    println!("xtask: cargo {} {}", TEST_ARGS.join(" "), args.join(" "));
    let status = Command::new(&cargo)
        .args(TEST_ARGS)
        .args(args)
        .status()
        .map_err(|e| format!("running cargo test: {e}"))?;
    Ok(status.success())
}

fn services() -> Result<(), String> {
    chromium()?;
    if std::env::var_os("TRACEHOP_SKIP_SERVICES").is_some() {
        println!("xtask: TRACEHOP_SKIP_SERVICES set; using your brokers");
        return Ok(());
    }
    nats()?;
    rabbitmq()?;
    tansu()
}

fn on_path(name: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|dir| dir.join(name).is_file())
}

/// The HTML view is tested in headless Chromium: install Debian's `chromium` if no
/// browser is there (`TRACEHOP_CHROMIUM` names one explicitly).
fn chromium() -> Result<(), String> {
    if std::env::var_os("TRACEHOP_CHROMIUM").is_some()
        || on_path("chromium")
        || on_path("chromium-browser")
    {
        return Ok(());
    }
    if !on_path("apt-get") {
        return Err(
            "chromium is needed for the HTML view tests, and apt-get is not \
                    here to install it: install Chromium and set TRACEHOP_CHROMIUM"
                .to_owned(),
        );
    }
    spawn("apt-get update", "apt-get", &["update", "-qq"])?;
    println!("xtask: installing chromium (apt-get install -y chromium)");
    let status = Command::new("apt-get")
        .args(["install", "-y", "-qq", "chromium"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("installing chromium: {e}"))?;
    if status.success() && on_path("chromium") {
        Ok(())
    } else {
        Err(format!("installing chromium failed ({status})"))
    }
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn answers(port: u16) -> bool {
    TcpStream::connect_timeout(&addr(port), Duration::from_millis(500)).is_ok()
}

/// RabbitMQ accepts TCP before it speaks AMQP: send the protocol header and wait for the
/// first byte of `connection.start` (a method frame, type 1).
fn amqp_ready() -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr(5672), Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
    let mut first = [0u8; 1];
    s.write_all(b"AMQP\x00\x00\x09\x01").is_ok()
        && s.read_exact(&mut first).is_ok()
        && first[0] == 1
}

fn wait_for(what: &str, timeout: Duration, ready: impl Fn() -> bool) -> Result<(), String> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if ready() {
            println!("xtask: {what} is answering");
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Err(format!("{what} did not answer within {timeout:?}"))
}

fn spawn(what: &str, program: &str, args: &[&str]) -> Result<(), String> {
    println!("xtask: starting {what}: {program} {}", args.join(" "));
    let status = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("starting {what} with {program}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("starting {what} failed ({status})"))
    }
}

fn nats() -> Result<(), String> {
    if !answers(4222) {
        spawn(
            "nats-server",
            "start-stop-daemon",
            &[
                "--start",
                "--oknodo",
                "--background",
                "--exec",
                "/usr/sbin/nats-server",
                "--",
                "-a",
                "127.0.0.1",
                "-p",
                "4222",
                "-js",
                "-sd",
                "/var/lib/nats-server",
                "-l",
                "/var/log/nats-server.log",
            ],
        )?;
    }
    wait_for("NATS on 127.0.0.1:4222", Duration::from_secs(30), || {
        answers(4222)
    })
}

fn rabbitmq() -> Result<(), String> {
    if !amqp_ready() {
        if !answers(5672) {
            spawn("RabbitMQ", "rabbitmq-server", &["-detached"])?;
        }
        return wait_for(
            "RabbitMQ on 127.0.0.1:5672",
            Duration::from_secs(90),
            amqp_ready,
        );
    }
    println!("xtask: RabbitMQ on 127.0.0.1:5672 is answering");
    Ok(())
}

fn cargo_home() -> Option<PathBuf> {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
}

fn tansu_binary() -> Option<PathBuf> {
    let bin = cargo_home()?.join("bin").join("tansu");
    bin.exists().then_some(bin)
}

/// Install tansu unless it is there, one install at a time on this machine: a second
/// xtask (another checkout's CI, a benchmark) waits on a file lock for the first one's
/// install instead of starting its own (each takes 10 to 40 minutes of both cores). The
/// lock is the kernel's (`flock`): it goes with the process, so a killed install leaves
/// none behind.
fn install_tansu() -> Result<PathBuf, String> {
    let home = cargo_home().ok_or("neither CARGO_HOME nor HOME is set")?;
    std::fs::create_dir_all(&home).map_err(|e| format!("{}: {e}", home.display()))?;
    let path = home.join(".tracehop-tansu-install.lock");
    let lock = std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    if lock.try_lock().is_err() {
        println!(
            "xtask: another xtask is installing tansu ({}): waiting for it",
            path.display()
        );
        lock.lock()
            .map_err(|e| format!("waiting for {}: {e}", path.display()))?;
    }
    if let Some(bin) = tansu_binary() {
        return Ok(bin);
    }
    println!("xtask: installing tansu (once per machine; about ten minutes on 2 cores)");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    spawn(
        "cargo install tansu",
        &cargo,
        &["install", "tansu", "--locked", "--features", "dynostore"],
    )?;
    // The lock is released when `lock` is dropped.
    tansu_binary().ok_or_else(|| "tansu was installed but is not in $CARGO_HOME/bin".to_owned())
}

fn tansu() -> Result<(), String> {
    if answers(9092) {
        println!("xtask: Kafka protocol broker on 127.0.0.1:9092 is answering");
        return Ok(());
    }
    let bin = match tansu_binary() {
        Some(bin) => bin,
        None => install_tansu()?,
    };
    let log = std::fs::File::create(std::env::temp_dir().join("tansu.log"))
        .map_err(|e| format!("tansu log: {e}"))?;
    println!(
        "xtask: starting tansu on 127.0.0.1:9092 (log: {})",
        std::env::temp_dir().join("tansu.log").display()
    );
    Command::new(bin)
        .args([
            "broker",
            "--listener-url",
            "tcp://127.0.0.1:9092",
            "--advertised-listener-url",
            "tcp://127.0.0.1:9092",
            "--storage-engine",
            "memory://tansu/",
        ])
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| format!("tansu log: {e}"))?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("starting tansu: {e}"))?;
    wait_for("tansu on 127.0.0.1:9092", Duration::from_secs(60), || {
        answers(9092)
    })
}
