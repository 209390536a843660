//! The `.dockerignore` matcher against a reference model of moby's: each pattern turned
//! into a regular expression (or an exact, prefix or suffix test) the way
//! moby/patternmatcher's `compile` does, matched by the `regex` crate, with its
//! `MatchesOrParentMatches` loop. Patterns and paths come from a small alphabet so that
//! wildcards, separators and `!` meet often; classes and escapes are covered by the moby
//! tables in the unit tests.
#![no_main]

use libfuzzer_sys::fuzz_target;
use regex::Regex;
use stagecoach_builder::source::dockerignore;

const PATTERN_CHARS: &[u8] = b"ab/*?!";
const PATH_CHARS: &[u8] = b"ab/";

enum Kind {
    Exact,
    Prefix,
    Suffix,
    Regex(Regex),
}

struct Model {
    exclusion: bool,
    cleaned: String,
    kind: Kind,
}

impl Model {
    fn new(line: &str) -> Option<Model> {
        let line = line.trim();
        let (exclusion, rest) = match line.strip_prefix('!') {
            Some(rest) => (true, rest.trim()),
            None => (false, line),
        };
        if rest.is_empty() {
            return None;
        }
        let mut cleaned = dockerignore::clean(rest);
        if cleaned.len() > 1 && cleaned.starts_with('/') {
            cleaned.remove(0);
        }
        let chars: Vec<char> = cleaned.chars().collect();
        // moby's matchType, as its `compile` moves it along.
        #[derive(PartialEq)]
        enum Type {
            Exact,
            Prefix,
            Suffix,
            Regexp,
        }
        let mut kind = Type::Exact;
        let mut re = String::from("^");
        let (mut i, mut at) = (0, 0);
        while at < chars.len() {
            let ch = chars[at];
            at += 1;
            if ch == '*' && chars.get(at) == Some(&'*') {
                at += 1;
                if chars.get(at) == Some(&'/') {
                    at += 1;
                }
                if at == chars.len() {
                    if kind == Type::Exact {
                        kind = Type::Prefix;
                    } else {
                        re.push_str(".*");
                        kind = Type::Regexp;
                    }
                } else {
                    re.push_str("(.*/)?");
                    kind = Type::Regexp;
                }
                if i == 0 {
                    kind = Type::Suffix;
                }
            } else if ch == '*' {
                re.push_str("[^/]*");
                kind = Type::Regexp;
            } else if ch == '?' {
                re.push_str("[^/]");
                kind = Type::Regexp;
            } else {
                re.push_str(&regex::escape(&ch.to_string()));
            }
            i += 1;
        }
        re.push('$');
        let kind = match kind {
            Type::Exact => Kind::Exact,
            Type::Prefix => Kind::Prefix,
            Type::Suffix => Kind::Suffix,
            Type::Regexp => Kind::Regex(Regex::new(&re).expect("the model's regex compiles")),
        };
        Some(Model {
            exclusion,
            cleaned,
            kind,
        })
    }

    fn matches(&self, path: &str) -> bool {
        match &self.kind {
            Kind::Exact => path == self.cleaned,
            Kind::Prefix => path.starts_with(&self.cleaned[..self.cleaned.len() - 2]),
            Kind::Suffix => {
                let suffix = &self.cleaned[2..];
                path.ends_with(suffix)
                    || (suffix.starts_with('/') && path == &suffix[1..])
            }
            Kind::Regex(re) => re.is_match(path),
        }
    }
}

/// moby's `MatchesOrParentMatches`.
fn model_ignores(models: &[Model], path: &str) -> bool {
    let parents: Vec<&str> = match path.rfind('/') {
        Some(i) => path[..i].split('/').collect(),
        None => Vec::new(),
    };
    let mut matched = false;
    for m in models {
        if m.exclusion != matched {
            continue;
        }
        let hit = m.matches(path) || (1..=parents.len()).any(|i| m.matches(&parents[..i].join("/")));
        if hit {
            matched = !m.exclusion;
        }
    }
    matched
}

fn text(bytes: &[u8], alphabet: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| alphabet[usize::from(*b) % alphabet.len()] as char)
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let mut parts: Vec<&[u8]> = data.split(|b| *b == 0xff).collect();
    let Some(path) = parts.pop() else { return };
    // A clean relative path, as the context walk gives one.
    let path = text(path, PATH_CHARS);
    let path: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    if path.is_empty() {
        return;
    }
    let path = path.join("/");
    let lines: Vec<String> = parts.iter().map(|p| text(p, PATTERN_CHARS)).collect();
    let Ok(matcher) = dockerignore::parse(&lines.join("\n"), ".dockerignore") else {
        return;
    };
    let models: Vec<Model> = lines.iter().filter_map(|l| Model::new(l)).collect();
    assert_eq!(
        matcher.is_ignored(&path),
        model_ignores(&models, &path),
        "{lines:?} on {path:?}"
    );
});
