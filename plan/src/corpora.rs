//! Where the tests find the peer corpora (BuildKit's test data and real-world Dockerfiles),
//! which live outside this repository.
//!
//! `STAGECOACH_CORPORA` names the directory; unset or empty, it is
//! `<workspace root>/../shared/corpora`. When the directory is missing, a test that needs
//! it prints `skipped: peer corpus not found at <path> (set STAGECOACH_CORPORA)` to stderr
//! and passes, except when `CI` is set (to anything): CI always has the corpus, so there a
//! missing one fails the test.
//!
//! One file for both kinds of test: the library's unit tests have it as `crate::corpora`,
//! `tests/corpus.rs` includes it with `#[path]`.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The environment variable that names the corpus directory.
pub(crate) const VAR: &str = "STAGECOACH_CORPORA";

/// The corpus directory, or None when a test should skip (the skip line is printed then);
/// panics when the corpus is missing under CI.
pub(crate) fn root() -> Option<PathBuf> {
    match locate(std::env::var_os(VAR), std::env::var_os("CI").is_some()) {
        Located::Found(path) => Some(path),
        Located::Skip(message) => {
            // Straight to stderr, past the test harness's capture, so the skip shows.
            let _ = writeln!(std::io::stderr(), "skipped: {message}");
            None
        }
        Located::Fail(message) => panic!("{message}; CI is set, so the corpus is required"),
    }
}

/// What a test does about the corpus.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Located {
    /// The directory exists: use it.
    Found(PathBuf),
    /// It is missing and CI is unset: skip, saying why.
    Skip(String),
    /// It is missing under CI: fail, saying why.
    Fail(String),
}

/// Decides from the variable's value and whether CI is set; the only I/O is whether the
/// directory exists.
pub(crate) fn locate(configured: Option<OsString>, ci: bool) -> Located {
    let path = configured
        .filter(|value| !value.is_empty())
        .map_or_else(default_root, PathBuf::from);
    if path.is_dir() {
        return Located::Found(path);
    }
    let message = format!("peer corpus not found at {} (set {VAR})", path.display());
    if ci {
        Located::Fail(message)
    } else {
        Located::Skip(message)
    }
}

/// `<workspace root>/../shared/corpora`: the corpora beside this repository's checkout.
pub(crate) fn default_root() -> PathBuf {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    crate_dir
        .parent()
        .unwrap_or(crate_dir)
        .join("../shared/corpora")
}
