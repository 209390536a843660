//! "Did you mean ...?": the one rule for which valid name a mistyped one was meant to be,
//! so every message that suggests a name (the planner's, the operator's) suggests alike.

/// The candidate `word` was most likely meant to be, if one is close enough to be a typo.
///
/// Close means, comparing case-insensitively: at most three edits (a character inserted,
/// deleted or replaced, or two neighbours swapped: the Damerau–Levenshtein distance), and
/// fewer edits than half the characters of the longer of the two. So `buidl` and
/// `buidler` suggest `build` and `tset` suggests `test`, but `go` does not suggest
/// `golang`, nor `node` `node-deps`, nor `ab` `ac` (too short to tell a typo from another
/// name).
///
/// The closest candidate wins; a tie goes to the one that comes first. None when no
/// candidate is close, or when `word` is itself a candidate (nothing to correct).
pub fn nearest<'c>(word: &str, candidates: impl IntoIterator<Item = &'c str>) -> Option<&'c str> {
    let word = word.to_lowercase();
    let mut best: Option<(usize, &'c str)> = None;
    for candidate in candidates {
        let distance = strsim::damerau_levenshtein(&word, &candidate.to_lowercase());
        if distance == 0 {
            return None;
        }
        let longer = word.chars().count().max(candidate.chars().count());
        let close = distance <= 3 && 2 * distance < longer;
        if close && best.is_none_or(|(d, _)| distance < d) {
            best = Some((distance, candidate));
        }
    }
    best.map(|(_, candidate)| candidate)
}

#[cfg(test)]
mod tests {
    use super::nearest;

    #[test]
    fn close_names_are_suggested_and_far_ones_are_not() {
        let cases: [(&str, &[&str], Option<&str>); 18] = [
            ("buidl", &["build", "test"], Some("build")),
            ("buidler", &["build", "test"], Some("build")),
            ("builder", &["build", "test"], Some("build")),
            ("tset", &["build", "test"], Some("test")),
            ("BUILD2", &["build", "test"], Some("build")),
            ("Biuld", &["build"], Some("build")),
            ("relase", &["release"], Some("release")),
            ("ab", &["abc"], Some("abc")),
            ("release", &["build", "test"], None),
            ("go", &["golang"], None),
            ("golang", &["go"], None),
            ("node", &["node-deps"], None),
            ("ab", &["ac"], None),
            ("ab", &["ba"], None),
            ("a", &["b"], None),
            ("nosuch", &["x"], None),
            ("anything", &[], None),
            ("build", &["build", "biuld"], None),
        ];
        for (word, candidates, want) in cases {
            assert_eq!(
                nearest(word, candidates.iter().copied()),
                want,
                "{word:?} among {candidates:?}"
            );
        }
    }

    #[test]
    fn the_closest_wins_and_ties_go_to_the_first() {
        assert_eq!(nearest("tests", ["testing", "test"]), Some("test"));
        assert_eq!(nearest("bat", ["cat", "bar"]), Some("cat"));
        assert_eq!(nearest("bat", ["bar", "cat"]), Some("bar"));
    }
}
