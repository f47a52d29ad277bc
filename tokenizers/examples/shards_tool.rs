//! Small command-line access to the shard module, for data generation and cross-checks with
//! ml-4m (tools/ml4m_reference/check_shards.py):
//!
//!     shards_tool fixture OUT_DIR [SHARDS [SAMPLES_PER_SHARD [SEED]]]   writes a dataset, prints its pattern
//!     shards_tool dump PATTERN [FOLDER=NAME ...]                        one JSON line per record
//!     shards_tool expand PATTERN                                        the brace expansion, one path a line

use std::process::ExitCode;

use serde_json::json;
use tessera_tokenizers::shards::{FixtureSpec, NameMap, ShardDataset, brace_expand, write_fixture};

fn run(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let arg = |i: usize| args.get(i).map(String::as_str);
    match (arg(1), arg(2)) {
        (Some("fixture"), Some(out)) => {
            let num = |i: usize, d: u64| arg(i).map_or(Ok(d), str::parse);
            let spec = FixtureSpec {
                shards: num(3, 2)? as usize,
                samples_per_shard: num(4, 5)? as usize,
                seed: num(5, 0)?,
                ..FixtureSpec::default()
            };
            println!("{}", write_fixture(std::path::Path::new(out), &spec)?.pattern);
        }
        (Some("dump"), Some(pattern)) => {
            let mut map = NameMap::new();
            for kv in &args[3..] {
                let (k, v) = kv.split_once('=').ok_or_else(|| format!("expected FOLDER=NAME, got '{kv}'"))?;
                map.insert(k.to_string(), v.to_string());
            }
            let ds = ShardDataset::open(pattern, &map)?;
            for i in 0..ds.len() {
                let rec = ds.read(i)?;
                let members: serde_json::Map<_, _> =
                    rec.members.iter().map(|(name, m)| (ml4m_key(name, &m.ext), json!(m.bytes.len()))).collect();
                println!("{}", json!({ "key": rec.key, "members": members }));
            }
        }
        (Some("expand"), Some(pattern)) => brace_expand(pattern)?.iter().for_each(|p| println!("{p}")),
        _ => return Err("usage: shards_tool fixture OUT [SHARDS [PER_SHARD [SEED]]] | dump PATTERN [F=NAME..] | expand PATTERN".into()),
    }
    Ok(())
}

/// The sample-dict key ml-4m's `multi_tarfile_samples` gives a member (`rgb.png`, or `npy`
/// for tars read without a folder list, where the name is its own extension).
fn ml4m_key(name: &str, ext: &str) -> String {
    if name == ext { name.to_string() } else { format!("{name}.{ext}") }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
