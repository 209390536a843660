//! Dockerfile variable expansion, behaving exactly like BuildKit's shell lexer
//! (`frontend/dockerfile/shell/lex.go`), so a word expands here as it does under
//! `docker build`.
//!
//! This is not a shell: there is no command substitution, and the supported
//! `${...}` forms are BuildKit's. BuildKit's quirks are kept on purpose (each is
//! noted where it is reproduced), because a Dockerfile must mean the same thing
//! under both builders.

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::iter::Peekable;
use std::str::Chars;

use crate::limits::{self, PATTERN_CELLS, WORD_BYTES};

/// Variables visible to an expansion.
pub trait Vars {
    /// The value of `name`; `None` when unset (an empty value is still set).
    fn lookup(&self, name: &str) -> Option<&str>;
}

impl Vars for BTreeMap<String, String> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.get(name).map(String::as_str)
    }
}

impl<S: BuildHasher> Vars for HashMap<String, String, S> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.get(name).map(String::as_str)
    }
}

/// Ordered `(name, value)` list, the last entry with a name wins (like an image's Env list).
impl Vars for [(String, String)] {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.iter()
            .rev()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// A bare slice is unsized and so cannot become `&dyn Vars`; a `Vec` can.
impl Vars for Vec<(String, String)> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.as_slice().lookup(name)
    }
}

/// Lets a borrowed slice (`&&[(String, String)]`) be passed as `&dyn Vars`.
impl<T: Vars + ?Sized> Vars for &T {
    fn lookup(&self, name: &str) -> Option<&str> {
        (**self).lookup(name)
    }
}

/// Why a word could not be expanded. Messages are BuildKit's; BuildKit wraps them
/// as `failed to process "<word>": <message>`, which is left to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExpandError {
    #[error("syntax error: missing '}}'")]
    MissingBrace,
    #[error("syntax error: missing '/' in ${{}}")]
    MissingSlash,
    /// `${}`, `${{...`, `${:...`.
    #[error("syntax error: bad substitution")]
    BadSubstitution,
    /// The text is the modifier as BuildKit saw it, e.g. `:=`; U+FFFD stands for
    /// the end of the word (BuildKit reports `${V` this way).
    #[error("unsupported modifier ({0}) in substitution")]
    UnsupportedModifier(String),
    /// `${V?message}` / `${V:?message}` on an unset (or, with `:`, empty) variable.
    #[error("{name}: {message}")]
    Required { name: String, message: String },
    /// A `#`, `%` or `/` pattern with a bad `\` escape.
    #[error("invalid pattern ({pattern}) in substitution: {reason}")]
    InvalidPattern { pattern: String, reason: String },
    #[error("unexpected end of statement while looking for matching single-quote")]
    UnterminatedSingleQuote,
    #[error("unexpected end of statement while looking for matching double-quote")]
    UnterminatedDoubleQuote,
    /// Past [`WORD_BYTES`]: the word would grow without bound (`${A}${A}` chains).
    #[error(
        "the word expands to more than {}, Stagecoach's limit for one word",
        limits::human(WORD_BYTES)
    )]
    TooLong,
    /// Past [`PATTERN_CELLS`]: pattern length times value length.
    #[error(
        "a pattern of {pattern} characters over a value of {value} characters is past Stagecoach's limit for one substitution ({} pattern × value characters)",
        PATTERN_CELLS
    )]
    PatternTooLarge { pattern: usize, value: usize },
    /// Past [`limits::SCOPE_BYTES`]: the variables set so far, names and values.
    #[error(
        "the ARG and ENV values in scope add up to more than {}, Stagecoach's limit",
        limits::human(limits::SCOPE_BYTES)
    )]
    ScopeTooLarge,
    /// Past [`limits::SCOPE_VARIABLES`].
    #[error(
        "more than {} ARG and ENV names in scope, Stagecoach's limit",
        limits::SCOPE_VARIABLES
    )]
    TooManyVariables,
}

/// Fails once a word being expanded has grown past [`WORD_BYTES`].
fn within_limit(text: &str) -> Result<(), ExpandError> {
    if text.len() > WORD_BYTES {
        return Err(ExpandError::TooLong);
    }
    Ok(())
}

/// Expands Dockerfile words; `escape` is the Dockerfile's escape character.
#[derive(Debug, Clone, Copy)]
pub struct Lexer {
    escape: char,
}

impl Lexer {
    /// `escape` is `\` or `` ` `` (the Dockerfile `# escape=` directive).
    pub const fn new(escape: char) -> Self {
        Self { escape }
    }

    /// Expand one word: quotes removed, escapes processed, variables substituted,
    /// no field splitting (BuildKit `ProcessWord`).
    pub fn expand_word(&self, word: &str, vars: &dyn Vars) -> Result<String, ExpandError> {
        Expander::new(self.escape, word, vars).scan(None, false, None)
    }

    /// Expand and split into words on unquoted whitespace (BuildKit `ProcessWords`).
    pub fn expand_words(&self, word: &str, vars: &dyn Vars) -> Result<Vec<String>, ExpandError> {
        let mut words = Words::default();
        Expander::new(self.escape, word, vars).scan(None, false, Some(&mut words))?;
        Ok(words.finish())
    }
}

/// One pass over a word; mirrors BuildKit's `shellWord`.
struct Expander<'a> {
    chars: Peekable<Chars<'a>>,
    escape: char,
    vars: &'a dyn Vars,
    /// How many nested word scans (`${V:-word}` and the like) have started; see
    /// [`Words::discard_pending`].
    nested_scans: usize,
}

impl<'a> Expander<'a> {
    fn new(escape: char, word: &'a str, vars: &'a dyn Vars) -> Self {
        // Go's text/scanner, which BuildKit reads the word with, skips a leading BOM.
        let word = word.strip_prefix('\u{feff}').unwrap_or(word);
        Self {
            chars: word.chars().peekable(),
            escape,
            vars,
            nested_scans: 0,
        }
    }

    fn peek(&mut self) -> Option<char> {
        self.chars.peek().copied()
    }

    fn bump(&mut self) -> Option<char> {
        self.chars.next()
    }

    /// BuildKit reports any failure inside `${...}` that ran into the end of the
    /// word as the missing delimiter, hiding e.g. an unterminated quote.
    fn at_end_means(&mut self, err: ExpandError, at_end: ExpandError) -> ExpandError {
        if self.peek().is_none() { at_end } else { err }
    }

    /// Expands up to `stop` (consumed) or the end of the word. With `raw`, escape
    /// characters are kept in the result, as BuildKit does for patterns.
    fn scan(
        &mut self,
        stop: Option<char>,
        raw: bool,
        mut words: Option<&mut Words>,
    ) -> Result<String, ExpandError> {
        if stop.is_some() {
            self.nested_scans += 1;
        }
        let mut result = String::new();
        while let Some(ch) = self.peek() {
            if Some(ch) == stop {
                self.bump();
                return Ok(result);
            }
            if matches!(ch, '$' | '\'' | '"' | '<') {
                let scans_before = self.nested_scans;
                let piece = match ch {
                    '$' => self.dollar()?,
                    '\'' => self.single_quoted()?,
                    '"' => self.double_quoted(raw)?,
                    _ => self.heredoc_marker(),
                };
                if let Some(words) = words.as_deref_mut() {
                    if self.nested_scans != scans_before {
                        words.discard_pending();
                    }
                    // Only what a variable produced is split; quoted text is not.
                    if ch == '$' {
                        words.push_str(&piece);
                    } else {
                        words.push_raw(&piece);
                    }
                }
                result.push_str(&piece);
                within_limit(&result)?;
                continue;
            }
            self.bump();
            if ch != self.escape {
                if let Some(words) = words.as_deref_mut() {
                    words.push_char(ch);
                }
                result.push(ch);
                continue;
            }
            if raw {
                result.push(ch);
            }
            // An escape at the very end of the word is dropped.
            let Some(escaped) = self.bump() else { break };
            if let Some(words) = words.as_deref_mut() {
                words.push_raw(escaped.encode_utf8(&mut [0; 4]));
            }
            result.push(escaped);
        }
        match stop {
            None => Ok(result),
            Some('/') => Err(ExpandError::MissingSlash),
            Some(_) => Err(ExpandError::MissingBrace),
        }
    }

    /// Everything up to the next `'` is literal; there is no way to escape `'`.
    fn single_quoted(&mut self) -> Result<String, ExpandError> {
        self.bump();
        let mut text = String::new();
        loop {
            match self.bump() {
                None => return Err(ExpandError::UnterminatedSingleQuote),
                Some('\'') => return Ok(text),
                Some(ch) => text.push(ch),
            }
        }
    }

    /// Variables expand inside `"..."`; the escape character only escapes `"`, `$`
    /// and itself, and is kept literally before anything else.
    fn double_quoted(&mut self, raw: bool) -> Result<String, ExpandError> {
        self.bump();
        let mut text = String::new();
        loop {
            match self.peek() {
                None => return Err(ExpandError::UnterminatedDoubleQuote),
                Some('"') => {
                    self.bump();
                    return Ok(text);
                }
                Some('$') => {
                    text.push_str(&self.dollar()?);
                    within_limit(&text)?;
                }
                Some(mut ch) => {
                    self.bump();
                    if ch == self.escape {
                        if raw {
                            text.push(ch);
                        }
                        match self.peek() {
                            None => return Err(ExpandError::UnterminatedDoubleQuote),
                            Some(next) if next == '"' || next == '$' || next == self.escape => {
                                self.bump();
                                ch = next;
                            }
                            Some(_) => {}
                        }
                    }
                    text.push(ch);
                }
            }
        }
    }

    /// BuildKit keeps blanks after `<<` inside the same word so that `<< EOF`
    /// still reads as one heredoc marker when words are split.
    fn heredoc_marker(&mut self) -> String {
        self.bump();
        if self.peek() != Some('<') {
            return "<".to_owned();
        }
        self.bump();
        let mut marker = "<<".to_owned();
        while let Some(blank @ (' ' | '\t' | '\r')) = self.peek() {
            self.bump();
            marker.push(blank);
        }
        marker
    }

    /// A name after `$` or `${`: digits (a positional parameter), one special
    /// parameter character, or letters, digits and `_`. Unicode letters and
    /// digits count, as in Go's `unicode.IsLetter` / `unicode.IsDigit`.
    fn name(&mut self) -> String {
        let mut name = String::new();
        while let Some(ch) = self.peek() {
            if name.is_empty() && is_digit(ch) {
                while let Some(digit) = self.peek().filter(|&c| is_digit(c)) {
                    self.bump();
                    name.push(digit);
                }
                break;
            }
            if name.is_empty() && matches!(ch, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0') {
                self.bump();
                name.push(ch);
                break;
            }
            if !is_letter(ch) && !is_digit(ch) && ch != '_' {
                break;
            }
            self.bump();
            name.push(ch);
        }
        name
    }

    fn dollar(&mut self) -> Result<String, ExpandError> {
        self.bump();
        if self.peek() != Some('{') {
            let name = self.name();
            // `$` before anything that is not a name stays literal.
            if name.is_empty() {
                return Ok("$".to_owned());
            }
            return Ok(self.vars.lookup(&name).unwrap_or_default().to_owned());
        }
        self.bump();
        match self.peek() {
            None => return Err(ExpandError::MissingBrace),
            Some('{' | '}' | ':') => return Err(ExpandError::BadSubstitution),
            Some(_) => {}
        }
        let name = self.name();
        match self.bump() {
            Some('}') => Ok(self.vars.lookup(&name).unwrap_or_default().to_owned()),
            Some('/') => self.replace(&name),
            Some(op @ (':' | '+' | '-' | '?' | '#' | '%')) => self.modify(name, op),
            other => Err(ExpandError::UnsupportedModifier(
                other.unwrap_or(char::REPLACEMENT_CHARACTER).to_string(),
            )),
        }
    }

    /// `${V-w}`, `${V+w}`, `${V?w}`, `${V#p}`, `${V%p}`, the `:` forms of the first
    /// three, and the doubled `##` / `%%`. `first` has been consumed.
    fn modify(&mut self, name: String, first: char) -> Result<String, ExpandError> {
        let mut modifier = first.to_string();
        let colon = first == ':';
        let op = if colon { self.bump() } else { Some(first) };
        if colon {
            modifier.push(op.unwrap_or(char::REPLACEMENT_CHARACTER));
        }
        let pattern = matches!(op, Some('#' | '%'));
        if colon && pattern {
            return Err(ExpandError::UnsupportedModifier(modifier));
        }
        let word = self
            .scan(Some('}'), pattern, None)
            .map_err(|err| self.at_end_means(err, ExpandError::MissingBrace))?;
        let value = self.vars.lookup(&name);
        // With `:`, an empty value counts as unset.
        let usable = value.filter(|value| !(colon && value.is_empty()));
        match op {
            Some('-') => Ok(usable.map_or(word, str::to_owned)),
            Some('+') => Ok(usable.map(|_| word).unwrap_or_default()),
            Some('?') => match usable {
                Some(value) => Ok(value.to_owned()),
                None => {
                    let message = if !word.is_empty() {
                        word
                    } else if value.is_none() {
                        "is not allowed to be unset".to_owned()
                    } else {
                        "is not allowed to be empty".to_owned()
                    };
                    Err(ExpandError::Required { name, message })
                }
            },
            Some(op @ ('#' | '%')) => {
                let value = value.unwrap_or_default();
                // A doubled operator (`##`, `%%`) is only recognised after expansion.
                let (longest, pattern) = match word.strip_prefix(op) {
                    Some(rest) => (true, rest),
                    None => (false, word.as_str()),
                };
                if op == '#' {
                    trim_prefix(pattern, value, longest)
                } else {
                    trim_suffix(pattern, value, longest)
                }
            }
            _ => Err(ExpandError::UnsupportedModifier(modifier)),
        }
    }

    /// `${V/p/r}` (first match) and `${V//p/r}` (every match); the leading `/`
    /// has been consumed.
    fn replace(&mut self, name: &str) -> Result<String, ExpandError> {
        let all = self.peek() == Some('/');
        if all {
            self.bump();
        }
        let pattern = self
            .scan(Some('/'), true, None)
            .map_err(|err| self.at_end_means(err, ExpandError::MissingSlash))?;
        let replacement = self
            .scan(Some('}'), true, None)
            .map_err(|err| self.at_end_means(err, ExpandError::MissingBrace))?;
        let value: Vec<char> = self.vars.lookup(name).unwrap_or_default().chars().collect();
        let glob = Glob::compile(&pattern, true)?;
        let matcher = glob.matcher(&value)?;
        if !all {
            return Ok(match matcher.find(0) {
                Some((start, end)) => {
                    let mut out: String = value[..start].iter().collect();
                    out.push_str(&replacement);
                    out.extend(&value[end..]);
                    out
                }
                None => value.iter().collect(),
            });
        }
        // Go's Regexp.ReplaceAllString: an empty match right after a match is not
        // replaced, and `$0`, `${0}` and `$$` in the replacement are templates.
        let mut out = String::new();
        let (mut last_end, mut from) = (0, 0);
        while from <= value.len() {
            let Some((start, end)) = matcher.find(from) else {
                break;
            };
            out.extend(&value[last_end..start]);
            if end > last_end || start == 0 {
                let matched: String = value[start..end].iter().collect();
                out.push_str(&expand_template(&replacement, &matched));
                within_limit(&out)?;
            }
            last_end = end;
            from = end.max(from + 1);
        }
        out.extend(&value[last_end..]);
        Ok(out)
    }
}

/// Field splitting for [`Lexer::expand_words`], as BuildKit's `wordsStruct`.
#[derive(Default)]
struct Words {
    done: Vec<String>,
    pending: String,
}

impl Words {
    /// Unquoted whitespace ends the current word (Go's `unicode.IsSpace`, which
    /// is Unicode White_Space like `char::is_whitespace`).
    fn push_char(&mut self, ch: char) {
        if ch.is_whitespace() {
            self.flush();
        } else {
            self.pending.push(ch);
        }
    }

    fn flush(&mut self) {
        if !self.pending.is_empty() {
            self.done.push(std::mem::take(&mut self.pending));
        }
    }

    fn push_str(&mut self, text: &str) {
        text.chars().for_each(|ch| self.push_char(ch));
    }

    fn push_raw(&mut self, text: &str) {
        self.pending.push_str(text);
    }

    /// BuildKit shares one word buffer between the outer scan and the nested scan
    /// of a `${V<op>word}` form, and the nested scan clears it: whatever the
    /// current word held before such a form is lost (`a${X:-b}c` gives `bc`).
    fn discard_pending(&mut self) {
        self.pending.clear();
    }

    fn finish(mut self) -> Vec<String> {
        self.flush();
        self.done
    }
}

/// A shell pattern as BuildKit reads one: `*`, `?`, and `\` before `*`, `?`, `\`
/// (or before `}` and `/`, where it is dropped). BuildKit has no `[...]` classes:
/// brackets match themselves.
struct Glob {
    tokens: Vec<Token>,
    longest: bool,
}

#[derive(Clone, Copy)]
enum Token {
    Literal(char),
    /// `?`, any character but a newline (Go's regexp `.`).
    One,
    /// `*`, any run of characters without a newline (Go's `.*` or `.*?`).
    Run,
}

impl Glob {
    fn compile(pattern: &str, longest: bool) -> Result<Self, ExpandError> {
        let invalid = |reason: String| ExpandError::InvalidPattern {
            pattern: pattern.to_owned(),
            reason,
        };
        // BuildKit reads the pattern with Go's text/scanner too, so a leading BOM goes.
        let mut chars = pattern
            .strip_prefix('\u{feff}')
            .unwrap_or(pattern)
            .chars()
            .peekable();
        let mut tokens = Vec::new();
        while let Some(ch) = chars.next() {
            let token = match ch {
                '*' => Token::Run,
                '?' => Token::One,
                '\\' if matches!(chars.peek(), Some('}' | '/')) => continue,
                '\\' => match chars.next() {
                    Some(escaped @ ('*' | '?' | '\\')) => Token::Literal(escaped),
                    other => {
                        let shown = other.unwrap_or(char::REPLACEMENT_CHARACTER);
                        return Err(invalid(format!("invalid escape '\\{shown}'")));
                    }
                },
                _ => Token::Literal(ch),
            };
            tokens.push(token);
        }
        Ok(Self { tokens, longest })
    }

    /// Matches `text` against this glob; see [`Matcher`]. Its table is bounded by
    /// [`PATTERN_CELLS`].
    fn matcher<'t>(&'t self, text: &'t [char]) -> Result<Matcher<'t>, ExpandError> {
        if (self.tokens.len() + 1).saturating_mul(text.len() + 1) > PATTERN_CELLS {
            return Err(ExpandError::PatternTooLarge {
                pattern: self.tokens.len(),
                value: text.len(),
            });
        }
        // viable[t][k]: tokens[t..] match some prefix of text[k..].
        let mut viable = vec![vec![false; text.len() + 1]; self.tokens.len() + 1];
        viable[self.tokens.len()].fill(true);
        for (t, token) in self.tokens.iter().enumerate().rev() {
            for k in (0..=text.len()).rev() {
                let ch = text.get(k).copied();
                viable[t][k] = match *token {
                    Token::Literal(lit) => ch == Some(lit) && viable[t + 1][k + 1],
                    Token::One => ch.is_some_and(|c| c != '\n') && viable[t + 1][k + 1],
                    Token::Run => {
                        viable[t + 1][k] || (ch.is_some_and(|c| c != '\n') && viable[t][k + 1])
                    }
                };
            }
        }
        Ok(Matcher {
            glob: self,
            text,
            viable,
        })
    }
}

/// A glob applied to one text. Knowing up front which states can still lead to a
/// match, each `*` takes the longest (or shortest) run that does: the match Go's
/// leftmost-first regexp picks for the equivalent `.*` (`.*?`), without backtracking.
struct Matcher<'t> {
    glob: &'t Glob,
    text: &'t [char],
    viable: Vec<Vec<bool>>,
}

impl Matcher<'_> {
    /// The end of the preferred match starting at `start`, if any.
    fn match_at(&self, start: usize) -> Option<usize> {
        if !self.viable[0][start] {
            return None;
        }
        let mut at = start;
        for (t, token) in self.glob.tokens.iter().enumerate() {
            at = match token {
                Token::Literal(_) | Token::One => at + 1,
                Token::Run => {
                    let line = self.text[at..].iter().take_while(|&&c| c != '\n').count();
                    let mut ends = (at..=at + line).filter(|&end| self.viable[t + 1][end]);
                    if self.glob.longest {
                        ends.next_back()
                    } else {
                        ends.next()
                    }?
                }
            };
        }
        Some(at)
    }

    /// The leftmost match at or after `from`, as `(start, end)` char indices.
    fn find(&self, from: usize) -> Option<(usize, usize)> {
        (from..=self.text.len()).find_map(|start| Some((start, self.match_at(start)?)))
    }
}

/// `${V#p}` / `${V##p}`: drop the shortest / longest prefix matching `pattern`.
fn trim_prefix(pattern: &str, value: &str, longest: bool) -> Result<String, ExpandError> {
    let glob = Glob::compile(pattern, longest)?;
    let text: Vec<char> = value.chars().collect();
    Ok(match glob.matcher(&text)?.match_at(0) {
        Some(end) => text[end..].iter().collect(),
        None => value.to_owned(),
    })
}

/// `${V%p}` / `${V%%p}`: BuildKit reverses the value and the pattern and trims
/// a prefix, so errors name the reversed pattern, as here.
fn trim_suffix(pattern: &str, value: &str, longest: bool) -> Result<String, ExpandError> {
    let reversed_value: String = value.chars().rev().collect();
    let trimmed = trim_prefix(&reverse_pattern(pattern), &reversed_value, longest)?;
    Ok(trimmed.chars().rev().collect())
}

/// Reverses a pattern but keeps each `\x` escape pair in order (`a\*c` -> `c\*a`).
fn reverse_pattern(pattern: &str) -> String {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = Vec::with_capacity(chars.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '\\' && i + 1 < chars.len() {
            out.push(chars[i + 1]);
            out.push('\\');
            i += 2;
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out.iter().rev().collect()
}

/// Go's `Regexp.Expand` for a pattern without groups: `$0` / `${0}` is the match,
/// `$$` is `$`, any other `$name` / `${name}` is empty, and a `$` that starts no
/// name stays literal.
fn expand_template(template: &str, matched: &str) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        rest = &rest[dollar + 1..];
        if let Some(after) = rest.strip_prefix('$') {
            out.push('$');
            rest = after;
            continue;
        }
        let (braced, body) = match rest.strip_prefix('{') {
            Some(body) => (true, body),
            None => (false, rest),
        };
        let name_len: usize = body
            .chars()
            .take_while(|&c| is_letter(c) || is_digit(c) || c == '_')
            .map(char::len_utf8)
            .sum();
        let after = &body[name_len..];
        let after = match (name_len, braced) {
            (0, _) => None,
            (_, true) => after.strip_prefix('}'),
            (_, false) => Some(after),
        };
        match after {
            Some(after) => {
                if &body[..name_len] == "0" {
                    out.push_str(matched);
                }
                rest = after;
            }
            None => out.push('$'),
        }
    }
    out.push_str(rest);
    out
}

/// Go's `unicode.IsLetter` (general category L).
fn is_letter(ch: char) -> bool {
    if ch.is_ascii() {
        ch.is_ascii_alphabetic()
    } else {
        in_table(LETTERS, ch)
    }
}

/// Go's `unicode.IsDigit` (general category Nd).
fn is_digit(ch: char) -> bool {
    if ch.is_ascii() {
        ch.is_ascii_digit()
    } else {
        in_table(DIGITS, ch)
    }
}

fn in_table(table: &[(u32, u32)], ch: char) -> bool {
    let ch = u32::from(ch);
    table
        .binary_search_by(|&(low, high)| {
            if high < ch {
                std::cmp::Ordering::Less
            } else if low > ch {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

// Non-ASCII ranges of general categories L and Nd, Unicode 15.1 (the version of
// Go's `unicode` package that BuildKit is built with), generated from the UCD.
// Rust's `char::is_alphabetic`/`is_numeric` cover other categories, so cannot stand in.
#[rustfmt::skip]
const LETTERS: &[(u32, u32)] = &[
    (0xAA, 0xAA), (0xB5, 0xB5), (0xBA, 0xBA), (0xC0, 0xD6), (0xD8, 0xF6), (0xF8, 0x2C1),
    (0x2C6, 0x2D1), (0x2E0, 0x2E4), (0x2EC, 0x2EC), (0x2EE, 0x2EE), (0x370, 0x374), (0x376, 0x377),
    (0x37A, 0x37D), (0x37F, 0x37F), (0x386, 0x386), (0x388, 0x38A), (0x38C, 0x38C), (0x38E, 0x3A1),
    (0x3A3, 0x3F5), (0x3F7, 0x481), (0x48A, 0x52F), (0x531, 0x556), (0x559, 0x559), (0x560, 0x588),
    (0x5D0, 0x5EA), (0x5EF, 0x5F2), (0x620, 0x64A), (0x66E, 0x66F), (0x671, 0x6D3), (0x6D5, 0x6D5),
    (0x6E5, 0x6E6), (0x6EE, 0x6EF), (0x6FA, 0x6FC), (0x6FF, 0x6FF), (0x710, 0x710), (0x712, 0x72F),
    (0x74D, 0x7A5), (0x7B1, 0x7B1), (0x7CA, 0x7EA), (0x7F4, 0x7F5), (0x7FA, 0x7FA), (0x800, 0x815),
    (0x81A, 0x81A), (0x824, 0x824), (0x828, 0x828), (0x840, 0x858), (0x860, 0x86A), (0x870, 0x887),
    (0x889, 0x88E), (0x8A0, 0x8C9), (0x904, 0x939), (0x93D, 0x93D), (0x950, 0x950), (0x958, 0x961),
    (0x971, 0x980), (0x985, 0x98C), (0x98F, 0x990), (0x993, 0x9A8), (0x9AA, 0x9B0), (0x9B2, 0x9B2),
    (0x9B6, 0x9B9), (0x9BD, 0x9BD), (0x9CE, 0x9CE), (0x9DC, 0x9DD), (0x9DF, 0x9E1), (0x9F0, 0x9F1),
    (0x9FC, 0x9FC), (0xA05, 0xA0A), (0xA0F, 0xA10), (0xA13, 0xA28), (0xA2A, 0xA30), (0xA32, 0xA33),
    (0xA35, 0xA36), (0xA38, 0xA39), (0xA59, 0xA5C), (0xA5E, 0xA5E), (0xA72, 0xA74), (0xA85, 0xA8D),
    (0xA8F, 0xA91), (0xA93, 0xAA8), (0xAAA, 0xAB0), (0xAB2, 0xAB3), (0xAB5, 0xAB9), (0xABD, 0xABD),
    (0xAD0, 0xAD0), (0xAE0, 0xAE1), (0xAF9, 0xAF9), (0xB05, 0xB0C), (0xB0F, 0xB10), (0xB13, 0xB28),
    (0xB2A, 0xB30), (0xB32, 0xB33), (0xB35, 0xB39), (0xB3D, 0xB3D), (0xB5C, 0xB5D), (0xB5F, 0xB61),
    (0xB71, 0xB71), (0xB83, 0xB83), (0xB85, 0xB8A), (0xB8E, 0xB90), (0xB92, 0xB95), (0xB99, 0xB9A),
    (0xB9C, 0xB9C), (0xB9E, 0xB9F), (0xBA3, 0xBA4), (0xBA8, 0xBAA), (0xBAE, 0xBB9), (0xBD0, 0xBD0),
    (0xC05, 0xC0C), (0xC0E, 0xC10), (0xC12, 0xC28), (0xC2A, 0xC39), (0xC3D, 0xC3D), (0xC58, 0xC5A),
    (0xC5D, 0xC5D), (0xC60, 0xC61), (0xC80, 0xC80), (0xC85, 0xC8C), (0xC8E, 0xC90), (0xC92, 0xCA8),
    (0xCAA, 0xCB3), (0xCB5, 0xCB9), (0xCBD, 0xCBD), (0xCDD, 0xCDE), (0xCE0, 0xCE1), (0xCF1, 0xCF2),
    (0xD04, 0xD0C), (0xD0E, 0xD10), (0xD12, 0xD3A), (0xD3D, 0xD3D), (0xD4E, 0xD4E), (0xD54, 0xD56),
    (0xD5F, 0xD61), (0xD7A, 0xD7F), (0xD85, 0xD96), (0xD9A, 0xDB1), (0xDB3, 0xDBB), (0xDBD, 0xDBD),
    (0xDC0, 0xDC6), (0xE01, 0xE30), (0xE32, 0xE33), (0xE40, 0xE46), (0xE81, 0xE82), (0xE84, 0xE84),
    (0xE86, 0xE8A), (0xE8C, 0xEA3), (0xEA5, 0xEA5), (0xEA7, 0xEB0), (0xEB2, 0xEB3), (0xEBD, 0xEBD),
    (0xEC0, 0xEC4), (0xEC6, 0xEC6), (0xEDC, 0xEDF), (0xF00, 0xF00), (0xF40, 0xF47), (0xF49, 0xF6C),
    (0xF88, 0xF8C), (0x1000, 0x102A), (0x103F, 0x103F), (0x1050, 0x1055), (0x105A, 0x105D),
    (0x1061, 0x1061), (0x1065, 0x1066), (0x106E, 0x1070), (0x1075, 0x1081), (0x108E, 0x108E),
    (0x10A0, 0x10C5), (0x10C7, 0x10C7), (0x10CD, 0x10CD), (0x10D0, 0x10FA), (0x10FC, 0x1248),
    (0x124A, 0x124D), (0x1250, 0x1256), (0x1258, 0x1258), (0x125A, 0x125D), (0x1260, 0x1288),
    (0x128A, 0x128D), (0x1290, 0x12B0), (0x12B2, 0x12B5), (0x12B8, 0x12BE), (0x12C0, 0x12C0),
    (0x12C2, 0x12C5), (0x12C8, 0x12D6), (0x12D8, 0x1310), (0x1312, 0x1315), (0x1318, 0x135A),
    (0x1380, 0x138F), (0x13A0, 0x13F5), (0x13F8, 0x13FD), (0x1401, 0x166C), (0x166F, 0x167F),
    (0x1681, 0x169A), (0x16A0, 0x16EA), (0x16F1, 0x16F8), (0x1700, 0x1711), (0x171F, 0x1731),
    (0x1740, 0x1751), (0x1760, 0x176C), (0x176E, 0x1770), (0x1780, 0x17B3), (0x17D7, 0x17D7),
    (0x17DC, 0x17DC), (0x1820, 0x1878), (0x1880, 0x1884), (0x1887, 0x18A8), (0x18AA, 0x18AA),
    (0x18B0, 0x18F5), (0x1900, 0x191E), (0x1950, 0x196D), (0x1970, 0x1974), (0x1980, 0x19AB),
    (0x19B0, 0x19C9), (0x1A00, 0x1A16), (0x1A20, 0x1A54), (0x1AA7, 0x1AA7), (0x1B05, 0x1B33),
    (0x1B45, 0x1B4C), (0x1B83, 0x1BA0), (0x1BAE, 0x1BAF), (0x1BBA, 0x1BE5), (0x1C00, 0x1C23),
    (0x1C4D, 0x1C4F), (0x1C5A, 0x1C7D), (0x1C80, 0x1C88), (0x1C90, 0x1CBA), (0x1CBD, 0x1CBF),
    (0x1CE9, 0x1CEC), (0x1CEE, 0x1CF3), (0x1CF5, 0x1CF6), (0x1CFA, 0x1CFA), (0x1D00, 0x1DBF),
    (0x1E00, 0x1F15), (0x1F18, 0x1F1D), (0x1F20, 0x1F45), (0x1F48, 0x1F4D), (0x1F50, 0x1F57),
    (0x1F59, 0x1F59), (0x1F5B, 0x1F5B), (0x1F5D, 0x1F5D), (0x1F5F, 0x1F7D), (0x1F80, 0x1FB4),
    (0x1FB6, 0x1FBC), (0x1FBE, 0x1FBE), (0x1FC2, 0x1FC4), (0x1FC6, 0x1FCC), (0x1FD0, 0x1FD3),
    (0x1FD6, 0x1FDB), (0x1FE0, 0x1FEC), (0x1FF2, 0x1FF4), (0x1FF6, 0x1FFC), (0x2071, 0x2071),
    (0x207F, 0x207F), (0x2090, 0x209C), (0x2102, 0x2102), (0x2107, 0x2107), (0x210A, 0x2113),
    (0x2115, 0x2115), (0x2119, 0x211D), (0x2124, 0x2124), (0x2126, 0x2126), (0x2128, 0x2128),
    (0x212A, 0x212D), (0x212F, 0x2139), (0x213C, 0x213F), (0x2145, 0x2149), (0x214E, 0x214E),
    (0x2183, 0x2184), (0x2C00, 0x2CE4), (0x2CEB, 0x2CEE), (0x2CF2, 0x2CF3), (0x2D00, 0x2D25),
    (0x2D27, 0x2D27), (0x2D2D, 0x2D2D), (0x2D30, 0x2D67), (0x2D6F, 0x2D6F), (0x2D80, 0x2D96),
    (0x2DA0, 0x2DA6), (0x2DA8, 0x2DAE), (0x2DB0, 0x2DB6), (0x2DB8, 0x2DBE), (0x2DC0, 0x2DC6),
    (0x2DC8, 0x2DCE), (0x2DD0, 0x2DD6), (0x2DD8, 0x2DDE), (0x2E2F, 0x2E2F), (0x3005, 0x3006),
    (0x3031, 0x3035), (0x303B, 0x303C), (0x3041, 0x3096), (0x309D, 0x309F), (0x30A1, 0x30FA),
    (0x30FC, 0x30FF), (0x3105, 0x312F), (0x3131, 0x318E), (0x31A0, 0x31BF), (0x31F0, 0x31FF),
    (0x3400, 0x4DBF), (0x4E00, 0xA48C), (0xA4D0, 0xA4FD), (0xA500, 0xA60C), (0xA610, 0xA61F),
    (0xA62A, 0xA62B), (0xA640, 0xA66E), (0xA67F, 0xA69D), (0xA6A0, 0xA6E5), (0xA717, 0xA71F),
    (0xA722, 0xA788), (0xA78B, 0xA7CA), (0xA7D0, 0xA7D1), (0xA7D3, 0xA7D3), (0xA7D5, 0xA7D9),
    (0xA7F2, 0xA801), (0xA803, 0xA805), (0xA807, 0xA80A), (0xA80C, 0xA822), (0xA840, 0xA873),
    (0xA882, 0xA8B3), (0xA8F2, 0xA8F7), (0xA8FB, 0xA8FB), (0xA8FD, 0xA8FE), (0xA90A, 0xA925),
    (0xA930, 0xA946), (0xA960, 0xA97C), (0xA984, 0xA9B2), (0xA9CF, 0xA9CF), (0xA9E0, 0xA9E4),
    (0xA9E6, 0xA9EF), (0xA9FA, 0xA9FE), (0xAA00, 0xAA28), (0xAA40, 0xAA42), (0xAA44, 0xAA4B),
    (0xAA60, 0xAA76), (0xAA7A, 0xAA7A), (0xAA7E, 0xAAAF), (0xAAB1, 0xAAB1), (0xAAB5, 0xAAB6),
    (0xAAB9, 0xAABD), (0xAAC0, 0xAAC0), (0xAAC2, 0xAAC2), (0xAADB, 0xAADD), (0xAAE0, 0xAAEA),
    (0xAAF2, 0xAAF4), (0xAB01, 0xAB06), (0xAB09, 0xAB0E), (0xAB11, 0xAB16), (0xAB20, 0xAB26),
    (0xAB28, 0xAB2E), (0xAB30, 0xAB5A), (0xAB5C, 0xAB69), (0xAB70, 0xABE2), (0xAC00, 0xD7A3),
    (0xD7B0, 0xD7C6), (0xD7CB, 0xD7FB), (0xF900, 0xFA6D), (0xFA70, 0xFAD9), (0xFB00, 0xFB06),
    (0xFB13, 0xFB17), (0xFB1D, 0xFB1D), (0xFB1F, 0xFB28), (0xFB2A, 0xFB36), (0xFB38, 0xFB3C),
    (0xFB3E, 0xFB3E), (0xFB40, 0xFB41), (0xFB43, 0xFB44), (0xFB46, 0xFBB1), (0xFBD3, 0xFD3D),
    (0xFD50, 0xFD8F), (0xFD92, 0xFDC7), (0xFDF0, 0xFDFB), (0xFE70, 0xFE74), (0xFE76, 0xFEFC),
    (0xFF21, 0xFF3A), (0xFF41, 0xFF5A), (0xFF66, 0xFFBE), (0xFFC2, 0xFFC7), (0xFFCA, 0xFFCF),
    (0xFFD2, 0xFFD7), (0xFFDA, 0xFFDC), (0x10000, 0x1000B), (0x1000D, 0x10026), (0x10028, 0x1003A),
    (0x1003C, 0x1003D), (0x1003F, 0x1004D), (0x10050, 0x1005D), (0x10080, 0x100FA),
    (0x10280, 0x1029C), (0x102A0, 0x102D0), (0x10300, 0x1031F), (0x1032D, 0x10340),
    (0x10342, 0x10349), (0x10350, 0x10375), (0x10380, 0x1039D), (0x103A0, 0x103C3),
    (0x103C8, 0x103CF), (0x10400, 0x1049D), (0x104B0, 0x104D3), (0x104D8, 0x104FB),
    (0x10500, 0x10527), (0x10530, 0x10563), (0x10570, 0x1057A), (0x1057C, 0x1058A),
    (0x1058C, 0x10592), (0x10594, 0x10595), (0x10597, 0x105A1), (0x105A3, 0x105B1),
    (0x105B3, 0x105B9), (0x105BB, 0x105BC), (0x10600, 0x10736), (0x10740, 0x10755),
    (0x10760, 0x10767), (0x10780, 0x10785), (0x10787, 0x107B0), (0x107B2, 0x107BA),
    (0x10800, 0x10805), (0x10808, 0x10808), (0x1080A, 0x10835), (0x10837, 0x10838),
    (0x1083C, 0x1083C), (0x1083F, 0x10855), (0x10860, 0x10876), (0x10880, 0x1089E),
    (0x108E0, 0x108F2), (0x108F4, 0x108F5), (0x10900, 0x10915), (0x10920, 0x10939),
    (0x10980, 0x109B7), (0x109BE, 0x109BF), (0x10A00, 0x10A00), (0x10A10, 0x10A13),
    (0x10A15, 0x10A17), (0x10A19, 0x10A35), (0x10A60, 0x10A7C), (0x10A80, 0x10A9C),
    (0x10AC0, 0x10AC7), (0x10AC9, 0x10AE4), (0x10B00, 0x10B35), (0x10B40, 0x10B55),
    (0x10B60, 0x10B72), (0x10B80, 0x10B91), (0x10C00, 0x10C48), (0x10C80, 0x10CB2),
    (0x10CC0, 0x10CF2), (0x10D00, 0x10D23), (0x10E80, 0x10EA9), (0x10EB0, 0x10EB1),
    (0x10F00, 0x10F1C), (0x10F27, 0x10F27), (0x10F30, 0x10F45), (0x10F70, 0x10F81),
    (0x10FB0, 0x10FC4), (0x10FE0, 0x10FF6), (0x11003, 0x11037), (0x11071, 0x11072),
    (0x11075, 0x11075), (0x11083, 0x110AF), (0x110D0, 0x110E8), (0x11103, 0x11126),
    (0x11144, 0x11144), (0x11147, 0x11147), (0x11150, 0x11172), (0x11176, 0x11176),
    (0x11183, 0x111B2), (0x111C1, 0x111C4), (0x111DA, 0x111DA), (0x111DC, 0x111DC),
    (0x11200, 0x11211), (0x11213, 0x1122B), (0x1123F, 0x11240), (0x11280, 0x11286),
    (0x11288, 0x11288), (0x1128A, 0x1128D), (0x1128F, 0x1129D), (0x1129F, 0x112A8),
    (0x112B0, 0x112DE), (0x11305, 0x1130C), (0x1130F, 0x11310), (0x11313, 0x11328),
    (0x1132A, 0x11330), (0x11332, 0x11333), (0x11335, 0x11339), (0x1133D, 0x1133D),
    (0x11350, 0x11350), (0x1135D, 0x11361), (0x11400, 0x11434), (0x11447, 0x1144A),
    (0x1145F, 0x11461), (0x11480, 0x114AF), (0x114C4, 0x114C5), (0x114C7, 0x114C7),
    (0x11580, 0x115AE), (0x115D8, 0x115DB), (0x11600, 0x1162F), (0x11644, 0x11644),
    (0x11680, 0x116AA), (0x116B8, 0x116B8), (0x11700, 0x1171A), (0x11740, 0x11746),
    (0x11800, 0x1182B), (0x118A0, 0x118DF), (0x118FF, 0x11906), (0x11909, 0x11909),
    (0x1190C, 0x11913), (0x11915, 0x11916), (0x11918, 0x1192F), (0x1193F, 0x1193F),
    (0x11941, 0x11941), (0x119A0, 0x119A7), (0x119AA, 0x119D0), (0x119E1, 0x119E1),
    (0x119E3, 0x119E3), (0x11A00, 0x11A00), (0x11A0B, 0x11A32), (0x11A3A, 0x11A3A),
    (0x11A50, 0x11A50), (0x11A5C, 0x11A89), (0x11A9D, 0x11A9D), (0x11AB0, 0x11AF8),
    (0x11C00, 0x11C08), (0x11C0A, 0x11C2E), (0x11C40, 0x11C40), (0x11C72, 0x11C8F),
    (0x11D00, 0x11D06), (0x11D08, 0x11D09), (0x11D0B, 0x11D30), (0x11D46, 0x11D46),
    (0x11D60, 0x11D65), (0x11D67, 0x11D68), (0x11D6A, 0x11D89), (0x11D98, 0x11D98),
    (0x11EE0, 0x11EF2), (0x11F02, 0x11F02), (0x11F04, 0x11F10), (0x11F12, 0x11F33),
    (0x11FB0, 0x11FB0), (0x12000, 0x12399), (0x12480, 0x12543), (0x12F90, 0x12FF0),
    (0x13000, 0x1342F), (0x13441, 0x13446), (0x14400, 0x14646), (0x16800, 0x16A38),
    (0x16A40, 0x16A5E), (0x16A70, 0x16ABE), (0x16AD0, 0x16AED), (0x16B00, 0x16B2F),
    (0x16B40, 0x16B43), (0x16B63, 0x16B77), (0x16B7D, 0x16B8F), (0x16E40, 0x16E7F),
    (0x16F00, 0x16F4A), (0x16F50, 0x16F50), (0x16F93, 0x16F9F), (0x16FE0, 0x16FE1),
    (0x16FE3, 0x16FE3), (0x17000, 0x187F7), (0x18800, 0x18CD5), (0x18D00, 0x18D08),
    (0x1AFF0, 0x1AFF3), (0x1AFF5, 0x1AFFB), (0x1AFFD, 0x1AFFE), (0x1B000, 0x1B122),
    (0x1B132, 0x1B132), (0x1B150, 0x1B152), (0x1B155, 0x1B155), (0x1B164, 0x1B167),
    (0x1B170, 0x1B2FB), (0x1BC00, 0x1BC6A), (0x1BC70, 0x1BC7C), (0x1BC80, 0x1BC88),
    (0x1BC90, 0x1BC99), (0x1D400, 0x1D454), (0x1D456, 0x1D49C), (0x1D49E, 0x1D49F),
    (0x1D4A2, 0x1D4A2), (0x1D4A5, 0x1D4A6), (0x1D4A9, 0x1D4AC), (0x1D4AE, 0x1D4B9),
    (0x1D4BB, 0x1D4BB), (0x1D4BD, 0x1D4C3), (0x1D4C5, 0x1D505), (0x1D507, 0x1D50A),
    (0x1D50D, 0x1D514), (0x1D516, 0x1D51C), (0x1D51E, 0x1D539), (0x1D53B, 0x1D53E),
    (0x1D540, 0x1D544), (0x1D546, 0x1D546), (0x1D54A, 0x1D550), (0x1D552, 0x1D6A5),
    (0x1D6A8, 0x1D6C0), (0x1D6C2, 0x1D6DA), (0x1D6DC, 0x1D6FA), (0x1D6FC, 0x1D714),
    (0x1D716, 0x1D734), (0x1D736, 0x1D74E), (0x1D750, 0x1D76E), (0x1D770, 0x1D788),
    (0x1D78A, 0x1D7A8), (0x1D7AA, 0x1D7C2), (0x1D7C4, 0x1D7CB), (0x1DF00, 0x1DF1E),
    (0x1DF25, 0x1DF2A), (0x1E030, 0x1E06D), (0x1E100, 0x1E12C), (0x1E137, 0x1E13D),
    (0x1E14E, 0x1E14E), (0x1E290, 0x1E2AD), (0x1E2C0, 0x1E2EB), (0x1E4D0, 0x1E4EB),
    (0x1E7E0, 0x1E7E6), (0x1E7E8, 0x1E7EB), (0x1E7ED, 0x1E7EE), (0x1E7F0, 0x1E7FE),
    (0x1E800, 0x1E8C4), (0x1E900, 0x1E943), (0x1E94B, 0x1E94B), (0x1EE00, 0x1EE03),
    (0x1EE05, 0x1EE1F), (0x1EE21, 0x1EE22), (0x1EE24, 0x1EE24), (0x1EE27, 0x1EE27),
    (0x1EE29, 0x1EE32), (0x1EE34, 0x1EE37), (0x1EE39, 0x1EE39), (0x1EE3B, 0x1EE3B),
    (0x1EE42, 0x1EE42), (0x1EE47, 0x1EE47), (0x1EE49, 0x1EE49), (0x1EE4B, 0x1EE4B),
    (0x1EE4D, 0x1EE4F), (0x1EE51, 0x1EE52), (0x1EE54, 0x1EE54), (0x1EE57, 0x1EE57),
    (0x1EE59, 0x1EE59), (0x1EE5B, 0x1EE5B), (0x1EE5D, 0x1EE5D), (0x1EE5F, 0x1EE5F),
    (0x1EE61, 0x1EE62), (0x1EE64, 0x1EE64), (0x1EE67, 0x1EE6A), (0x1EE6C, 0x1EE72),
    (0x1EE74, 0x1EE77), (0x1EE79, 0x1EE7C), (0x1EE7E, 0x1EE7E), (0x1EE80, 0x1EE89),
    (0x1EE8B, 0x1EE9B), (0x1EEA1, 0x1EEA3), (0x1EEA5, 0x1EEA9), (0x1EEAB, 0x1EEBB),
    (0x20000, 0x2A6DF), (0x2A700, 0x2B739), (0x2B740, 0x2B81D), (0x2B820, 0x2CEA1),
    (0x2CEB0, 0x2EBE0), (0x2EBF0, 0x2EE5D), (0x2F800, 0x2FA1D), (0x30000, 0x3134A),
    (0x31350, 0x323AF),
];

#[rustfmt::skip]
const DIGITS: &[(u32, u32)] = &[
    (0x660, 0x669), (0x6F0, 0x6F9), (0x7C0, 0x7C9), (0x966, 0x96F), (0x9E6, 0x9EF), (0xA66, 0xA6F),
    (0xAE6, 0xAEF), (0xB66, 0xB6F), (0xBE6, 0xBEF), (0xC66, 0xC6F), (0xCE6, 0xCEF), (0xD66, 0xD6F),
    (0xDE6, 0xDEF), (0xE50, 0xE59), (0xED0, 0xED9), (0xF20, 0xF29), (0x1040, 0x1049),
    (0x1090, 0x1099), (0x17E0, 0x17E9), (0x1810, 0x1819), (0x1946, 0x194F), (0x19D0, 0x19D9),
    (0x1A80, 0x1A89), (0x1A90, 0x1A99), (0x1B50, 0x1B59), (0x1BB0, 0x1BB9), (0x1C40, 0x1C49),
    (0x1C50, 0x1C59), (0xA620, 0xA629), (0xA8D0, 0xA8D9), (0xA900, 0xA909), (0xA9D0, 0xA9D9),
    (0xA9F0, 0xA9F9), (0xAA50, 0xAA59), (0xABF0, 0xABF9), (0xFF10, 0xFF19), (0x104A0, 0x104A9),
    (0x10D30, 0x10D39), (0x11066, 0x1106F), (0x110F0, 0x110F9), (0x11136, 0x1113F),
    (0x111D0, 0x111D9), (0x112F0, 0x112F9), (0x11450, 0x11459), (0x114D0, 0x114D9),
    (0x11650, 0x11659), (0x116C0, 0x116C9), (0x11730, 0x11739), (0x118E0, 0x118E9),
    (0x11950, 0x11959), (0x11C50, 0x11C59), (0x11D50, 0x11D59), (0x11DA0, 0x11DA9),
    (0x11F50, 0x11F59), (0x16A60, 0x16A69), (0x16AC0, 0x16AC9), (0x16B50, 0x16B59),
    (0x1D7CE, 0x1D7FF), (0x1E140, 0x1E149), (0x1E2F0, 0x1E2F9), (0x1E4F0, 0x1E4F9),
    (0x1E950, 0x1E959), (0x1FBF0, 0x1FBF9),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|&(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    fn words(input: &str) -> Vec<String> {
        Lexer::new('\\').expand_words(input, &pairs(VARS)).unwrap()
    }

    /// Checks `(input, expected)` rows against [`VARS`]; an `Err` holds the message.
    fn check(escape: char, rows: &[(&str, Result<&str, &str>)]) {
        let vars = pairs(VARS);
        let failures: Vec<String> = rows
            .iter()
            .filter_map(|&(input, expected)| {
                let got = Lexer::new(escape)
                    .expand_word(input, &vars)
                    .map_err(|e| e.to_string());
                let expected = expected.map(str::to_owned).map_err(str::to_owned);
                (got != expected).then(|| format!("{input:?}: expected {expected:?}, got {got:?}"))
            })
            .collect();
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    const VARS: &[(&str, &str)] = &[
        ("V", "value"),
        ("E", ""),
        ("P", "/usr/local/bin"),
        ("F", "archive.tar.gz"),
        ("S", "a b  c"),
        ("X", "*abc"),
        ("न", "x"),
        ("한국", "ko"),
    ];

    /// `$V` and `${V}`; unset is empty; `$` before a non-name stays; positional and
    /// special parameters are never set; names take Unicode letters and digits (Go's
    /// categories L and Nd) but stop at a combining mark.
    #[test]
    fn plain_variables() {
        check(
            '\\',
            &[
                ("$V", Ok("value")),
                ("${V}", Ok("value")),
                ("$U", Ok("")),
                ("${U}", Ok("")),
                ("x$V.y", Ok("xvalue.y")),
                ("$V_x", Ok("")),
                ("${V}_x", Ok("value_x")),
                ("$", Ok("$")),
                ("$.", Ok("$.")),
                ("a$ b", Ok("a$ b")),
                ("$1", Ok("")),
                ("${10}x", Ok("x")),
                ("$@", Ok("")),
                ("$*x", Ok("x")),
                ("${#}", Ok("")),
                ("$$", Ok("")),
                ("$한국", Ok("ko")),
                ("$न", Ok("x")),
                ("$नाम", Ok("xाम")),
                ("$V١", Ok("")),
            ],
        );
    }

    /// `${V:-w}` (unset or empty) and `${V-w}` (unset); the word is expanded too.
    #[test]
    fn default_values() {
        check(
            '\\',
            &[
                ("${U:-d}", Ok("d")),
                ("${E:-d}", Ok("d")),
                ("${V:-d}", Ok("value")),
                ("${U-d}", Ok("d")),
                ("${E-d}", Ok("")),
                ("${V-d}", Ok("value")),
                ("${U:-$V}", Ok("value")),
                ("${U:-${E:-n}}", Ok("n")),
                ("${U:-'a b'}", Ok("a b")),
                (r"${U:-\}x}", Ok("}x")),
                ("${U:-a}b}", Ok("ab}")),
            ],
        );
    }

    /// `${V:+w}` (set and non-empty) and `${V+w}` (set).
    #[test]
    fn alternative_values() {
        check(
            '\\',
            &[
                ("${U:+a}", Ok("")),
                ("${E:+a}", Ok("")),
                ("${V:+a}", Ok("a")),
                ("${U+a}", Ok("")),
                ("${E+a}", Ok("a")),
                ("${V+[$V]}", Ok("[value]")),
            ],
        );
    }

    /// `${V:?msg}` and `${V?msg}`, with BuildKit's default messages.
    #[test]
    fn required_values() {
        check(
            '\\',
            &[
                ("${V:?m}", Ok("value")),
                ("${V?m}", Ok("value")),
                ("${E?m}", Ok("")),
                ("${U?}", Err("U: is not allowed to be unset")),
                ("${U:?}", Err("U: is not allowed to be unset")),
                ("${E:?}", Err("E: is not allowed to be empty")),
                ("${U?custom $V}", Err("U: custom value")),
                ("${E:?no}", Err("E: no")),
            ],
        );
    }

    /// `#` shortest, `##` longest; `*`, `?` and `\` escapes; `[` is literal, and
    /// quotes do not protect wildcards.
    #[test]
    fn prefix_removal() {
        check(
            '\\',
            &[
                ("${F#*.}", Ok("tar.gz")),
                ("${F##*.}", Ok("gz")),
                ("${F#x}", Ok("archive.tar.gz")),
                ("${F#arch}", Ok("ive.tar.gz")),
                ("${P#/*/}", Ok("local/bin")),
                ("${P##*/}", Ok("bin")),
                ("${F#?r}", Ok("chive.tar.gz")),
                ("${F#[a]}", Ok("archive.tar.gz")),
                ("${U#x}", Ok("")),
                ("${F#'*'}", Ok("archive.tar.gz")),
                ("${F##'*'}", Ok("")),
                (r"${X#\*}", Ok("abc")),
                ("${X#$E}", Ok("*abc")),
                ("${F#$F}", Ok("")),
            ],
        );
    }

    /// `%` shortest, `%%` longest.
    #[test]
    fn suffix_removal() {
        check(
            '\\',
            &[
                ("${F%.*}", Ok("archive.tar")),
                ("${F%%.*}", Ok("archive")),
                ("${P%/*}", Ok("/usr/local")),
                ("${P%%/*}", Ok("")),
                ("${F%?z}", Ok("archive.tar.")),
                ("${F%x}", Ok("archive.tar.gz")),
                (r"${X%%a\*}", Ok("*abc")),
                ("${U%x}", Ok("")),
            ],
        );
    }

    /// `/` first match, `//` every match; Go's `$0` and `$$` templates apply to `//` only.
    #[test]
    fn replacement() {
        check(
            '\\',
            &[
                (r"${P/\//:}", Ok(":usr/local/bin")),
                (r"${P//\//:}", Ok(":usr:local:bin")),
                ("${P//l*/L}", Ok("/usr/L")),
                ("${P/o?/0}", Ok("/usr/l0al/bin")),
                ("${F//[a]/x}", Ok("archive.tar.gz")),
                ("${S// /_}", Ok("a_b__c")),
                ("${V//*/x}", Ok("x")),
                ("${E//*/x}", Ok("x")),
                ("${V///-}", Ok("-v-a-l-u-e-")),
                ("${U//x/y}", Ok("")),
                ("${F//a/'<$0>'}", Ok("<a>rchive.t<a>r.gz")),
                ("${F/a/'<$0>'}", Ok("<$0>rchive.tar.gz")),
                ("${F//a/'$$'}", Ok("$rchive.t$r.gz")),
                (r"${P//\//\/}", Ok(r"\/usr\/local\/bin")),
            ],
        );
    }

    /// Inside double quotes only `"`, `$` and the escape character are escapable.
    #[test]
    fn quotes_and_escapes() {
        check(
            '\\',
            &[
                ("'$V'", Ok("$V")),
                ("\"$V\"", Ok("value")),
                (r#""a\b""#, Ok(r"a\b")),
                (r#""a\"b""#, Ok("a\"b")),
                (r#""a\\b""#, Ok(r"a\b")),
                (r"a\ b", Ok("a b")),
                (r"\$V", Ok("$V")),
                (r#""\$V""#, Ok("$V")),
                (r"'a\'", Ok(r"a\")),
                ("\"'$V'\"", Ok("'value'")),
                (r"x\", Ok("x")),
                (r"a\tb", Ok("atb")),
                ("'a'\"b\"c", Ok("abc")),
                ("\"${V:-\"q\"}\"", Ok("value")),
            ],
        );
    }

    /// With `` # escape=` `` the backtick escapes and `\` is literal, except that `\`
    /// still escapes wildcards in patterns.
    #[test]
    fn backtick_escape() {
        check(
            '`',
            &[
                ("`$V", Ok("$V")),
                ("a`b", Ok("ab")),
                (r"\$V", Ok(r"\value")),
                ("\"a`\"b\"", Ok("a\"b")),
                (r#""C:\path""#, Ok(r"C:\path")),
                ("\"``\"", Ok("`")),
                ("x`", Ok("x")),
                ("${X#`*}", Ok("*abc")),
                (r"${X#\*}", Ok("abc")),
                ("${U:-`}}", Ok("}")),
            ],
        );
    }

    /// Error messages are BuildKit's.
    #[test]
    fn errors() {
        check(
            '\\',
            &[
                ("${}", Err("syntax error: bad substitution")),
                ("${:}", Err("syntax error: bad substitution")),
                ("${{V}", Err("syntax error: bad substitution")),
                (
                    "${V",
                    Err("unsupported modifier (\u{fffd}) in substitution"),
                ),
                ("${V:=x}", Err("unsupported modifier (:=) in substitution")),
                ("${V=x}", Err("unsupported modifier (=) in substitution")),
                ("${V:#x}", Err("unsupported modifier (:#) in substitution")),
                ("${V:%x}", Err("unsupported modifier (:%) in substitution")),
                ("${V/x", Err("syntax error: missing '/' in ${}")),
                ("${V//x}", Err("syntax error: missing '/' in ${}")),
                (
                    r"${V#\x}",
                    Err(r"invalid pattern (\x) in substitution: invalid escape '\x'"),
                ),
                (
                    r"${V%a\x}",
                    Err(r"invalid pattern (\xa) in substitution: invalid escape '\x'"),
                ),
                ("${V:-\"x}", Err("syntax error: missing '}'")),
                (
                    "'abc",
                    Err("unexpected end of statement while looking for matching single-quote"),
                ),
                (
                    "\"abc",
                    Err("unexpected end of statement while looking for matching double-quote"),
                ),
                ("${U:?}x", Err("U: is not allowed to be unset")),
                ("${.}", Err("unsupported modifier (.) in substitution")),
            ],
        );
    }

    /// Splitting on unquoted whitespace, with BuildKit's heredoc-marker and
    /// lost-prefix quirks.
    #[test]
    fn field_splitting() {
        let rows: &[(&str, &[&str])] = &[
            ("a b", &["a", "b"]),
            (" a  b ", &["a", "b"]),
            ("'a b' c", &["a b", "c"]),
            (r"a\ b", &["a b"]),
            ("$S", &["a", "b", "c"]),
            ("\"$S\"", &["a b  c"]),
            ("x${S}y", &["xa", "b", "cy"]),
            ("a${U:-b}c d", &["bc", "d"]),
            ("a\"${U:-b}\" c", &["b", "c"]),
            ("<< EOF", &["<< EOF"]),
            ("a <<  EOF b", &["a", "<<  EOF", "b"]),
            ("a\"\"b", &["ab"]),
            ("\"\"", &[]),
            ("", &[]),
            ("x${V#v}y", &["aluey"]),
            ("'$S'", &["$S"]),
        ];
        for &(input, expected) in rows {
            assert_eq!(words(input), expected, "{input:?}");
        }
    }

    /// BuildKit's `envVarTest` and `wordsTest`, read as data and run as
    /// `TestShellParser4EnvVars` / `TestShellParser4Words` run them.
    #[test]
    fn buildkit_corpus() {
        let Some(corpora) = crate::corpora::root() else {
            return;
        };
        let corpus = corpora.join("buildkit/frontend/dockerfile/shell");
        let mut failures = Vec::new();

        let env_var_test = std::fs::read_to_string(corpus.join("envVarTest")).unwrap();
        let vars = pairs(&[
            ("PWD", "/home"),
            ("SHELL", "bash"),
            ("KOREAN", "한국어"),
            ("NULL", ""),
        ]);
        let (mut env_var_cases, mut env_var_passed) = (0, 0);
        for line in env_var_test.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split('|').map(str::trim).collect();
            let [platform, input, expected] = fields[..] else {
                panic!("envVarTest: not 3 fields: {line:?}");
            };
            match platform {
                "W" => continue,
                "A" | "U" => {}
                _ => panic!("envVarTest: bad platform in {line:?}"),
            }
            env_var_cases += 1;
            let got = Lexer::new('\\').expand_word(input, &vars);
            let pass = match &got {
                Ok(got) => expected != "error" && got == expected,
                Err(_) => expected == "error",
            };
            if pass {
                env_var_passed += 1;
            } else {
                failures.push(format!(
                    "envVarTest {input:?}: expected {expected:?}, got {got:?}"
                ));
            }
        }

        let words_test = std::fs::read_to_string(corpus.join("wordsTest")).unwrap();
        let mut env: Vec<(String, String)> = Vec::new();
        let (mut words_cases, mut words_passed) = (0, 0);
        for line in words_test.lines() {
            if line.starts_with('#') {
                continue;
            }
            if let Some(assignment) = line.strip_prefix("ENV ") {
                let assignment = assignment.trim_start_matches(' ');
                let (name, value) = assignment.split_once('=').unwrap_or((assignment, ""));
                env.push((name.to_owned(), value.to_owned()));
                continue;
            }
            let fields: Vec<&str> = line.split('|').collect();
            let [input, expected] = fields[..] else {
                panic!("wordsTest: not exactly one '|': {line:?}");
            };
            let input = input.trim();
            let expected: Vec<&str> = expected.trim_start_matches(' ').split(',').collect();
            words_cases += 1;
            let got = Lexer::new('\\')
                .expand_words(input, &env)
                .unwrap_or_else(|_| vec!["error".to_owned()]);
            if got == expected {
                words_passed += 1;
            } else {
                failures.push(format!(
                    "wordsTest {input:?}: expected {expected:?}, got {got:?}"
                ));
            }
        }

        println!("envVarTest: {env_var_passed}/{env_var_cases} passed");
        println!("wordsTest: {words_passed}/{words_cases} passed");
        assert!(env_var_cases > 0 && words_cases > 0, "empty corpus");
        assert!(
            failures.is_empty(),
            "{} failing:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }

    /// Go's regexp `.` (so `?` and `*`) does not match a newline; a leading BOM is
    /// dropped, as Go's text/scanner does.
    #[test]
    fn go_quirks() {
        let vars = pairs(&[("N", "ab\nab"), ("M", "a\nb")]);
        let lexer = Lexer::new('\\');
        assert_eq!(lexer.expand_word("${N##*b}", &vars).unwrap(), "\nab");
        assert_eq!(lexer.expand_word("${N%%a*}", &vars).unwrap(), "ab\n");
        assert_eq!(lexer.expand_word("${M//?/.}", &vars).unwrap(), ".\n.");
        assert_eq!(lexer.expand_word("\u{feff}$M", &vars).unwrap(), "a\nb");
        assert_eq!(lexer.expand_word("a\u{feff}", &vars).unwrap(), "a\u{feff}");
    }

    #[test]
    fn vars_sources() {
        let list = pairs(&[("A", "1"), ("B", "2"), ("A", "3")]);
        let lexer = Lexer::new('\\');
        assert_eq!(
            lexer.expand_word("$A$B", &list).unwrap(),
            "32",
            "last entry wins"
        );
        assert_eq!(lexer.expand_word("$A$B", &list.as_slice()).unwrap(), "32");
        let map: HashMap<String, String> = list.iter().cloned().collect();
        assert_eq!(lexer.expand_word("$A$B", &map).unwrap(), "32");
        let tree: BTreeMap<String, String> = list.into_iter().collect();
        assert_eq!(lexer.expand_word("$A$B", &tree).unwrap(), "32");
    }
}
