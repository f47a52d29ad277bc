//! Object-class names that become whole tokens of the text tokenizer (detection captions
//! such as `v0=12 v1=34 v2=100 v3=200 dining table`).

use std::path::Path;

use crate::error::{Error, Result};

/// The 80 COCO class names in ml-4m's order (`fourm/utils/tokenizer/object_classes.json`,
/// key `coco`: alphabetical), the object classes of ml-4m's published tokenizer.
pub const COCO_CLASSES: [&str; 80] = [
    "airplane",
    "apple",
    "backpack",
    "banana",
    "baseball bat",
    "baseball glove",
    "bear",
    "bed",
    "bench",
    "bicycle",
    "bird",
    "boat",
    "book",
    "bottle",
    "bowl",
    "broccoli",
    "bus",
    "cake",
    "car",
    "carrot",
    "cat",
    "cell phone",
    "chair",
    "clock",
    "couch",
    "cow",
    "cup",
    "dining table",
    "dog",
    "donut",
    "elephant",
    "fire hydrant",
    "fork",
    "frisbee",
    "giraffe",
    "hair drier",
    "handbag",
    "horse",
    "hot dog",
    "keyboard",
    "kite",
    "knife",
    "laptop",
    "microwave",
    "motorcycle",
    "mouse",
    "orange",
    "oven",
    "parking meter",
    "person",
    "pizza",
    "potted plant",
    "refrigerator",
    "remote",
    "sandwich",
    "scissors",
    "sheep",
    "sink",
    "skateboard",
    "skis",
    "snowboard",
    "spoon",
    "sports ball",
    "stop sign",
    "suitcase",
    "surfboard",
    "teddy bear",
    "tennis racket",
    "tie",
    "toaster",
    "toilet",
    "toothbrush",
    "traffic light",
    "train",
    "truck",
    "tv",
    "umbrella",
    "vase",
    "wine glass",
    "zebra",
];

/// Reads object-class names from a JSON file laid out like ml-4m's `object_classes.json` (an
/// object whose `key` holds a list of names), or a plain JSON list of names (`key` unused).
/// The order is kept: it fixes the token ids.
pub fn object_classes_from_file(path: &Path, key: &str) -> Result<Vec<String>> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: origin.clone(), source })?;
    let doc: serde_json::Value = serde_json::from_str(&text).map_err(|source| Error::Json { origin: origin.clone(), source })?;
    let list = match &doc {
        serde_json::Value::Array(_) => &doc,
        serde_json::Value::Object(map) => map.get(key).ok_or_else(|| Error::TrainSpec {
            field: "object_classes",
            reason: format!("{origin}: no key '{key}' (keys: {})", map.keys().cloned().collect::<Vec<_>>().join(", ")),
        })?,
        _ => {
            return Err(Error::TrainSpec { field: "object_classes", reason: format!("{origin}: expected a JSON object or list") });
        }
    };
    serde_json::from_value(list.clone()).map_err(|source| Error::Json { origin: format!("{origin} (key '{key}')"), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_keyed_and_plain_lists() {
        let dir = tempfile::tempdir().unwrap();
        let keyed = dir.path().join("classes.json");
        std::fs::write(&keyed, r#"{"coco": ["b c", "a"], "lvis": ["x"]}"#).unwrap();
        assert_eq!(object_classes_from_file(&keyed, "coco").unwrap(), ["b c", "a"]);
        assert_eq!(object_classes_from_file(&keyed, "lvis").unwrap(), ["x"]);
        let err = object_classes_from_file(&keyed, "nope").unwrap_err().to_string();
        assert!(err.contains("classes.json") && err.contains("nope") && err.contains("coco, lvis"), "{err}");

        let plain = dir.path().join("plain.json");
        std::fs::write(&plain, r#"["tv", "zebra"]"#).unwrap();
        assert_eq!(object_classes_from_file(&plain, "coco").unwrap(), ["tv", "zebra"]);

        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, r#"{"coco": [1, 2]}"#).unwrap();
        let err = object_classes_from_file(&bad, "coco").unwrap_err().to_string();
        assert!(err.contains("bad.json"), "{err}");
    }

    #[test]
    fn coco_list_is_ml4m_object_classes_json() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/ml-4m/object_classes.json");
        let from_file = object_classes_from_file(&path, "coco").expect("shared/data/ml-4m/object_classes.json (ml-4m's file)");
        assert_eq!(from_file, COCO_CLASSES);
    }
}
