//! Minimal nats example (in progress).
fn main() {}
