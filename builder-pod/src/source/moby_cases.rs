//! `.dockerignore` matching cases as data, for the table test in `dockerignore.rs`: the rows
//! of moby/patternmatcher's `TestMatches`, `TestMatch` and `multiPatternTests`, its
//! malformed patterns, and rows derived from moby's `TestBuildDockerignore*` and BuildKit's
//! `testDockerignore*` build tests (each file-exists assertion as one row). Every row is a
//! pattern list, a context-relative path, and whether moby's `MatchesOrParentMatches`
//! excludes it.

pub const MOBY_TEST_MATCHES: &[(&[&str], &str, bool)] = &[
    // `**` / `**/` (cleaned to `**`) alone matches everything, incl. trailing-slash texts and "/"
    (&["**"], "file", true),
    (&["**"], "file/", true),
    (&["**/"], "file", true), // weird one   (moby's own comment)
    (&["**/"], "file/", true),
    (&["**"], "/", true),
    (&["**/"], "/", true),
    (&["**"], "dir/file", true),
    (&["**/"], "dir/file", true),
    (&["**"], "dir/file/", true),
    (&["**/"], "dir/file/", true),
    // `**/**` spans directories
    (&["**/**"], "dir/file", true),
    (&["**/**"], "dir/file/", true),
    // trailing `/**` matches everything below the dir
    (&["dir/**"], "dir/file", true),
    (&["dir/**"], "dir/file/", true),
    (&["dir/**"], "dir/dir2/file", true),
    (&["dir/**"], "dir/dir2/file/", true),
    // leading `**/` matches zero or more leading dirs; a matched dir covers its contents (parent match)
    (&["**/dir"], "dir", true),
    (&["**/dir"], "dir/file", true),
    (&["**/dir2/*"], "dir/dir2/file", true),
    (&["**/dir2/*"], "dir/dir2/file/", true),
    (&["**/dir2/**"], "dir/dir2/dir3/file", true),
    (&["**/dir2/**"], "dir/dir2/dir3/file/", true),
    // `**file` (no slash) is a suffix match; `**/file` at any depth
    (&["**file"], "file", true),
    (&["**file"], "dir/file", true),
    (&["**/file"], "dir/file", true),
    (&["**file"], "dir/dir/file", true),
    (&["**/file"], "dir/dir/file", true),
    // `**/` combined with `*` inside the last element
    (&["**/file*"], "dir/dir/file", true),
    (&["**/file*"], "dir/dir/file.txt", true),
    (&["**/file*txt"], "dir/dir/file.txt", true),
    (&["**/file*.txt"], "dir/dir/file.txt", true),
    (&["**/file*.txt*"], "dir/dir/file.txt", true),
    (&["**/**/*.txt"], "dir/dir/file.txt", true),
    (&["**/**/*.txt2"], "dir/dir/file.txt", false),
    // `**/` may match zero directories
    (&["**/*.txt"], "file.txt", true),
    (&["**/**/*.txt"], "file.txt", true),
    // `a**/` : `**` glued to a prefix still spans dirs ("a" then any chars incl. "/")
    (&["a**/*.txt"], "a/file.txt", true),
    (&["a**/*.txt"], "a/dir/file.txt", true),
    (&["a**/*.txt"], "a/dir/dir/file.txt", true),
    // single `*` does not cross `/`
    (&["a/*.txt"], "a/dir/file.txt", false),
    (&["a/*.txt"], "a/file.txt", true),
    // trailing `**` glued to an element
    (&["a/*.txt**"], "a/file.txt", true),
    // character classes `[b-d]`, negated `[^b-d]`
    (&["a[b-d]e"], "ae", false),
    (&["a[b-d]e"], "ace", true),
    (&["a[b-d]e"], "aae", false),
    (&["a[^b-d]e"], "aze", true),
    // `.` is literal (not regex any-char); `*` matches leading dot
    (&[".*"], ".foo", true),
    (&[".*"], "foo", false),
    (&["abc.def"], "abcdef", false),
    (&["abc.def"], "abc.def", true),
    (&["abc.def"], "abcZdef", false),
    // `?` matches exactly one (non-`/`) char
    (&["abc?def"], "abcZdef", true),
    (&["abc?def"], "abcdef", false),
    // backslash escapes: pattern `a\\` (escaped backslash) matches text `a\`  (runs on ALL OSes, incl. windows)
    (&["a\\\\"], "a\\", true),
    // `**/foo/bar` multi-element suffix, zero or more leading dirs
    (&["**/foo/bar"], "foo/bar", true),
    (&["**/foo/bar"], "dir/foo/bar", true),
    (&["**/foo/bar"], "dir/dir2/foo/bar", true),
    // `abc/**` does NOT match `abc` itself, only things below it
    (&["abc/**"], "abc", false),
    (&["abc/**"], "abc/def", true),
    (&["abc/**"], "abc/def/ghi", true),
    // `**/.foo` matches a path element exactly, not a suffix of a name
    (&["**/.foo"], ".foo", true),
    (&["**/.foo"], "bar.foo", false),
    // regex metacharacters `( ) | $ { } + .` are literal
    (&["a(b)c/def"], "a(b)c/def", true),
    (&["a(b)c/def"], "a(b)c/xyz", false),
    (&["a.|)$(}+{bc"], "a.|)$(}+{bc", true),
    (
        &["dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl"],
        "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
        true,
    ),
    (
        &["dist/*.whl"],
        "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
        true,
    ),
    // NOT ON WINDOWS: appended only `if runtime.GOOS != "windows"` — `\*` escapes the star
    (&["a\\*b"], "a*b", true),
];

pub const MOBY_TEST_MATCH_OK: &[(&[&str], &str, bool)] = &[
    // literal and `*` (never crosses `/`; parent-dir match makes `a*` hit "ab/c")
    (&["abc"], "abc", true),
    (&["*"], "abc", true),
    (&["*c"], "abc", true),
    (&["a*"], "a", true),
    (&["a*"], "abc", true),
    (&["a*"], "ab/c", true),
    (&["a*/b"], "abc/b", true),
    (&["a*/b"], "a/c/b", false),
    (&["a*b*c*d*e*/f"], "axbxcxdxe/f", true),
    (&["a*b*c*d*e*/f"], "axbxcxdxexxx/f", true),
    (&["a*b*c*d*e*/f"], "axbxcxdxe/xxx/f", false),
    (&["a*b*c*d*e*/f"], "axbxcxdxexxx/fff", false),
    (&["a*b?c*x"], "abxbbxdbxebxczzx", true),
    (&["a*b?c*x"], "abxbbxdbxebxczzy", false),
    // character classes
    (&["ab[c]"], "abc", true),
    (&["ab[b-d]"], "abc", true),
    (&["ab[e-g]"], "abc", false),
    (&["ab[^c]"], "abc", false),
    (&["ab[^b-d]"], "abc", false),
    (&["ab[^e-g]"], "abc", true),
    // backslash escape of `*`
    (&["a\\*b"], "a*b", true), // SKIPPED ON WINDOWS (pattern contains `\`)
    (&["a\\*b"], "ab", false), // SKIPPED ON WINDOWS (pattern contains `\`)
    // `?` and `[^a]` match one unicode char (rune), not one byte
    (&["a?b"], "a☺b", true),
    (&["a[^a]b"], "a☺b", true),
    (&["a???b"], "a☺b", false),
    (&["a[^a][^a][^a]b"], "a☺b", false),
    (&["[a-ζ]*"], "α", true),
    (&["*[a-ζ]"], "A", false),
    // `?` and `*` never match `/`
    (&["a?b"], "a/b", false),
    (&["a*b"], "a/b", false),
    // escapes inside classes: `[\]a]`, `[\-]`, `[x\-]`, `[\-x]`
    (&["[\\]a]"], "]", true),  // SKIPPED ON WINDOWS (pattern contains `\`)
    (&["[\\-]"], "-", true),   // SKIPPED ON WINDOWS (pattern contains `\`)
    (&["[x\\-]"], "x", true),  // SKIPPED ON WINDOWS (pattern contains `\`)
    (&["[x\\-]"], "-", true),  // SKIPPED ON WINDOWS (pattern contains `\`)
    (&["[x\\-]"], "z", false), // SKIPPED ON WINDOWS (pattern contains `\`)
    (&["[\\-x]"], "x", true),  // SKIPPED ON WINDOWS (pattern contains `\`)
    (&["[\\-x]"], "-", true),  // SKIPPED ON WINDOWS (pattern contains `\`)
    (&["[\\-x]"], "a", false), // SKIPPED ON WINDOWS (pattern contains `\`)
    // leading `*` with repeated chars (last row of moby's table)
    (&["*x"], "xxx", true),
];

pub const MOBY_MULTI_PATTERN: &[(&[&str], &str, bool)] = &[
    // exclusion of a parent dir re-includes everything below it
    (&["**", "!util/docker/web"], "util/docker/web/foo", false),
    // ... and a later inclusion wins again (last match wins)
    (
        &["**", "!util/docker/web", "util/docker/web/foo"],
        "util/docker/web/foo",
        true,
    ),
    // exclusion with regex metachars / with `*`
    (
        &[
            "**",
            "!dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
        ],
        "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
        false,
    ),
    (
        &["**", "!dist/*.whl"],
        "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
        false,
    ),
];

pub const MOBY_MATCHES_FUNC: &[(&[&str], &str, bool)] = &[
    (&["*"], "fileutils.go", true),    // TestWildcardMatches
    (&["*.go"], "fileutils.go", true), // TestPatternMatches
    // "An exclusion followed by an inclusion should return true."
    (&["!fileutils.go", "*.go"], "fileutils.go", true), // TestExclusionPatternMatchesPatternBefore
    // "A folder pattern followed by an exception should return false."
    (&["docs", "!docs/README.md"], "docs/README.md", false), // TestPatternMatchesFolderExclusions
    (&["docs/", "!docs/README.md"], "docs/README.md", false), // TestPatternMatchesFolderWithSlashExclusions
    (&["docs/*", "!docs/README.md"], "docs/README.md", false), // TestPatternMatchesFolderWildcardExclusions
    // "A pattern followed by an exclusion should return false."
    (&["*.go", "!fileutils.go"], "fileutils.go", false), // TestExclusionPatternMatchesPatternAfter
    // "A filename evaluating to . should return false." (package-level Matches special-cases "." after Clean)
    (&["*.go"], ".", false), // TestExclusionPatternMatchesWholeDirectory
    (&[], "/any/path/there", false), // TestMatchesWithNoPatterns (no error either)
];

pub const MOBY_MALFORMED: &[&str] = &[
    "[", // TestMatchesWithMalformedPatterns: Matches("/any/path/there", ["["]) -> err, false; also in matchTests
    "!", // TestSingleExclamationError (Matches) and TestCleanPatternsErrorSingleException (New)
    // matchTests rows expecting filepath.ErrBadPattern (text column irrelevant; listed once each):
    "[]a]",    // text "]"
    "[-]",     // text "-"
    "[x-]",    // texts "x", "-", "z"
    "[-x]",    // texts "x", "-", "a"
    "\\", // text "a"   (pattern is a single backslash; SKIPPED ON WINDOWS since it contains `\`)
    "[a-b-c]", // text "a"
    "[^", // text "a"
    "[^bc", // text "a"
    "a[", // texts "a", "ab"   (moby comment: "was nil but IMO its wrong")
];

pub const MOBY_CLI_DOCKERIGNORE: &[(&[&str], &str, bool)] = &[
    // TestBuildDockerignore
    (
        &[
            ".git",
            "pkg",
            ".gitignore",
            "src/_vendor",
            "*.md",
            "**/*.cc",
            "dir",
        ],
        "src/x.go",
        false,
    ),
    (
        &[
            ".git",
            "pkg",
            ".gitignore",
            "src/_vendor",
            "*.md",
            "**/*.cc",
            "dir",
        ],
        "Makefile",
        false,
    ),
    (
        &[
            ".git",
            "pkg",
            ".gitignore",
            "src/_vendor",
            "*.md",
            "**/*.cc",
            "dir",
        ],
        "src/_vendor",
        true,
    ), // (dir)
    (
        &[
            ".git",
            "pkg",
            ".gitignore",
            "src/_vendor",
            "*.md",
            "**/*.cc",
            "dir",
        ],
        ".gitignore",
        true,
    ),
    (
        &[
            ".git",
            "pkg",
            ".gitignore",
            "src/_vendor",
            "*.md",
            "**/*.cc",
            "dir",
        ],
        "README.md",
        true,
    ),
    (
        &[
            ".git",
            "pkg",
            ".gitignore",
            "src/_vendor",
            "*.md",
            "**/*.cc",
            "dir",
        ],
        "dir/foo",
        true,
    ),
    (
        &[
            ".git",
            "pkg",
            ".gitignore",
            "src/_vendor",
            "*.md",
            "**/*.cc",
            "dir",
        ],
        ".git",
        true,
    ), // (dir)
    (
        &[
            ".git",
            "pkg",
            ".gitignore",
            "src/_vendor",
            "*.md",
            "**/*.cc",
            "dir",
        ],
        "v.cc",
        true,
    ), // intent (test's check is vacuous)
    (
        &[
            ".git",
            "pkg",
            ".gitignore",
            "src/_vendor",
            "*.md",
            "**/*.cc",
            "dir",
        ],
        "src/v.cc",
        true,
    ), // intent (test's check is vacuous)
    (
        &[
            ".git",
            "pkg",
            ".gitignore",
            "src/_vendor",
            "*.md",
            "**/*.cc",
            "dir",
        ],
        "src/_vendor/v.cc",
        true,
    ), // intent (test's check is vacuous)
    // TestBuildDockerignoreCleanPaths  (.dockerignore "./foo\ndir1//foo\n./dir1/../foo2")
    (&["foo", "dir1/foo", "foo2"], "foo", true),
    (&["foo", "dir1/foo", "foo2"], "foo2", true),
    (&["foo", "dir1/foo", "foo2"], "dir1/foo", true),
    // TestBuildDockerignoreExceptions
    (
        &[
            ".git",
            "pkg",
            ".gitignore",
            "src/_vendor",
            "*.md",
            "dir",
            "!dir/e*",
            "!dir/dir/foo",
            "**/*.cc",
            "!**/*.cc",
        ],
        "src/x.go",
        false,
    ),
    (
        &[
            ".git",
            "pkg",
            ".gitignore",
            "src/_vendor",
            "*.md",
            "dir",
            "!dir/e*",
            "!dir/dir/foo",
            "**/*.cc",
            "!**/*.cc",
        ],
        "Makefile",
        false,
    ),
    (
        &[
            ".git",
            "pkg",
            ".gitignore",
            "src/_vendor",
            "*.md",
            "dir",
            "!dir/e*",
            "!dir/dir/foo",
            "**/*.cc",
            "!**/*.cc",
        ],
        "src/_vendor",
        true,
    ), // (dir)
    (
        &[
            ".git",
            "pkg",
            ".gitignore",
            "src/_vendor",
            "*.md",
            "dir",
            "!dir/e*",
            "!dir/dir/foo",
            "**/*.cc",
            "!**/*.cc",
        ],
        ".gitignore",
        true,
    ),
    (
        &[
            ".git",
            "pkg",
            ".gitignore",
            "src/_vendor",
            "*.md",
            "dir",
            "!dir/e*",
            "!dir/dir/foo",
            "**/*.cc",
            "!**/*.cc",
        ],
        "README.md",
        true,
    ),
    (
        &[
            ".git",
            "pkg",
            ".gitignore",
            "src/_vendor",
            "*.md",
            "dir",
            "!dir/e*",
            "!dir/dir/foo",
            "**/*.cc",
            "!**/*.cc",
        ],
        "dir/dir/foo",
        false,
    ),
    (
        &[
            ".git",
            "pkg",
            ".gitignore",
            "src/_vendor",
            "*.md",
            "dir",
            "!dir/e*",
            "!dir/dir/foo",
            "**/*.cc",
            "!**/*.cc",
        ],
        "dir/foo1",
        true,
    ),
    (
        &[
            ".git",
            "pkg",
            ".gitignore",
            "src/_vendor",
            "*.md",
            "dir",
            "!dir/e*",
            "!dir/dir/foo",
            "**/*.cc",
            "!**/*.cc",
        ],
        "dir/e",
        false,
    ),
    (
        &[
            ".git",
            "pkg",
            ".gitignore",
            "src/_vendor",
            "*.md",
            "dir",
            "!dir/e*",
            "!dir/dir/foo",
            "**/*.cc",
            "!**/*.cc",
        ],
        "dir/e-dir/foo",
        false,
    ), // re-included via parent "dir/e-dir"
    (
        &[
            ".git",
            "pkg",
            ".gitignore",
            "src/_vendor",
            "*.md",
            "dir",
            "!dir/e*",
            "!dir/dir/foo",
            "**/*.cc",
            "!**/*.cc",
        ],
        ".git",
        true,
    ), // (dir)
    (
        &[
            ".git",
            "pkg",
            ".gitignore",
            "src/_vendor",
            "*.md",
            "dir",
            "!dir/e*",
            "!dir/dir/foo",
            "**/*.cc",
            "!**/*.cc",
        ],
        "dir/a.cc",
        false,
    ),
    // TestBuildDockerignoringDockerfile (".dockerignore" = "Dockerfile\n", and "./Dockerfile\n")
    (&["Dockerfile"], "Dockerfile", true),
    (&["Dockerfile"], ".dockerignore", false),
    // TestBuildDockerignoringRenamedDockerfile (-f MyDockerfile)
    (&["MyDockerfile"], "Dockerfile", false),
    (&["MyDockerfile"], "MyDockerfile", true),
    (&["MyDockerfile"], ".dockerignore", false),
    // TestBuildDockerignoringDockerignore
    (&[".dockerignore"], ".dockerignore", true),
    (&[".dockerignore"], "Dockerfile", false),
    // TestBuildDockerignoringWholeDir
    (&["*"], ".gitignore", true),
    (&["*"], "Makefile", true),
    // TestBuildDockerignoringOnlyDotfiles
    (&[".*"], ".gitignore", true),
    (&[".*"], "Makefile", false),
    // TestBuildDockerignoringWildTopDir: "All of these should result in ignoring all files"
    (&["**"], ".dockerignore", true),
    (&["**"], "Dockerfile", true),
    (&["**"], "file1", true),
    (&["**"], "dir", true),
    (&["**/"], ".dockerignore", true),
    (&["**/"], "Dockerfile", true),
    (&["**/"], "file1", true),
    (&["**/"], "dir", true),
    (&["**/**"], ".dockerignore", true),
    (&["**/**"], "Dockerfile", true),
    (&["**/**"], "file1", true),
    (&["**/**"], "dir", true),
    (&["*"], ".dockerignore", true),
    (&["*"], "Dockerfile", true),
    (&["*"], "file1", true),
    (&["*"], "dir", true),
    // TestBuildDockerignoringWildDirs (one .dockerignore of 11 patterns)
    (
        &[
            "**/file0",
            "**/*file1",
            "**/dir1/file2",
            "dir1/**/file4",
            "**/dir2/file5",
            "**/dir1/dir2/file6",
            "dir1/dir3/**",
            "**/dir4/**",
            "**/file?A",
            "**/file\\?B",
            "**/dir5/file.",
        ],
        "Dockerfile",
        false,
    ),
    (
        &[
            "**/file0",
            "**/*file1",
            "**/dir1/file2",
            "dir1/**/file4",
            "**/dir2/file5",
            "**/dir1/dir2/file6",
            "dir1/dir3/**",
            "**/dir4/**",
            "**/file?A",
            "**/file\\?B",
            "**/dir5/file.",
        ],
        "dir1/file0",
        true,
    ),
    (
        &[
            "**/file0",
            "**/*file1",
            "**/dir1/file2",
            "dir1/**/file4",
            "**/dir2/file5",
            "**/dir1/dir2/file6",
            "dir1/dir3/**",
            "**/dir4/**",
            "**/file?A",
            "**/file\\?B",
            "**/dir5/file.",
        ],
        "file1",
        true,
    ),
    (
        &[
            "**/file0",
            "**/*file1",
            "**/dir1/file2",
            "dir1/**/file4",
            "**/dir2/file5",
            "**/dir1/dir2/file6",
            "dir1/dir3/**",
            "**/dir4/**",
            "**/file?A",
            "**/file\\?B",
            "**/dir5/file.",
        ],
        "dir1/file1",
        true,
    ),
    (
        &[
            "**/file0",
            "**/*file1",
            "**/dir1/file2",
            "dir1/**/file4",
            "**/dir2/file5",
            "**/dir1/dir2/file6",
            "dir1/dir3/**",
            "**/dir4/**",
            "**/file?A",
            "**/file\\?B",
            "**/dir5/file.",
        ],
        "dir1/dir2/file1",
        true,
    ),
    (
        &[
            "**/file0",
            "**/*file1",
            "**/dir1/file2",
            "dir1/**/file4",
            "**/dir2/file5",
            "**/dir1/dir2/file6",
            "dir1/dir3/**",
            "**/dir4/**",
            "**/file?A",
            "**/file\\?B",
            "**/dir5/file.",
        ],
        "dir1/file2",
        true,
    ),
    (
        &[
            "**/file0",
            "**/*file1",
            "**/dir1/file2",
            "dir1/**/file4",
            "**/dir2/file5",
            "**/dir1/dir2/file6",
            "dir1/dir3/**",
            "**/dir4/**",
            "**/file?A",
            "**/file\\?B",
            "**/dir5/file.",
        ],
        "dir1/dir2/file2",
        false,
    ), // "remains"
    (
        &[
            "**/file0",
            "**/*file1",
            "**/dir1/file2",
            "dir1/**/file4",
            "**/dir2/file5",
            "**/dir1/dir2/file6",
            "dir1/dir3/**",
            "**/dir4/**",
            "**/file?A",
            "**/file\\?B",
            "**/dir5/file.",
        ],
        "dir1/dir2/file4",
        true,
    ),
    (
        &[
            "**/file0",
            "**/*file1",
            "**/dir1/file2",
            "dir1/**/file4",
            "**/dir2/file5",
            "**/dir1/dir2/file6",
            "dir1/dir3/**",
            "**/dir4/**",
            "**/file?A",
            "**/file\\?B",
            "**/dir5/file.",
        ],
        "dir1/dir2/file5",
        true,
    ),
    (
        &[
            "**/file0",
            "**/*file1",
            "**/dir1/file2",
            "dir1/**/file4",
            "**/dir2/file5",
            "**/dir1/dir2/file6",
            "dir1/dir3/**",
            "**/dir4/**",
            "**/file?A",
            "**/file\\?B",
            "**/dir5/file.",
        ],
        "dir1/dir2/file6",
        true,
    ),
    (
        &[
            "**/file0",
            "**/*file1",
            "**/dir1/file2",
            "dir1/**/file4",
            "**/dir2/file5",
            "**/dir1/dir2/file6",
            "dir1/dir3/**",
            "**/dir4/**",
            "**/file?A",
            "**/file\\?B",
            "**/dir5/file.",
        ],
        "dir1/dir3/file7",
        true,
    ),
    (
        &[
            "**/file0",
            "**/*file1",
            "**/dir1/file2",
            "dir1/**/file4",
            "**/dir2/file5",
            "**/dir1/dir2/file6",
            "dir1/dir3/**",
            "**/dir4/**",
            "**/file?A",
            "**/file\\?B",
            "**/dir5/file.",
        ],
        "dir1/dir3/file8",
        true,
    ),
    (
        &[
            "**/file0",
            "**/*file1",
            "**/dir1/file2",
            "dir1/**/file4",
            "**/dir2/file5",
            "**/dir1/dir2/file6",
            "dir1/dir3/**",
            "**/dir4/**",
            "**/file?A",
            "**/file\\?B",
            "**/dir5/file.",
        ],
        "dir1/dir3",
        false,
    ), // (dir) `dir1/dir3/**` does not match the dir itself
    (
        &[
            "**/file0",
            "**/*file1",
            "**/dir1/file2",
            "dir1/**/file4",
            "**/dir2/file5",
            "**/dir1/dir2/file6",
            "dir1/dir3/**",
            "**/dir4/**",
            "**/file?A",
            "**/file\\?B",
            "**/dir5/file.",
        ],
        "dir1/dir4",
        false,
    ), // (dir)
    (
        &[
            "**/file0",
            "**/*file1",
            "**/dir1/file2",
            "dir1/**/file4",
            "**/dir2/file5",
            "**/dir1/dir2/file6",
            "dir1/dir3/**",
            "**/dir4/**",
            "**/file?A",
            "**/file\\?B",
            "**/dir5/file.",
        ],
        "dir1/dir5/fileAA",
        true,
    ),
    (
        &[
            "**/file0",
            "**/*file1",
            "**/dir1/file2",
            "dir1/**/file4",
            "**/dir2/file5",
            "**/dir1/dir2/file6",
            "dir1/dir3/**",
            "**/dir4/**",
            "**/file?A",
            "**/file\\?B",
            "**/dir5/file.",
        ],
        "dir1/dir5/fileAB",
        false,
    ), // `\?` is a literal "?"
    (
        &[
            "**/file0",
            "**/*file1",
            "**/dir1/file2",
            "dir1/**/file4",
            "**/dir2/file5",
            "**/dir1/dir2/file6",
            "dir1/dir3/**",
            "**/dir4/**",
            "**/file?A",
            "**/file\\?B",
            "**/dir5/file.",
        ],
        "dir1/dir5/fileB",
        false,
    ), // moby: `"." in pattern means nothing` (literal dot)
];

pub const BUILDKIT_DOCKERIGNORE: &[(&[&str], &str, bool)] = &[
    // testDockerignore: .dockerignore "\nba*\nDockerfile\n!bay\n.dockerignore\n", COPY . .
    (
        &["ba*", "Dockerfile", "!bay", ".dockerignore"],
        "foo",
        false,
    ),
    (
        &["ba*", "Dockerfile", "!bay", ".dockerignore"],
        ".dockerignore",
        true,
    ),
    (
        &["ba*", "Dockerfile", "!bay", ".dockerignore"],
        "Dockerfile",
        true,
    ),
    (&["ba*", "Dockerfile", "!bay", ".dockerignore"], "bar", true),
    (&["ba*", "Dockerfile", "!bay", ".dockerignore"], "baz", true),
    (
        &["ba*", "Dockerfile", "!bay", ".dockerignore"],
        "bay",
        false,
    ),
    // testDockerignoreOverride: Dockerfile.dockerignore = "bar", Dockerfile2.dockerignore = "foo"
    (&["bar"], "foo", false),
    (&["bar"], "bar", true),
    (&["foo"], "foo", true),
    (&["foo"], "bar", false),
];
