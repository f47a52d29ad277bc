//! The text tokenizer against ml-4m: ids equal to the Python `tokenizers` package's on ml-4m's
//! own tokenizer JSON (fixture written by tools/ml4m_reference/make_text_fixture.py), and
//! training that reproduces ml-4m's special-token layout.

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tessera_tokenizers::text::{COCO_CLASSES, TextTokenizer, TrainSpec};

/// ml-4m's published tokenizer, read from the shared data folder (never copied here).
fn ml4m_json() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/ml-4m/text_tokenizer_4m_wordpiece_30k.json")
}

fn ml4m() -> TextTokenizer {
    TextTokenizer::from_file(ml4m_json()).expect("ml-4m's tokenizer JSON in shared/data/ml-4m")
}

#[derive(Deserialize)]
struct Fixture {
    tokenizers_version: String,
    tokenizer_sha256: String,
    vocab_size: usize,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
    decoded: String,
    decoded_with_special: String,
}

fn fixture() -> Fixture {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/text_ids.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

#[test]
fn ids_and_decoding_equal_python_tokenizers() {
    let fx = fixture();
    let bytes = std::fs::read(ml4m_json()).unwrap();
    let sha: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(sha, fx.tokenizer_sha256, "the tokenizer JSON differs from the one the fixture was made from");
    let tok = ml4m();
    assert_eq!(tok.vocab_size(), fx.vocab_size);

    let mut bad = Vec::new();
    for c in &fx.cases {
        let ids = tok.encode(&c.text).unwrap();
        if ids != c.ids {
            bad.push(format!("encode {:?}\n  tessera {ids:?}\n  python  {:?}", c.text, c.ids));
            continue;
        }
        let decoded = tok.decode(&ids, true).unwrap();
        let decoded_with_special = tok.decode(&ids, false).unwrap();
        if decoded != c.decoded || decoded_with_special != c.decoded_with_special {
            bad.push(format!("decode {:?}: {decoded:?} / {decoded_with_special:?}", c.text));
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {} cases differ from tokenizers {}:\n{}",
        bad.len(),
        fx.cases.len(),
        fx.tokenizers_version,
        bad.join("\n")
    );

    let texts: Vec<&str> = fx.cases.iter().map(|c| c.text.as_str()).collect();
    let batch = tok.encode_batch(&texts).unwrap();
    assert!(batch.iter().zip(&fx.cases).all(|(ids, c)| *ids == c.ids), "encode_batch differs from encode");
}

#[test]
fn ml4m_special_token_layout() {
    // reference §2.1, checked independently of the fixture.
    let tok = ml4m();
    assert_eq!((tok.pad_id(), tok.unk_id(), tok.sos_id(), tok.eos_id()), (Some(0), Some(1), Some(2), Some(3)));
    assert_eq!(tok.sentinels().count(), 200);
    assert_eq!(tok.sentinels().collect::<Vec<_>>(), (0..200).map(|k| (k, 4 + k)).collect::<Vec<_>>());
    assert_eq!((tok.sentinel_id(1), tok.sentinel_id(199), tok.sentinel_id(200)), (Some(5), Some(203), None));
    for axis in 0..4 {
        for n in [0, 1, 500, 999] {
            assert_eq!(tok.coord_id(axis, n), Some(204 + 1000 * axis + n), "v{axis}={n}");
        }
        assert_eq!(tok.coord_id(axis, 1000), None);
    }
    assert_eq!(tok.coord_id(4, 0), None);
    for (i, class) in COCO_CLASSES.iter().enumerate() {
        assert_eq!(tok.token_to_id(class), Some(4204 + i as u32), "{class}");
    }
    assert_eq!(tok.added_tokens().len(), 4284);
    for (word, id) in [("a", 4321), ("human", 6304), ("pose", 8620), ("none", 18109), ("polygon", 14445)] {
        assert_eq!(tok.token_to_id(word), Some(id), "{word}");
    }
    assert_eq!(
        tok.encode("v0=12 v1=34 v2=100 v3=200 dining table v0=1 v1=2 v2=3 v3=4 person").unwrap(),
        [216, 1238, 2304, 3404, 4231, 205, 1206, 2207, 3208, 4253]
    );
    assert_eq!(tok.encode("[S_1]").unwrap(), [5]);
    assert_eq!(tok.encode("a").unwrap(), [4321]);
}

/// A small deterministic corpus: sentences over a fixed word list, some with class names.
fn write_corpus(dir: &Path) -> (PathBuf, PathBuf, Vec<&'static str>) {
    let words = vec![
        "the", "a", "man", "woman", "riding", "horse", "dog", "sitting", "on", "table", "next", "to", "bench", "with", "red", "blue",
        "green", "umbrella", "street", "city", "people", "walking", "down", "road", "large", "small", "white", "black", "kitchen",
        "counter", "plate", "food", "pizza", "cutting", "board", "standing", "field", "grass", "sky", "clouds", "water", "boat", "beach",
        "ocean", "waves", "surfer", "train", "tracks", "station", "bus", "parked", "building", "window", "cat", "laying", "bed", "pillow",
        "quickly", "jumping", "zebra", "giraffe", "elephant", "young", "boy", "girl", "playing", "frisbee", "park",
    ];
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut files = Vec::new();
    for f in 0..2 {
        let mut text = String::new();
        for _ in 0..600 {
            let n = rng.random_range(4..16);
            let line: Vec<&str> = (0..n).map(|_| words[rng.random_range(0..words.len())]).collect();
            text.push_str(&line.join(" "));
            text.push_str(if rng.random_bool(0.5) { ".\n" } else { "\n" });
        }
        let path = dir.join(format!("corpus{f}.txt"));
        std::fs::write(&path, text).unwrap();
        files.push(path);
    }
    (files[0].clone(), files[1].clone(), words)
}

#[test]
fn trained_tokenizer_has_ml4m_layout_and_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, words) = write_corpus(dir.path());
    let classes: Vec<String> = ["dining table", "person", "teddy bear"].iter().map(|s| s.to_string()).collect();
    let spec = TrainSpec { vocab_size: 400, num_sentinels: 7, coord_bins: 5, object_classes: classes.clone(), lowercase: true };
    let tok = TextTokenizer::train(&[&a, &b], &spec).unwrap();

    let mut expected: Vec<String> = ["[PAD]", "[UNK]", "[SOS]", "[EOS]"].iter().map(|s| s.to_string()).collect();
    expected.extend((0..7).map(|k| format!("[S_{k}]")));
    expected.extend((0..4).flat_map(|axis| (0..5).map(move |n| format!("v{axis}={n}"))));
    expected.extend(classes.iter().cloned());
    assert_eq!(spec.num_special_tokens(), expected.len());
    for (id, t) in expected.iter().enumerate() {
        assert_eq!(tok.id_to_token(id as u32).as_deref(), Some(t.as_str()), "id {id}");
    }
    assert_eq!(tok.added_tokens(), expected);
    assert_eq!((tok.pad_id(), tok.unk_id(), tok.sos_id(), tok.eos_id()), (Some(0), Some(1), Some(2), Some(3)));
    assert_eq!(tok.sentinel_id(1), Some(5));
    assert_eq!(tok.sentinel_id(7), None);
    assert_eq!(tok.coord_id(2, 4), Some(4 + 7 + 2 * 5 + 4));
    assert_eq!(tok.token_to_id("teddy bear"), Some(33));
    // Learned vocabulary: after the special tokens, within the requested size, covering the corpus.
    assert!(tok.vocab_size() > expected.len() + 26 && tok.vocab_size() <= 400, "{}", tok.vocab_size());
    assert!(tok.token_to_id("the").is_some_and(|id| id as usize >= expected.len()));

    // Added tokens match as ml-4m's do: coordinates and sentinels verbatim, classes after lowercasing.
    let ids = tok.encode("v0=3 v1=0 Dining Table [S_2] PERSON").unwrap();
    assert_eq!(ids, [4 + 7 + 3, 4 + 7 + 5, 31, 6, 32]);
    // Plain words round-trip through decode, corpus words as one token each.
    let sentence = "the young girl playing frisbee next to a zebra in the park";
    let ids = tok.encode(sentence).unwrap();
    assert!(!ids.contains(&1), "{ids:?}");
    assert_eq!(tok.decode(&ids, true).unwrap(), sentence);
    for w in &words {
        assert_eq!(tok.encode(w).unwrap().len(), 1, "{w}");
    }
    // Unseen words of seen letters split into pieces and still round-trip.
    let unseen = "zebrawindow bedpillows greenish";
    let ids = tok.encode(unseen).unwrap();
    assert!(ids.len() > 3 && !ids.contains(&1), "{ids:?}");
    assert_eq!(tok.decode(&ids, true).unwrap(), unseen);

    // Saved JSON reloads to the same ids.
    let saved = dir.path().join("tok.json");
    tok.save(&saved).unwrap();
    let back = TextTokenizer::from_file(&saved).unwrap();
    assert_eq!(back.vocab(), tok.vocab());
    assert_eq!(back.encode(sentence).unwrap(), tok.encode(sentence).unwrap());

    // Without lowercasing, capitalised class names are no longer the class token.
    let cased = TextTokenizer::train(&[&a], &TrainSpec { lowercase: false, ..spec.clone() }).unwrap();
    assert!(!cased.encode("Dining Table").unwrap().contains(&31));
    assert_eq!(cased.encode("dining table").unwrap(), [31]);
}

#[test]
fn default_spec_reproduces_ml4m_json_pipeline_and_added_tokens() {
    // Train with ml-4m's defaults on a small corpus, then compare the saved JSON with ml-4m's
    // published file: identical added tokens (content, id and flags), normalizer,
    // pre-tokenizer, post-processor, decoder and model settings.
    let dir = tempfile::tempdir().unwrap();
    let (a, _, _) = write_corpus(dir.path());
    let spec = TrainSpec { vocab_size: 4284 + 300, ..TrainSpec::default() };
    let tok = TextTokenizer::train(&[&a], &spec).unwrap();
    let saved = dir.path().join("tok.json");
    tok.save(&saved).unwrap();
    let ours: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&saved).unwrap()).unwrap();
    let theirs: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(ml4m_json()).unwrap()).unwrap();
    for key in ["added_tokens", "normalizer", "pre_tokenizer", "post_processor", "decoder", "truncation", "padding"] {
        assert_eq!(ours[key], theirs[key], "{key}");
    }
    for key in ["type", "unk_token", "continuing_subword_prefix", "max_input_chars_per_word"] {
        assert_eq!(ours["model"][key], theirs["model"][key], "model.{key}");
    }
    let vocab = ours["model"]["vocab"].as_object().unwrap();
    for (i, t) in theirs["added_tokens"].as_array().unwrap().iter().enumerate() {
        assert_eq!(vocab[t["content"].as_str().unwrap()], i, "model vocab id of {t}");
    }
}
