//! Printing results either as a human table or as one JSON document (`--json`).

use serde::Serialize;

/// Prints `value` as pretty JSON when `json`, else the human rendering.
pub fn emit<T: Serialize>(json: bool, value: &T, human: impl FnOnce() -> String) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        print!("{}", human());
    }
    Ok(())
}

/// Formats a parameter or byte count with an SI suffix.
pub fn si(n: f64) -> String {
    let (v, s) = if n >= 1e9 {
        (n / 1e9, "G")
    } else if n >= 1e6 {
        (n / 1e6, "M")
    } else if n >= 1e3 {
        (n / 1e3, "k")
    } else {
        (n, "")
    };
    format!("{v:.2}{s}")
}
