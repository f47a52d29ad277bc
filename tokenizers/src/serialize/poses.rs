//! Human poses [modality_transforms.py: HumanPoseTransform]: per human
//! `human v0.. v1.. v2.. v3..` then the groups `pose`, `global`, `camera`, `shape` in a random
//! order; `none` when there is nobody. Boxes are cropped but never flipped (ml-4m's quirk).

use rand::Rng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::{COORD_BINS, Crop, Json, join, parse_coord, py_round, quantize};
use crate::error::{Error, Result};

const MODALITY: &str = "human_poses";

/// The string of a sample without humans.
pub const NONE: &str = "none";

/// One human as HMR2.0 describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct HumanPose {
    /// `[xmin, ymin, xmax, ymax]`: pixels of the original image in the file; normalized to the
    /// crop in [`HumanPoses::humans`] and [`humans_from_text`].
    pub bbox: [f64; 4],
    /// `pred_smpl_params.global_orient` (3×3), in [-1, 1].
    pub global_orient: [f64; 9],
    /// `pose_tokenized`: 8 ids in [0, 1024) from the pose VQ tokenizer.
    pub pose_tokens: [i64; 8],
    /// `pred_smpl_params.betas`, in [-3, 3].
    pub betas: [f64; 10],
    /// `pred_cam`, in [-1, 19].
    pub camera: [f64; 3],
}

/// A pose file (HMR2.0 output, one list entry per human); `{}` means no humans.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HumanPoses {
    /// The humans, in file order, with pixel boxes.
    pub humans: Vec<HumanPose>,
}

impl<'de> Deserialize<'de> for HumanPoses {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Self::from_value(&Value::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

fn fixed<const N: usize>(v: Vec<f64>) -> [f64; N] {
    let mut out = [0.0; N];
    out.copy_from_slice(&v);
    out
}

impl HumanPoses {
    /// Parses ml-4m's pose JSON; errors name the offending key (`pred_cam[1]`).
    pub fn from_json(text: &str) -> Result<Self> {
        Self::from_value(&Json { modality: MODALITY }.parse(text)?)
    }

    /// Converts a parsed JSON value; errors name the offending key.
    pub fn from_value(root: &Value) -> Result<Self> {
        let j = Json { modality: MODALITY };
        if root.as_object().is_some_and(|o| o.is_empty()) {
            return Ok(Self::default());
        }
        let smpl = j.get(root, "pred_smpl_params", "")?;
        let bboxes = j.array(j.get(root, "bbox_xyxy", "")?, "bbox_xyxy")?;
        let list = |v: &Value, key: &str, path: &str| -> Result<Vec<Value>> {
            let items = j.array(j.get(v, key, path)?, &join(path, key))?;
            if items.len() < bboxes.len() {
                return Err(j.err(&join(path, key), format!("{} entries for {} humans", items.len(), bboxes.len())));
            }
            Ok(items.clone())
        };
        let orients = list(smpl, "global_orient", "pred_smpl_params")?;
        let betas = list(smpl, "betas", "pred_smpl_params")?;
        let tokens = list(root, "pose_tokenized", "")?;
        let cams = list(root, "pred_cam", "")?;
        let humans = (0..bboxes.len())
            .map(|i| {
                let nums = |v: &Value, n: usize, key: &str| j.numbers(v, Some(n), &format!("{key}[{i}]"));
                let ids = nums(&tokens[i], 8, "pose_tokenized")?;
                if ids.iter().any(|&t| t.fract() != 0.0 || !(0.0..1024.0).contains(&t)) {
                    return Err(j.err(&format!("pose_tokenized[{i}]"), "ids must be integers in [0, 1024)"));
                }
                Ok(HumanPose {
                    bbox: fixed(nums(&bboxes[i], 4, "bbox_xyxy")?),
                    global_orient: fixed(nums(&orients[i], 9, "pred_smpl_params.global_orient")?),
                    pose_tokens: std::array::from_fn(|k| ids[k] as i64),
                    betas: fixed(nums(&betas[i], 10, "pred_smpl_params.betas")?),
                    camera: fixed(nums(&cams[i], 3, "pred_cam")?),
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self { humans })
    }

    /// The humans with boxes normalized by the original size, cropped, dropped when entirely
    /// outside the crop on either axis, and clipped to [0, 1]. Never flipped.
    pub fn humans(&self, crop: &Crop) -> Vec<HumanPose> {
        self.humans
            .iter()
            .filter_map(|h| {
                let [x0, y0, x1, y1] = h.bbox;
                let b = crop.apply([x0 / crop.orig_width, y0 / crop.orig_height, x1 / crop.orig_width, y1 / crop.orig_height]);
                let outside =
                    (b[1] < 0.0 && b[3] < 0.0) || (b[0] < 0.0 && b[2] < 0.0) || (b[1] > 1.0 && b[3] > 1.0) || (b[0] > 1.0 && b[2] > 1.0);
                (!outside).then(|| HumanPose { bbox: b.map(|x| x.clamp(0.0, 1.0)), ..h.clone() })
            })
            .collect()
    }

    /// ml-4m's pose string under `crop` (group order drawn from `rng` per human).
    pub fn to_text(&self, crop: &Crop, rng: &mut impl Rng) -> String {
        humans_to_text(&self.humans(crop), rng)
    }
}

/// Serializes humans with normalized boxes; each human is followed by a space (as in ml-4m),
/// and no humans gives `none`.
pub fn humans_to_text(humans: &[HumanPose], rng: &mut impl Rng) -> String {
    if humans.is_empty() {
        return NONE.to_string();
    }
    let mut out = String::new();
    for h in humans {
        let q = h.bbox.map(quantize);
        let mut words =
            vec!["human".to_string(), format!("v0={}", q[0]), format!("v1={}", q[1]), format!("v2={}", q[2]), format!("v3={}", q[3])];
        let v0 = |x: f64| format!("v0={}", py_round(x));
        let groups: [Vec<String>; 4] = [
            std::iter::once("pose".to_string())
                .chain(h.pose_tokens.iter().map(|&t| if t < 512 { format!("v0={t}") } else { format!("v1={}", t - 512) }))
                .collect(),
            std::iter::once("global".to_string()).chain(h.global_orient.iter().map(|&x| v0(499.5 * x + 499.5))).collect(),
            std::iter::once("camera".to_string()).chain(h.camera.iter().map(|&x| v0(49.95 * x.clamp(-1.0, 19.0) + 49.95))).collect(),
            std::iter::once("shape".to_string()).chain(h.betas.iter().map(|&x| v0(166.5 * x + 499.5))).collect(),
        ];
        let mut order = [0, 1, 2, 3];
        order.shuffle(rng);
        for g in order {
            words.extend(groups[g].iter().cloned());
        }
        out.push_str(&words.join(" "));
        out.push(' ');
    }
    out
}

/// Parses a pose string back (boxes / 999, pose ids `v1=n` -> n + 512, other values inverted
/// from their affine maps); `none` gives no humans.
pub fn humans_from_text(text: &str) -> Result<Vec<HumanPose>> {
    let tokens: Vec<&str> = text.split_whitespace().collect();
    let bad = |token: &str, reason: &str| Error::ParseText { modality: MODALITY, token: token.to_string(), reason: reason.to_string() };
    if tokens == [NONE] {
        return Ok(Vec::new());
    }
    let mut humans = Vec::new();
    let mut rest = tokens.as_slice();
    let take = |rest: &mut &[&str], n: usize, axes: &[u32], what: &str| -> Result<Vec<(u32, i64)>> {
        if rest.len() < n {
            return Err(bad(what, "truncated group"));
        }
        let (head, tail) = rest.split_at(n);
        *rest = tail;
        head.iter()
            .map(|t| {
                let (axis, v) = parse_coord(MODALITY, t)?;
                if axes.contains(&axis) { Ok((axis, v)) } else { Err(bad(t, &format!("unexpected axis in `{what}` group"))) }
            })
            .collect()
    };
    while let Some((&head, tail)) = rest.split_first() {
        if head != "human" {
            return Err(bad(head, "expected `human`"));
        }
        rest = tail;
        let b = take(&mut rest, 4, &[0, 1, 2, 3], "human")?;
        if b.iter().enumerate().any(|(i, &(axis, _))| axis as usize != i) {
            return Err(bad("human", "box coordinates out of order"));
        }
        let mut h = HumanPose { bbox: [0.0; 4], global_orient: [0.0; 9], pose_tokens: [0; 8], betas: [0.0; 10], camera: [0.0; 3] };
        h.bbox = std::array::from_fn(|i| b[i].1 as f64 / f64::from(COORD_BINS - 1));
        let mut seen = [false; 4];
        for _ in 0..4 {
            let (&group, tail) = rest.split_first().ok_or_else(|| bad(text, "missing group"))?;
            rest = tail;
            let idx = ["pose", "global", "camera", "shape"]
                .iter()
                .position(|&g| g == group)
                .ok_or_else(|| bad(group, "expected a group name"))?;
            if std::mem::replace(&mut seen[idx], true) {
                return Err(bad(group, "repeated group"));
            }
            match idx {
                0 => {
                    let ids = take(&mut rest, 8, &[0, 1], group)?;
                    h.pose_tokens = std::array::from_fn(|i| ids[i].1 + 512 * i64::from(ids[i].0));
                }
                1 => {
                    let v = take(&mut rest, 9, &[0], group)?;
                    h.global_orient = std::array::from_fn(|i| (v[i].1 as f64 - 499.5) / 499.5);
                }
                2 => {
                    let v = take(&mut rest, 3, &[0], group)?;
                    h.camera = std::array::from_fn(|i| (v[i].1 as f64 - 49.95) / 49.95);
                }
                _ => {
                    let v = take(&mut rest, 10, &[0], group)?;
                    h.betas = std::array::from_fn(|i| (v[i].1 as f64 - 499.5) / 166.5);
                }
            }
        }
        humans.push(h);
    }
    Ok(humans)
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::*;

    fn file() -> String {
        r#"{"bbox_xyxy": [[20.0, 50.0, 60.0, 150.0], [90.0, 0.0, 100.0, 40.0]],
            "pred_smpl_params": {
                "global_orient": [[[[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 0.5]]], [[[0.1, 0.2, 0.3], [0.4, 0.5, 0.6], [0.7, 0.8, 0.9]]]],
                "body_pose": [[0.0], [0.0]],
                "betas": [[3.0, -3.0, 0.0, 1.0, -1.0, 0.5, 0.25, 2.0, -2.0, 0.1], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]]},
            "pose_tokenized": [[0, 511, 512, 1023, 7, 600, 100, 900], [1, 2, 3, 4, 5, 6, 7, 8]],
            "pred_cam": [[0.9, 25.0, -4.0], [1.0, 2.0, 3.0]]}"#
            .to_string()
    }

    #[test]
    fn groups_values_and_crop() {
        let poses = HumanPoses::from_json(&file()).unwrap();
        // 200 x 100 image; crop x 20..70, y 50..150: the second human (x 90..100) is outside.
        let crop = Crop { top: 50.0, left: 20.0, height: 100.0, width: 50.0, orig_height: 200.0, orig_width: 100.0 };
        let humans = poses.humans(&crop);
        assert_eq!(humans.len(), 1);
        let text = humans_to_text(&humans, &mut ChaCha8Rng::seed_from_u64(3));
        assert!(text.starts_with("human v0=0 v1=0 v2=799 v3=999 "), "{text}");
        assert!(text.ends_with(' '));
        for group in [
            "pose v0=0 v0=511 v1=0 v1=511 v0=7 v1=88 v0=100 v1=388",
            "global v0=999 v0=500 v0=500 v0=500 v0=0 v0=500 v0=500 v0=500 v0=749",
            "camera v0=95 v0=999 v0=0",
            "shape v0=999 v0=0 v0=500 v0=666 v0=333 v0=583 v0=541 v0=832 v0=166 v0=516",
        ] {
            assert!(text.contains(group), "{group} not in {text}");
        }
        assert_eq!(text.split_whitespace().count(), 39);
        // Group order comes from the rng, identically for the same seed.
        let orders: std::collections::HashSet<String> =
            (0..20).map(|s| humans_to_text(&humans, &mut ChaCha8Rng::seed_from_u64(s)).split(' ').nth(5).unwrap().to_string()).collect();
        assert!(orders.len() > 1);
        assert_eq!(text, poses.to_text(&crop, &mut ChaCha8Rng::seed_from_u64(3)));
    }

    #[test]
    fn nobody_gives_none() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        assert_eq!(HumanPoses::from_json("{}").unwrap().to_text(&Crop::full(10.0, 10.0), &mut rng), "none");
        let poses = HumanPoses::from_json(&file()).unwrap();
        let far = Crop { top: 160.0, left: 0.0, height: 40.0, width: 10.0, orig_height: 200.0, orig_width: 100.0 };
        assert_eq!(poses.to_text(&far, &mut rng), "none");
        assert!(humans_from_text("none").unwrap().is_empty());
    }

    #[test]
    fn round_trip_within_bin_precision() {
        let poses: HumanPoses = serde_json::from_str(&file()).unwrap();
        let humans = poses.humans(&Crop::full(200.0, 100.0));
        let text = humans_to_text(&humans, &mut ChaCha8Rng::seed_from_u64(9));
        let back = humans_from_text(&text).unwrap();
        assert_eq!(back.len(), 2);
        let close = |a: &[f64], b: &[f64], tol: f64| a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol);
        for (g, w) in back.iter().zip(&humans) {
            assert!(close(&g.bbox, &w.bbox, 0.5 / 999.0 + 1e-12), "{:?} {:?}", g.bbox, w.bbox);
            assert!(close(&g.global_orient, &w.global_orient, 0.5 / 499.5 + 1e-12));
            assert!(close(&g.betas, &w.betas, 0.5 / 166.5 + 1e-12));
            let clipped = w.camera.map(|x| x.clamp(-1.0, 19.0));
            assert!(close(&g.camera, &clipped, 0.5 / 49.95 + 1e-12), "{:?}", g.camera);
            assert_eq!(g.pose_tokens, w.pose_tokens);
        }
        assert_eq!(humans_to_text(&back, &mut ChaCha8Rng::seed_from_u64(9)), text);
    }

    #[test]
    fn malformed_input_is_named() {
        let err = HumanPoses::from_json(&file().replace("\"pred_cam\"", "\"cam\"")).unwrap_err();
        assert!(err.to_string().contains("pred_cam"), "{err}");
        let err = HumanPoses::from_json(&file().replace("[1, 2, 3, 4, 5, 6, 7, 8]", "[1, 2, 3]")).unwrap_err();
        assert!(err.to_string().contains("pose_tokenized[1]"), "{err}");
        let err = HumanPoses::from_json(&file().replace("900]", "2000]")).unwrap_err();
        assert!(err.to_string().contains("pose_tokenized[0]"), "{err}");
        assert!(humans_from_text("human v0=1 v1=2 v2=3").is_err());
        assert!(humans_from_text("person v0=1").is_err());
    }
}
