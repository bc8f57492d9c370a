//! In-memory span capture and one-line trace assertions for tests.
