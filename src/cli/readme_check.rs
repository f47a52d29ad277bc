//! Keeps README.md honest (issue 17, item 8): every `tessera …` line its code blocks show
//! parses with the real clap definition in every variant its synopsis notation allows, a job
//! config positional is shown as a job config, every `--flag` its prose names in backticks
//! exists, and so does the crate and module of every `tessera_<crate>::<module>` it names. The README once showed `tessera export OUT/checkpoints/step-N --out …` for weeks after
//! the CLI had changed; clap alone accepts any path there, hence the job-config rule.
//!
//! Synopsis notation: `[…]` is optional (checked without it and with each of its ` | `
//! alternatives), `a|b` inside a word is a choice (each is checked), a trailing `\` continues the
//! line, `# …` is a comment; placeholders (`JOB`, `N`, `FILE`, `…`) are just values.

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Command, CommandFactory, Parser};

use super::Cli;

/// More variants than this from one line means the notation was misread, not a long synopsis.
const MAX_VARIANTS: usize = 256;

/// A command line shown in a code block: the README line it starts on and the joined text.
#[derive(Debug)]
struct Shown {
    line: usize,
    text: String,
}

/// An inline code span of the prose and the README line it starts on.
#[derive(Debug)]
struct Span {
    line: usize,
    text: String,
}

/// One token of a shown command: a word, or the synopsis brackets and alternative bar.
#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Open,
    Close,
    Bar,
}

/// A parsed synopsis: words, and optional groups of alternatives.
#[derive(Debug)]
enum Node {
    Word(String),
    Optional(Vec<Vec<Node>>),
}

/// Splits the README into the `tessera …` lines of its code blocks (fenced, or indented by four
/// spaces or more, as list items' code blocks are) and the inline code spans of its prose.
fn scan(readme: &str) -> (Vec<Shown>, Vec<Span>) {
    let lines: Vec<&str> = readme.lines().collect();
    let (mut shown, mut spans) = (Vec::new(), Vec::new());
    let mut fenced = false;
    // The prose paragraph being collected (its first line number and text), so that a code
    // span wrapped over two lines is still one span.
    let mut para: Option<(usize, String)> = None;
    let mut i = 0;
    while i < lines.len() {
        let raw = lines[i];
        let trimmed = raw.trim_start();
        let line = i + 1;
        if trimmed.starts_with("```") {
            fenced = !fenced;
            flush(&mut para, &mut spans);
            i += 1;
            continue;
        }
        let indented = raw.starts_with("    ") || raw.starts_with('\t');
        if fenced || indented || trimmed.is_empty() {
            flush(&mut para, &mut spans);
        }
        if (fenced || indented) && trimmed.starts_with("tessera ") {
            let mut text = trimmed.trim_end().to_string();
            while text.ends_with('\\') && i + 1 < lines.len() {
                text.pop();
                i += 1;
                text.push(' ');
                text.push_str(lines[i].trim());
            }
            shown.push(Shown { line, text });
        } else if !fenced && !indented && !trimmed.is_empty() {
            let p = para.get_or_insert_with(|| (line, String::new()));
            p.1.push_str(raw);
            p.1.push('\n');
        }
        i += 1;
    }
    flush(&mut para, &mut spans);
    (shown, spans)
}

/// Moves the inline code spans of a finished paragraph into `spans`.
fn flush(para: &mut Option<(usize, String)>, spans: &mut Vec<Span>) {
    let Some((first, text)) = para.take() else { return };
    let parts: Vec<&str> = text.split('`').collect();
    let mut line = first;
    for (k, part) in parts.iter().enumerate() {
        // Odd parts are inside backticks; an unclosed last one is not a span.
        if k % 2 == 1 && k + 1 < parts.len() {
            spans.push(Span { line, text: part.split_whitespace().collect::<Vec<_>>().join(" ") });
        }
        line += part.matches('\n').count();
    }
}

/// Shell-like words (quotes group, `#` starts a comment) and the synopsis tokens: an unquoted
/// `[` opening a word, `]`s closing one, and a lone `|`; brackets inside a word
/// (`root/[rgb,caption]/shard`) are part of it.
fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let (mut cur, mut in_word) = (String::new(), false);
    let finish = |tokens: &mut Vec<Token>, cur: &mut String, in_word: &mut bool| {
        if std::mem::take(in_word) {
            tokens.push(Token::Word(std::mem::take(cur)));
        }
    };
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let rest_of_word = || chars[i..].iter().take_while(|c| !c.is_whitespace());
        match c {
            '"' | '\'' => {
                in_word = true;
                loop {
                    i += 1;
                    match chars.get(i) {
                        Some(&q) if q == c => break,
                        Some(&q) => cur.push(q),
                        None => return Err(format!("unclosed {c}")),
                    }
                }
            }
            c if c.is_whitespace() => finish(&mut tokens, &mut cur, &mut in_word),
            '#' if !in_word => break,
            '[' if !in_word => tokens.push(Token::Open),
            '|' if !in_word && rest_of_word().count() == 1 => tokens.push(Token::Bar),
            ']' if rest_of_word().all(|&c| c == ']') => {
                finish(&mut tokens, &mut cur, &mut in_word);
                tokens.push(Token::Close);
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
        i += 1;
    }
    finish(&mut tokens, &mut cur, &mut in_word);
    Ok(tokens)
}

/// Parses tokens into a synopsis; `[` … `]` may nest and hold ` | `-separated alternatives.
fn parse(tokens: &[Token]) -> Result<Vec<Node>, String> {
    fn seq(tokens: &[Token], pos: &mut usize, depth: usize) -> Result<Vec<Vec<Node>>, String> {
        let mut alts = vec![Vec::new()];
        while *pos < tokens.len() {
            let t = tokens[*pos].clone();
            *pos += 1;
            match t {
                Token::Word(w) => alts.last_mut().expect("one alternative").push(Node::Word(w)),
                Token::Open => {
                    let group = seq(tokens, pos, depth + 1)?;
                    alts.last_mut().expect("one alternative").push(Node::Optional(group));
                }
                Token::Close if depth > 0 => return Ok(alts),
                Token::Close => return Err("a `]` without its `[`".into()),
                Token::Bar if depth > 0 => alts.push(Vec::new()),
                Token::Bar => return Err("a ` | ` outside `[ ]`".into()),
            }
        }
        if depth > 0 { Err("a `[` without its `]`".into()) } else { Ok(alts) }
    }
    let mut pos = 0;
    Ok(seq(tokens, &mut pos, 0)?.remove(0))
}

/// Every command line the synopsis stands for.
fn expand(nodes: &[Node]) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = vec![Vec::new()];
    for node in nodes {
        let choices: Vec<Vec<String>> = match node {
            Node::Word(w) if w.contains('|') && w != "|" => w.split('|').map(|a| vec![a.to_string()]).collect(),
            Node::Word(w) => vec![vec![w.clone()]],
            Node::Optional(alts) => std::iter::once(Vec::new()).chain(alts.iter().flat_map(|a| expand(a))).collect(),
        };
        out = out.iter().flat_map(|prefix| choices.iter().map(move |c| [prefix.clone(), c.clone()].concat())).collect();
        out.truncate(MAX_VARIANTS + 1);
    }
    out
}

/// Whether a word is a placeholder (`S`, `JOB`, `HOST:PORT`, `…`) rather than a real value.
fn is_placeholder(w: &str) -> bool {
    w == "…"
        || w.contains("HOST")
        || w.contains("PORT")
        || (w.chars().any(|c| c.is_ascii_uppercase()) && !w.chars().any(|c| c.is_ascii_lowercase()))
}

/// Values to put in place of a placeholder that clap refuses as it is (`--seed S` wants a number).
fn stand_ins(w: &str) -> Vec<String> {
    if w.contains("HOST") || w.contains("PORT") {
        return vec![w.replace("HOST", "127.0.0.1").replace("PORT", "1")];
    }
    ["1", "0.5", "127.0.0.1:1"].map(String::from).to_vec()
}

/// Parses `args`, replacing placeholders that clap refuses by stand-ins until it accepts them or
/// refuses something else; returns the args it accepted.
fn parse_with_placeholders(shown: &[String]) -> Result<Vec<String>, clap::Error> {
    let mut args = shown.to_vec();
    let mut tried = vec![0usize; args.len()];
    loop {
        let e = match Cli::try_parse_from(&args) {
            Ok(_) => return Ok(args),
            Err(e) => e,
        };
        let Some(ContextValue::String(bad)) = e.get(ContextKind::InvalidValue) else { return Err(e) };
        let Some(i) = (1..args.len()).find(|&i| args[i] == *bad && is_placeholder(&shown[i])) else { return Err(e) };
        let Some(v) = stand_ins(&shown[i]).into_iter().nth(tried[i]) else { return Err(e) };
        args[i] = v;
        tried[i] += 1;
    }
}

/// Why one expanded command line is wrong, if it is: clap refuses it, or a job-config positional
/// holds something that is not a job config.
fn check_args(args: &[String]) -> Option<String> {
    let args = match parse_with_placeholders(args) {
        Ok(args) => args,
        Err(e) => {
            return match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => None,
                _ => Some(e.render().to_string().trim_end().to_string()),
            };
        }
    };
    let mut cmd = Cli::command();
    cmd.build();
    let matches = cmd.clone().try_get_matches_from(&args).ok()?;
    let (mut cmd, mut m) = (&cmd, &matches);
    while let Some((name, sub)) = m.subcommand() {
        cmd = cmd.find_subcommand(name)?;
        m = sub;
    }
    for arg in cmd.get_positionals() {
        let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
        let is_job = help.starts_with("The job config");
        // `tessera export` also takes a service's job id.
        let takes_id = is_job && help.contains("job id");
        let values = m.get_raw(arg.get_id().as_str()).into_iter().flatten();
        for v in values.filter(|_| is_job) {
            let v = v.to_string_lossy();
            let an_id = takes_id && tessera_coordinator::store::JobId::parse(&v).is_some();
            if !(v == "JOB" || an_id || [".toml", ".yaml", ".yml"].iter().any(|ext| v.ends_with(ext))) {
                return Some(format!("`{v}` is not a job config (`<{}>` wants a .toml or ml-4m .yaml file, or JOB)", arg.get_id()));
            }
        }
    }
    None
}

/// Whether `cmd` (or the help and version every command has) takes `--name`.
fn has_long(cmd: &Command, name: &str) -> bool {
    name == "help" || name == "version" || cmd.get_arguments().any(|a| a.get_long() == Some(name))
}

/// Why an inline code span names a flag that does not exist, if it does.
fn check_span(root: &Command, span: &str) -> Option<String> {
    let flag = |w: &str| w.strip_prefix("--").map(|f| f.split('=').next().unwrap_or(f).trim_end_matches(['.', ',', ')']).to_string());
    if let Some(rest) = span.strip_prefix("tessera ") {
        let words: Vec<&str> = rest.split_whitespace().collect();
        if !words.iter().any(|w| w.starts_with("--")) {
            return None;
        }
        let mut cmd = root;
        let mut path = vec!["tessera"];
        for w in words {
            if let Some(f) = flag(w) {
                if !has_long(cmd, &f) {
                    return Some(format!("`{}` has no `--{f}`", path.join(" ")));
                }
            } else if let Some(sub) = cmd.find_subcommand(w) {
                cmd = sub;
                path.push(w);
            } else if cmd.has_subcommands() {
                return Some(format!("`{}` has no subcommand `{w}`", path.join(" ")));
            }
        }
        return None;
    }
    // A bare `--flag` (or `--a/--b`): some tessera command must take it.
    if span.starts_with("--") {
        for f in span.split(['/', ' ']).filter_map(flag) {
            if !any_has_long(root, &f) {
                return Some(format!("no tessera command takes `--{f}`"));
            }
        }
    }
    None
}

/// Whether any command in the tree takes `--name`.
fn any_has_long(cmd: &Command, name: &str) -> bool {
    has_long(cmd, name) || cmd.get_subcommands().any(|s| any_has_long(s, name))
}

/// Why a `tessera_<crate>::<module>` path named in a prose span points nowhere, if it does:
/// modules move between crates (the job config and the ledger went from `coordinator` to
/// `protocol`), and the README is where a reader looks them up. Only the crate and its first
/// module are checked; a capitalised first segment is a re-exported type, not checked.
fn check_path(root: &std::path::Path, span: &str) -> Option<String> {
    let path = span.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')).next()?;
    // Without `::` it is a metric (`tessera_step`) or metadata key, not a path.
    if !path.contains("::") {
        return None;
    }
    let mut segments = path.strip_prefix("tessera_")?.split("::");
    let krate = segments.next()?;
    let dir = root.join(krate).join("src");
    if !dir.is_dir() {
        return Some(format!("no crate `tessera_{krate}` (no {krate}/src)"));
    }
    let module = segments.next().filter(|m| m.starts_with(|c: char| c.is_ascii_lowercase()))?;
    let exists = dir.join(format!("{module}.rs")).is_file() || dir.join(module).is_dir();
    (!exists).then(|| format!("`tessera_{krate}` has no module `{module}`"))
}

/// Every problem found in a README text, each naming its line.
fn problems(readme: &str) -> Vec<String> {
    let (shown, spans) = scan(readme);
    let mut out = Vec::new();
    for s in &shown {
        let variants = match tokenize(&s.text).and_then(|t| parse(&t)) {
            Ok(nodes) => expand(&nodes),
            Err(e) => {
                out.push(format!("README.md:{}: {}\n  cannot read the synopsis: {e}", s.line, s.text));
                continue;
            }
        };
        if variants.len() > MAX_VARIANTS {
            out.push(format!("README.md:{}: {}\n  more than {MAX_VARIANTS} variants", s.line, s.text));
        }
        for v in variants {
            if let Some(why) = check_args(&v) {
                out.push(format!("README.md:{}: {}\n  as `{}`:\n  {}", s.line, s.text, v.join(" "), why.replace('\n', "\n  ")));
            }
        }
    }
    let mut root = Cli::command();
    root.build();
    for s in &spans {
        let root_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        if let Some(why) = check_span(&root, &s.text).or_else(|| check_path(root_dir, &s.text)) {
            out.push(format!("README.md:{}: `{}`: {why}", s.line, s.text));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readme() -> String {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn every_readme_command_parses() {
        let text = readme();
        let (shown, spans) = scan(&text);
        // The scan itself must find the README's commands, or this test would pass vacuously.
        assert!(shown.len() >= 30, "found only {} tessera command lines", shown.len());
        assert!(spans.iter().any(|s| s.text.starts_with("tessera ")), "no `tessera …` span in the prose");
        let found = problems(&text);
        assert!(found.is_empty(), "README.md shows commands the CLI refuses:\n{}", found.join("\n"));
    }

    #[test]
    fn synopsis_notation_expands() {
        let nodes = parse(&tokenize("tessera plot [JOB] [--out A.png|B.svg | --job-dir 'a b'] # note").unwrap()).unwrap();
        let lines: Vec<String> = expand(&nodes).iter().map(|v| v.join(" ")).collect();
        let expected = [
            "tessera plot",
            "tessera plot --out A.png",
            "tessera plot --out B.svg",
            "tessera plot --job-dir a b",
            "tessera plot JOB",
            "tessera plot JOB --out A.png",
            "tessera plot JOB --out B.svg",
            "tessera plot JOB --job-dir a b",
        ];
        assert_eq!(lines, expected);
        assert!(parse(&tokenize("tessera a [--b").unwrap()).is_err());
        assert!(parse(&tokenize("tessera a | b").unwrap()).is_err());
    }

    #[test]
    fn the_old_mistakes_are_caught() {
        let old = "Intro `tessera train --wrokers` and `--no-such-flag`, `tessera_coordinator::ledger`.\n\n\
                   \x20   tessera export OUT/checkpoints/step-N --out model.safetensors\n\
                   \x20   tessera data generate --out DIR --samples N   (CLI wiring: pending)\n\
                   \x20   tessera train job.toml [--workers N \\\n\
                   \x20       --bogus]\n";
        let found = problems(old);
        let has = |line: usize, what: &str| found.iter().any(|p| p.starts_with(&format!("README.md:{line}:")) && p.contains(what));
        assert!(has(3, "is not a job config"), "{found:#?}");
        assert!(has(4, "(CLI"), "{found:#?}");
        assert!(has(5, "--bogus"), "{found:#?}");
        assert!(has(1, "has no `--wrokers`"), "{found:#?}");
        assert!(has(1, "no tessera command takes `--no-such-flag`"), "{found:#?}");
        assert!(has(1, "`tessera_coordinator` has no module `ledger`"), "{found:#?}");
        assert_eq!(found.len(), 6, "{found:#?}");
        // The current forms pass.
        let good = "Use `tessera train --workers` or `--max-steps`; `tessera_protocol::ledger::mix`.\n\n\
                    \x20   tessera export job.toml --out m.safetensors [--checkpoint OUT/checkpoints/step-N]\n\
                    \x20   tessera export job-3 --out m.safetensors --step 200\n";
        assert_eq!(problems(good), Vec::<String>::new());
    }
}
