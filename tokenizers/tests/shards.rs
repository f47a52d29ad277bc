//! Integration tests of the shard formats: round trips through the writers and the indexed
//! reader, ml-4m's folder-join semantics, error messages, and agreement with files written by
//! Python (tarfile, numpy, Pillow; see tools/ml4m_reference/make_shard_fixture.py).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use tessera_tokenizers::Error;
use tessera_tokenizers::shards::rgb::{crop, resize};
use tessera_tokenizers::shards::*;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/shards")
}

fn small_spec() -> FixtureSpec {
    FixtureSpec { shards: 3, samples_per_shard: 4, n_crops: 2, n_tokens: 196, width: 24, height: 20, seed: 7 }
}

fn write_tar(path: &Path, members: &[(&str, &[u8])]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut w = TarWriter::create(path).unwrap();
    for (name, data) in members {
        w.append(name, data).unwrap();
    }
    w.finish().unwrap();
}

#[test]
fn fixture_round_trip_reads_back_every_member() {
    let dir = tempfile::tempdir().unwrap();
    let spec = small_spec();
    let fx = write_fixture(dir.path(), &spec).unwrap();
    let ds = ShardDataset::open(&fx.pattern, &fx.name_map).unwrap();
    assert_eq!(ds.len(), 12);
    assert_eq!(ds.num_shards(), 3);
    assert_eq!(ds.member_names(), ["caption", "crop_settings", "det", "metadata", "rgb", "tok_rgb@224"]);
    for i in 0..ds.len() {
        assert_eq!(ds.key(i).unwrap(), fx.keys[i]);
        assert_eq!(ds.shard_of(i).unwrap(), i / 4);
        let rec = ds.read(i).unwrap();
        let expected = fixture::fixture_sample(&spec, i).unwrap();
        for (folder, ext, bytes) in expected {
            let name = fx.name_map.get(folder).map_or(folder, String::as_str);
            let m = rec.member(name).unwrap();
            assert_eq!(m.ext, ext);
            assert_eq!(m.bytes, bytes, "record {i} member {name}");
        }
        let dec = rec.decode().unwrap();
        let Decoded::Array(tok) = &dec.members["tok_rgb@224"] else { panic!("tok_rgb@224 not an array") };
        let tokens = TokenArray::from_array(tok, Some(196), &rec.origin("tok_rgb@224")).unwrap();
        assert_eq!((tokens.n_crops, tokens.n_tokens), (2, 196));
        assert!(tokens.ids.iter().all(|&t| (0..8192).contains(&t)));
        let Decoded::Array(cs) = &dec.members["crop_settings"] else { panic!("crop_settings not an array") };
        let crops = crop_settings_from_array(cs, &rec.origin("crop_settings")).unwrap();
        assert_eq!(crops[0], CropSetting { top: 0, left: 2, height: 20, width: 20, hflip: false });
        let Decoded::Image(img) = &dec.members["rgb"] else { panic!("rgb not an image") };
        assert_eq!((img.width, img.height), (24, 20));
        let Decoded::Json(Value::Array(caps)) = &dec.members["caption"] else { panic!("caption not a JSON list") };
        assert_eq!(caps.len(), 2);
    }
    // Selective reads skip the other members; out-of-range indices are errors.
    let only = ds.read_only(5, &["rgb", "caption"]).unwrap();
    assert_eq!(only.members.keys().collect::<Vec<_>>(), ["caption", "rgb"]);
    let e = ds.read(12).unwrap_err().to_string();
    assert!(e.contains("12") && e.contains("12 records"), "{e}");
}

#[test]
fn fixtures_are_deterministic() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write_fixture(a.path(), &small_spec()).unwrap();
    write_fixture(b.path(), &small_spec()).unwrap();
    for f in FIXTURE_FOLDERS {
        let p = format!("{f}/shard-00001.tar");
        assert_eq!(std::fs::read(a.path().join(&p)).unwrap(), std::fs::read(b.path().join(&p)).unwrap(), "{p}");
    }
    let other = tempfile::tempdir().unwrap();
    write_fixture(other.path(), &FixtureSpec { seed: 8, ..small_spec() }).unwrap();
    assert_ne!(
        std::fs::read(a.path().join("rgb/shard-00000.tar")).unwrap(),
        std::fs::read(other.path().join("rgb/shard-00000.tar")).unwrap()
    );
}

#[test]
fn pattern_expansion_lists_folders_and_shards() {
    let f = expand_shard_pattern("/r/[rgb,caption,tok_rgb@224,crop_settings]/shard-{00000..00099}.tar").unwrap();
    assert_eq!(f.len(), 4);
    assert!(f.iter().all(|x| x.shards.len() == 100));
    assert_eq!(f[2].shards[99], PathBuf::from("/r/tok_rgb@224/shard-00099.tar"));
    assert_eq!(brace_expand("a/{x,y}/{0..1}-{a,b{1,2}}").unwrap().len(), 12);
    let e = expand_shard_pattern("/r/[rgb/shard-{0..1}.tar").unwrap_err().to_string();
    assert!(e.contains("unmatched '['"), "{e}");
}

#[test]
fn divergent_keys_name_both_folders_and_keys() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    write_tar(&r.join("rgb/s-0.tar"), &[("a.png", b"1"), ("b.png", b"2")]);
    write_tar(&r.join("caption/s-0.tar"), &[("a.json", b"1"), ("c.json", b"2")]);
    let pattern = format!("{}/[rgb,caption]/s-{{0,0}}.tar", r.display());
    // `{0,0}` repeats the shard: the divergence must be reported on the first one.
    let e = ShardDataset::open(&pattern, &NameMap::new()).unwrap_err();
    let Error::Divergence(d) = &e else { panic!("expected a divergence, got {e}") };
    assert_eq!((d.shard, d.position, d.key_a.as_str(), d.key_b.as_str()), (0, 1, "b", "c"));
    let msg = e.to_string();
    assert!(msg.contains("Divergence detected") && msg.contains("'rgb'") && msg.contains("'caption'") && msg.contains("s-0.tar"), "{msg}");
    // A shorter shard diverges too (ml-4m's zip would silently drop the tail).
    write_tar(&r.join("caption/s-0.tar"), &[("a.json", b"1")]);
    let msg = ShardDataset::open(&pattern, &NameMap::new()).unwrap_err().to_string();
    assert!(msg.contains("<end of shard>") && msg.contains("'b'"), "{msg}");
}

#[test]
fn member_renaming_follows_ml4m() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    write_tar(&r.join("tok_rgb/0.tar"), &[("k1.npy", b"t1"), ("k2.npy", b"t2")]);
    write_tar(&r.join("extra/0.tar"), &[("k1.json", b"{}"), ("k2.json", b"[]")]);
    // A tar already in `name.ext` form, and one holding two modalities per sample.
    write_tar(&r.join("named/0.tar"), &[("k1.det.json", b"{}"), ("k2.det.json", b"{}")]);
    write_tar(
        &r.join("multi/0.tar"),
        &[("k1.caption.txt", b"x"), ("k1.metadata.json", b"{}"), ("k2.caption.txt", b"y"), ("k2.metadata.json", b"{}")],
    );
    let map = NameMap::from([("tok_rgb".to_string(), "tok_rgb@224".to_string())]);
    let ds = ShardDataset::open(&format!("{}/[tok_rgb,extra,named,multi]/0.tar", r.display()), &map).unwrap();
    assert_eq!(ds.len(), 2);
    // Folders without a map entry keep their folder name ("extra").
    assert_eq!(ds.member_names(), ["caption", "det", "extra", "metadata", "tok_rgb@224"]);
    let rec = ds.read(1).unwrap();
    assert_eq!(rec.members["tok_rgb@224"].bytes, b"t2");
    assert_eq!(rec.members["extra"].ext, "json");
    assert_eq!(rec.members["caption"].bytes, b"y");
    // Without brackets the members keep their suffix as the name (ml-4m's modality None).
    let plain = ShardDataset::open(&format!("{}/tok_rgb/0.tar", r.display()), &map).unwrap();
    assert_eq!(plain.member_names(), ["npy"]);
    assert_eq!(plain.read(0).unwrap().members["npy"].ext, "npy", "decodes like wds_decoder's key == 'npy'");
    // Two folders giving the same modality name is an error, not a silent overwrite.
    write_tar(&r.join("det/0.tar"), &[("k1.json", b"{}"), ("k2.json", b"{}")]);
    let e = ShardDataset::open(&format!("{}/[named,det]/0.tar", r.display()), &map).unwrap_err().to_string();
    assert!(e.contains("'det'") && e.contains("k1"), "{e}");
}

#[test]
fn truncated_and_corrupt_tars_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let fx = write_fixture(dir.path(), &small_spec()).unwrap();
    let victim = dir.path().join("rgb/shard-00001.tar");
    let bytes = std::fs::read(&victim).unwrap();
    // Cut inside the second member's data.
    let idx = TarIndex::scan(&victim).unwrap();
    let cut = idx.samples[1].members[0].offset + 10;
    std::fs::write(&victim, &bytes[..cut as usize]).unwrap();
    let e = ShardDataset::open(&fx.pattern, &fx.name_map).unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, Error::Tar { .. }) && msg.contains("rgb/shard-00001.tar") && msg.contains("truncated") && msg.contains("000000005.png"),
        "{msg}"
    );
    // Cut inside a header.
    std::fs::write(&victim, &bytes[..700]).unwrap();
    let msg = TarIndex::scan(&victim).unwrap_err().to_string();
    assert!(msg.contains("shard-00001.tar") && msg.contains("truncated"), "{msg}");
    // A flipped byte in a header fails the checksum.
    let mut bad = bytes.clone();
    bad[3] ^= 0x55;
    std::fs::write(&victim, &bad).unwrap();
    let msg = TarIndex::scan(&victim).unwrap_err().to_string();
    assert!(msg.contains("checksum") && msg.contains("at byte 0"), "{msg}");
    // A missing shard is an I/O error naming it.
    std::fs::remove_file(&victim).unwrap();
    let msg = ShardDataset::open(&fx.pattern, &fx.name_map).unwrap_err().to_string();
    assert!(msg.contains("rgb/shard-00001.tar"), "{msg}");
}

#[test]
fn wrong_dtype_or_shape_is_an_error() {
    let o = Origin::new("f.tar", "000007", "tok_rgb@224.npy");
    let floats = NdArray::new(vec![2, 3], ArrayData::F32(vec![0.0; 6])).unwrap();
    let e = TokenArray::from_array(&floats, None, &o).unwrap_err().to_string();
    assert!(e.contains("f.tar") && e.contains("000007") && e.contains("tok_rgb@224.npy") && e.contains("<f4"), "{e}");
    let flat = NdArray::new(vec![6], ArrayData::I16(vec![0; 6])).unwrap();
    assert!(TokenArray::from_array(&flat, None, &o).unwrap_err().to_string().contains("(n_crops, n_tokens)"));
    let cols = NdArray::new(vec![1, 6], ArrayData::I16(vec![0; 6])).unwrap();
    assert!(TokenArray::from_array(&cols, Some(196), &o).unwrap_err().to_string().contains("196"));
    let four = NdArray::new(vec![1, 4], ArrayData::I64(vec![0, 0, 4, 4])).unwrap();
    assert!(crop_settings_from_array(&four, &o).unwrap_err().to_string().contains("(n_crops, 5)"));
    let zero = NdArray::new(vec![1, 5], ArrayData::I64(vec![0, 0, 0, 4, 0])).unwrap();
    assert!(crop_settings_from_array(&zero, &o).is_err());
    // Bytes whose header promises more data than there is.
    let mut bytes = encode_npy(&NdArray::new(vec![2, 2], ArrayData::I16(vec![1, 2, 3, 4])).unwrap());
    bytes.truncate(bytes.len() - 1);
    assert!(decode_npy(&bytes, &o).unwrap_err().to_string().contains("need 8 data bytes"));
}

#[test]
fn malformed_json_member_names_file_key_and_member() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    write_tar(&r.join("det/0.tar"), &[("k1.json", br#"{"instances": []}"#), ("k2.json", br#"{"instances": [}"#)]);
    let ds = ShardDataset::open(&format!("{}/[det]/0.tar", r.display()), &NameMap::new()).unwrap();
    assert!(ds.read_decoded(0).is_ok());
    let msg = ds.read_decoded(1).unwrap_err().to_string();
    assert!(msg.contains("det/0.tar") && msg.contains("'k2'") && msg.contains("k2.json") && msg.contains("malformed JSON"), "{msg}");
}

#[test]
fn reads_python_tarfile_and_numpy_output() {
    let path = fixture_dir().join("python.tar");
    let expected: Value = serde_json::from_str(&std::fs::read_to_string(fixture_dir().join("python_tar.json")).unwrap()).unwrap();
    let idx = TarIndex::scan(&path).unwrap();
    let keys: Vec<&str> = idx.samples.iter().map(|s| s.key.as_str()).collect();
    let want: Vec<&str> = expected["keys"].as_array().unwrap().iter().map(|k| k.as_str().unwrap()).collect();
    assert_eq!(keys, want, "directory entries skipped, pax/long names resolved");
    let suffixes: Vec<Vec<&str>> = idx.samples.iter().map(|s| s.members.iter().map(|m| m.suffix.as_str()).collect()).collect();
    assert_eq!(serde_json::to_value(&suffixes).unwrap(), expected["suffixes"]);
    let read = |s: usize, m: usize| idx.read_member(&idx.samples[s].members[m]).unwrap();
    let o = |s: usize, m: usize| Origin::new(path.display().to_string(), &idx.samples[s].key, &idx.samples[s].members[m].name);
    let tok = decode_npy(&read(0, 0), &o(0, 0)).unwrap();
    assert_eq!(tok.dtype(), "<i2");
    assert_eq!(serde_json::to_value(&tok.shape).unwrap(), expected["tok_rgb"]["shape"]);
    assert_eq!(serde_json::to_value(tok.to_i64().unwrap()).unwrap(), expected["tok_rgb"]["values"]);
    let crops = crop_settings_from_array(&decode_npy(&read(0, 1), &o(0, 1)).unwrap(), &o(0, 1)).unwrap();
    assert_eq!(crops[1], CropSetting { top: 1, left: 0, height: 4, width: 6, hflip: true });
    let f16 = decode_npy(&read(1, 0), &o(1, 0)).unwrap();
    assert_eq!(serde_json::to_value(f16.to_f32().iter().map(|&x| f64::from(x)).collect::<Vec<_>>()).unwrap(), expected["f16"]);
    let mask = decode_npy(&read(2, 0), &o(2, 0)).unwrap();
    assert_eq!(mask.data, ArrayData::Bool(vec![true, false, true]));
    let sam = decode_npy(&read(2, 1), &o(2, 1)).unwrap_err().to_string();
    assert!(
        sam.contains("object arrays are not supported")
            && sam.contains("sam_npy_to_json.py")
            && sam.contains("'000003'")
            && sam.contains("python.tar"),
        "{sam}"
    );
    assert_eq!(read(4, 0), b"unicode name");
}

#[test]
fn npz_from_numpy_stored_and_deflated() {
    let expected: Value = serde_json::from_str(&std::fs::read_to_string(fixture_dir().join("t5.json")).unwrap()).unwrap();
    for name in ["t5.npz", "t5_compressed.npz"] {
        let o = Origin::new(name, "k", "t5_caption.npz");
        let arrays = decode_npz(&std::fs::read(fixture_dir().join(name)).unwrap(), &o).unwrap();
        let t5 = T5Embeddings::from_arrays(&arrays, &o).unwrap();
        assert_eq!(t5.shape, [2, 3, 4]);
        // Compare as f32: serde_json's default float parsing may miss the last f64 bit.
        let want: Vec<f32> = expected["emb"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
        assert_eq!(t5.emb, want, "{name}");
        assert_eq!(serde_json::to_value(&t5.mask_valid).unwrap(), expected["mask_valid"]);
    }
    // Our writer round-trips, and a missing array is named.
    let mut m = BTreeMap::new();
    m.insert("emb".to_string(), NdArray::new(vec![1, 1, 2], ArrayData::F32(vec![1.0, 2.0])).unwrap());
    let o = Origin::new("mem", "k", "t5_caption.npz");
    let back = decode_npz(&encode_npz(&m).unwrap(), &o).unwrap();
    assert_eq!(back, m);
    assert!(T5Embeddings::from_arrays(&back, &o).unwrap_err().to_string().contains("mask_valid"));
    assert!(decode_npz(b"not a zip", &o).unwrap_err().to_string().contains("t5_caption.npz"));
}

#[test]
fn rgb_transform_constant_colour_is_exact() {
    let img = Rgb8Image::filled(37, 23, [255, 128, 0]);
    for filter in [ResizeFilter::Bilinear, ResizeFilter::Bicubic] {
        let c = CropSetting { top: 1, left: 5, height: 20, width: 30, hflip: true };
        let t = rgb_transform(&img, &c, 8, filter).unwrap();
        assert_eq!((t.channels, t.height, t.width, t.data.len()), (3, 8, 8, 192));
        let want = [(1.0f32 - 0.485) / 0.229, (128.0f32 / 255.0 - 0.456) / 0.224, (0.0f32 - 0.406) / 0.225];
        for (c, w) in want.iter().enumerate() {
            assert!(t.data[c * 64..(c + 1) * 64].iter().all(|v| v == w), "channel {c}");
        }
    }
}

#[test]
fn rgb_two_by_two_pattern_bilinear_by_hand() {
    // [[0, 255], [255, 0]] (grey) → 4x4. Pillow's bilinear weights for 2 → 4 are
    // [1], [.75, .25], [.25, .75], [1] in each direction, rounded after each pass.
    let px = |v: u8| [v, v, v];
    let data: Vec<u8> = [px(0), px(255), px(255), px(0)].concat();
    let img = Rgb8Image::new(2, 2, data).unwrap();
    let out = resize(&img, 4, 4, ResizeFilter::Bilinear).unwrap();
    let grey: Vec<u8> = out.data.chunks(3).map(|p| p[0]).collect();
    #[rustfmt::skip]
    let want = [
        0, 64, 191, 255,
        64, 96, 159, 191,
        191, 159, 96, 64,
        255, 191, 64, 0,
    ];
    assert_eq!(grey, want);
    assert_eq!(crop(&img, &CropSetting::full(2, 2)).unwrap(), img);
}

#[test]
fn rgb_transform_matches_pillow_and_torchvision() {
    let r: Value = serde_json::from_str(&std::fs::read_to_string(fixture_dir().join("pil_resize.json")).unwrap()).unwrap();
    let nums = |v: &Value| v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect::<Vec<_>>();
    let pixels: Vec<u8> = nums(&r["pixels"]).iter().map(|&x| x as u8).collect();
    let img = Rgb8Image::new(7, 5, pixels).unwrap();
    let cases = r["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 24);
    for case in cases {
        let c: Vec<i64> = nums(&case["crop"]).iter().map(|&x| x as i64).collect();
        let setting = CropSetting { top: c[0], left: c[1], height: c[2], width: c[3], hflip: c[4] == 1 };
        let filter = if case["filter"] == "bilinear" { ResizeFilter::Bilinear } else { ResizeFilter::Bicubic };
        let side = case["side"].as_u64().unwrap() as usize;
        let mut u8s = resize(&crop(&img, &setting).unwrap(), side, side, filter).unwrap();
        if setting.hflip {
            u8s = rgb::hflip(&u8s);
        }
        let want_u8: Vec<u8> = nums(&case["u8"]).iter().map(|&x| x as u8).collect();
        assert_eq!(u8s.data, want_u8, "pixels for {c:?} {filter:?} {side}");
        let chw = rgb_transform(&img, &setting, side, filter).unwrap();
        let want: Vec<f32> = nums(&case["chw"]).iter().map(|&x| x as f32).collect();
        assert_eq!(chw.data, want, "normalised values for {c:?} {filter:?} {side}");
    }
}

#[test]
fn png_round_trip_and_bad_image_error() {
    let img = Rgb8Image::new(3, 2, (0..18).map(|v| v * 13).collect()).unwrap();
    let png = rgb::encode_png(&img).unwrap();
    let o = Origin::new("s.tar", "k9", "rgb.png");
    assert_eq!(rgb::decode_image(&png, "png", &o).unwrap(), img);
    let e = decode_member("png", b"\x89PNG garbage", &o).unwrap_err().to_string();
    assert!(e.contains("s.tar") && e.contains("k9") && e.contains("rgb.png"), "{e}");
    assert!(matches!(decode_member("cls", b"3", &o).unwrap(), Decoded::Bytes(_)));
    assert_eq!(decode_member("txt", b"hello", &o).unwrap(), Decoded::Text("hello".into()));
}

fn write_corpus(dir: &Path) -> String {
    std::fs::write(
        dir.join("c4-0.json"),
        "{\"text\": \"first doc\", \"url\": \"u\"}\n\n{\"text\": \"second\\ndoc\"}\n   \n{\"text\": \"third\"}\n",
    )
    .unwrap();
    std::fs::write(dir.join("c4-1.json"), "{\"text\": \"fourth\"}\r\n{\"text\": \"fifth \u{00e9}\"}").unwrap();
    format!("{}/c4-{{0..1}}.json", dir.display())
}

#[test]
fn text_corpus_random_access_equals_sequential() {
    let dir = tempfile::tempdir().unwrap();
    let pattern = write_corpus(dir.path());
    for stride in [1, 2, 3, 100] {
        let corpus = TextCorpus::open_with_stride(&pattern, TextFormat::c4(), stride).unwrap();
        assert_eq!(corpus.len(), 5);
        let seq: Vec<TextRecord> = corpus.iter().collect::<Result<_, _>>().unwrap();
        let texts: Vec<&str> = seq.iter().map(|r| r.text.as_str()).collect();
        assert_eq!(texts, ["first doc", "second\ndoc", "third", "fourth", "fifth \u{00e9}"]);
        assert_eq!(seq.iter().map(|r| r.line).collect::<Vec<_>>(), [1, 3, 5, 1, 2]);
        for i in [4, 0, 2, 3, 1] {
            assert_eq!(corpus.read(i).unwrap(), seq[i], "stride {stride} record {i}");
        }
        assert!(corpus.read(5).is_err());
    }
    let lines = TextCorpus::open(&format!("{}/c4-1.json", dir.path().display()), TextFormat::Lines).unwrap();
    assert_eq!(lines.read(1).unwrap().text, "{\"text\": \"fifth \u{00e9}\"}");
    assert_eq!(lines.read(0).unwrap().text, "{\"text\": \"fourth\"}", "CRLF stripped");
}

#[test]
fn text_corpus_errors_name_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.jsonl");
    std::fs::write(&p, "{\"text\": \"ok\"}\n{\"text\": \"broken\"\n{\"content\": \"x\"}\n").unwrap();
    let corpus = TextCorpus::open(&p.display().to_string(), TextFormat::c4()).unwrap();
    let e = corpus.read(1).unwrap_err().to_string();
    assert!(e.contains("bad.jsonl:2:") && e.contains("malformed JSON"), "{e}");
    let e = corpus.read(2).unwrap_err().to_string();
    assert!(e.contains("bad.jsonl:3:") && e.contains("no field 'text'"), "{e}");
    let custom = TextCorpus::open(&p.display().to_string(), TextFormat::JsonLines { field: "content".into() }).unwrap();
    assert_eq!(custom.read(2).unwrap().text, "x");
    let errs: Vec<_> = corpus.iter().filter_map(|r| r.err()).collect();
    assert_eq!(errs.len(), 2);
    std::fs::write(dir.path().join("c.json.gz"), b"").unwrap();
    assert!(
        TextCorpus::open(&format!("{}/c.json.gz", dir.path().display()), TextFormat::c4()).unwrap_err().to_string().contains("decompress")
    );
}

#[test]
fn parallel_reads_preserve_order() {
    let dir = tempfile::tempdir().unwrap();
    let fx = write_fixture(dir.path(), &FixtureSpec { shards: 4, samples_per_shard: 6, ..small_spec() }).unwrap();
    let ds = ShardDataset::open(&fx.pattern, &fx.name_map).unwrap().with_open_files(3);
    let order: Vec<usize> = (0..ds.len()).map(|i| (i * 7 + 3) % ds.len()).collect();
    let sequential: Vec<DecodedRecord> = order.iter().map(|&i| ds.read_decoded(i).unwrap()).collect();
    for threads in [1, 3] {
        let pool = ParallelReader::new(threads).unwrap();
        assert_eq!(pool.threads(), threads);
        assert_eq!(pool.read_decoded(&ds, &order).unwrap(), sequential);
        let raw = pool.read_raw(&ds, &order).unwrap();
        assert_eq!(raw.iter().map(|r| r.index).collect::<Vec<_>>(), order);
        // The earliest failing index decides the error, whatever the thread timing.
        let e = pool.map(&[0, 1, 2, 3], |i| if i >= 2 { Err(Error::Budget { reason: format!("fail {i}") }) } else { Ok(i) }).unwrap_err();
        assert!(e.to_string().contains("fail 2"), "{e}");
    }
}

#[test]
fn jpeg_decodes_close_to_pillow() {
    let r: Value = serde_json::from_str(&std::fs::read_to_string(fixture_dir().join("tiny_jpg.json")).unwrap()).unwrap();
    let want: Vec<i32> = r["pixels"].as_array().unwrap().iter().map(|x| x.as_i64().unwrap() as i32).collect();
    let o = Origin::new("tiny.jpg", "k", "rgb.jpg");
    let Decoded::Image(img) = decode_member("jpg", &std::fs::read(fixture_dir().join("tiny.jpg")).unwrap(), &o).unwrap() else {
        panic!("not an image")
    };
    assert_eq!((img.width, img.height), (16, 12));
    // Different IDCT/upsampling than libjpeg: a few levels apart at most, never a shifted image.
    let worst = img.data.iter().zip(&want).map(|(&a, &b)| (i32::from(a) - b).abs()).max().unwrap();
    assert!(worst <= 6, "max |rust - pillow| = {worst}");
}

#[test]
fn corrupted_shards_give_errors_not_panics() {
    use rand::{Rng, SeedableRng};
    let dir = tempfile::tempdir().unwrap();
    let spec = FixtureSpec { shards: 1, samples_per_shard: 3, ..small_spec() };
    let fx = write_fixture(dir.path(), &spec).unwrap();
    let path = |f: &str| dir.path().join(f).join("shard-00000.tar");
    let originals: Vec<Vec<u8>> = FIXTURE_FOLDERS.iter().map(|f| std::fs::read(path(f)).unwrap()).collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let (mut opened, mut failed_reads) = (0, 0);
    for round in 0..180 {
        let folder = round % FIXTURE_FOLDERS.len();
        let mut bytes = originals[folder].clone();
        match round % 3 {
            0 => bytes.truncate(rng.random_range(0..bytes.len())),
            // Flips anywhere hit headers (checksum errors) ...
            1 => (0..rng.random_range(1..8)).for_each(|_| {
                let i = rng.random_range(0..bytes.len());
                bytes[i] = rng.random();
            }),
            // ... flips after the first header mostly hit member data, which the decoders see.
            _ => (0..rng.random_range(1..4)).for_each(|_| {
                let i = rng.random_range(512..bytes.len());
                bytes[i] ^= 1 << rng.random_range(0..8);
            }),
        }
        std::fs::write(path(FIXTURE_FOLDERS[folder]), &bytes).unwrap();
        if let Ok(ds) = ShardDataset::open(&fx.pattern, &fx.name_map) {
            opened += 1;
            for i in 0..ds.len() {
                failed_reads += usize::from(ds.read(i).and_then(|r| r.decode()).is_err());
            }
        }
        std::fs::write(path(FIXTURE_FOLDERS[folder]), &originals[folder]).unwrap();
    }
    // Both paths were exercised: some damage is caught by the index, some only by decoding.
    assert!(opened > 10 && failed_reads >= 5, "opened {opened}, failed reads {failed_reads}");
}
