//! peer placeholder
fn main() {}
