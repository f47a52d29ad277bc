//! Object detections (`det`) [modality_transforms.py: DetectionTransform]: keep instances with
//! `score >= 0.6`, crop (albumentations `bbox_crop` + `filter_bboxes(min_visibility=0)`),
//! h-flip, order by `xmin² + ymin²`, then `v0=.. v1=.. v2=.. v3=.. class` per box.

use serde::Deserialize;

use super::{COORD_BINS, Crop, Json, is_coord, parse_coord, quantize};
use crate::error::{Error, Result};

/// ml-4m's `det_threshold`: instances scoring below it are dropped.
pub const DET_SCORE_THRESHOLD: f64 = 0.6;

const MODALITY: &str = "det";

/// One detected instance as stored in ml-4m's JSON.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct DetInstance {
    /// `[xmin, ymin, xmax, ymax]`, normalized to [0, 1].
    pub boxes: [f64; 4],
    /// The class name (a COCO class, possibly several words).
    pub class_name: String,
    /// The detector's confidence.
    pub score: f64,
}

/// A detection file: `{"instances": [...]}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Detections {
    /// The detected instances, in file order.
    pub instances: Vec<DetInstance>,
}

/// A box as serialized: normalized corners and a class name (no score).
#[derive(Debug, Clone, PartialEq)]
pub struct DetBox {
    /// `[xmin, ymin, xmax, ymax]`, normalized to [0, 1].
    pub coords: [f64; 4],
    /// The class name.
    pub class_name: String,
}

impl Detections {
    /// Parses ml-4m's detection JSON; errors name the offending key (`instances[1].score`).
    pub fn from_json(text: &str) -> Result<Self> {
        let j = Json { modality: MODALITY };
        let root = j.parse(text)?;
        let items = j.array(j.get(&root, "instances", "")?, "instances")?;
        let instances = items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let path = format!("instances[{i}]");
                let boxes = j.numbers(j.get(v, "boxes", &path)?, Some(4), &format!("{path}.boxes"))?;
                let class_name = j.str(j.get(v, "class_name", &path)?, &format!("{path}.class_name"))?.to_string();
                let score = j.f64(j.get(v, "score", &path)?, &format!("{path}.score"))?;
                Ok(DetInstance { boxes: [boxes[0], boxes[1], boxes[2], boxes[3]], class_name, score })
            })
            .collect::<Result<_>>()?;
        Ok(Self { instances })
    }

    /// The boxes ml-4m serializes: thresholded, cropped (`None`: the whole image), clipped to
    /// [0, 1], boxes left with zero area dropped, h-flipped if `flip`, ordered by `xmin² + ymin²`.
    pub fn boxes(&self, crop: Option<&Crop>, flip: bool) -> Vec<DetBox> {
        let mut boxes: Vec<DetBox> = self
            .instances
            .iter()
            .filter(|inst| inst.score >= DET_SCORE_THRESHOLD)
            .filter_map(|inst| {
                let (raw, w, h) = match crop {
                    Some(c) => (c.apply(inst.boxes), c.width, c.height),
                    None => (inst.boxes, 1.0, 1.0),
                };
                // filter_bboxes: clip to [0, 1] and drop boxes whose clipped area is zero.
                let c = raw.map(|x| x.clamp(0.0, 1.0));
                let area = (c[2] - c[0]) * w * ((c[3] - c[1]) * h);
                (area != 0.0).then(|| DetBox { coords: c, class_name: inst.class_name.clone() })
            })
            .map(|mut b| {
                if flip {
                    let [x0, y0, x1, y1] = b.coords;
                    b.coords = [1.0 - x1, y0, 1.0 - x0, y1];
                }
                b
            })
            .collect();
        // Python's `sorted` is stable, as is `sort_by`.
        boxes.sort_by(|a, b| dist2(a).total_cmp(&dist2(b)));
        boxes
    }

    /// ml-4m's detection string for this sample under `crop` and `flip`.
    pub fn to_text(&self, crop: Option<&Crop>, flip: bool) -> String {
        boxes_to_text(&self.boxes(crop, flip))
    }
}

fn dist2(b: &DetBox) -> f64 {
    b.coords[0] * b.coords[0] + b.coords[1] * b.coords[1]
}

/// Serializes boxes in the given order: `v0={round(xmin*999)} ... v3=.. class_name`.
pub fn boxes_to_text(boxes: &[DetBox]) -> String {
    boxes
        .iter()
        .map(|b| {
            let q = b.coords.map(quantize);
            format!("v0={} v1={} v2={} v3={} {}", q[0], q[1], q[2], q[3], b.class_name)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Parses a detection string back into boxes (value / 999), like ml-4m's
/// `convert_string_to_bboxes`: a `v0=` starts a box, non-coordinate words form its class name,
/// and incomplete boxes are dropped. Coordinates out of order or before any box are errors.
pub fn boxes_from_text(text: &str) -> Result<Vec<DetBox>> {
    let mut boxes: Vec<(Vec<f64>, Vec<&str>)> = Vec::new();
    for token in text.split_whitespace() {
        let bad = |reason: &str| Error::ParseText { modality: MODALITY, token: token.to_string(), reason: reason.to_string() };
        if is_coord(token) {
            let (axis, value) = parse_coord(MODALITY, token)?;
            let coord = value as f64 / f64::from(COORD_BINS - 1);
            if axis == 0 {
                boxes.push((vec![coord], Vec::new()));
            } else {
                let (coords, words) = boxes.last_mut().ok_or_else(|| bad("coordinate before the first `v0=`"))?;
                if axis as usize != coords.len() || !words.is_empty() {
                    return Err(bad("coordinate out of order"));
                }
                coords.push(coord);
            }
        } else {
            let (_, words) = boxes.last_mut().ok_or_else(|| bad("class name before the first box"))?;
            words.push(token);
        }
    }
    Ok(boxes
        .into_iter()
        .filter(|(c, w)| c.len() == 4 && !w.is_empty())
        .map(|(c, w)| DetBox { coords: [c[0], c[1], c[2], c[3]], class_name: w.join(" ") })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(coords: [f64; 4], class_name: &str) -> DetBox {
        DetBox { coords, class_name: class_name.to_string() }
    }

    #[test]
    fn reference_example_string() {
        let boxes = [
            b([12.0 / 999.0, 34.0 / 999.0, 100.0 / 999.0, 200.0 / 999.0], "dining table"),
            b([1.0 / 999.0, 2.0 / 999.0, 3.0 / 999.0, 4.0 / 999.0], "person"),
        ];
        assert_eq!(boxes_to_text(&boxes), "v0=12 v1=34 v2=100 v3=200 dining table v0=1 v1=2 v2=3 v3=4 person");
        // Through the whole transform the nearer box comes first.
        let det = Detections {
            instances: boxes.iter().map(|x| DetInstance { boxes: x.coords, class_name: x.class_name.clone(), score: 0.9 }).collect(),
        };
        assert_eq!(det.to_text(None, false), "v0=1 v1=2 v2=3 v3=4 person v0=12 v1=34 v2=100 v3=200 dining table");
    }

    #[test]
    fn json_threshold_order_and_python_rounding() {
        let json = r#"{"instances": [
            {"boxes": [0.5, 0.5, 0.6, 0.7], "class_name": "dog", "score": 0.6},
            {"boxes": [0.1, 0.1, 0.2, 0.2], "class_name": "cat", "score": 0.59},
            {"boxes": [0.0, 0.1, 0.5005005005005005, 1.0], "class_name": "dining table", "score": 0.99}
        ]}"#;
        let det = Detections::from_json(json).unwrap();
        assert_eq!(det, serde_json::from_str::<Detections>(json).unwrap());
        // 0.5 * 999 = 499.5 -> 500 and 0.6 * 999 = 599.4 -> 599.
        assert_eq!(det.to_text(None, false), "v0=0 v1=100 v2=500 v3=999 dining table v0=500 v1=500 v2=599 v3=699 dog");
        // Python's round: half to even.
        assert_eq!(super::super::py_round(2.5), 2);
        assert_eq!(super::super::py_round(3.5), 4);
        assert_eq!(super::super::py_round(-0.5), 0);
    }

    #[test]
    fn crop_clips_drops_outside_boxes_and_flips() {
        // 200 x 100 (h x w) image; crop top=50, left=20, h=100, w=50.
        let crop = Crop { top: 50.0, left: 20.0, height: 100.0, width: 50.0, orig_height: 200.0, orig_width: 100.0 };
        let det = Detections {
            instances: vec![
                // pixels x 30..45, y 75..125 -> crop (10..25)/50, (25..75)/100
                DetInstance { boxes: [0.3, 0.375, 0.45, 0.625], class_name: "person".into(), score: 1.0 },
                // pixels x 0..30 -> clipped to 0..10; y 0..60 -> clipped to 0..10
                DetInstance { boxes: [0.0, 0.0, 0.3, 0.3], class_name: "cat".into(), score: 1.0 },
                // entirely right of the crop (x 80..100 px > 70): dropped
                DetInstance { boxes: [0.8, 0.4, 1.0, 0.6], class_name: "dog".into(), score: 1.0 },
            ],
        };
        let boxes = det.boxes(Some(&crop), false);
        assert_eq!(boxes.len(), 2);
        assert_eq!(boxes[0], b([0.0, 0.0, 0.2, 0.1], "cat"));
        let p = &boxes[1];
        for (got, want) in p.coords.iter().zip([0.2, 0.25, 0.5, 0.75]) {
            assert!((got - want).abs() < 1e-12, "{:?}", p.coords);
        }
        let flipped = det.boxes(Some(&crop), true);
        // Flip: x -> 1 - x with corners swapped; y unchanged; order recomputed after the flip.
        assert_eq!(flipped.len(), 2);
        assert_eq!(flipped[0].class_name, "person");
        for (got, want) in flipped[0].coords.iter().zip([0.5, 0.25, 0.8, 0.75]) {
            assert!((got - want).abs() < 1e-12, "{:?}", flipped[0].coords);
        }
        assert_eq!(det.to_text(Some(&crop), true), "v0=500 v1=250 v2=799 v3=749 person v0=799 v1=0 v2=999 v3=100 cat");
    }

    #[test]
    fn round_trip_within_bin_precision() {
        let det = Detections {
            instances: vec![
                DetInstance { boxes: [0.123, 0.456, 0.789, 0.912], class_name: "dining table".into(), score: 0.7 },
                DetInstance { boxes: [0.01, 0.02, 0.3, 0.4], class_name: "person".into(), score: 0.8 },
            ],
        };
        let want = det.boxes(None, false);
        let got = boxes_from_text(&det.to_text(None, false)).unwrap();
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.class_name, w.class_name);
            for (a, b) in g.coords.iter().zip(w.coords) {
                assert!((a - b).abs() <= 0.5 / 999.0 + 1e-12, "{a} vs {b}");
            }
        }
        assert_eq!(boxes_to_text(&got), det.to_text(None, false));
    }

    #[test]
    fn parse_drops_incomplete_and_rejects_malformed() {
        assert_eq!(boxes_from_text("v0=1 v1=2 v2=3 v3=4 cat v0=5 v1=6").unwrap().len(), 1);
        assert!(boxes_from_text("").unwrap().is_empty());
        assert!(matches!(boxes_from_text("cat v0=1"), Err(Error::ParseText { .. })));
        assert!(matches!(boxes_from_text("v0=1 v2=3"), Err(Error::ParseText { .. })));
        assert!(matches!(boxes_from_text("v0=x"), Err(Error::ParseText { .. })));
    }

    #[test]
    fn malformed_json_names_the_key() {
        let err = Detections::from_json(
            r#"{"instances": [{"boxes": [0,0,1,1], "class_name": "cat", "score": 1}, {"boxes": [0,0,1,1], "class_name": "cat"}]}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("instances[1].score"), "{err}");
        let err = Detections::from_json(r#"{"instances": [{"boxes": [0,0,1], "class_name": "cat", "score": 1}]}"#).unwrap_err();
        assert!(err.to_string().contains("instances[0].boxes"), "{err}");
        let err = Detections::from_json(r#"{"instances": [{"boxes": [0,0,1,1], "class_name": 3, "score": 1}]}"#).unwrap_err();
        assert!(err.to_string().contains("instances[0].class_name"), "{err}");
        let err = Detections::from_json(r#"{"boxes": []}"#).unwrap_err();
        assert!(err.to_string().contains("`instances`"), "{err}");
    }

    #[test]
    fn example_ids_match_the_4m_tokenizer() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data/ml-4m/text_tokenizer_4m_wordpiece_30k.json");
        let tok = crate::text::TextTokenizer::from_file(path).unwrap();
        let ids = tok.encode("v0=12 v1=34 v2=100 v3=200 dining table v0=1 v1=2 v2=3 v3=4 person").unwrap();
        assert_eq!(ids, [216, 1238, 2304, 3404, 4231, 205, 1206, 2207, 3208, 4253]);
    }
}
