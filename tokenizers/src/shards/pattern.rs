//! ml-4m's `data_path` patterns: `root/[rgb,caption]/shard-{00000..00099}.tar`.
//!
//! Square brackets list the modality folders (ml-4m translates them to braces and expands them
//! separately from the shard braces, see `multi_tarfile_samples`); braces are Python
//! `braceexpand` syntax: `{a,b}` lists, `{00000..00099}` zero-padded integer ranges (with an
//! optional `..step`), `{a..e}` letter ranges, nesting and several groups (left-most varies
//! slowest) and `\` escapes. Deliberate differences from `braceexpand`, which silently keeps
//! malformed groups literally: an unbalanced brace or bracket, an empty folder name or a
//! one-alternative group `{x}` is an error here.

use std::path::PathBuf;

use crate::error::{Error, Result};

/// Expansions larger than this are refused: a typo like `{0..999999999}` should fail fast.
const MAX_EXPANSION: usize = 10_000_000;

/// One modality folder of a pattern and its shard paths, in pattern order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FolderShards {
    /// The bracket entry (`rgb`, `tok_rgb@224`), or `None` when the pattern has no brackets.
    pub folder: Option<String>,
    /// The brace-expanded shard paths of this folder.
    pub shards: Vec<PathBuf>,
}

/// Expands a `data_path` pattern into one shard list per bracketed folder (one unnamed folder
/// when there are no brackets); all lists have the same length and order.
pub fn expand_shard_pattern(pattern: &str) -> Result<Vec<FolderShards>> {
    let err = |reason: String| Error::Pattern { pattern: pattern.to_string(), reason };
    let (folders, template) = split_brackets(pattern).map_err(err)?;
    let out: Vec<FolderShards> = match folders {
        None => vec![FolderShards { folder: None, shards: expand_paths(pattern)? }],
        Some(folders) => {
            // Expand the shard braces once with a placeholder for the folder, then substitute:
            // every folder gets the same shard list, and brace errors cite the real pattern.
            let expanded = brace_expand(&template).map_err(|e| match e {
                Error::Pattern { reason, .. } => err(reason),
                other => other,
            })?;
            folders
                .into_iter()
                .map(|f| FolderShards {
                    shards: expanded.iter().map(|t| PathBuf::from(t.replacen(FOLDER_SLOT, &f, 1))).collect(),
                    folder: Some(f),
                })
                .collect()
        }
    };
    if out.iter().any(|f| f.shards.is_empty()) {
        return Err(Error::Pattern { pattern: pattern.to_string(), reason: "expands to no shard".into() });
    }
    Ok(out)
}

/// Brace-expands `pattern` into paths (no bracket handling).
fn expand_paths(pattern: &str) -> Result<Vec<PathBuf>> {
    Ok(brace_expand(pattern)?.into_iter().map(PathBuf::from).collect())
}

/// Python `braceexpand` on `pattern` (see the module docs for the accepted syntax).
pub fn brace_expand(pattern: &str) -> Result<Vec<String>> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut parser = Parser { chars: &chars, pos: 0 };
    let out = parser.sequence(false).map_err(|reason| Error::Pattern { pattern: pattern.to_string(), reason })?;
    match parser.peek() {
        None => Ok(out),
        Some(c) => Err(Error::Pattern { pattern: pattern.to_string(), reason: format!("unmatched '{c}' at character {}", parser.pos) }),
    }
}

/// Placeholder for the folder slot; a control character cannot occur in a sane path.
const FOLDER_SLOT: &str = "\u{1}";

/// Splits off the `[...]` folder list: `(folders, template with FOLDER_SLOT)`.
fn split_brackets(pattern: &str) -> std::result::Result<(Option<Vec<String>>, String), String> {
    let Some(open) = pattern.find('[') else {
        return match pattern.find(']') {
            Some(i) => Err(format!("unmatched ']' at byte {i}")),
            None => Ok((None, pattern.to_string())),
        };
    };
    let close = pattern[open..].find(']').map(|i| open + i).ok_or_else(|| format!("unmatched '[' at byte {open}"))?;
    let inner = &pattern[open + 1..close];
    if inner.contains('[') {
        return Err(format!("nested '[' inside the folder list at byte {open}"));
    }
    let rest = &pattern[close + 1..];
    if rest.contains('[') || rest.contains(']') || pattern[..open].contains(']') {
        return Err("only one [folder,...] list is supported".into());
    }
    if inner.contains(['{', '}', '\\']) {
        return Err("braces or escapes inside the folder list are not supported".into());
    }
    let folders: Vec<String> = inner.split(',').map(|s| s.trim().to_string()).collect();
    if let Some(i) = folders.iter().position(|f| f.is_empty()) {
        return Err(format!("empty folder name at position {i} of the folder list"));
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = folders.iter().find(|f| !seen.insert(f.as_str())) {
        return Err(format!("folder '{dup}' is listed twice"));
    }
    Ok((Some(folders), format!("{}{FOLDER_SLOT}{rest}", &pattern[..open])))
}

struct Parser<'a> {
    chars: &'a [char],
    pos: usize,
}

type PResult<T> = std::result::Result<T, String>;

impl Parser<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    /// A sequence of literals and groups, up to the end (or, inside a group, a `,` or `}`).
    fn sequence(&mut self, in_group: bool) -> PResult<Vec<String>> {
        let mut out = vec![String::new()];
        while let Some(c) = self.peek() {
            match c {
                '\\' => {
                    let next = self.chars.get(self.pos + 1).copied().ok_or("pattern ends with a lone '\\'")?;
                    out.iter_mut().for_each(|s| s.push(next));
                    self.pos += 2;
                }
                '{' => {
                    let start = self.pos;
                    self.pos += 1;
                    let alts = self.group(start)?;
                    if out.len().saturating_mul(alts.len()) > MAX_EXPANSION {
                        return Err(format!("expands to more than {MAX_EXPANSION} paths"));
                    }
                    out = out.iter().flat_map(|prefix| alts.iter().map(move |a| format!("{prefix}{a}"))).collect();
                }
                ',' | '}' if in_group => return Ok(out),
                '}' => return Err(format!("unmatched '}}' at character {}", self.pos)),
                c => {
                    out.iter_mut().for_each(|s| s.push(c));
                    self.pos += 1;
                }
            }
        }
        if in_group { Err("unmatched '{'".into()) } else { Ok(out) }
    }

    /// The alternatives of the group whose `{` is at `start` (`pos` is just after it).
    fn group(&mut self, start: usize) -> PResult<Vec<String>> {
        if let Some(range) = self.try_range(start)? {
            return Ok(range);
        }
        let mut alts = Vec::new();
        loop {
            alts.extend(
                self.sequence(true).map_err(|e| if e == "unmatched '{'" { format!("unmatched '{{' at character {start}") } else { e })?,
            );
            match self.peek() {
                Some(',') => self.pos += 1,
                Some('}') => {
                    self.pos += 1;
                    break;
                }
                _ => return Err(format!("unmatched '{{' at character {start}")),
            }
        }
        if alts.len() < 2 {
            return Err(format!("brace group at character {start} has a single alternative; drop the braces or escape them"));
        }
        Ok(alts)
    }

    /// `{a..b}` / `{a..b..step}` when the group body is exactly that, else `None`.
    fn try_range(&mut self, start: usize) -> PResult<Option<Vec<String>>> {
        let Some(len) = self.chars[self.pos..].iter().position(|&c| c == '}') else { return Ok(None) };
        let body: String = self.chars[self.pos..self.pos + len].iter().collect();
        if body.contains(['{', ',', '\\']) || !body.contains("..") {
            return Ok(None);
        }
        let parts: Vec<&str> = body.split("..").collect();
        let (a, b, step) = match parts.as_slice() {
            [a, b] => (*a, *b, None),
            [a, b, s] => (*a, *b, Some(*s)),
            _ => return Err(format!("malformed range '{{{body}}}' at character {start}")),
        };
        let range = match int_range(a, b, step) {
            Some(r) => r.ok_or_else(|| format!("range '{{{body}}}' expands to more than {MAX_EXPANSION} values"))?,
            None => char_range(a, b, step).ok_or_else(|| format!("malformed range '{{{body}}}' at character {start}"))?,
        };
        self.pos += len + 1;
        Ok(Some(range))
    }
}

fn parse_step(step: Option<&str>) -> Option<i64> {
    match step {
        None => Some(1),
        Some(s) => s.parse::<i64>().ok().map(|v| if v == 0 { 1 } else { v.abs() }),
    }
}

/// braceexpand's `make_int_range`: zero padding to the longer bound when either bound has a
/// leading zero; ranges count down when `b < a`. `Some(None)` means too many values.
fn int_range(a: &str, b: &str, step: Option<&str>) -> Option<Option<Vec<String>>> {
    let (x, y) = (a.parse::<i64>().ok()?, b.parse::<i64>().ok()?);
    let step = parse_step(step)?;
    let padded = [a, b].iter().any(|s| *s != "0" && *s != "-0" && (s.starts_with('0') || s.starts_with("-0")));
    let width = if padded { a.len().max(b.len()) } else { 0 };
    if (i128::from(y) - i128::from(x)).unsigned_abs() / u128::from(step.unsigned_abs()) >= MAX_EXPANSION as u128 {
        return Some(None);
    }
    let values: Vec<i64> = if x <= y { (x..=y).step_by(step as usize).collect() } else { (y..=x).rev().step_by(step as usize).collect() };
    Some(Some(values.into_iter().map(|v| format!("{v:0width$}")).collect()))
}

fn char_range(a: &str, b: &str, step: Option<&str>) -> Option<Vec<String>> {
    let one = |s: &str| {
        let mut it = s.chars();
        match (it.next(), it.next()) {
            (Some(c), None) if c.is_ascii_alphabetic() => Some(c as u8),
            _ => None,
        }
    };
    let (x, y) = (one(a)?, one(b)?);
    let step = parse_step(step)? as usize;
    let bytes: Vec<u8> = if x <= y { (x..=y).step_by(step).collect() } else { (y..=x).rev().step_by(step).collect() };
    Some(bytes.into_iter().map(|c| (c as char).to_string()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(p: &str) -> Vec<String> {
        brace_expand(p).unwrap()
    }

    #[test]
    fn ranges_lists_and_nesting() {
        assert_eq!(ex("s-{00008..00011}.tar"), ["s-00008.tar", "s-00009.tar", "s-00010.tar", "s-00011.tar"]);
        assert_eq!(ex("{8..11}"), ["8", "9", "10", "11"]);
        assert_eq!(ex("{3..1}"), ["3", "2", "1"]);
        assert_eq!(ex("{0..6..3}"), ["0", "3", "6"]);
        assert_eq!(ex("{a..c}"), ["a", "b", "c"]);
        assert_eq!(ex("x{a,b}y{1,2}"), ["xay1", "xay2", "xby1", "xby2"]);
        assert_eq!(ex("{a,{b,c}d}"), ["a", "bd", "cd"]);
        assert_eq!(ex("{a,}"), ["a", ""]);
        assert_eq!(ex(r"lit\{x\}"), ["lit{x}"]);
        assert_eq!(ex("plain.tar"), ["plain.tar"]);
        assert_eq!(ex("{1..2}-{08..09}"), ["1-08", "1-09", "2-08", "2-09"]);
    }

    #[test]
    fn malformed_patterns_are_errors() {
        for bad in ["a{b,c", "a}b", "{x}", "{1..}", "a\\", "{0..99999999999}", "{-9223372036854775808..9223372036854775807}"] {
            let e = brace_expand(bad).unwrap_err().to_string();
            assert!(e.contains(bad), "{bad}: {e}");
        }
        for bad in ["r/[a,b/s.tar", "r/a]/s.tar", "r/[a,,b]/s.tar", "r/[a,b]/[c,d]/s.tar", "r/[a,a]/s.tar", "r/[a,{b,c}]/s.tar"] {
            assert!(expand_shard_pattern(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn folders_and_shards() {
        let f = expand_shard_pattern("/d/[rgb,tok_rgb@224]/shard-{0..1}.tar").unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!(f[1].folder.as_deref(), Some("tok_rgb@224"));
        assert_eq!(f[1].shards, [PathBuf::from("/d/tok_rgb@224/shard-0.tar"), PathBuf::from("/d/tok_rgb@224/shard-1.tar")]);
        let single = expand_shard_pattern("/d/[rgb]/s.tar").unwrap();
        assert_eq!(single[0].folder.as_deref(), Some("rgb"));
        let e = expand_shard_pattern("/d/[a,b]/s-{0..1.tar").unwrap_err().to_string();
        assert!(e.contains("/d/[a,b]/s-{0..1.tar") && e.contains("unmatched '{'"), "{e}");
        let none = expand_shard_pattern("/d/{a,b}.tar").unwrap();
        assert_eq!(none[0].folder, None);
        assert_eq!(none[0].shards.len(), 2);
    }
}
