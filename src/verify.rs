//! Verification: span records to trace trees, findings and rendering.
