//! The built-in world: determinism by seed, exact agreement between modalities, and shards that
//! load through the ml-4m layout readers and serializers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tessera_tokenizers::Error;
use tessera_tokenizers::serialize::{ColorPalettes, Detections, Metadata, MetadataKey};
use tessera_tokenizers::shards::{Decoded, NameMap, ShardDataset, crop_settings_from_array};
use tessera_tokenizers::world::caption::{LEFT_OF_MIN, Relation, parse};
use tessera_tokenizers::world::{FOLDERS, WorldSample, WorldSpec, generate};

const SIDE: usize = 48;
const SCENES: usize = 80;

fn spec(seed: u64) -> WorldSpec {
    WorldSpec { samples: SCENES, size: SIDE, seed, n_crops: 3, val_fraction: 0.1, shard_size: 16, threads: 1 }
}

fn samples(seed: u64) -> Vec<WorldSample> {
    (0..SCENES).map(|i| WorldSample::generate(&spec(seed), i)).collect()
}

/// Every file under `root`, relative path → bytes.
fn tree(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.insert(path.strip_prefix(root).unwrap().to_path_buf(), std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

#[test]
fn generation_is_deterministic_by_seed_and_independent_of_threads() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let small = |seed, threads| WorldSpec { samples: 24, shard_size: 10, threads, ..spec(seed) };
    let mut seen = Vec::new();
    generate(dirs[0].path(), &small(7, 1), &mut |p| seen.push(p.done)).unwrap();
    generate(dirs[1].path(), &small(7, 2), &mut |_| {}).unwrap();
    generate(dirs[2].path(), &small(8, 2), &mut |_| {}).unwrap();
    // 22 train samples in shards of 10, then 2 val samples.
    assert_eq!(seen, [10, 20, 22, 24]);
    let (a, b, c) = (tree(dirs[0].path()), tree(dirs[1].path()), tree(dirs[2].path()));
    // world.json names its own directory in the data paths; everything else is byte-identical.
    let relative = |t: &BTreeMap<PathBuf, Vec<u8>>, dir: &Path| {
        String::from_utf8(t[Path::new("world.json")].clone()).unwrap().replace(&dir.display().to_string(), "OUT")
    };
    assert_eq!(relative(&a, dirs[0].path()), relative(&b, dirs[1].path()));
    let (a, b): (BTreeMap<_, _>, BTreeMap<_, _>) = (
        a.into_iter().filter(|e| e.0 != Path::new("world.json")).collect(),
        b.into_iter().filter(|e| e.0 != Path::new("world.json")).collect(),
    );
    // 3 train shards and 1 val shard per folder.
    assert_eq!(a.len(), 4 * FOLDERS.len(), "{:?}", a.keys().collect::<Vec<_>>());
    let differing: Vec<_> = a.keys().filter(|k| a[*k] != b[*k]).collect();
    assert!(differing.is_empty(), "same seed, different thread count: {differing:?} differ");
    let rgb = Path::new("train/rgb/shard-00000.tar");
    assert_ne!(a[rgb], c[rgb], "different seeds gave the same images");
    assert_eq!(a.len() + 1, c.len());
}

#[test]
fn boxes_enclose_exactly_the_visible_instances() {
    let mut hidden = 0;
    for s in samples(1) {
        let f = &s.frame;
        let det = Detections::from_json(&s.detections().to_string()).unwrap();
        let visible: Vec<usize> = (0..s.scene.objects.len()).filter(|&i| f.instance.contains(&((i + 1) as u8))).collect();
        hidden += s.scene.objects.len() - visible.len();
        assert_eq!(det.instances.len(), visible.len(), "sample {}: one box per visible object", s.index);
        for (inst, &i) in det.instances.iter().zip(&visible) {
            assert_eq!(inst.class_name, s.scene.objects[i].class.name());
            let b = inst.boxes.map(|v| (v * SIDE as f64).round() as usize);
            let (mut tight, mut inside) = ([false; 4], true);
            for (p, &id) in f.instance.iter().enumerate() {
                if usize::from(id) != i + 1 {
                    continue;
                }
                let (x, y) = (p % SIDE, p / SIDE);
                inside &= b[0] <= x && x < b[2] && b[1] <= y && y < b[3];
                tight = [tight[0] || x == b[0], tight[1] || y == b[1], tight[2] || x + 1 == b[2], tight[3] || y + 1 == b[3]];
            }
            assert!(inside, "sample {} object {i}: pixels outside its box {b:?}", s.index);
            assert_eq!(tight, [true; 4], "sample {} object {i}: box {b:?} is not tight", s.index);
        }
    }
    assert!(hidden > 0, "no scene hid an object; the 'only visible objects' check was not exercised");
}

#[test]
fn captions_name_exactly_the_visible_objects() {
    for s in samples(2) {
        let (mut mentions, relations) = parse(&s.caption).unwrap();
        let mut want: Vec<_> = (0..s.scene.objects.len())
            .filter(|&i| s.frame.visible[i] > 0)
            .map(|i| {
                let o = &s.scene.objects[i];
                (o.size_name(), o.colour_name(), o.class)
            })
            .collect();
        let mut got: Vec<_> = mentions.drain(..).map(|m| (m.size, m.colour, m.class)).collect();
        want.sort();
        got.sort();
        assert_eq!(got, want, "sample {}: '{}'", s.index, s.caption);
        assert_eq!(relations.len(), want.len().saturating_sub(1));
        // Each relation holds between neighbours in left-to-right order of visible centroids.
        let mut placed: Vec<_> = (0..s.scene.objects.len())
            .filter(|&i| s.frame.visible[i] > 0)
            .map(|i| {
                let (mut sx, mut n) = (0.0, 0.0);
                for (p, &id) in s.frame.instance.iter().enumerate() {
                    if usize::from(id) == i + 1 {
                        sx += (p % SIDE) as f64 + 0.5;
                        n += 1.0;
                    }
                }
                (sx / n / SIDE as f64, s.scene.camera.depth_of(s.scene.objects[i].centre()))
            })
            .collect();
        placed.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
        for (rel, pair) in relations.iter().zip(placed.windows(2)) {
            match rel {
                Relation::LeftOf => assert!(pair[1].0 - pair[0].0 >= LEFT_OF_MIN - 1e-12),
                Relation::InFrontOf => assert!(pair[0].1 <= pair[1].1),
                Relation::Behind => assert!(pair[0].1 > pair[1].1),
            }
        }
        let crops: Vec<String> = serde_json::from_slice(&s.members().unwrap()[6].2).unwrap();
        assert_eq!(crops, vec![s.caption.clone(); 3]);
    }
}

#[test]
fn depth_ordering_agrees_with_occlusion_and_classes_with_instances() {
    let mut overlaps = 0;
    for s in samples(3) {
        let (f, cam) = (&s.frame, &s.scene.camera);
        let mut amodal = vec![0; s.scene.objects.len()];
        for p in 0..SIDE * SIDE {
            let ray = cam.ray(p % SIDE, p / SIDE, SIDE);
            let hits: Vec<(usize, f64)> =
                s.scene.objects.iter().enumerate().filter_map(|(i, o)| o.hit(&ray).map(|h| (i, h.t * ray.dir.dot(cam.forward)))).collect();
            hits.iter().for_each(|h| amodal[h.0] += 1);
            let id = usize::from(f.instance[p]);
            if id == 0 {
                assert!(hits.is_empty(), "sample {} pixel {p}: background but a ray hits {hits:?}", s.index);
                assert_eq!(f.semseg[p], 0);
                continue;
            }
            assert_eq!(f.semseg[p], s.scene.objects[id - 1].class.semantic_id(), "sample {} pixel {p}", s.index);
            let shown = hits.iter().find(|h| h.0 == id - 1).expect("the visible object is on the ray").1;
            assert!((f64::from(f.depth[p]) - shown).abs() < 1e-3 * shown, "depth map disagrees with the visible surface");
            for &(other, d) in hits.iter().filter(|h| h.0 != id - 1) {
                overlaps += 1;
                assert!(shown < d, "sample {} pixel {p}: object {} shown at depth {shown} over object {other} at {d}", s.index, id - 1);
            }
        }
        // Amodal areas (every ray crossing the object, seen or not) are exact, not culled away.
        assert_eq!(f.amodal, amodal, "sample {}", s.index);
        assert!(f.amodal.iter().zip(&f.visible).all(|(a, v)| a >= v));
    }
    assert!(overlaps > 100, "too little occlusion to test ({overlaps} pixels)");
}

#[test]
fn normals_are_unit_length_and_edges_follow_instances() {
    for s in samples(4).into_iter().take(20) {
        let f = &s.frame;
        let cam = &s.scene.camera;
        for (p, n) in f.normal.chunks_exact(3).enumerate() {
            let len = (n[0] * n[0] + n[1] * n[1] + n[2] * n[2]).sqrt();
            assert!((len - 1.0).abs() < 1e-5, "sample {}: normal {n:?}", s.index);
            let d = cam.to_camera(cam.ray(p % SIDE, p / SIDE, SIDE).dir);
            let facing = f64::from(n[0]) * d.x + f64::from(n[1]) * d.y + f64::from(n[2]) * d.z;
            assert!(facing <= 1e-6, "sample {} pixel {p}: the surface faces away from its ray: {n:?}", s.index);
        }
        for y in 0..SIDE {
            for x in 0..SIDE {
                let id = f.instance[y * SIDE + x];
                let right = x + 1 < SIDE && f.instance[y * SIDE + x + 1] != id;
                let below = y + 1 < SIDE && f.instance[(y + 1) * SIDE + x] != id;
                if right {
                    assert!(f.edges[y * SIDE + x] == 255 && f.edges[y * SIDE + x + 1] == 255);
                }
                if below {
                    assert!(f.edges[y * SIDE + x] == 255 && f.edges[(y + 1) * SIDE + x] == 255);
                }
            }
        }
    }
}

#[test]
fn shards_load_through_the_ml4m_readers_and_serializers() {
    let dir = tempfile::tempdir().unwrap();
    let spec = WorldSpec { samples: 30, shard_size: 8, ..spec(5) };
    let summary = generate(dir.path(), &spec, &mut |_| {}).unwrap();
    assert_eq!(summary.splits.iter().map(|s| (s.samples, s.shards)).collect::<Vec<_>>(), [(27, 4), (3, 1)]);
    let world: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.path().join("world.json")).unwrap()).unwrap();
    assert_eq!(world["splits"][0]["data_path"], summary.splits[0].data_path);
    assert_eq!(world["classes"][3]["name"], "cone");
    let mut keys = Vec::new();
    for split in &summary.splits {
        let ds = ShardDataset::open(&split.data_path, &NameMap::new()).unwrap();
        assert_eq!(ds.len(), split.samples);
        for i in 0..ds.len() {
            keys.push(ds.key(i).unwrap().to_string());
            let rec = ds.read_decoded(i).unwrap();
            assert_eq!(rec.members.len(), FOLDERS.len());
            let json = |name: &str| match &rec.members[name] {
                Decoded::Json(v) => v.to_string(),
                other => panic!("{name}: {other:?}"),
            };
            let array = |name: &str| match &rec.members[name] {
                Decoded::Array(a) => a.clone(),
                other => panic!("{name}: {other:?}"),
            };
            let det = Detections::from_json(&json("det")).unwrap();
            let meta = Metadata::from_json(&json("metadata")).unwrap();
            assert_eq!(meta.values[&MetadataKey::NSamInstances] as usize, det.instances.len());
            assert_eq!(meta.values[&MetadataKey::OriginalWidth] as usize, SIDE);
            let palettes = ColorPalettes::from_json(&json("color_palette")).unwrap();
            assert_eq!(palettes.by_length.keys().copied().collect::<Vec<_>>(), (1..=7).collect::<Vec<_>>());
            let crops = crop_settings_from_array(&array("crop_settings"), &ds.read(i).unwrap().origin("crop_settings")).unwrap();
            assert_eq!(crops.len(), 3);
            assert_eq!(
                (crops[0].top, crops[0].left, crops[0].height, crops[0].width, crops[0].hflip),
                (0, 0, SIDE as i64, SIDE as i64, false)
            );
            assert!(crops.iter().all(|c| c.top >= 0 && c.left >= 0 && c.top + c.height <= SIDE as i64 && c.left + c.width <= SIDE as i64));
            assert_eq!(array("depth").shape, [SIDE, SIDE]);
            assert_eq!(array("global_feature").shape, [64]);
            assert_eq!(array("feature_map").shape, [32, SIDE / 16, SIDE / 16]);
            let Decoded::Image(rgb) = &rec.members["rgb"] else { panic!("rgb is not an image") };
            assert_eq!((rgb.width, rgb.height), (SIDE, SIDE));
            // The stored maps are the in-memory sample's, exactly.
            let sample = WorldSample::generate(&spec, rec.key.parse().unwrap());
            let Decoded::Image(inst) = &rec.members["instance"] else { panic!("instance is not an image") };
            assert!(inst.data.chunks_exact(3).map(|p| p[0]).eq(sample.frame.instance.iter().copied()));
            let Decoded::Image(normal) = &rec.members["normal"] else { panic!("normal is not an image") };
            for n in normal.data.chunks_exact(3) {
                let v = n.iter().map(|&c| f64::from(c) / 255.0 * 2.0 - 1.0);
                let len = v.map(|c| c * c).sum::<f64>().sqrt();
                assert!((len - 1.0).abs() < 0.02, "decoded normal {n:?}");
            }
        }
    }
    let want: Vec<String> = (0..30).map(|i| format!("{i:09}")).collect();
    assert_eq!(keys, want);
}

#[test]
fn bad_specs_are_refused_by_field() {
    let dir = tempfile::tempdir().unwrap();
    for (bad, field) in [
        (WorldSpec { samples: 0, ..WorldSpec::default() }, "samples"),
        (WorldSpec { size: 0, ..WorldSpec::default() }, "size"),
        (WorldSpec { size: 50, ..WorldSpec::default() }, "size"),
        (WorldSpec { n_crops: 0, ..WorldSpec::default() }, "n_crops"),
        (WorldSpec { val_fraction: 1.5, ..WorldSpec::default() }, "val_fraction"),
        (WorldSpec { shard_size: 0, ..WorldSpec::default() }, "shard_size"),
    ] {
        let err = generate(dir.path(), &bad, &mut |_| {}).unwrap_err();
        assert!(matches!(&err, Error::WorldSpec { field: f, .. } if *f == field), "{err}");
        assert!(err.to_string().contains(field), "{err}");
    }
    assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none(), "a refused spec wrote files");
    let spec: WorldSpec = serde_json::from_str(r#"{"samples": 5, "size": 128}"#).unwrap();
    assert_eq!((spec.samples, spec.size, spec.n_crops), (5, 128, 1));
    assert!(serde_json::from_str::<WorldSpec>(r#"{"sample": 5}"#).is_err());
}

#[test]
fn every_caption_and_class_word_is_in_the_4m_vocabulary() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data/ml-4m/text_tokenizer_4m_wordpiece_30k.json");
    let tok = tessera_tokenizers::text::TextTokenizer::from_file(path).unwrap();
    let unk = tok.unk_id().unwrap();
    let mut words: Vec<String> = ["to the left of in front of behind a an .", "an empty ground under the sky."].map(String::from).to_vec();
    words.extend(tessera_tokenizers::world::ShapeClass::ALL.iter().map(|c| c.name().to_string()));
    words.extend(tessera_tokenizers::world::COLOURS.iter().map(|c| c.0.to_string()));
    words.extend(tessera_tokenizers::world::SIZES.iter().map(|s| s.0.to_string()));
    for text in words {
        let ids = tok.encode(&text).unwrap();
        assert!(!ids.contains(&unk), "'{text}' has an unknown word: {ids:?}");
        // Each word (and a trailing '.') is one WordPiece token, so captions stay short.
        let pieces: usize = text.split_whitespace().map(|w| if w.len() > 1 && w.ends_with('.') { 2 } else { 1 }).sum();
        assert_eq!(ids.len(), pieces, "'{text}'");
    }
}
