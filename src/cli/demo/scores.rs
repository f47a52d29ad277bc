//! Scores of the demo's generations against the world's exact ground truth: depth absolute
//! relative error after a least-squares scale-and-shift alignment (the depth tokenizer works on
//! per-image standardised depth, so the model predicts relative depth), caption object
//! precision/recall through the world's caption grammar (exact: size, colour and shape; and
//! by shape alone), and box IoU of matched objects.
//!
//! Why the lenient reading of captions: a small, briefly trained model often stops a caption
//! early (it learned from span-masked targets, where `[S_2]` follows a few words) or breaks a
//! relation; the strict grammar then rejects the whole caption and every object it did name
//! counts as missed. [`caption_mentions`] keeps every complete object phrase instead, and the
//! demo reports how many captions fell outside the grammar beside the scores.

use tessera_tokenizers::world::caption;

/// An object as a caption names it: (size, colour, shape).
pub type Named = (String, String, String);

/// The objects a caption names, or `None` when the text is not in the world's grammar.
pub fn caption_objects(text: &str) -> Option<Vec<Named>> {
    caption::parse(text)
        .ok()
        .map(|(mentions, _)| mentions.iter().map(|m| (m.size.to_string(), m.colour.to_string(), m.class.name().to_string())).collect())
}

/// Every complete object phrase ("a|an size colour shape") of a caption, in order, whether or
/// not the rest of the text follows the grammar.
pub fn caption_mentions(text: &str) -> Vec<Named> {
    let body = text.trim().trim_end_matches('.');
    let words: Vec<&str> = body.split_whitespace().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i + 4 <= words.len() {
        let phrase = format!("{}.", words[i..i + 4].join(" "));
        match caption_objects(&phrase) {
            Some(mut one) if one.len() == 1 => {
                out.append(&mut one);
                i += 4;
            }
            _ => i += 1,
        }
    }
    out
}

/// How predicted objects must agree with true ones to count as found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchBy {
    /// Size, colour and shape.
    Exact,
    /// Shape alone.
    Shape,
}

/// Matched, predicted and true object counts of one caption (multiset matching).
pub fn caption_counts(pred: &[Named], truth: &[Named], by: MatchBy) -> (usize, usize, usize) {
    let key = |n: &Named| match by {
        MatchBy::Exact => n.clone(),
        MatchBy::Shape => (String::new(), String::new(), n.2.clone()),
    };
    let mut left: Vec<Named> = truth.iter().map(key).collect();
    let mut matched = 0;
    for p in pred.iter().map(key) {
        if let Some(i) = left.iter().position(|t| *t == p) {
            left.swap_remove(i);
            matched += 1;
        }
    }
    (matched, pred.len(), truth.len())
}

/// `pred` scaled and shifted onto `truth` by least squares.
pub fn align(pred: &[f32], truth: &[f32]) -> Vec<f64> {
    let n = pred.len().min(truth.len()) as f64;
    let (mp, mt) = (pred.iter().map(|&v| f64::from(v)).sum::<f64>() / n, truth.iter().map(|&v| f64::from(v)).sum::<f64>() / n);
    let cov: f64 = pred.iter().zip(truth).map(|(&p, &t)| (f64::from(p) - mp) * (f64::from(t) - mt)).sum();
    let var: f64 = pred.iter().map(|&p| (f64::from(p) - mp).powi(2)).sum();
    let a = if var > 1e-12 { cov / var } else { 0.0 };
    pred.iter().map(|&p| a * (f64::from(p) - mp) + mt).collect()
}

/// `pred` aligned to `truth` ([`align`]), then the mean of |aligned − truth| / truth.
pub fn abs_rel_aligned(pred: &[f32], truth: &[f32]) -> f64 {
    let aligned = align(pred, truth);
    aligned.iter().zip(truth).map(|(&p, &t)| (p - f64::from(t)).abs() / f64::from(t).max(1e-6)).sum::<f64>() / aligned.len().max(1) as f64
}

/// A box `[x0, y0, x1, y1]` (normalised) with its class name.
pub type NamedBox = ([f64; 4], String);

/// Intersection over union of two boxes.
pub fn iou(a: &[f64; 4], b: &[f64; 4]) -> f64 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let union = (a[2] - a[0]).max(0.0) * (a[3] - a[1]).max(0.0) + (b[2] - b[0]).max(0.0) * (b[3] - b[1]).max(0.0) - inter;
    if union > 0.0 { inter / union } else { 0.0 }
}

/// Greedy matching of true boxes to predicted boxes of the same class (highest IoU pairs
/// first); returns the IoU of each true box (0 when unmatched).
pub fn box_ious(pred: &[NamedBox], truth: &[NamedBox]) -> Vec<f64> {
    let mut pairs: Vec<(f64, usize, usize)> = Vec::new();
    for (i, t) in truth.iter().enumerate() {
        for (j, p) in pred.iter().enumerate() {
            if p.1 == t.1 {
                pairs.push((iou(&p.0, &t.0), i, j));
            }
        }
    }
    pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
    let (mut out, mut used) = (vec![0.0; truth.len()], vec![false; pred.len()]);
    let mut done = vec![false; truth.len()];
    for (v, i, j) in pairs {
        if !done[i] && !used[j] {
            (out[i], done[i], used[j]) = (v, true, true);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment_forgives_scale_and_shift_only() {
        let truth = [2.0f32, 4.0, 6.0, 8.0];
        let pred = [-1.5f32, -0.5, 0.5, 1.5];
        assert!(abs_rel_aligned(&pred, &truth) < 1e-9);
        // A wrong shape is not forgiven: the best line through it still misses.
        let bump = [0.0f32, 0.0, 1.0, 0.0];
        assert!(abs_rel_aligned(&bump, &truth) > 0.2, "{}", abs_rel_aligned(&bump, &truth));
    }

    #[test]
    fn boxes_match_by_class_and_overlap() {
        let t = vec![([0.0, 0.0, 0.5, 0.5], "cube".to_string()), ([0.5, 0.5, 1.0, 1.0], "sphere".to_string())];
        let p = vec![([0.0, 0.0, 0.5, 0.25], "cube".to_string()), ([0.5, 0.5, 1.0, 1.0], "cone".to_string())];
        assert_eq!(box_ious(&p, &t), vec![0.5, 0.0]);
        assert_eq!(caption_counts(&[("a".into(), "b".into(), "c".into())], &[], MatchBy::Exact), (0, 1, 0));
    }

    fn named(size: &str, colour: &str, shape: &str) -> Named {
        (size.to_string(), colour.to_string(), shape.to_string())
    }

    #[test]
    fn a_grammatical_caption_pair_scores_exactly_and_by_shape() {
        let truth = caption_mentions("a large red cube to the left of a small blue sphere.");
        assert_eq!(truth, vec![named("large", "red", "cube"), named("small", "blue", "sphere")]);
        // Right shapes, one wrong colour: one exact match, two by shape.
        let pred = caption_mentions("a large red cube to the left of a small green sphere.");
        assert_eq!(caption_counts(&pred, &truth, MatchBy::Exact), (1, 2, 2));
        assert_eq!(caption_counts(&pred, &truth, MatchBy::Shape), (2, 2, 2));
    }

    #[test]
    fn a_caption_outside_the_grammar_keeps_its_complete_objects() {
        // Cut short and with a broken relation: the strict grammar rejects it ...
        let text = "a small green cone near a large white cube to the left of a large";
        assert_eq!(caption_objects(text), None);
        // ... but the two complete object phrases still count.
        let pred = caption_mentions(text);
        assert_eq!(pred, vec![named("small", "green", "cone"), named("large", "white", "cube")]);
        let truth = caption_mentions("a large white cube to the left of a small red cylinder.");
        assert_eq!(caption_counts(&pred, &truth, MatchBy::Exact), (1, 2, 2));
        assert_eq!(caption_counts(&pred, &truth, MatchBy::Shape), (1, 2, 2));
        // Two words name no object at all.
        assert!(caption_mentions("a large").is_empty());
    }
}
