//! Captions from a small grammar that names every visible object once, left to right, with
//! its size and colour, and relates each object to the next one:
//!
//! ```text
//! caption  := object (relation object)* "."
//! object   := ("a" | "an") " " size " " colour " " class
//! relation := " to the left of " | " in front of " | " behind "
//! ```
//!
//! Objects are ordered by the x of their visible pixels' centroid. Two neighbours whose
//! centroids are at least [`LEFT_OF_MIN`] of the image width apart are related by "to the left
//! of"; closer ones by depth ("in front of" when the left one's centre is nearer the camera).
//! [`parse`] reads a caption back into its objects and relations.

use super::scene::{COLOURS, SIZES, ShapeClass};
use crate::error::{Error, Result};

/// Smallest centroid gap (fraction of the width) for "to the left of".
pub const LEFT_OF_MIN: f64 = 0.04;

/// An object as a caption names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mention {
    /// Size word (from [`SIZES`]).
    pub size: &'static str,
    /// Colour word (from [`COLOURS`]).
    pub colour: &'static str,
    /// Shape class.
    pub class: ShapeClass,
}

/// How a mentioned object relates to the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relation {
    /// "to the left of".
    LeftOf,
    /// "in front of" (nearer the camera).
    InFrontOf,
    /// "behind" (farther from the camera).
    Behind,
}

impl Relation {
    /// The words of the relation.
    pub fn words(self) -> &'static str {
        match self {
            Self::LeftOf => "to the left of",
            Self::InFrontOf => "in front of",
            Self::Behind => "behind",
        }
    }
}

/// An object as the caption builder sees it: what to name, where its visible pixels are and
/// how far its centre is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placed {
    /// What the caption names.
    pub mention: Mention,
    /// Visible-pixel centroid x, as a fraction of the width.
    pub centroid_x: f64,
    /// Depth of the object's centre.
    pub depth: f64,
}

/// The caption of the given visible objects (any order; sorted here), and the relations used.
pub fn describe(objects: &[Placed]) -> (String, Vec<Relation>) {
    let mut sorted = objects.to_vec();
    sorted.sort_by(|a, b| a.centroid_x.total_cmp(&b.centroid_x).then(a.depth.total_cmp(&b.depth)));
    if sorted.is_empty() {
        return ("an empty ground under the sky.".to_string(), Vec::new());
    }
    let mut text = phrase(&sorted[0].mention);
    let mut relations = Vec::with_capacity(sorted.len() - 1);
    for pair in sorted.windows(2) {
        let rel = if pair[1].centroid_x - pair[0].centroid_x >= LEFT_OF_MIN {
            Relation::LeftOf
        } else if pair[0].depth <= pair[1].depth {
            Relation::InFrontOf
        } else {
            Relation::Behind
        };
        text.push(' ');
        text.push_str(rel.words());
        text.push(' ');
        text.push_str(&phrase(&pair[1].mention));
        relations.push(rel);
    }
    text.push('.');
    (text, relations)
}

fn phrase(m: &Mention) -> String {
    let article = if m.size.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" };
    format!("{article} {} {} {}", m.size, m.colour, m.class.name())
}

/// Parses a caption written by [`describe`] back into its mentions and relations (an empty
/// scene's caption gives none).
pub fn parse(text: &str) -> Result<(Vec<Mention>, Vec<Relation>)> {
    let bad = |token: &str, reason: &str| Error::ParseText { modality: "caption", token: token.to_string(), reason: reason.to_string() };
    let body = text.strip_suffix('.').ok_or_else(|| bad(text, "a caption ends with '.'"))?;
    if body == "an empty ground under the sky" {
        return Ok((Vec::new(), Vec::new()));
    }
    let words: Vec<&str> = body.split(' ').collect();
    let (mut mentions, mut relations) = (Vec::new(), Vec::new());
    let mut i = 0;
    loop {
        let [article, size, colour, class] =
            words.get(i..i + 4).and_then(|w| <[&str; 4]>::try_from(w).ok()).ok_or_else(|| bad(body, "truncated object phrase"))?;
        if article != "a" && article != "an" {
            return Err(bad(article, "expected 'a' or 'an'"));
        }
        let size = SIZES.iter().map(|s| s.0).find(|&s| s == size).ok_or_else(|| bad(size, "unknown size"))?;
        let colour = COLOURS.iter().map(|c| c.0).find(|&c| c == colour).ok_or_else(|| bad(colour, "unknown colour"))?;
        let class = ShapeClass::from_name(class).ok_or_else(|| bad(class, "unknown class"))?;
        mentions.push(Mention { size, colour, class });
        i += 4;
        if i == words.len() {
            return Ok((mentions, relations));
        }
        let rel = [Relation::LeftOf, Relation::InFrontOf, Relation::Behind]
            .into_iter()
            .find(|r| {
                let w: Vec<&str> = r.words().split(' ').collect();
                words.get(i..i + w.len()) == Some(w.as_slice())
            })
            .ok_or_else(|| bad(words[i], "expected a relation"))?;
        i += rel.words().split(' ').count();
        relations.push(rel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placed(size: usize, colour: usize, class: ShapeClass, x: f64, depth: f64) -> Placed {
        Placed { mention: Mention { size: SIZES[size].0, colour: COLOURS[colour].0, class }, centroid_x: x, depth }
    }

    #[test]
    fn grammar_round_trips() {
        let objs = [
            placed(1, 0, ShapeClass::Cube, 0.2, 5.0),
            placed(0, 2, ShapeClass::Sphere, 0.7, 6.0),
            placed(0, 5, ShapeClass::Cone, 0.71, 4.0),
        ];
        let (text, rels) = describe(&objs);
        assert_eq!(text, "a large red cube to the left of a small blue sphere behind a small orange cone.");
        let (mentions, back) = parse(&text).unwrap();
        assert_eq!(back, rels);
        assert_eq!(mentions, objs.iter().map(|o| o.mention).collect::<Vec<_>>());
        assert_eq!(parse(&describe(&[]).0).unwrap().0, Vec::new());
    }

    #[test]
    fn malformed_captions_are_refused() {
        assert!(parse("a large red cube").is_err());
        assert!(parse("a huge red cube.").is_err());
        assert!(parse("a large red cube near a small red cube.").is_err());
        assert!(parse("a large red cube to the left of.").is_err());
    }
}
