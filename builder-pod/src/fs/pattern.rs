//! Path patterns as Docker uses them for COPY sources and `--exclude`: Go's
//! `filepath.Match` per path component (`*`, `?`, `[a-z]`, `[^x]`, `\` escapes), plus
//! `**` for any number of components.

/// A pattern that did not parse (an unclosed `[` or a trailing `\`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad pattern {0:?}")]
pub struct BadPattern(pub String);

/// A walk for a pattern that failed.
#[derive(Debug, thiserror::Error)]
pub enum FindError {
    #[error(transparent)]
    Pattern(#[from] BadPattern),
    #[error("cannot read {path}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The paths under `root` (relative, `/`-separated, sorted) that match the pattern,
/// walking only directories the pattern could still match below.
pub fn find(root: &std::path::Path, pattern: &str) -> Result<Vec<String>, FindError> {
    let mut found = Vec::new();
    let mut pending = vec![String::new()];
    while let Some(rel) = pending.pop() {
        let dir = root.join(&rel);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let entry = entry.map_err(|source| FindError::Io {
                path: dir.clone(),
                source,
            })?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let child = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            if matches_path(pattern, &child)? {
                found.push(child.clone());
            }
            if entry.file_type().is_ok_and(|t| t.is_dir()) && could_match_below(pattern, &child)? {
                pending.push(child);
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Whether the text has glob metacharacters (a plain path is looked up directly).
pub fn has_magic(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// Matches a whole relative path (components separated by `/`) against a pattern.
pub fn matches_path(pattern: &str, path: &str) -> Result<bool, BadPattern> {
    let pat: Vec<&str> = pattern.split('/').filter(|p| !p.is_empty()).collect();
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    match_parts(&pat, &parts, pattern)
}

/// Whether `path` is a prefix of something the pattern could match (used to prune walks).
pub fn could_match_below(pattern: &str, path: &str) -> Result<bool, BadPattern> {
    let pat: Vec<&str> = pattern.split('/').filter(|p| !p.is_empty()).collect();
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    for (i, part) in parts.iter().enumerate() {
        match pat.get(i) {
            None => return Ok(false),
            Some(&"**") => return Ok(true),
            Some(p) if !matches_component(p, part).map_err(|_| BadPattern(pattern.into()))? => {
                return Ok(false);
            }
            Some(_) => {}
        }
    }
    Ok(true)
}

fn match_parts(pat: &[&str], parts: &[&str], whole: &str) -> Result<bool, BadPattern> {
    match pat.first() {
        None => Ok(parts.is_empty()),
        Some(&"**") => {
            for skip in 0..=parts.len() {
                if match_parts(&pat[1..], &parts[skip..], whole)? {
                    return Ok(true);
                }
            }
            Ok(false)
        }
        Some(p) => match parts.first() {
            None => Ok(false),
            Some(part) => {
                if matches_component(p, part).map_err(|_| BadPattern(whole.into()))? {
                    match_parts(&pat[1..], &parts[1..], whole)
                } else {
                    Ok(false)
                }
            }
        },
    }
}

/// Go's `filepath.Match` for one component (no `/` on either side).
pub fn matches_component(pattern: &str, name: &str) -> Result<bool, BadPattern> {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    glob(&p, &n).ok_or_else(|| BadPattern(pattern.into()))
}

/// Backtracking matcher; None for a malformed pattern.
fn glob(p: &[char], n: &[char]) -> Option<bool> {
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    loop {
        if pi < p.len() {
            match p[pi] {
                '*' => {
                    star = Some((pi, ni));
                    pi += 1;
                    continue;
                }
                '?' if ni < n.len() => {
                    pi += 1;
                    ni += 1;
                    continue;
                }
                '[' if ni < n.len() => {
                    let (matched, next) = class(p, pi, n[ni])?;
                    if matched {
                        pi = next;
                        ni += 1;
                        continue;
                    }
                }
                '\\' => {
                    let c = *p.get(pi + 1)?;
                    if ni < n.len() && n[ni] == c {
                        pi += 2;
                        ni += 1;
                        continue;
                    }
                }
                c if ni < n.len() && c == n[ni] => {
                    pi += 1;
                    ni += 1;
                    continue;
                }
                _ => {}
            }
        } else if ni == n.len() {
            return Some(true);
        }
        match star {
            // `*` never crosses a path separator.
            Some((sp, sn)) if sn < n.len() && n[sn] != '/' => {
                star = Some((sp, sn + 1));
                pi = sp + 1;
                ni = sn + 1;
            }
            _ => {
                // Validate the rest of the pattern so a bad class is an error, as in Go.
                validate(&p[pi.min(p.len())..])?;
                return Some(false);
            }
        }
    }
}

/// A `[...]` class at `p[start]`: whether `c` is in it and the index after it. Go's
/// rules: only `^` negates (`[!a]` holds `!` and `a`), a `]` closes the class once it has
/// a range, and `-` or `]` as a range's end needs a `\`.
fn class(p: &[char], start: usize, c: char) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negated = p.get(i) == Some(&'^');
    if negated {
        i += 1;
    }
    let mut matched = false;
    let mut ranges = 0;
    loop {
        if p.get(i) == Some(&']') && ranges > 0 {
            return Some((matched != negated, i + 1));
        }
        let (lo, next) = class_char(p, i)?;
        let (hi, next) = match p.get(next) {
            Some('-') => class_char(p, next + 1)?,
            _ => (lo, next),
        };
        i = next;
        if lo <= c && c <= hi {
            matched = true;
        }
        ranges += 1;
    }
}

/// One end of a class range at `p[i]` (Go's `getEsc`): `\x` is `x`, a bare `-` or `]`
/// is malformed, and the class must go on after it.
fn class_char(p: &[char], mut i: usize) -> Option<(char, usize)> {
    match p.get(i)? {
        '-' | ']' => return None,
        '\\' => i += 1,
        _ => {}
    }
    let c = *p.get(i)?;
    p.get(i + 1)?;
    Some((c, i + 1))
}

fn validate(p: &[char]) -> Option<()> {
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            '\\' => {
                p.get(i + 1)?;
                i += 2;
            }
            '[' => {
                let (_, next) = class(p, i, '\0')?;
                i = next;
            }
            _ => i += 1,
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_match_like_go() {
        let cases = [
            ("abc", "abc", true),
            ("*", "abc", true),
            ("*c", "abc", true),
            ("a*", "a", true),
            ("a*/b", "abc/b", true),
            ("a*/b", "a/c/b", false),
            ("a*b*c*d*e*/f", "axbxcxdxe/f", true),
            ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", false),
            ("ab[c]", "abc", true),
            ("ab[b-d]", "abc", true),
            ("ab[^c]", "abc", false),
            // Only `^` negates: `!` is a member.
            ("ab[!c]", "abd", false),
            ("ab[!c]", "ab!", true),
            ("[\\-x]", "-", true),
            ("[a-ζ]*", "α", true),
            ("a\\*b", "a*b", true),
            ("a\\*b", "axb", false),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
        ];
        for (p, n, want) in cases {
            assert_eq!(matches_component(p, n), Ok(want), "{p} vs {n}");
        }
        for bad in [
            "[", "[]a]", "[-]", "[x-]", "[-x]", "[a-b-c]", "[^", "[^bc", "a[",
        ] {
            assert!(matches_component(bad, "a").is_err(), "{bad}");
        }
        assert!(matches_component("a\\", "a").is_err());
    }

    #[test]
    fn paths_and_double_star() {
        assert!(matches_path("src/*.rs", "src/main.rs").expect("ok"));
        assert!(!matches_path("src/*.rs", "src/a/main.rs").expect("ok"));
        assert!(matches_path("src/**/*.rs", "src/a/b/main.rs").expect("ok"));
        assert!(matches_path("**/*.md", "README.md").expect("ok"));
        assert!(could_match_below("src/*/x", "src/a").expect("ok"));
        assert!(!could_match_below("src/*/x", "docs").expect("ok"));
    }
}
