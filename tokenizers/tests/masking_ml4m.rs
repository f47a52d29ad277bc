//! Masking value for value against ml-4m's own `UnifiedMasking`, on the cases whose output does
//! not depend on random draws (fixture written by tools/ml4m_reference/make_masking_fixture.py):
//! tokenization + EOS + truncation, sentinels, layout, PAD, target offset, masks and dam.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use tessera_tokenizers::Modality;
use tessera_tokenizers::masking::{MaskedModality, MaskingOptions, ModalityValue, SampleMasker};
use tessera_tokenizers::mixture::{Keep, SampleBudget};
use tessera_tokenizers::text::TextTokenizer;

#[derive(Deserialize)]
struct Fixture {
    tokenizer_sha256: String,
    sequence_cases: Vec<SeqCase>,
    embedding_cases: Vec<EmbCase>,
}

#[derive(Deserialize)]
struct SeqCase {
    modality: String,
    text: Option<String>,
    chunks: Option<Vec<String>>,
    b_in: usize,
    b_tgt: usize,
    keep: Keep,
    tensor: Vec<i64>,
    input_mask: Vec<bool>,
    target_mask: Vec<bool>,
    decoder_attention_mask: Vec<i64>,
}

#[derive(Deserialize)]
struct EmbCase {
    rows: usize,
    b_in: usize,
    keep: Keep,
    row_values: Vec<f32>,
    input_mask: Vec<bool>,
    target_mask: Vec<bool>,
    decoder_attention_mask: Vec<i64>,
}

fn tokenizer_path() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/ml-4m/text_tokenizer_4m_wordpiece_30k.json")
}

fn fixture() -> Fixture {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/masking_ml4m.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn mask_one(tok: &Arc<TextTokenizer>, m: Modality, v: ModalityValue, b_in: usize, b_tgt: usize, keep: Keep) -> MaskedModality {
    let mk = SampleMasker::new(&[m], tok.clone(), MaskingOptions { seed: 0 }).unwrap();
    let budget = SampleBudget {
        index: 0,
        component: 0,
        num_input_tokens: b_in,
        num_target_tokens: b_tgt,
        input: vec![b_in],
        target: vec![b_tgt],
        keep: vec![keep],
    };
    mk.mask(BTreeMap::from([(m, v)]), &budget).unwrap().remove(&m).unwrap()
}

#[test]
fn sequences_equal_ml4m() {
    let fx = fixture();
    let sha: String = Sha256::digest(std::fs::read(tokenizer_path()).unwrap()).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(sha, fx.tokenizer_sha256, "the fixture was made with another tokenizer JSON");
    let tok = Arc::new(TextTokenizer::from_file(tokenizer_path()).unwrap());
    assert!(fx.sequence_cases.len() >= 90);
    for c in &fx.sequence_cases {
        let m = Modality::from_key(&c.modality).unwrap();
        let v = match (&c.text, &c.chunks) {
            (Some(t), None) => ModalityValue::Text(t.clone()),
            (None, Some(ch)) => ModalityValue::Chunks(ch.clone()),
            _ => panic!("case without text or chunks"),
        };
        let what =
            format!("{m} b_in {} b_tgt {} {:?} {:?}", c.b_in, c.b_tgt, c.keep, c.text.as_deref().or(c.chunks.as_ref().map(|_| "<chunks>")));
        let x = mask_one(&tok, m, v, c.b_in, c.b_tgt, c.keep);
        assert_eq!(x.tensor.ids().unwrap(), c.tensor.as_slice(), "tensor: {what}");
        assert_eq!(x.input_mask, c.input_mask, "input_mask: {what}");
        assert_eq!(x.target_mask, c.target_mask, "target_mask: {what}");
        assert_eq!(x.decoder_attention_mask, c.decoder_attention_mask, "dam: {what}");
    }
}

#[test]
fn t5_embeddings_equal_ml4m() {
    let fx = fixture();
    let tok = Arc::new(TextTokenizer::from_file(tokenizer_path()).unwrap());
    assert_eq!(fx.embedding_cases.len(), 6);
    for c in &fx.embedding_cases {
        let dim = 4096;
        let data: Vec<f32> = (0..c.rows * dim).map(|i| (i / dim + 1) as f32).collect();
        let v = ModalityValue::Embeddings { rows: c.rows, dim, data };
        let x = mask_one(&tok, Modality::T5Caption, v, c.b_in, 10, c.keep);
        let dense = x.tensor.dense_floats().unwrap();
        assert_eq!(dense.len(), 77 * dim);
        let firsts: Vec<f32> = (0..77).map(|r| dense[r * dim]).collect();
        assert!((0..77).all(|r| dense[r * dim..(r + 1) * dim].iter().all(|v| *v == firsts[r])), "rows constant");
        let what = format!("rows {} b_in {} {:?}", c.rows, c.b_in, c.keep);
        assert_eq!(firsts, c.row_values, "{what}");
        assert_eq!(x.input_mask, c.input_mask, "{what}");
        assert_eq!(x.target_mask, c.target_mask, "{what}");
        assert_eq!(x.decoder_attention_mask, c.decoder_attention_mask, "{what}");
    }
}
