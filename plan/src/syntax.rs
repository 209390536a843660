//! Dockerfile syntax: directives, logical lines, heredocs and the raw argument shape of
//! each instruction, exactly as BuildKit's parser produces them (before any expansion).
//!
//! This is our own parser rather than the `parse-dockerfile` crate: that crate rejects 7 of
//! BuildKit's 33 positive parser cases, accepts the negative `ENV PATH`, and gives no line
//! numbers, all of which the planner and its error messages need.

use std::fmt::{self, Write as _};

use crate::limits::{self, HEREDOC_BYTES, INSTRUCTIONS, LINE_BYTES};

/// A parse failure with the 1-based line it happened on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct SyntaxError {
    pub line: usize,
    pub message: String,
}

/// A parsed Dockerfile: its parser directives and its instructions in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dockerfile {
    pub directives: Vec<Directive>,
    /// The escape character (`\` unless `# escape=` says otherwise).
    pub escape: char,
    pub instructions: Vec<Node>,
}

/// A parser directive (`# syntax=`, `# escape=`, `# check=`) from the top of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    pub name: String,
    pub value: String,
    pub line: usize,
}

/// One instruction: a logical line (continuations joined) plus its heredoc bodies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The keyword in lower case (`run`); unknown keywords are kept too.
    pub keyword: String,
    /// The keyword as written, for error messages (`Run`).
    pub keyword_as_written: String,
    /// Leading `--flag[=value]` words, quotes already processed.
    pub flags: Vec<String>,
    pub args: Args,
    pub heredocs: Vec<Heredoc>,
    /// The logical line, continuations joined.
    pub original: String,
    pub start_line: usize,
    pub end_line: usize,
}

/// The argument shape of an instruction, per BuildKit's per-keyword parse functions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Args {
    /// Nothing after the keyword (and flags).
    Empty,
    /// Whitespace-separated words (FROM, EXPOSE, ARG, and the non-JSON ADD/COPY/VOLUME).
    Words(Vec<String>),
    /// The rest of the line as one string (shell form, USER, WORKDIR, ...).
    Text(String),
    /// A JSON string array (exec form).
    Json(Vec<String>),
    /// ENV/LABEL pairs; `legacy` is the `ENV key value` form.
    Pairs(Vec<KeyValue>),
    /// `HEALTHCHECK [flags] CMD ...` / `HEALTHCHECK NONE`.
    Health { kind: String, command: Box<Args> },
    /// `ONBUILD <instruction>`.
    OnBuild(Box<Node>),
    /// An unknown keyword: rejected later, by the instruction layer, with its name.
    Unknown,
}

/// One `key=value` (or legacy `key value`) pair of ENV or LABEL, quotes still raw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
    pub legacy: bool,
}

/// A heredoc body attached to RUN, COPY or ADD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heredoc {
    pub name: String,
    pub file_descriptor: u32,
    /// False when the delimiter was quoted: the body is then taken literally.
    pub expand: bool,
    /// `<<-`: leading tabs are stripped from the body lines.
    pub chomp: bool,
    /// The body, every line ending in a newline, tabs not yet stripped.
    pub content: String,
}

impl Heredoc {
    /// The body as the instruction sees it (leading tabs removed for `<<-`).
    pub fn body(&self) -> String {
        if !self.chomp {
            return self.content.clone();
        }
        self.content
            .split_inclusive('\n')
            .map(|line| line.trim_start_matches('\t'))
            .collect()
    }
}

const KNOWN_DIRECTIVES: [&str; 3] = ["syntax", "escape", "check"];

/// Parses a Dockerfile into directives and raw instruction nodes.
pub fn parse(src: &str) -> Result<Dockerfile, SyntaxError> {
    let src = src.strip_prefix('\u{feff}').unwrap_or(src);
    let mut lines = src.split_inclusive('\n').peekable();
    let mut directives = DirectiveScanner::default();
    let mut escape = '\\';
    let mut instructions = Vec::new();
    let mut line_no = 0usize;

    while let Some(raw) = lines.next() {
        let line = trim_newline(raw).trim_start_matches(is_space);
        if let Some(d) = directives.scan(line, line_no + 1)?
            && d.name == "escape"
        {
            escape = parse_escape(&d.value).map_err(|message| SyntaxError {
                line: line_no + 1,
                message,
            })?;
        }
        line_no += 1;
        let start_line = line_no;
        let line = strip_comment(line);
        let (first, mut complete) = trim_continuation(line, escape);
        if complete && first.is_empty() {
            continue;
        }
        let mut logical = first.to_string();
        while !complete {
            let Some(raw) = lines.next() else { break };
            let next = trim_newline(raw);
            directives.scan(next, line_no + 1)?;
            line_no += 1;
            let trimmed = next.trim_start_matches(is_space);
            if trimmed.starts_with('#') || trimmed.is_empty() {
                continue;
            }
            let (part, done) = trim_continuation(next, escape);
            logical.push_str(part);
            complete = done;
        }
        if logical.len() > LINE_BYTES {
            return Err(SyntaxError {
                line: start_line,
                message: format!(
                    "the instruction is longer than {}, Stagecoach's limit for one line (continuations joined)",
                    limits::human(LINE_BYTES)
                ),
            });
        }

        if instructions.len() == INSTRUCTIONS {
            return Err(SyntaxError {
                line: start_line,
                message: format!("more than {INSTRUCTIONS} instructions, Stagecoach's limit"),
            });
        }
        let mut node = node_from_line(&logical, escape).map_err(|message| SyntaxError {
            line: start_line,
            message,
        })?;
        if node.can_contain_heredoc() && logical.contains("<<") {
            for mut heredoc in heredocs_in_line(&logical) {
                let mut terminated = false;
                for raw in lines.by_ref() {
                    line_no += 1;
                    let mut candidate = trim_newline(raw);
                    if heredoc.chomp {
                        candidate = candidate.trim_start_matches('\t');
                    }
                    if candidate == heredoc.name {
                        terminated = true;
                        break;
                    }
                    heredoc.content.push_str(raw);
                    if !raw.ends_with('\n') {
                        heredoc.content.push('\n');
                    }
                    if heredoc.content.len() > HEREDOC_BYTES {
                        return Err(SyntaxError {
                            line: start_line,
                            message: format!(
                                "heredoc {:?} is longer than {}, Stagecoach's limit for one heredoc",
                                heredoc.name,
                                limits::human(HEREDOC_BYTES)
                            ),
                        });
                    }
                }
                if !terminated {
                    return Err(SyntaxError {
                        line: start_line,
                        message: format!("unterminated heredoc {:?}", heredoc.name),
                    });
                }
                node.heredocs.push(heredoc);
            }
        }
        node.start_line = start_line;
        node.end_line = line_no;
        instructions.push(node);
    }

    if instructions.is_empty() {
        return Err(SyntaxError {
            line: line_no.max(1),
            message: "file with no instructions".into(),
        });
    }
    Ok(Dockerfile {
        directives: directives.found,
        escape,
        instructions,
    })
}

/// Recognises directives at the top of the file: they end at the first line that is not one.
#[derive(Default)]
struct DirectiveScanner {
    done: bool,
    found: Vec<Directive>,
}

impl DirectiveScanner {
    fn scan(&mut self, line: &str, line_no: usize) -> Result<Option<Directive>, SyntaxError> {
        if self.done {
            return Ok(None);
        }
        let Some((name, value)) = split_directive(line) else {
            self.done = true;
            return Ok(None);
        };
        let name = name.to_ascii_lowercase();
        if !KNOWN_DIRECTIVES.contains(&name.as_str()) {
            self.done = true;
            return Ok(None);
        }
        if self.found.iter().any(|d| d.name == name) {
            return Err(SyntaxError {
                line: line_no,
                message: format!("only one {name} parser directive can be used"),
            });
        }
        let directive = Directive {
            name,
            value: value.to_string(),
            line: line_no,
        };
        self.found.push(directive.clone());
        Ok(Some(directive))
    }
}

/// Matches `#[ \t]*name[ \t]*=[ \t]*value[ \t]*` with a name of `[a-zA-Z][a-zA-Z0-9]*`.
fn split_directive(line: &str) -> Option<(&str, &str)> {
    let rest = line.strip_prefix('#')?.trim_start_matches([' ', '\t']);
    let name_len = rest
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())))
        .map_or(rest.len(), |(i, _)| i);
    if name_len == 0 {
        return None;
    }
    let (name, rest) = rest.split_at(name_len);
    let value = rest
        .trim_start_matches([' ', '\t'])
        .strip_prefix('=')?
        .trim_matches([' ', '\t']);
    (!value.is_empty()).then_some((name, value))
}

fn parse_escape(value: &str) -> Result<char, String> {
    match value {
        "\\" => Ok('\\'),
        "`" => Ok('`'),
        _ => Err(format!(
            "invalid escape token '{value}' does not match ` or \\"
        )),
    }
}

fn is_space(c: char) -> bool {
    c == ' ' || c == '\t'
}

fn trim_newline(s: &str) -> &str {
    s.trim_end_matches(['\r', '\n'])
}

/// A line starting with `#` is a comment and contributes nothing.
fn strip_comment(line: &str) -> &str {
    if line.starts_with('#') { "" } else { line }
}

/// Removes a trailing escape character (plus trailing blanks); says whether the line ended.
fn trim_continuation(line: &str, escape: char) -> (&str, bool) {
    let trimmed = line.trim_end_matches([' ', '\t']);
    // An escaped escape character (`\\`) at the end is text, not a continuation.
    let trailing = trimmed.len() - trimmed.trim_end_matches(escape).len();
    if trailing / escape.len_utf8() % 2 == 1 {
        (&trimmed[..trimmed.len() - escape.len_utf8()], false)
    } else {
        (line, true)
    }
}

/// Go's `regexp` whitespace class used to split keyword from arguments.
fn is_split_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\u{0b}' | '\u{0c}' | '\r')
}

fn node_from_line(line: &str, escape: char) -> Result<Node, String> {
    let line_trimmed = line.trim();
    let (keyword, rest) = match line_trimmed.find(is_split_space) {
        Some(i) => (
            &line_trimmed[..i],
            line_trimmed[i..].trim_start_matches(is_split_space),
        ),
        None => (line_trimmed, ""),
    };
    let (flags, rest) = split_flags(rest);
    let rest = rest.trim();
    let lower = keyword.to_ascii_lowercase();
    let args = match lower.as_str() {
        "add" | "copy" | "volume" => maybe_json_list(rest)?,
        "run" | "cmd" | "entrypoint" | "shell" => maybe_json(rest)?,
        "arg" => {
            let words = split_words(rest, escape);
            if words.is_empty() {
                Args::Empty
            } else {
                Args::Words(words)
            }
        }
        "env" => pairs(rest, "ENV", escape)?,
        "label" => pairs(rest, "LABEL", escape)?,
        "expose" | "from" => whitespace_words(rest),
        "maintainer" | "stopsignal" | "user" | "workdir" => {
            if rest.is_empty() {
                Args::Empty
            } else {
                Args::Text(rest.to_string())
            }
        }
        "healthcheck" => health(rest)?,
        "onbuild" => {
            if rest.is_empty() {
                Args::Empty
            } else {
                Args::OnBuild(Box::new(node_from_line(rest, escape)?))
            }
        }
        _ => Args::Unknown,
    };
    Ok(Node {
        keyword: lower,
        keyword_as_written: keyword.to_string(),
        flags,
        args,
        heredocs: Vec::new(),
        original: line.to_string(),
        start_line: 0,
        end_line: 0,
    })
}

/// Takes the leading `--flag` words; a bare `--` ends them.
fn split_flags(line: &str) -> (Vec<String>, &str) {
    let mut flags = Vec::new();
    let mut chars = line.char_indices().peekable();
    loop {
        while chars.next_if(|&(_, c)| c.is_whitespace()).is_some() {}
        let Some(&(start, _)) = chars.peek() else {
            return (flags, "");
        };
        if !line[start..].starts_with("--") {
            return (flags, &line[start..]);
        }
        let mut word = String::new();
        let mut quoted = false;
        let mut quote: Option<char> = None;
        let mut end = line.len();
        while let Some((i, c)) = chars.next() {
            match quote {
                None if c.is_whitespace() => {
                    end = i;
                    break;
                }
                None if c == '\'' || c == '"' => {
                    quote = Some(c);
                    quoted = true;
                }
                Some(q) if c == q => quote = None,
                _ if c == '\\' => match chars.next() {
                    Some((_, next)) => word.push(next),
                    None => quote = None,
                },
                _ => word.push(c),
            }
        }
        if word == "--" {
            return (flags, &line[end..]);
        }
        if quoted || !word.is_empty() {
            flags.push(word);
        }
        if end == line.len() {
            return (flags, "");
        }
    }
}

/// Splits on whitespace, keeping quotes and escapes as written (BuildKit `parseWords`).
pub(crate) fn split_words(rest: &str, escape: char) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut blank_ok = false;
    let mut quote: Option<char> = None;
    let mut chars = rest.chars().peekable();
    while let Some(c) = chars.next() {
        if quote.is_none() && c.is_whitespace() {
            if in_word && (blank_ok || !word.is_empty()) {
                words.push(std::mem::take(&mut word));
            }
            in_word = false;
            blank_ok = false;
            word.clear();
            continue;
        }
        in_word = true;
        match quote {
            None => {
                if c == '\'' || c == '"' {
                    quote = Some(c);
                    blank_ok = true;
                }
                if c == escape {
                    if let Some(next) = chars.next() {
                        word.push(c);
                        word.push(next);
                    }
                    continue;
                }
                word.push(c);
            }
            Some(q) => {
                if c == q {
                    quote = None;
                }
                if c == escape && q != '\'' {
                    match chars.next() {
                        Some(next) => {
                            word.push(c);
                            word.push(next);
                        }
                        None => quote = None,
                    }
                    continue;
                }
                word.push(c);
            }
        }
    }
    if in_word && (blank_ok || !word.is_empty()) {
        words.push(word);
    }
    words
}

fn whitespace_words(rest: &str) -> Args {
    if rest.is_empty() {
        return Args::Empty;
    }
    Args::Words(
        rest.split(is_split_space)
            .filter(|w| !w.is_empty())
            .map(str::to_string)
            .collect(),
    )
}

enum JsonParse {
    Array(Vec<String>),
    NotJson,
}

fn parse_json(rest: &str) -> Result<JsonParse, String> {
    let rest = rest.trim_start();
    if !rest.starts_with('[') {
        return Ok(JsonParse::NotJson);
    }
    let Ok(values) = serde_json::from_str::<Vec<serde_json::Value>>(rest) else {
        return Ok(JsonParse::NotJson);
    };
    values
        .into_iter()
        .map(|v| match v {
            serde_json::Value::String(s) => Ok(s),
            _ => Err(
                "when using JSON array syntax, arrays must be comprised of strings only"
                    .to_string(),
            ),
        })
        .collect::<Result<_, _>>()
        .map(JsonParse::Array)
}

fn maybe_json(rest: &str) -> Result<Args, String> {
    if rest.is_empty() {
        return Ok(Args::Empty);
    }
    Ok(match parse_json(rest)? {
        JsonParse::Array(v) => Args::Json(v),
        JsonParse::NotJson => Args::Text(rest.to_string()),
    })
}

fn maybe_json_list(rest: &str) -> Result<Args, String> {
    Ok(match parse_json(rest)? {
        JsonParse::Array(v) => Args::Json(v),
        JsonParse::NotJson => whitespace_words(rest),
    })
}

fn pairs(rest: &str, keyword: &str, escape: char) -> Result<Args, String> {
    let words = split_words(rest, escape);
    let Some(first) = words.first() else {
        return Ok(Args::Empty);
    };
    if !first.contains('=') {
        let Some(i) = rest.find(is_split_space) else {
            return Err(format!("{keyword} must have two arguments"));
        };
        return Ok(Args::Pairs(vec![KeyValue {
            key: rest[..i].to_string(),
            value: rest[i..].trim_start_matches(is_split_space).to_string(),
            legacy: true,
        }]));
    }
    words
        .iter()
        .map(|word| match word.split_once('=') {
            Some((key, value)) => Ok(KeyValue {
                key: key.to_string(),
                value: value.to_string(),
                legacy: false,
            }),
            None => Err(format!(
                "Syntax error - can't find = in {word:?}. Must be of the form: name=value"
            )),
        })
        .collect::<Result<_, _>>()
        .map(Args::Pairs)
}

fn health(rest: &str) -> Result<Args, String> {
    let sep = rest.find(char::is_whitespace).unwrap_or(rest.len());
    if sep == 0 {
        return Ok(Args::Empty);
    }
    let command = maybe_json(rest[sep..].trim_start())?;
    Ok(Args::Health {
        kind: rest[..sep].to_string(),
        command: Box::new(command),
    })
}

impl Node {
    /// Only RUN, COPY and ADD in shell form (also under ONBUILD) take heredocs.
    fn can_contain_heredoc(&self) -> bool {
        let node = match &self.args {
            Args::OnBuild(inner) if self.keyword == "onbuild" => inner,
            _ => self,
        };
        matches!(node.keyword.as_str(), "run" | "copy" | "add") && !node.is_json()
    }

    /// Whether the arguments were given in JSON (exec) form.
    pub fn is_json(&self) -> bool {
        match &self.args {
            Args::Json(_) => true,
            Args::Health { command, .. } => matches!(**command, Args::Json(_)),
            _ => false,
        }
    }

    /// BuildKit's `Node.Dump` form, used to compare with BuildKit's parser test results.
    pub fn dump(&self) -> String {
        let mut out = self.keyword.clone();
        if !self.flags.is_empty() {
            let quoted: Vec<String> = self.flags.iter().map(|f| go_quote(f)).collect();
            let _ = write!(out, " [{}]", quoted.join(" "));
        }
        dump_args(&self.args, &mut out);
        out
    }
}

fn dump_args(args: &Args, out: &mut String) {
    let mut push = |s: &str| {
        out.push(' ');
        out.push_str(&go_quote(s));
    };
    match args {
        Args::Empty => {}
        Args::Words(v) | Args::Json(v) => v.iter().for_each(|s| push(s)),
        Args::Text(s) => push(s),
        Args::Pairs(kvs) => {
            for kv in kvs {
                push(&kv.key);
                push(&kv.value);
                push(if kv.legacy { "" } else { "=" });
            }
        }
        Args::Health { kind, command } => {
            push(kind);
            dump_args(command, out);
        }
        Args::OnBuild(node) => {
            let _ = write!(out, " ({})", node.dump());
        }
        Args::Unknown => push(""),
    }
}

/// Finds the heredoc words (`<<EOF`, `<<-"EOF"`, `3<<EOF`) of a logical line.
fn heredocs_in_line(line: &str) -> Vec<Heredoc> {
    split_words(line, '\\')
        .iter()
        .filter_map(|word| heredoc_from_word(word))
        .collect()
}

fn heredoc_from_word(word: &str) -> Option<Heredoc> {
    let digits = word.len() - word.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let rest = word[digits..].strip_prefix("<<")?;
    let (chomp, rest) = match rest.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, rest),
    };
    if rest.is_empty() || rest.contains('<') {
        return None;
    }
    let (name, quoted) = unquote_word(rest)?;
    Some(Heredoc {
        name,
        file_descriptor: word[..digits].parse().unwrap_or(0),
        expand: !quoted,
        chomp,
        content: String::new(),
    })
}

/// Removes shell quoting from a single word; None when it is really several words.
fn unquote_word(word: &str) -> Option<(String, bool)> {
    let mut out = String::new();
    let mut quoted = false;
    let mut quote: Option<char> = None;
    let mut chars = word.chars();
    while let Some(c) = chars.next() {
        match quote {
            None if c.is_whitespace() => return None,
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                quoted = true;
            }
            Some(q) if c == q => quote = None,
            Some('\'') => out.push(c),
            _ if c == '\\' => {
                if let Some(next) = chars.next() {
                    out.push(next);
                }
            }
            _ => out.push(c),
        }
    }
    (!out.is_empty()).then_some((out, quoted))
}

/// Go's `strconv.Quote`, so dumps compare byte for byte with BuildKit's result files.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{07}' => out.push_str("\\a"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{0b}' => out.push_str("\\v"),
            c if is_go_printable(c) => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if (c as u32) < 0x10000 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\U{:08x}", c as u32);
            }
        }
    }
    out.push('"');
    out
}

/// Approximates Go's `unicode.IsPrint`: graphic characters plus the ASCII space.
fn is_go_printable(c: char) -> bool {
    if c == ' ' {
        return true;
    }
    !(c.is_control()
        || c.is_whitespace()
        || matches!(c, '\u{ad}' | '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2060}'..='\u{2064}' | '\u{feff}'))
}

impl fmt::Display for Dockerfile {
    /// BuildKit's whole-AST dump: one parenthesised instruction per line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for node in &self.instructions {
            writeln!(f, "({})", node.dump())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    /// The case directories under `rel` in the corpus, in name order.
    fn case_dirs(corpora: &Path, rel: &str) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(corpora.join(rel))
            .expect("corpus directory")
            .map(|e| e.expect("dir entry").path())
            .collect();
        dirs.sort();
        dirs
    }

    #[test]
    fn buildkit_positive_parser_cases_match_their_dumps() {
        let Some(corpora) = crate::corpora::root() else {
            return;
        };
        let dirs = case_dirs(&corpora, "buildkit/frontend/dockerfile/parser/testfiles");
        let mut failures = Vec::new();
        for dir in &dirs {
            let src = std::fs::read_to_string(dir.join("Dockerfile")).expect("Dockerfile");
            let expected = std::fs::read_to_string(dir.join("result"))
                .expect("result")
                .replace("\r\n", "\n");
            match parse(&src) {
                Ok(df) => {
                    let got = df.to_string();
                    if got != expected {
                        failures.push(format!(
                            "{}:\n--- expected\n{expected}--- got\n{got}",
                            dir.display()
                        ));
                    }
                }
                Err(e) => failures.push(format!("{}: {e}", dir.display())),
            }
        }
        assert_eq!(dirs.len(), 33, "BuildKit ships 33 positive cases");
        assert!(
            failures.is_empty(),
            "{} of {} failed:\n{}",
            failures.len(),
            dirs.len(),
            failures.join("\n")
        );
    }

    #[test]
    fn buildkit_negative_parser_cases_fail() {
        let Some(corpora) = crate::corpora::root() else {
            return;
        };
        let dirs = case_dirs(
            &corpora,
            "buildkit/frontend/dockerfile/parser/testfiles-negative",
        );
        assert_eq!(dirs.len(), 4);
        for dir in dirs {
            let src = std::fs::read_to_string(dir.join("Dockerfile")).expect("Dockerfile");
            // Some negative cases fail in the parser, others only when the
            // instruction is interpreted; both count as the front end rejecting it.
            let rejected = match parse(&src) {
                Err(_) => true,
                Ok(df) => crate::instruction::parse_all(&df).is_err(),
            };
            assert!(rejected, "{} must be rejected", dir.display());
        }
    }

    #[test]
    fn line_numbers_match_buildkit() {
        let Some(corpora) = crate::corpora::root() else {
            return;
        };
        let cases: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(corpora.join("buildkit-derived/cases.json")).expect("cases"),
        )
        .expect("json");
        let spec = &cases["parser_line_numbers"];
        let file = spec["file"].as_str().expect("file");
        let df =
            parse(&std::fs::read_to_string(corpora.join(file)).expect("file")).expect("parses");
        let ranges: Vec<(usize, usize)> = df
            .instructions
            .iter()
            .map(|n| (n.start_line, n.end_line))
            .collect();
        let expected: Vec<(usize, usize)> = spec["children_line_ranges"]
            .as_array()
            .expect("ranges")
            .iter()
            .map(|r| {
                (
                    r[0].as_u64().expect("start") as usize,
                    r[1].as_u64().expect("end") as usize,
                )
            })
            .collect();
        assert_eq!(ranges, expected);
        assert_eq!(
            ranges.first().map(|r| r.0),
            spec["ast_start_line"].as_u64().map(|v| v as usize)
        );
        assert_eq!(
            ranges.last().map(|r| r.1),
            spec["ast_end_line"].as_u64().map(|v| v as usize)
        );
    }

    #[test]
    fn heredocs() {
        let src = "FROM busybox\nRUN <<EOF cat > /a && 3<<-'END' cat\necho $X\nEOF\n\tliteral $Y\n\tEND\nCOPY <<\"A\" <<B /dst/\na\nA\nb\nB\nRUN [\"echo\", \"<<EOF\"]\n";
        let df = parse(src).expect("parses");
        let run = &df.instructions[1];
        assert_eq!(run.heredocs.len(), 2);
        assert_eq!(run.heredocs[0].name, "EOF");
        assert!(run.heredocs[0].expand);
        assert_eq!(run.heredocs[0].content, "echo $X\n");
        assert_eq!(run.heredocs[1].name, "END");
        assert_eq!(run.heredocs[1].file_descriptor, 3);
        assert!(run.heredocs[1].chomp && !run.heredocs[1].expand);
        assert_eq!(run.heredocs[1].body(), "literal $Y\n");
        assert_eq!((run.start_line, run.end_line), (2, 6));
        let copy = &df.instructions[2];
        assert_eq!(copy.heredocs.len(), 2);
        assert!(!copy.heredocs[0].expand && copy.heredocs[1].expand);
        assert_eq!(copy.heredocs[1].content, "b\n");
        assert!(
            df.instructions[3].heredocs.is_empty(),
            "exec form takes no heredoc"
        );
    }

    #[test]
    fn errors_carry_lines() {
        let err = parse("FROM a\nRUN <<EOF\nno end\n").expect_err("unterminated");
        assert_eq!(err.line, 2);
        assert!(err.message.contains("unterminated heredoc"));
        let err = parse("# comment only\n\n").expect_err("empty");
        assert!(err.message.contains("no instructions"));
        let err = parse("FROM a\nCMD [\"a\", [\"b\"]]\n").expect_err("nested json");
        assert_eq!(err.line, 2);
        let err = parse("# escape=x\nFROM a\n").expect_err("bad escape");
        assert_eq!(err.line, 1);
        let err = parse("# escape=`\n# escape=\\\nFROM a\n").expect_err("twice");
        assert!(err.message.contains("only one escape"));
    }

    #[test]
    fn directives_and_backtick_escape() {
        let df = parse("# syntax=docker/dockerfile:1\n# escape=`\nFROM a\nRUN echo `\n  hi\n")
            .expect("parses");
        assert_eq!(df.escape, '`');
        assert_eq!(df.directives[0].value, "docker/dockerfile:1");
        assert_eq!(df.instructions[1].dump(), "run \"echo   hi\"");
    }

    #[test]
    fn go_quote_matches_strconv() {
        assert_eq!(go_quote("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(go_quote("\u{0}\t♥"), r#""\x00\t♥""#);
        assert_eq!(go_quote("\u{200b}"), r#""\u200b""#);
    }
}
