//! Minimal amqp example (in progress).
fn main() {}
