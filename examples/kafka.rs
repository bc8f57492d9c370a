//! Minimal kafka example (in progress).
fn main() {}
