//! `tessera tokenizer …`: encode text with a HF tokenizer JSON, train ml-4m's WordPiece layout.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde::Serialize;
use tessera_tokenizers::text::{COCO_CLASSES, TextTokenizer, TrainSpec, object_classes_from_file};

use super::output::emit;

/// Tokenizer sub-commands.
#[derive(Debug, Subcommand)]
pub enum TokenizerCommand {
    /// Print the token ids of each line of a text file.
    Encode(EncodeArgs),
    /// Train a WordPiece text tokenizer with ml-4m's special-token layout.
    TrainText(TrainTextArgs),
    /// Train a neural tokenizer (VQ-VAE / FSQ / MLP) for one modality of a generated world.
    Train(super::neural::TrainNeuralArgs),
}

/// Arguments of `tokenizer encode`.
#[derive(Debug, Args)]
pub struct EncodeArgs {
    /// HuggingFace tokenizer JSON (ml-4m: text_tokenizer_4m_wordpiece_30k.json).
    #[arg(long)]
    tokenizer: PathBuf,
    /// Text file; each line is encoded on its own (without its line ending).
    #[arg(long)]
    input: PathBuf,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `tokenizer train-text` (ml-4m train_wordpiece_tokenizer.py's options).
#[derive(Debug, Args)]
pub struct TrainTextArgs {
    /// Training text files, comma separated.
    #[arg(long, value_delimiter = ',', required = true)]
    files: Vec<PathBuf>,
    /// Where to write the tokenizer JSON.
    #[arg(long)]
    out: PathBuf,
    /// Total vocabulary size, special tokens included.
    #[arg(long, default_value_t = 30_000)]
    vocab_size: usize,
    /// Sentinel tokens [S_0]..[S_{n-1}].
    #[arg(long, default_value_t = 200)]
    num_sentinels: usize,
    /// Coordinate bins: tokens v0=0..v3={bins-1}.
    #[arg(long, default_value_t = 1000)]
    coord_bins: usize,
    /// Object-class tokens: `coco` (the 80 COCO names), `none`, or a JSON file laid out like
    /// ml-4m's object_classes.json (see --object-classes-key) or a plain list of names.
    #[arg(long, default_value = "coco")]
    object_classes: String,
    /// Key of the class list inside an --object-classes JSON object.
    #[arg(long, default_value = "coco")]
    object_classes_key: String,
    /// Keep case (ml-4m --no_lowercase).
    #[arg(long)]
    no_lowercase: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Runs a tokenizer sub-command.
pub fn run(cmd: TokenizerCommand) -> anyhow::Result<()> {
    match cmd {
        TokenizerCommand::Encode(a) => encode(a),
        TokenizerCommand::TrainText(a) => train_text(a),
        TokenizerCommand::Train(a) => super::neural::train(a),
    }
}

#[derive(Serialize)]
struct EncodedLine {
    text: String,
    ids: Vec<u32>,
}

#[derive(Serialize)]
struct EncodeReport {
    tokenizer: String,
    input: String,
    lines: Vec<EncodedLine>,
}

fn encode(a: EncodeArgs) -> anyhow::Result<()> {
    let tok = TextTokenizer::from_file(&a.tokenizer)?;
    let text = std::fs::read_to_string(&a.input).with_context(|| format!("reading {}", a.input.display()))?;
    let texts: Vec<&str> = text.lines().collect();
    let ids = tok.encode_batch(&texts)?;
    let lines: Vec<EncodedLine> = texts.iter().zip(ids).map(|(t, ids)| EncodedLine { text: t.to_string(), ids }).collect();
    let report = EncodeReport { tokenizer: a.tokenizer.display().to_string(), input: a.input.display().to_string(), lines };
    emit(a.json, &report, || {
        report.lines.iter().fold(String::new(), |mut s, l| {
            let ids: Vec<String> = l.ids.iter().map(u32::to_string).collect();
            let _ = writeln!(s, "{}", ids.join(" "));
            s
        })
    })
}

#[derive(Serialize)]
struct TrainReport {
    out: String,
    files: Vec<String>,
    vocab_size: usize,
    special_tokens: usize,
    num_sentinels: usize,
    coord_bins: usize,
    object_classes: usize,
    lowercase: bool,
    elapsed_s: f64,
}

fn train_text(a: TrainTextArgs) -> anyhow::Result<()> {
    let object_classes = match a.object_classes.as_str() {
        "coco" => COCO_CLASSES.iter().map(|c| c.to_string()).collect(),
        "none" => Vec::new(),
        path => object_classes_from_file(path.as_ref(), &a.object_classes_key)?,
    };
    let spec = TrainSpec {
        vocab_size: a.vocab_size,
        num_sentinels: a.num_sentinels,
        coord_bins: a.coord_bins,
        object_classes,
        lowercase: !a.no_lowercase,
    };
    let start = Instant::now();
    let tok = TextTokenizer::train(&a.files, &spec)?;
    tok.save(&a.out)?;
    let report = TrainReport {
        out: a.out.display().to_string(),
        files: a.files.iter().map(|f| f.display().to_string()).collect(),
        vocab_size: tok.vocab_size(),
        special_tokens: spec.num_special_tokens(),
        num_sentinels: spec.num_sentinels,
        coord_bins: spec.coord_bins,
        object_classes: spec.object_classes.len(),
        lowercase: spec.lowercase,
        elapsed_s: start.elapsed().as_secs_f64(),
    };
    emit(a.json, &report, || {
        format!(
            "wrote {}: vocabulary {} ({} special: 4 + {} sentinels + 4x{} coordinates + {} classes; {} learned), {:.2}s\n",
            report.out,
            report.vocab_size,
            report.special_tokens,
            report.num_sentinels,
            report.coord_bins,
            report.object_classes,
            report.vocab_size - report.special_tokens,
            report.elapsed_s
        )
    })
}
