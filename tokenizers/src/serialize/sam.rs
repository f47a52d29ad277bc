//! SAM instances [modality_transforms.py: SAMInstanceTokTransform]: 7 random query points in
//! the 224 px crop; per point (shuffled) `point v0={y} v1={x}` then `none` or, per containing
//! instance (shuffled), `polygon v0={xmin} v1={ymin} v2={xmax} v3={ymax}` (raw pixels) and its
//! 16 token ids (`v0=id` below 512, else `v1={id-512}`).

use rand::Rng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::{Json, parse_coord};
use crate::error::{Error, Result};

const MODALITY: &str = "sam_instance";

/// Side of the (square) crop the contours live in.
pub const SAM_IMAGE_SIZE: i64 = 224;
/// Number of random query points (`points_per_side=7`).
pub const SAM_QUERY_POINTS: usize = 7;
/// Token ids per instance.
pub const SAM_TOKEN_LEN: usize = 16;

/// One SAM instance of a crop.
#[derive(Debug, Clone, PartialEq)]
pub struct SamInstance {
    /// The OpenCV contour, `(x, y)` per vertex, in crop pixels.
    pub contour: Vec<[i64; 2]>,
    /// The 16 ids from the SAM-instance VQ-VAE, in [0, 1024).
    pub token_ids: [i64; SAM_TOKEN_LEN],
    /// `[ymin, xmin, ymax, xmax]` in crop pixels (truncated to integers when serialized).
    pub bbox: [f64; 4],
}

/// The instances of one crop (the entry at `rand_aug_idx` of ml-4m's `.npy`), in JSON form:
/// `{"points": [[contour], ...], "token_ids": [[16 ids], ...], "bbox": [[4], ...]}`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SamInstances {
    /// The instances, in file order.
    pub instances: Vec<SamInstance>,
}

/// One parsed query point: `(x, y)` and the instances containing it as `(bbox, token ids)`,
/// with `bbox = [xmin, ymin, xmax, ymax]`.
#[derive(Debug, Clone, PartialEq)]
pub struct SamQuery {
    /// The query point `(x, y)`.
    pub point: [i64; 2],
    /// The containing instances, in string order.
    pub instances: Vec<([i64; 4], [i64; SAM_TOKEN_LEN])>,
}

impl<'de> Deserialize<'de> for SamInstances {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Self::from_value(&Value::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// `cv2.pointPolygonTest(contour, p, True) >= 0`: inside or on the boundary (even-odd rule).
pub fn contour_contains(contour: &[[i64; 2]], p: [i64; 2]) -> bool {
    let n = contour.len();
    if n == 0 {
        return false;
    }
    let mut inside = false;
    for i in 0..n {
        let a = contour[i];
        let b = contour[(i + 1) % n];
        let cross = (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0]);
        let within = p[0] >= a[0].min(b[0]) && p[0] <= a[0].max(b[0]) && p[1] >= a[1].min(b[1]) && p[1] <= a[1].max(b[1]);
        if cross == 0 && within {
            return true;
        }
        if (a[1] > p[1]) != (b[1] > p[1]) {
            // x of the edge at height p.y, compared exactly: p.x < a.x + (p.y - a.y)(b.x - a.x)/(b.y - a.y)
            let lhs = (p[0] - a[0]) * (b[1] - a[1]);
            let rhs = (p[1] - a[1]) * (b[0] - a[0]);
            if (b[1] > a[1] && lhs < rhs) || (b[1] < a[1] && lhs > rhs) {
                inside = !inside;
            }
        }
    }
    inside
}

impl SamInstances {
    /// Parses the JSON form of one crop's entry; errors name the offending key (`bbox[2]`).
    pub fn from_json(text: &str) -> Result<Self> {
        Self::from_value(&Json { modality: MODALITY }.parse(text)?)
    }

    /// Converts a parsed JSON value; errors name the offending key.
    pub fn from_value(root: &Value) -> Result<Self> {
        let j = Json { modality: MODALITY };
        let points = j.array(j.get(root, "points", "")?, "points")?;
        let tokens = j.array(j.get(root, "token_ids", "")?, "token_ids")?;
        let bboxes = j.array(j.get(root, "bbox", "")?, "bbox")?;
        if tokens.len() != points.len() || bboxes.len() != points.len() {
            return Err(j.err("token_ids", format!("{} points, {} token_ids, {} bbox entries", points.len(), tokens.len(), bboxes.len())));
        }
        let instances = (0..points.len())
            .map(|i| {
                let path = format!("points[{i}]");
                let contour = j.array(&points[i], &path)?.first().ok_or_else(|| j.err(&path, "missing the contour (element 0)"))?;
                let xy = j.numbers(contour, None, &format!("{path}[0]"))?;
                if xy.len() % 2 != 0 || xy.iter().any(|v| v.fract() != 0.0) {
                    return Err(j.err(&format!("{path}[0]"), "expected integer (x, y) pairs"));
                }
                let ids = j.numbers(&tokens[i], Some(SAM_TOKEN_LEN), &format!("token_ids[{i}]"))?;
                if ids.iter().any(|&t| t.fract() != 0.0 || !(0.0..1024.0).contains(&t)) {
                    return Err(j.err(&format!("token_ids[{i}]"), "ids must be integers in [0, 1024)"));
                }
                let bbox = j.numbers(&bboxes[i], Some(4), &format!("bbox[{i}]"))?;
                Ok(SamInstance {
                    contour: xy.chunks(2).map(|c| [c[0] as i64, c[1] as i64]).collect(),
                    token_ids: std::array::from_fn(|k| ids[k] as i64),
                    bbox: [bbox[0], bbox[1], bbox[2], bbox[3]],
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self { instances })
    }

    /// ml-4m's random query points `(x, y)`: 7 ys then 7 xs, each uniform in [0, 224).
    pub fn query_points(rng: &mut impl Rng) -> Vec<[i64; 2]> {
        let ys: Vec<i64> = (0..SAM_QUERY_POINTS).map(|_| rng.random_range(0..SAM_IMAGE_SIZE)).collect();
        ys.into_iter().map(|y| [rng.random_range(0..SAM_IMAGE_SIZE), y]).collect()
    }

    /// The string for given query points; point order and per-point instance order are shuffled.
    /// Repeated points appear once (ml-4m keys them in a dict).
    pub fn to_text_with_points(&self, points: &[[i64; 2]], rng: &mut impl Rng) -> String {
        let mut unique: Vec<[i64; 2]> = Vec::new();
        for &p in points {
            if !unique.contains(&p) {
                unique.push(p);
            }
        }
        unique.shuffle(rng);
        let mut out: Vec<String> = Vec::new();
        for p in unique {
            out.extend(["point".to_string(), format!("v0={}", p[1]), format!("v1={}", p[0])]);
            let mut hits: Vec<&SamInstance> = self.instances.iter().filter(|inst| contour_contains(&inst.contour, p)).collect();
            hits.shuffle(rng);
            if hits.is_empty() {
                out.push("none".to_string());
            }
            for inst in hits {
                let [ymin, xmin, ymax, xmax] = inst.bbox.map(|v| v as i64);
                out.extend(["polygon".to_string(), format!("v0={xmin}"), format!("v1={ymin}"), format!("v2={xmax}"), format!("v3={ymax}")]);
                out.extend(inst.token_ids.iter().map(|&t| if t < 512 { format!("v0={t}") } else { format!("v1={}", t - 512) }));
            }
        }
        out.join(" ")
    }

    /// ml-4m's string with query points drawn from `rng`.
    pub fn to_text(&self, rng: &mut impl Rng) -> String {
        let points = Self::query_points(rng);
        self.to_text_with_points(&points, rng)
    }
}

/// Parses a SAM-instance string back into its query points and their instances.
pub fn queries_from_text(text: &str) -> Result<Vec<SamQuery>> {
    let bad = |token: &str, reason: &str| Error::ParseText { modality: MODALITY, token: token.to_string(), reason: reason.to_string() };
    let tokens: Vec<&str> = text.split_whitespace().collect();
    let coords = |ts: &[&str], axes: &[u32]| -> Result<Vec<i64>> {
        if ts.len() < axes.len() {
            return Err(bad(text, "truncated"));
        }
        ts.iter()
            .zip(axes)
            .map(|(t, &want)| match parse_coord(MODALITY, t)? {
                (axis, v) if axis == want => Ok(v),
                _ => Err(bad(t, &format!("expected `v{want}=`"))),
            })
            .collect()
    };
    let mut queries: Vec<SamQuery> = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        match tokens[i] {
            "point" => {
                let yx = coords(&tokens[i + 1..], &[0, 1])?;
                queries.push(SamQuery { point: [yx[1], yx[0]], instances: Vec::new() });
                i += 3;
            }
            "none" if queries.last().is_some_and(|q| q.instances.is_empty()) => i += 1,
            "polygon" => {
                let q = queries.last_mut().ok_or_else(|| bad("polygon", "polygon before the first point"))?;
                let b = coords(&tokens[i + 1..], &[0, 1, 2, 3])?;
                let rest = &tokens[i + 5..];
                if rest.len() < SAM_TOKEN_LEN {
                    return Err(bad(text, "truncated token ids"));
                }
                let ids = rest[..SAM_TOKEN_LEN]
                    .iter()
                    .map(|t| match parse_coord(MODALITY, t)? {
                        (0, v) => Ok(v),
                        (1, v) => Ok(v + 512),
                        _ => Err(bad(t, "expected `v0=` or `v1=` token id")),
                    })
                    .collect::<Result<Vec<i64>>>()?;
                q.instances.push(([b[0], b[1], b[2], b[3]], std::array::from_fn(|k| ids[k])));
                i += 5 + SAM_TOKEN_LEN;
            }
            t => return Err(bad(t, "expected `point`, `none` or `polygon`")),
        }
    }
    Ok(queries)
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::*;

    fn file() -> String {
        let ids_a: Vec<String> = (0..16).map(|k| (k * 60).to_string()).collect();
        let ids_b: Vec<String> = (0..16).map(|k| (1023 - k).to_string()).collect();
        format!(
            r#"{{"points": [[[[[10, 10]], [[100, 10]], [[100, 100]], [[10, 100]]]], [[[[50, 50]], [[150, 50]], [[150, 150]]]]],
                "token_ids": [[{}], [{}]],
                "bbox": [[10.0, 10.0, 100.0, 100.0], [50.0, 50.0, 150.9, 150.9]]}}"#,
            ids_a.join(", "),
            ids_b.join(", ")
        )
    }

    #[test]
    fn containment_matches_point_polygon_test() {
        let square = [[10, 10], [100, 10], [100, 100], [10, 100]];
        assert!(contour_contains(&square, [50, 50]));
        assert!(contour_contains(&square, [10, 50])); // on an edge: distance 0
        assert!(contour_contains(&square, [100, 100])); // on a vertex
        assert!(!contour_contains(&square, [101, 50]));
        assert!(!contour_contains(&square, [5, 5]));
        let triangle = [[50, 50], [150, 50], [150, 150]];
        assert!(contour_contains(&triangle, [100, 100])); // on the hypotenuse
        assert!(contour_contains(&triangle, [140, 60]));
        assert!(!contour_contains(&triangle, [60, 140]));
        assert!(contour_contains(&[[3, 4]], [3, 4]));
        assert!(!contour_contains(&[[3, 4]], [3, 5]));
    }

    #[test]
    fn string_layout_y_first_and_raw_pixel_boxes() {
        let sam = SamInstances::from_json(&file()).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let text = sam.to_text_with_points(&[[80, 60], [200, 200], [80, 60]], &mut rng);
        // The repeated point appears once.
        assert_eq!(text.matches("point").count(), 2, "{text}");
        assert!(text.contains("point v0=200 v1=200 none"), "{text}");
        // (x 80, y 60) lies in both: the square (bbox as is) and the triangle (bbox truncated).
        let a = "polygon v0=10 v1=10 v2=100 v3=100 v0=0 v0=60 v0=120 v0=180 v0=240 v0=300 v0=360 v0=420 v0=480 v1=28 v1=88 v1=148 v1=208 v1=268 v1=328 v1=388";
        let b = "polygon v0=50 v1=50 v2=150 v3=150 v1=511 v1=510 v1=509 v1=508 v1=507 v1=506 v1=505 v1=504 v1=503 v1=502 v1=501 v1=500 v1=499 v1=498 v1=497 v1=496";
        assert!(text.contains(&format!("point v0=60 v1=80 {a}")) || text.contains(&format!("point v0=60 v1=80 {b}")), "{text}");
        assert!(text.contains(a) && text.contains(b));
        assert_eq!(text.split_whitespace().count(), 3 + 1 + 3 + 2 * (5 + 16));
    }

    #[test]
    fn random_points_and_round_trip() {
        let sam: SamInstances = serde_json::from_str(&file()).unwrap();
        let text = sam.to_text(&mut ChaCha8Rng::seed_from_u64(4));
        assert_eq!(text, sam.to_text(&mut ChaCha8Rng::seed_from_u64(4)));
        let queries = queries_from_text(&text).unwrap();
        assert!(!queries.is_empty() && queries.len() <= SAM_QUERY_POINTS);
        for q in &queries {
            assert!(q.point.iter().all(|v| (0..SAM_IMAGE_SIZE).contains(v)));
            let mut want: Vec<[i64; SAM_TOKEN_LEN]> =
                sam.instances.iter().filter(|i| contour_contains(&i.contour, q.point)).map(|i| i.token_ids).collect();
            let mut got: Vec<[i64; SAM_TOKEN_LEN]> = q.instances.iter().map(|(_, ids)| *ids).collect();
            want.sort_unstable();
            got.sort_unstable();
            assert_eq!(got, want);
        }
        let points: Vec<[i64; 2]> = queries.iter().map(|q| q.point).collect();
        let again = sam.to_text_with_points(&points, &mut ChaCha8Rng::seed_from_u64(1));
        assert_eq!(queries_from_text(&again).unwrap().len(), queries.len());
    }

    #[test]
    fn malformed_input_is_named() {
        let err = SamInstances::from_json(&file().replace("\"bbox\"", "\"box\"")).unwrap_err();
        assert!(err.to_string().contains("bbox"), "{err}");
        let err = SamInstances::from_json(&file().replace("[10.0, 10.0, 100.0, 100.0]", "[10.0]")).unwrap_err();
        assert!(err.to_string().contains("bbox[0]"), "{err}");
        assert!(queries_from_text("polygon v0=1").is_err());
        assert!(queries_from_text("point v1=1 v0=2").is_err());
        assert!(queries_from_text("point v0=1 v1=2 polygon v0=1 v1=2 v2=3 v3=4 v0=1").is_err());
    }
}
