#![cfg(feature = "nats")]
//! Fault tests on a private nats-server: each test starts its own server from the
//! installed binary (a free port, JetStream with a file store in a temp folder) and stops
//! it by its pid, so the shared server the other tests use is never touched.
//!
//! - [`jetstream_restarts`]: 20,000 messages through the traced JetStream publisher while
//!   a traced pull consumer acks; the server is stopped with SIGTERM and restarted, then
//!   with SIGKILL: every acknowledged publish is consumed, each in its send span's trace;
//! - [`dead_connection`]: what core and JetStream consume loops do when their server goes
//!   away and comes back, and when their client gives up reconnecting.

mod dead_connection;
mod jetstream_restarts;

use std::time::Duration;

use async_nats::connection::State;
use async_nats::Client;
use tokio::sync::mpsc;

/// A connection to `url` that prints its events (disconnects, reconnects, errors), named
/// `name` on the server, reconnecting for as long as async-nats does by default (for
/// ever).
async fn connect(url: &str, name: &str) -> Client {
    options(name)
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("{name}: connecting to {url}: {e}"))
}

/// [`connect`]'s options: events printed, the connection named.
fn options(name: &str) -> async_nats::ConnectOptions {
    watched_options(name, None)
}

/// [`connect`]'s options, also sending each event (as text) to `events`.
fn watched_options(
    name: &str,
    events: Option<mpsc::UnboundedSender<String>>,
) -> async_nats::ConnectOptions {
    let label = name.to_owned();
    async_nats::ConnectOptions::new()
        .name(name)
        .event_callback(move |event| {
            let label = label.clone();
            let events = events.clone();
            async move {
                eprintln!("{label}: nats event: {event}");
                if let Some(events) = events {
                    let _ = events.send(event.to_string());
                }
            }
        })
}

/// Wait (up to 30 s) until every client in `clients` is in `state`.
async fn wait_state(clients: &[(&str, &Client)], state: State) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let behind: Vec<String> = clients
            .iter()
            .filter(|(_, c)| c.connection_state() != state)
            .map(|(name, c)| format!("{name}: {:?}", c.connection_state()))
            .collect();
        if behind.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "clients not {state:?} within 30 s: {behind:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
