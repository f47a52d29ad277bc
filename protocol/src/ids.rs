//! Typed ids that cross processes. Each is a newtype over the number (or, for a modality's
//! name, the text) it always was, and `#[serde(transparent)]`, so the JSON of messages and logs
//! is the bare value as before; the type only keeps a generation, a step, a rank and a
//! modality key from being passed for one another.

use std::borrow::Borrow;
use std::fmt;

use serde::{Deserialize, Serialize};
use tessera_tokenizers::Modality;

/// A worker process, as the coordinator names it (unique for the job's lifetime).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WorkerId(pub u64);

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "worker#{}", self.0)
    }
}

/// A generation: the ranks that train together until the membership changes. Numbers
/// strictly increase over a job's life (0 for a process training alone).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Generation(pub u64);

impl Generation {
    /// The generation after this one.
    pub fn next(self) -> Self {
        Self(self.0 + 1)
    }
}

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Through the number's own Display, so that widths and alignment (`{:>6}`) apply.
        fmt::Display::fmt(&self.0, f)
    }
}

/// A position in training, counted in optimizer steps: `Step(n)` is both step `n` (0-based,
/// the one being trained or reported) and the step count `n` (steps done, where a checkpoint
/// is taken and training resumes). Which one a field means is in its doc.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Step(pub u64);

impl Step {
    /// The step after this one (the step count once this step is done).
    pub fn next(self) -> Self {
        Self(self.0 + 1)
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Through the number's own Display, so that widths and alignment (`{:>6}`) apply.
        fmt::Display::fmt(&self.0, f)
    }
}

/// A rank of a generation, `0..world`. The wire twin of `tessera_ops::Rank` (the contract
/// crate does not link the data plane: `ops` brings cudarc and the ring), converted where the
/// worker hands a generation's rank to its collective.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Rank(pub u32);

impl Rank {
    /// The rank as an index into per-rank tables.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for Rank {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Through the number's own Display, so that widths and alignment (`{:>6}`) apply.
        fmt::Display::fmt(&self.0, f)
    }
}

/// A modality's key as it crosses processes and lands in logs and metrics (`caption`,
/// `tok_rgb@224`): what per-modality losses and scores are keyed by. It is made from a
/// [`Modality`], so a rank reports only keys its registry knows; decoding trusts the sender's
/// registry, so that a process reading a log (`tessera plot`, `tessera top`) needs no job's
/// tokenizer-defined modalities registered.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ModalityName(String);

impl ModalityName {
    /// The key as text (a metric label, a table cell).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<Modality> for ModalityName {
    fn from(m: Modality) -> Self {
        Self(m.key().to_string())
    }
}

/// Maps keyed by name are looked up by key text (`losses["caption"]`); the order is the text's.
impl Borrow<str> for ModalityName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ModalityName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`, so that widths and alignment (`{:<22}`) apply.
        f.pad(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_bare_numbers_on_the_wire() {
        assert_eq!(serde_json::to_string(&(Generation(3), Step(17), Rank(2))).unwrap(), "[3,17,2]");
        assert_eq!(serde_json::from_str::<Option<Step>>("12").unwrap(), Some(Step(12)));
        assert_eq!(format!("generation {} step {} rank {}", Generation(3), Step(17), Rank(2)), "generation 3 step 17 rank 2");
        assert_eq!(format!("[{:>4}|{:<3}]", Step(17), Rank(2)), "[  17|2  ]");
        assert_eq!((Generation(3).next(), Step(17).next()), (Generation(4), Step(18)));
    }

    #[test]
    fn a_modality_name_is_its_key() {
        let losses = std::collections::BTreeMap::from([(ModalityName::from(Modality::TokRgb224), 2.5), (Modality::Caption.into(), 3.0)]);
        assert_eq!(serde_json::to_string(&losses).unwrap(), r#"{"caption":3.0,"tok_rgb@224":2.5}"#);
        assert_eq!(
            serde_json::from_str::<std::collections::BTreeMap<ModalityName, f64>>(r#"{"caption":3.0,"tok_rgb@224":2.5}"#).unwrap(),
            losses
        );
        assert_eq!(losses["caption"], 3.0);
        assert_eq!(format!("[{:<8}]", ModalityName::from(Modality::Det)), "[det     ]");
    }
}
