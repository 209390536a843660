//! `.dockerignore` with Docker's own rules (moby's `ignorefile` reader and
//! `patternmatcher`), which differ from gitignore: every pattern is anchored at the
//! context root (`*.go` matches only top-level files), a pattern that matches a directory
//! excludes everything below it, `**` spans any number of directories, and the last
//! matching pattern wins, `!` patterns re-including what earlier ones excluded.
//!
//! The source pod applies it by deleting ignored files from the context on the volume
//! ([`apply`]), so no stage can ever read them.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use stagecoach_plan::limits::{self, DOCKERIGNORE_BYTES, DOCKERIGNORE_PATTERNS};

use crate::fs::pattern;

/// A `.dockerignore` that cannot be used, or a context that cannot be cleaned.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{file}:{line}: illegal exclusion pattern \"!\"")]
    LoneExclamation { file: String, line: usize },
    #[error("{file}:{line}: bad pattern {pattern:?}")]
    BadPattern {
        file: String,
        line: usize,
        pattern: String,
    },
    #[error(
        "{file}: larger than {}, Stagecoach's limit",
        limits::human(DOCKERIGNORE_BYTES)
    )]
    TooLarge { file: String },
    #[error("{file}:{line}: more than {DOCKERIGNORE_PATTERNS} patterns, Stagecoach's limit")]
    TooManyPatterns { file: String, line: usize },
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot remove ignored {}", path.display())]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

type Result<T, E = Error> = std::result::Result<T, E>;

/// The ignore file that applies to a build, as Docker picks it: `<Dockerfile>.dockerignore`
/// beside the Dockerfile wins over `.dockerignore` at the context root. Paths are
/// relative to the context.
pub fn ignore_file_candidates(dockerfile: Option<&str>) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(df) = dockerfile {
        out.push(format!("{df}.dockerignore"));
    }
    out.push(".dockerignore".to_string());
    out
}

/// The ignore file Docker would use and its patterns: `<Dockerfile>.dockerignore` beside
/// the Dockerfile, else `.dockerignore` at the context root. A candidate that is a
/// symlink leading out of `root` is not read.
pub fn read_ignore_file(
    root: &Path,
    context: &Path,
    dockerfile: Option<&str>,
) -> Result<Option<(String, Matcher)>> {
    for candidate in ignore_file_candidates(dockerfile) {
        let Ok(path) = fs::canonicalize(context.join(&candidate)) else {
            continue;
        };
        if !path.starts_with(root) || !path.is_file() {
            continue;
        }
        let text = fs::File::open(&path)
            .and_then(|file| crate::fs::read_text_bounded(file, DOCKERIGNORE_BYTES))
            .map_err(|source| Error::Read {
                path: path.clone(),
                source,
            })?;
        let matcher = parse(&text, &candidate)?;
        return Ok(Some((candidate, matcher)));
    }
    Ok(None)
}

/// The patterns of an ignore file, normalised the way moby's `ignorefile.ReadAll` does:
/// a UTF-8 BOM is dropped, lines that *start* with `#` are comments, surrounding
/// whitespace is trimmed, blank lines are skipped, each pattern is cleaned like Go's
/// `filepath.Clean`, and a leading `/` is dropped (patterns are relative to the root).
pub fn parse(text: &str, file: &str) -> Result<Matcher> {
    if text.len() > DOCKERIGNORE_BYTES {
        return Err(Error::TooLarge {
            file: file.to_string(),
        });
    }
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut patterns = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = n + 1;
        // Only a `#` in the first column makes a comment, as in moby.
        if raw.starts_with('#') {
            continue;
        }
        let mut p = raw.trim();
        if p.is_empty() {
            continue;
        }
        let exclusion = p.starts_with('!');
        if exclusion {
            p = p[1..].trim();
        }
        let mut cleaned = String::new();
        if !p.is_empty() {
            cleaned = clean(p);
            if cleaned.len() > 1 && cleaned.starts_with('/') {
                cleaned.remove(0);
            }
        }
        if patterns.len() == DOCKERIGNORE_PATTERNS {
            return Err(Error::TooManyPatterns {
                file: file.to_string(),
                line,
            });
        }
        if exclusion && cleaned.is_empty() {
            return Err(Error::LoneExclamation {
                file: file.to_string(),
                line,
            });
        }
        // The matcher cleans once more (moby's `New` does); the result is the same
        // except for a pattern that is only `/`, which stays `/` and matches nothing.
        let compiled = Pattern::compile(&cleaned).ok_or_else(|| Error::BadPattern {
            file: file.to_string(),
            line,
            pattern: raw.trim().to_string(),
        })?;
        patterns.push(Rule {
            exclusion,
            pattern: compiled,
        });
    }
    Ok(Matcher { rules: patterns })
}

/// An ordered list of patterns; the last one that matches decides.
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
struct Rule {
    exclusion: bool,
    pattern: Pattern,
}

impl Matcher {
    /// Whether there are no patterns at all.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether a `!` pattern exists, so an excluded directory may still hold kept files.
    pub fn has_exclusions(&self) -> bool {
        self.rules.iter().any(|r| r.exclusion)
    }

    /// Whether the path (relative to the context, `/`-separated) is ignored: moby's
    /// `MatchesOrParentMatches`, where a pattern also matches a path when it matches any
    /// of the path's parent directories.
    pub fn is_ignored(&self, path: &str) -> bool {
        let file = clean(path);
        if file == "." {
            // Docker never lets the context root itself be excluded.
            return false;
        }
        let parents: Vec<&str> = match file.rfind('/') {
            Some(i) => file[..i].split('/').collect(),
            None => Vec::new(),
        };
        let mut matched = false;
        for rule in &self.rules {
            // An inclusion cannot change an already matched path, nor an exclusion an
            // unmatched one.
            if rule.exclusion != matched {
                continue;
            }
            let mut hit = rule.pattern.matches(&file);
            if !hit {
                for i in 1..=parents.len() {
                    if rule.pattern.matches(&parents[..i].join("/")) {
                        hit = true;
                        break;
                    }
                }
            }
            if hit {
                matched = !rule.exclusion;
            }
        }
        matched
    }
}

/// One cleaned pattern, classified the way moby's `Pattern.compile` does: exact, prefix
/// (`dir/**`), suffix (`**/name`), or a general glob.
#[derive(Debug, Clone)]
enum Pattern {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Glob(Vec<Token>),
}

/// The pieces moby turns into a regular expression.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Char(char),
    /// `*`: any run of characters without `/`.
    Star,
    /// `?`: one character that is not `/`.
    Any,
    /// `[...]`: a character class, as Go's regexp reads it (it may match `/`).
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
    /// `**` followed by more pattern: any number of leading directories, or none.
    Dirs,
    /// `**` at the end after other tokens: anything at all.
    Rest,
}

impl Pattern {
    /// None for a pattern Go's `filepath.Match` rejects (unclosed `[`, trailing `\`).
    fn compile(cleaned: &str) -> Option<Pattern> {
        for component in cleaned.split('/') {
            pattern::matches_component(component, ".").ok()?;
        }
        #[derive(PartialEq)]
        enum Kind {
            Exact,
            Prefix,
            Suffix,
            Glob,
        }
        let chars: Vec<char> = cleaned.chars().collect();
        let mut kind = Kind::Exact;
        let mut tokens = Vec::new();
        let mut i = 0;
        let mut index = 0;
        while i < chars.len() {
            let c = chars[i];
            i += 1;
            match c {
                '*' if chars.get(i) == Some(&'*') => {
                    i += 1;
                    if chars.get(i) == Some(&'/') {
                        i += 1;
                    }
                    if i == chars.len() {
                        if kind == Kind::Exact {
                            kind = Kind::Prefix;
                        } else {
                            tokens.push(Token::Rest);
                            kind = Kind::Glob;
                        }
                    } else {
                        tokens.push(Token::Dirs);
                        kind = Kind::Glob;
                    }
                    if index == 0 {
                        kind = Kind::Suffix;
                    }
                }
                '*' => {
                    tokens.push(Token::Star);
                    kind = Kind::Glob;
                }
                '?' => {
                    tokens.push(Token::Any);
                    kind = Kind::Glob;
                }
                '\\' => match chars.get(i) {
                    Some(&next) => {
                        tokens.push(Token::Char(next));
                        i += 1;
                        kind = Kind::Glob;
                    }
                    None => tokens.push(Token::Char('\\')),
                },
                '[' => {
                    let (class, next) = parse_class(&chars, i)?;
                    tokens.push(class);
                    i = next;
                    kind = Kind::Glob;
                }
                c => tokens.push(Token::Char(c)),
            }
            index += 1;
        }
        Some(match kind {
            Kind::Exact => Pattern::Exact(cleaned.to_string()),
            Kind::Prefix => Pattern::Prefix(cleaned[..cleaned.len() - 2].to_string()),
            Kind::Suffix => Pattern::Suffix(cleaned[2..].to_string()),
            Kind::Glob => Pattern::Glob(tokens),
        })
    }

    fn matches(&self, path: &str) -> bool {
        match self {
            Pattern::Exact(p) => path == p,
            Pattern::Prefix(p) => path.starts_with(p.as_str()),
            // `**/foo` also matches `foo` itself.
            Pattern::Suffix(s) => {
                path.ends_with(s.as_str()) || s.strip_prefix('/').is_some_and(|rest| path == rest)
            }
            Pattern::Glob(tokens) => {
                let chars: Vec<char> = path.chars().collect();
                glob(tokens, &chars)
            }
        }
    }
}

/// A `[...]` class starting after the `[` at `chars[start]`: the token and the index
/// after the closing `]`.
fn parse_class(chars: &[char], start: usize) -> Option<(Token, usize)> {
    let mut i = start;
    let negated = chars.get(i) == Some(&'^');
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    let mut first = true;
    loop {
        let mut lo = *chars.get(i)?;
        if lo == ']' && !first {
            return Some((Token::Class { negated, ranges }, i + 1));
        }
        first = false;
        if lo == '\\' {
            i += 1;
            lo = *chars.get(i)?;
        }
        i += 1;
        let mut hi = lo;
        if chars.get(i) == Some(&'-') && chars.get(i + 1).is_some_and(|&h| h != ']') {
            hi = chars[i + 1];
            i += 2;
            if hi == '\\' {
                hi = *chars.get(i)?;
                i += 1;
            }
        }
        ranges.push((lo, hi));
    }
}

/// Whether the tokens match the whole path. Built from the last token back, one row of
/// "the tokens from here on match the path from position p" per token: time tokens ×
/// path and memory of two rows, where backtracking takes exponential time on patterns
/// like `**/**/**/x` or `*a*a*a*b`, which a hostile `.dockerignore` can hold.
fn glob(tokens: &[Token], path: &[char]) -> bool {
    let n = path.len();
    // `after[p]`: the tokens after the current one match `path[p..]`.
    let mut after: Vec<bool> = (0..=n).map(|p| p == n).collect();
    let mut here = vec![false; n + 1];
    for token in tokens.iter().rev() {
        // Filled from the end, so `here[p + 1]` is ready when `here[p]` needs it.
        let mut slash_then_rest = false;
        for p in (0..=n).rev() {
            let c = path.get(p).copied();
            let one = |ok: bool| ok && after[p + 1];
            here[p] = match token {
                Token::Char(want) => one(c == Some(*want)),
                Token::Any => one(c.is_some_and(|c| c != '/')),
                Token::Class { negated, ranges } => one(c.is_some_and(|c| {
                    ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *negated
                })),
                // Any run without `/`: nothing, or one more character and still a run.
                Token::Star => after[p] || (c.is_some_and(|c| c != '/') && here[p + 1]),
                // `(.*/)?`: nothing, or anything up to and including some `/`.
                Token::Dirs => {
                    if c == Some('/') && after[p + 1] {
                        slash_then_rest = true;
                    }
                    after[p] || slash_then_rest
                }
                Token::Rest => true,
            };
        }
        std::mem::swap(&mut after, &mut here);
    }
    after[0]
}

/// Go's `filepath.Clean` for `/`-separated paths: no empty or `.` components, `..`
/// resolved lexically (at the root it stays the root), `.` for nothing.
pub fn clean(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if out.last().is_some_and(|p| *p != "..") {
                    out.pop();
                } else if !rooted {
                    out.push("..");
                }
            }
            p => out.push(p),
        }
    }
    let joined = out.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}

/// What [`apply`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Removed {
    /// Files, symlinks and other non-directories.
    pub files: u64,
    /// Directories removed whole or left empty by the removal.
    pub dirs: u64,
}

/// Deletes every ignored path below `context` (which must not be followed through
/// symlinks: entries are looked at, never through). A directory that is ignored goes
/// whole unless a `!` pattern may keep something inside it; then only what is ignored
/// goes, and the directory too if nothing is left in it.
pub fn apply(context: &Path, matcher: &Matcher) -> Result<Removed> {
    let mut removed = Removed::default();
    if !matcher.is_empty() {
        walk(context, "", matcher, &mut removed)?;
    }
    Ok(removed)
}

fn walk(dir: &Path, rel: &str, matcher: &Matcher, removed: &mut Removed) -> Result<()> {
    let read_err = |source| Error::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut entries: Vec<_> = fs::read_dir(dir)
        .map_err(read_err)?
        .collect::<io::Result<_>>()
        .map_err(read_err)?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let path = entry.path();
        let child = if rel.is_empty() {
            name.to_string()
        } else {
            format!("{rel}/{name}")
        };
        let is_dir = entry
            .file_type()
            .map_err(|source| Error::Read {
                path: path.clone(),
                source,
            })?
            .is_dir();
        let ignored = matcher.is_ignored(&child);
        let remove_err = |source| Error::Remove {
            path: path.clone(),
            source,
        };
        if !is_dir {
            if ignored {
                fs::remove_file(&path).map_err(remove_err)?;
                removed.files += 1;
            }
            continue;
        }
        if ignored && !matcher.has_exclusions() {
            let (files, dirs) = count(&path);
            fs::remove_dir_all(&path).map_err(remove_err)?;
            removed.files += files;
            removed.dirs += dirs;
            continue;
        }
        walk(&path, &child, matcher, removed)?;
        if ignored && is_empty_dir(&path) {
            fs::remove_dir(&path).map_err(remove_err)?;
            removed.dirs += 1;
        }
    }
    Ok(())
}

fn is_empty_dir(path: &Path) -> bool {
    fs::read_dir(path).is_ok_and(|mut d| d.next().is_none())
}

/// Files and directories (itself included) in a tree, for the report.
fn count(path: &Path) -> (u64, u64) {
    let (mut files, mut dirs) = (0, 1);
    for entry in fs::read_dir(path).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            let (f, d) = count(&entry.path());
            files += f;
            dirs += d;
        } else {
            files += 1;
        }
    }
    (files, dirs)
}

#[cfg(test)]
#[path = "moby_cases.rs"]
mod moby_cases;

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(lines: &[&str]) -> Matcher {
        parse(&lines.join("\n"), ".dockerignore").expect("valid patterns")
    }

    /// (patterns, path, ignored): one row per documented behaviour of moby's matcher.
    #[test]
    fn patterns_match_like_docker() {
        let cases: &[(&[&str], &str, bool)] = &[
            // Plain names are anchored at the context root, not matched at any depth.
            (&["fileutils.go"], "fileutils.go", true),
            (&["fileutils.go"], "sub/fileutils.go", false),
            (&["*.go"], "fileutils.go", true),
            (&["*.go"], "sub/fileutils.go", false),
            (&["*/*.go"], "sub/fileutils.go", true),
            // A leading slash is the same root; `./` and `..` are cleaned away.
            (&["/docs"], "docs/a.md", true),
            (&["./docs/../build"], "build/out", true),
            (&["docs/"], "docs", true),
            // A pattern that matches a directory excludes everything below it.
            (&["docs"], "docs/deep/er/file.md", true),
            (&["docs"], "docsite/index.html", false),
            (&["a/b"], "a/b/c/d", true),
            (&["a/*"], "a/b/c", true),
            (&["*"], "anything/at/all", true),
            // `*` and `?` stop at a separator.
            (&["a*"], "abc", true),
            (&["a*"], "a", true),
            (&["a*b"], "a/b", false),
            (&["a?c"], "abc", true),
            (&["a?c"], "a/c", false),
            (&["a?c"], "ac", false),
            // `**` spans any number of directories, including none.
            (&["**"], "a/b/c", true),
            (&["**/*.go"], "main.go", true),
            (&["**/*.go"], "a/b/main.go", true),
            (&["**/foo"], "foo", true),
            (&["**/foo"], "x/y/foo", true),
            (&["**/foo"], "x/yfoo", false),
            (&["**foo"], "x/yfoo", true),
            (&["a/**/b"], "a/b", true),
            (&["a/**/b"], "a/x/y/b", true),
            (&["a/**/b"], "a/x/yb", false),
            (&["a/**"], "a/b/c", true),
            (&["a/**"], "a", false),
            (&["a/**"], "ab", false),
            (&["*/**/x"], "p/q/r/x", true),
            (&["a*/**"], "abc/d", true),
            (&["**/node_modules"], "web/node_modules/lib/index.js", true),
            // Character classes (Go regexp classes, as moby compiles them).
            (&["[a-c]x"], "bx", true),
            (&["[a-c]x"], "dx", false),
            (&["[^a-c]x"], "dx", true),
            (&["[^a-c]x"], "bx", false),
            (&["[\\]]"], "]", true),
            // Backslash escapes a metacharacter; regexp specials are literal.
            (&["a\\*b"], "a*b", true),
            (&["a\\*b"], "axb", false),
            (&["a.b"], "a.b", true),
            (&["a.b"], "axb", false),
            (&["a+b(c)|{d}$"], "a+b(c)|{d}$", true),
            // `!` re-includes, the last matching pattern wins.
            (&["*.md", "!README.md"], "README.md", false),
            (&["*.md", "!README.md"], "CHANGES.md", true),
            (&["!README.md", "*.md"], "README.md", true),
            (&["docs", "!docs/keep.md"], "docs/keep.md", false),
            (&["docs", "!docs/keep.md"], "docs/other.md", true),
            (
                &["docs", "!docs/keep.md", "docs/keep.md"],
                "docs/keep.md",
                true,
            ),
            (&["**/*.log", "!important/*.log"], "important/a.log", false),
            (
                &["**/*.log", "!important/*.log"],
                "important/sub/a.log",
                true,
            ),
            // An exception for a directory keeps what is below it.
            (&["*", "!src"], "src/main.rs", false),
            (&["*", "!src"], "target/x", true),
            // Re-excluding inside a re-included directory.
            (&["*", "!src", "src/*.tmp"], "src/x.tmp", true),
            // Surrounding whitespace is trimmed; `!` with spaces after it.
            (&["  docs  "], "docs/a", true),
            (&["*", "!  keep"], "keep", false),
            // Comments only in the first column; blank lines skipped.
            (&["# docs", "", "   "], "# docs", false),
            (&[" # docs"], "# docs", true),
            // A pattern of only `/` matches nothing, the root is never excluded.
            (&["/"], "a", false),
            (&["*"], ".", false),
        ];
        for (patterns, path, want) in cases {
            assert_eq!(
                matcher(patterns).is_ignored(path),
                *want,
                "{patterns:?} on {path:?}"
            );
        }
    }

    #[test]
    fn reading_the_file() {
        let m = parse("\u{feff}# comment\n\n*.tmp\r\n!keep.tmp\n", "x").expect("parses");
        assert_eq!(m.rules.len(), 2);
        assert!(m.is_ignored("a.tmp"));
        assert!(!m.is_ignored("keep.tmp"));
        match parse("ok\n!\n", "ctx/.dockerignore") {
            Err(e @ Error::LoneExclamation { .. }) => {
                assert_eq!(
                    e.to_string(),
                    "ctx/.dockerignore:2: illegal exclusion pattern \"!\""
                )
            }
            other => panic!("want an error, got {other:?}"),
        }
        match parse("a[b\n", ".dockerignore") {
            Err(e @ Error::BadPattern { .. }) => {
                assert_eq!(e.to_string(), ".dockerignore:1: bad pattern \"a[b\"")
            }
            other => panic!("want an error, got {other:?}"),
        }
        assert!(matches!(
            parse("x\\", ".dockerignore"),
            Err(Error::BadPattern { .. })
        ));
    }

    #[test]
    fn hostile_ignore_files_are_bounded() {
        let big = "x\n".repeat(DOCKERIGNORE_BYTES / 2 + 1);
        let e = parse(&big, ".dockerignore").expect_err("too large");
        assert_eq!(
            e.to_string(),
            ".dockerignore: larger than 1 MiB, Stagecoach's limit"
        );
        let many = (0..=DOCKERIGNORE_PATTERNS)
            .map(|n| format!("p{n}\n"))
            .collect::<String>();
        let e = parse(&many, ".dockerignore").expect_err("too many");
        assert_eq!(
            e.to_string(),
            ".dockerignore:10001: more than 10000 patterns, Stagecoach's limit"
        );
        // Patterns that take exponential time to backtrack through, on paths they nearly
        // match: answered all the same.
        let deep = "a/".repeat(40) + "b";
        let stars = "*a".repeat(30) + "c";
        let cases: &[(&str, &str, bool)] = &[
            (&("**/".repeat(30) + "c"), &deep, false),
            (&("**/".repeat(30) + "b"), &deep, true),
            (&stars, &"a".repeat(60), false),
            (&stars, &("a".repeat(60) + "c"), true),
        ];
        for (pattern, path, want) in cases {
            assert_eq!(
                matcher(&[pattern]).is_ignored(path),
                *want,
                "{pattern} on {path}"
            );
        }
    }

    /// moby's own tables, row by row: each rule of its matcher (anchoring, `*` within a
    /// component, `**` across directories, classes, escapes, parent matches, `!`) and
    /// what its and BuildKit's build tests see excluded.
    #[test]
    fn moby_patternmatcher_tables() {
        use super::moby_cases::*;
        let tables = [
            ("TestMatches", MOBY_TEST_MATCHES),
            ("TestMatch", MOBY_TEST_MATCH_OK),
            ("multiPatternTests", MOBY_MULTI_PATTERN),
            ("Matches", MOBY_MATCHES_FUNC),
            ("TestBuildDockerignore*", MOBY_CLI_DOCKERIGNORE),
            ("BuildKit testDockerignore*", BUILDKIT_DOCKERIGNORE),
        ];
        let mut wrong = Vec::new();
        for (table, rows) in tables {
            for (patterns, path, want) in rows {
                let got = matcher(patterns).is_ignored(path);
                if got != *want {
                    wrong.push(format!(
                        "{table}: {patterns:?} on {path:?}: {got}, moby {want}"
                    ));
                }
            }
        }
        for pattern in MOBY_MALFORMED {
            if parse(pattern, ".dockerignore").is_ok() {
                wrong.push(format!("{pattern:?} is accepted, moby rejects it"));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn go_clean() {
        for (input, want) in [
            ("", "."),
            (".", "."),
            ("a/./b", "a/b"),
            ("a//b/", "a/b"),
            ("a/../..", ".."),
            ("/../a", "/a"),
            ("/", "/"),
            ("../x/../y", "../y"),
        ] {
            assert_eq!(clean(input), want, "{input:?}");
        }
    }

    #[test]
    fn ignore_file_next_to_the_dockerfile_comes_first() {
        assert_eq!(
            ignore_file_candidates(Some("build/app.Dockerfile")),
            ["build/app.Dockerfile.dockerignore", ".dockerignore"]
        );
        assert_eq!(ignore_file_candidates(None), [".dockerignore"]);
    }

    #[test]
    fn apply_removes_ignored_entries_from_the_tree() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        for f in [
            "Dockerfile",
            "main.go",
            "secret.env",
            "docs/a.md",
            "docs/keep.md",
            "logs/x/1.log",
            "node_modules/m/index.js",
            "src/lib.go",
        ] {
            let p = root.join(f);
            fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            fs::write(&p, f).expect("write");
        }
        std::os::unix::fs::symlink("/etc/passwd", root.join("link.env")).expect("symlink");
        // The Dockerfile goes too when a pattern says so (it has been read already).
        let m = matcher(&[
            "*.env",
            "docs",
            "!docs/keep.md",
            "logs",
            "**/node_modules",
            "Dockerfile",
        ]);
        let removed = apply(root, &m).expect("applies");
        let mut left = Vec::new();
        list(root, "", &mut left);
        assert_eq!(
            left,
            ["docs/", "docs/keep.md", "main.go", "src/", "src/lib.go"]
        );
        // Dockerfile, secret.env, link.env, docs/a.md, logs/x/1.log, node_modules/m/index.js
        assert_eq!(removed.files, 6);
        // logs/x, logs, node_modules/m, node_modules
        assert_eq!(removed.dirs, 4);
        assert!(
            Path::new("/etc/passwd").exists(),
            "a symlink is removed, not its target"
        );
    }

    fn list(dir: &Path, rel: &str, out: &mut Vec<String>) {
        let mut entries: Vec<_> = fs::read_dir(dir).expect("read").flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = format!("{rel}{}", e.file_name().to_string_lossy());
            if e.file_type().expect("type").is_dir() {
                out.push(format!("{name}/"));
                list(&e.path(), &format!("{name}/"), out);
            } else {
                out.push(name);
            }
        }
    }
}
