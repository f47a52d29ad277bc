//! [`WordLookup`] against the full tokenizer: wherever the table path answers, its ids equal
//! `TextTokenizer::encode` (and Python's, via the fixture), and it answers for the bulk of the
//! data path's texts.

use std::path::Path;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tessera_tokenizers::ModalitySet;
use tessera_tokenizers::masking::ModalityValue;
use tessera_tokenizers::masking::synthetic::SyntheticSource;
use tessera_tokenizers::text::{TextTokenizer, WordLookup};

fn tokenizer() -> TextTokenizer {
    TextTokenizer::from_file(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/ml-4m/text_tokenizer_4m_wordpiece_30k.json"))
        .expect("ml-4m tokenizer JSON")
}

fn full(tok: &TextTokenizer, text: &str) -> Vec<i64> {
    tok.encode(text).unwrap().into_iter().map(i64::from).collect()
}

/// Table ids if the lookup answers; asserts they equal the full tokenizer's.
fn check(tok: &TextTokenizer, words: &WordLookup, text: &str) -> bool {
    let mut out = vec![-7];
    let hit = words.encode(text, &mut out);
    if hit {
        assert_eq!(&out[1..], full(tok, text).as_slice(), "{text:?}");
    } else {
        assert_eq!(out, [-7], "a miss leaves the output untouched: {text:?}");
    }
    hit
}

#[test]
fn table_ids_equal_the_tokenizer_on_tricky_texts() {
    let tok = tokenizer();
    let words = WordLookup::new(&tok);
    let hits = [
        "v0=12 v1=34 v2=100 v3=200 dining",
        "Person PERSON person",
        "[S_1] a dog [S_2]",
        "  two   spaces  ",
        "",
        "none",
        "a photo of a cat",
        "point v0=3 v1=222 polygon v0=1 v1=2 v2=3 v3=4 v1=511",
        "a , b . c",
        "dining table",
        "v0=1 v1=2 v2=3 v3=4 dining table v0=5 v1=6 v2=7 v3=8 Hot Dog",
        "a teddy bear and a hot dog near a stop sign",
    ];
    for t in hits {
        assert!(check(&tok, &words, t), "expected a table hit for {t:?}");
    }
    // Texts the tables must decline (or, if they answer, answer exactly).
    let others = [
        "dining  table",
        "a Hot Dog, stand",
        "V0=12",
        "[s_1]",
        "person's",
        "personal",
        "hello\tworld",
        "café au lait",
        "qzxvbnmw",
        "[EOS]abc",
        "abc[EOS]",
        "v0=12,",
        "e.g.",
        "teddy bear",
        "...",
    ];
    let mut declined = 0;
    for t in others {
        declined += usize::from(!check(&tok, &words, t));
    }
    assert!(declined >= 10, "{declined}");
    assert!(!check(&tok, &words, "V0=12"), "coordinates are case-sensitive added tokens");
}

#[test]
fn table_ids_equal_the_tokenizer_on_synthetic_data_path_texts() {
    let tok = tokenizer();
    let words = WordLookup::new(&tok);
    let set = ModalitySet::parse("caption,det,metadata,color_palette,human_poses,sam_instance").unwrap();
    let src = SyntheticSource::new(&set.inputs, &tok);
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let (mut texts, mut hits) = (0, 0);
    for _ in 0..300 {
        for m in &set.inputs {
            let strings = match src.value(*m, &mut rng) {
                ModalityValue::Text(t) => vec![t],
                ModalityValue::Chunks(c) => c,
                _ => unreachable!(),
            };
            for s in strings {
                texts += 1;
                hits += usize::from(check(&tok, &words, &s));
            }
        }
    }
    assert_eq!(hits, texts, "every synthetic data-path text is answered from the tables");
}

#[test]
fn table_ids_equal_python_on_the_fixture() {
    #[derive(serde::Deserialize)]
    struct Case {
        text: String,
        ids: Vec<u32>,
    }
    #[derive(serde::Deserialize)]
    struct Fixture {
        cases: Vec<Case>,
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/text_ids.json");
    let fx: Fixture = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let words = WordLookup::new(&tokenizer());
    let mut hits = 0;
    for c in &fx.cases {
        let mut out = Vec::new();
        if words.encode(&c.text, &mut out) {
            hits += 1;
            let want: Vec<i64> = c.ids.iter().map(|&i| i64::from(i)).collect();
            assert_eq!(out, want, "{:?}", c.text);
        }
    }
    // The fixture is mostly adversarial (punctuation, accents, CJK): few strings are answered.
    assert!(hits >= 5, "{hits} of {} fixture strings answered", fx.cases.len());
}
