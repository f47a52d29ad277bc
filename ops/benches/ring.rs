//! Ring bandwidth benchmark (placeholder).
fn main() {}
