//! The source pod: checkouts over `git://` (a real `git daemon` on loopback), `file://`
//! and HTTPS with basic auth (`git http-backend` behind the test's own TLS server), each
//! revision kind, the failure reasons, `.dockerignore` on the volume, and — in a real pod
//! of the builder image — that the git password appears in no file and no output.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use stagecoach_builder::source::git::{self, Checkout, Credentials};
use stagecoach_builder::source::{self, Dockerfile, Origin, SourceOptions};
use stagecoach_builder::workspace::Workspace;
use stagecoach_e2e::git_server::{GitDaemon, HttpsGit, SshServer, commit, free_port, git};
use stagecoach_e2e::podman::{Volume, builder_image, check, play, registry, tool};
use stagecoach_plan::contract::PodOutcome;
use stagecoach_plan::{Plan, Platform};

const DOCKERFILE: &str = "FROM scratch\nCOPY . /ctx/\n";
const SECRET: &str = "pa55-w0rd-e2e-7f3a";

/// A repository with history: `v1` (lightweight) and `v1-annotated` on the first
/// commit, two more commits on `main`, a `feature` branch, and a `with-sub` branch that
/// has a submodule (`vendor/lib`, relative URL `../lib.git`).
struct Fixture {
    dir: tempfile::TempDir,
    c1: String,
    c2: String,
    c3: String,
    feature: String,
    with_sub: String,
    lib: String,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let repos = dir.path().join("repos");
        let lib_work = dir.path().join("lib");
        std::fs::create_dir_all(&lib_work).expect("mkdir");
        git(&lib_work, &["init", "--quiet", "--initial-branch=main"]);
        let lib = commit(&lib_work, &[("lib.txt", "library")], "lib");
        git(
            dir.path(),
            &["clone", "--quiet", "--bare", "lib", "repos/lib.git"],
        );

        let work = repos.join("work");
        std::fs::create_dir_all(&work).expect("mkdir");
        git(&work, &["init", "--quiet", "--initial-branch=main"]);
        let first = [
            ("Dockerfile", DOCKERFILE),
            ("version", "1"),
            (
                ".dockerignore",
                "# secrets stay home\n*.env\nsecrets\n!secrets/public.txt\n",
            ),
            ("app.env", "TOKEN=1"),
            ("secrets/key", "private"),
            ("secrets/public.txt", "public"),
            ("build/app.Dockerfile", DOCKERFILE),
            ("build/app.Dockerfile.dockerignore", "version\n"),
            ("bin/run.sh", "#!/bin/sh\n"),
        ];
        for (path, content) in first {
            let file = work.join(path);
            std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
            std::fs::write(&file, content).expect("write");
        }
        let run_sh = work.join("bin/run.sh");
        std::fs::set_permissions(&run_sh, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let c1 = commit(&work, &[], "one");
        git(&work, &["tag", "v1"]);
        git(&work, &["tag", "-a", "-m", "annotated", "v1-annotated"]);
        let c2 = commit(&work, &[("version", "2")], "two");
        let c3 = commit(&work, &[("version", "3")], "three");
        git(&work, &["checkout", "--quiet", "-b", "feature"]);
        let feature = commit(&work, &[("version", "feature")], "feature");
        git(&work, &["checkout", "--quiet", "-b", "with-sub", "main"]);
        git(
            &work,
            &["submodule", "--quiet", "add", "../lib.git", "vendor/lib"],
        );
        let with_sub = commit(&work, &[], "submodule");
        git(&work, &["checkout", "--quiet", "main"]);
        git(&repos, &["clone", "--quiet", "--bare", "work", "app.git"]);
        for branch in ["feature", "with-sub"] {
            git(&work, &["push", "--quiet", "../app.git", branch]);
        }
        Fixture {
            dir,
            c1,
            c2,
            c3,
            feature,
            with_sub,
            lib,
        }
    }

    fn repos(&self) -> PathBuf {
        self.dir.path().join("repos")
    }

    fn file_url(&self) -> String {
        format!("file://{}", self.repos().join("app.git").display())
    }

    fn commit_time(&self, commit: &str) -> i64 {
        git(
            &self.repos().join("work"),
            &["show", "-s", "--format=%ct", commit],
        )
        .parse()
        .expect("a time")
    }
}

/// Checks out into a fresh directory below `root`.
fn checkout(
    root: &Path,
    url: &str,
    revision: &str,
    submodules: bool,
) -> (PathBuf, Result<Checkout, git::Error>) {
    checkout_with(root, url, revision, submodules, &Credentials::None)
}

fn checkout_with(
    root: &Path,
    url: &str,
    revision: &str,
    submodules: bool,
    credentials: &Credentials,
) -> (PathBuf, Result<Checkout, git::Error>) {
    let n = std::fs::read_dir(root).map(|d| d.count()).unwrap_or(0);
    let base = root.join(format!("run-{n}"));
    let dest = base.join("source");
    let scratch = base.join("scratch");
    let result = git::checkout(
        &git::Request {
            url,
            revision,
            submodules,
            credentials,
            scratch: &scratch,
            private_tmp: &base,
        },
        &dest,
    );
    (dest, result)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every revision kind, over one transport: the right commit, its files, its time, the
/// ref it resolved to, shallow when the revision allows it, and no `.git`.
fn revisions(fixture: &Fixture, url: &str, remote: bool) {
    let work = tempfile::tempdir().expect("tempdir");
    let short = |c: &str| c[..7].to_string();
    let cases: Vec<(String, &str, &str, Option<&str>, bool)> = vec![
        (
            String::new(),
            &fixture.c3,
            "3",
            Some("refs/heads/main"),
            true,
        ),
        (
            "main".into(),
            &fixture.c3,
            "3",
            Some("refs/heads/main"),
            true,
        ),
        (
            "feature".into(),
            &fixture.feature,
            "feature",
            Some("refs/heads/feature"),
            true,
        ),
        ("v1".into(), &fixture.c1, "1", Some("refs/tags/v1"), true),
        (
            "v1-annotated".into(),
            &fixture.c1,
            "1",
            Some("refs/tags/v1-annotated"),
            true,
        ),
        (
            "refs/tags/v1".into(),
            &fixture.c1,
            "1",
            Some("refs/tags/v1"),
            true,
        ),
        (fixture.c2.clone(), &fixture.c2, "2", None, true),
        // A short id no ref points at needs the full history.
        (short(&fixture.c2), &fixture.c2, "2", None, false),
        // A short id of a branch tip is fetched by its full id.
        (
            short(&fixture.feature),
            &fixture.feature,
            "feature",
            None,
            true,
        ),
    ];
    for (revision, commit, version, resolved, shallow) in cases {
        let (dest, result) = checkout(work.path(), url, &revision, false);
        let done = result.unwrap_or_else(|e| panic!("{url} {revision:?}: {e}"));
        assert_eq!(done.commit, *commit, "{url} {revision:?}");
        assert_eq!(done.revision, revision);
        assert_eq!(done.resolved_ref.as_deref(), resolved, "{url} {revision:?}");
        assert_eq!(done.shallow, remote && shallow, "{url} {revision:?}");
        assert_eq!(done.commit_time, fixture.commit_time(commit));
        assert_eq!(read(&dest.join("version")), version, "{url} {revision:?}");
        assert!(
            !dest.join(".git").exists(),
            "no git directory in the checkout"
        );
        let mode = std::fs::metadata(dest.join("bin/run.sh"))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o111, 0o111, "executable bits are kept");
    }

    for missing in ["nope", "refs/heads/nope", "0123456", &"0".repeat(40)] {
        let (_, result) = checkout(work.path(), url, missing, false);
        let e = result.expect_err(missing);
        assert_eq!(e.reason(), "RevisionNotFound", "{missing}: {e}");
        let text = e.to_string();
        assert!(text.contains(url) && text.contains(missing), "{text}");
    }
}

#[test]
fn git_daemon_checkouts_every_revision_kind() {
    let fixture = Fixture::new();
    let daemon = GitDaemon::start(&fixture.repos());
    revisions(&fixture, &daemon.url("app.git"), true);
}

#[test]
fn local_repositories_are_opened_directly() {
    let fixture = Fixture::new();
    revisions(&fixture, &fixture.file_url(), false);
    // A plain path and a non-bare repository work as well.
    let work = tempfile::tempdir().expect("tempdir");
    let path = fixture.repos().join("work");
    let (_, result) = checkout(work.path(), &path.display().to_string(), "feature", false);
    assert_eq!(result.expect("a path").commit, fixture.feature);
}

#[test]
fn unreachable_hosts_and_repositories() {
    let fixture = Fixture::new();
    let work = tempfile::tempdir().expect("tempdir");
    let daemon = GitDaemon::start(&fixture.repos());
    let closed = format!("git://127.0.0.1:{}/app.git", free_port());
    for url in [
        closed.as_str(),
        &daemon.url("missing.git"),
        "git://no-such-host.invalid/app.git",
        "file:///nonexistent/app.git",
    ] {
        let (_, result) = checkout(work.path(), url, "main", false);
        let e = result.expect_err(url);
        assert_eq!(e.reason(), "GitUnreachable", "{url}: {e}");
        let text = e.to_string();
        assert!(text.contains(url) && text.contains("\"main\""), "{text}");
    }
}

#[test]
fn submodules_when_asked() {
    let fixture = Fixture::new();
    let work = tempfile::tempdir().expect("tempdir");
    let daemon = GitDaemon::start(&fixture.repos());
    for url in [daemon.url("app.git"), fixture.file_url()] {
        let (dest, result) = checkout(work.path(), &url, "with-sub", true);
        let done = result.unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(done.commit, fixture.with_sub);
        assert_eq!(done.submodules.len(), 1, "{url}");
        assert_eq!(done.submodules[0].path, "vendor/lib");
        assert_eq!(done.submodules[0].commit, fixture.lib);
        assert!(done.submodules[0].url.ends_with("/lib.git"));
        assert_eq!(read(&dest.join("vendor/lib/lib.txt")), "library");
        assert!(!dest.join("vendor/lib/.git").exists());

        let (dest, result) = checkout(work.path(), &url, "with-sub", false);
        assert!(result.expect("checkout").submodules.is_empty());
        assert!(!dest.join("vendor/lib/lib.txt").exists());
    }
}

#[test]
fn ssh_with_a_key_from_the_secret() {
    let fixture = Fixture::new();
    let server = SshServer::start(&fixture.dir.path().join("ssh"));
    let url = server.url(&fixture.repos().join("app.git"));
    let credentials = Credentials::from_secret_dir(&server.secret).expect("ssh-auth");
    let work = tempfile::tempdir().expect("tempdir");
    for (revision, commit) in [("feature", &fixture.feature), ("", &fixture.c3)] {
        let (dest, result) = checkout_with(work.path(), &url, revision, false, &credentials);
        let done = result.unwrap_or_else(|e| panic!("{url} {revision:?}: {e}"));
        assert_eq!(done.commit, *commit);
        assert!(done.shallow);
        assert!(dest.join("Dockerfile").is_file());
        // The private copy of the key is gone again.
        let leftovers: Vec<_> = std::fs::read_dir(dest.parent().expect("run dir"))
            .expect("read")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains("ssh-key"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
    // A host key that is not the server's is refused.
    std::fs::write(
        server.secret.join("known_hosts"),
        format!(
            "[127.0.0.1]:{} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n",
            server.port
        ),
    )
    .expect("write");
    let (_, result) = checkout_with(work.path(), &url, "main", false, &credentials);
    assert!(result.is_err(), "an unknown host key must fail");
}

fn options(ws: &Path, url: String, revision: &str) -> SourceOptions {
    SourceOptions {
        workspace: Workspace::new(ws),
        origin: Origin::Git {
            url,
            revision: revision.into(),
            submodules: false,
            secret: None,
        },
        context_dir: String::new(),
        dockerfile: Dockerfile::Path("Dockerfile".into()),
        target: None,
        build_args: Default::default(),
        platforms: vec![Platform::default()],
        build_platform: None,
        private_tmp: ws.to_path_buf(),
        registry: stagecoach_builder::oci::Settings {
            insecure: vec![registry()],
            ..Default::default()
        },
        pull_secrets: ws.join("no-pull-secrets"),
        cache: None,
    }
}

/// Every file below a directory, relative, sorted.
fn files(dir: &Path) -> Vec<String> {
    fn walk(dir: &Path, rel: &str, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = format!("{rel}{}", e.file_name().to_string_lossy());
            if e.file_type().expect("type").is_dir() {
                walk(&e.path(), &format!("{name}/"), out);
            } else {
                out.push(name);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, "", &mut out);
    out.sort();
    out
}

#[test]
fn ignored_files_never_reach_the_context_on_the_volume() {
    let fixture = Fixture::new();
    let daemon = GitDaemon::start(&fixture.repos());
    let ws = tempfile::tempdir().expect("workspace");
    let report = source::run(&options(ws.path(), daemon.url("app.git"), "v1"));
    assert!(report.succeeded, "{report:#?}");
    assert_eq!(report.ignore_file.as_deref(), Some(".dockerignore"));
    assert_eq!(
        files(&ws.path().join("source")),
        [
            ".dockerignore",
            "Dockerfile",
            "bin/run.sh",
            "build/app.Dockerfile",
            "build/app.Dockerfile.dockerignore",
            "secrets/public.txt",
            "version"
        ]
    );
    assert_eq!(report.ignored_files, 2);

    // The plan, the report and the termination message agree on the commit.
    let plan = Plan::from_json(&read(&ws.path().join("plan.json"))).expect("plan");
    assert_eq!(plan.dockerfile, "Dockerfile");
    let summary = report.summary.clone().expect("summary");
    assert_eq!(summary.commit.as_deref(), Some(fixture.c1.as_str()));
    assert_eq!(summary.commit_time, Some(fixture.commit_time(&fixture.c1)));
    let message = source::outcome(&report).to_message().expect("fits");
    assert_eq!(
        PodOutcome::from_message(&message).and_then(|o| o.summary),
        Some(summary)
    );

    // `<Dockerfile>.dockerignore` beside the Dockerfile wins over `.dockerignore`.
    let mut opts = options(ws.path(), daemon.url("app.git"), "v1");
    opts.dockerfile = Dockerfile::Path("build/app.Dockerfile".into());
    let report = source::run(&opts);
    assert!(report.succeeded, "{report:#?}");
    assert_eq!(
        report.ignore_file.as_deref(),
        Some("build/app.Dockerfile.dockerignore")
    );
    let left = files(&ws.path().join("source"));
    assert!(left.contains(&"app.env".to_string()) && !left.contains(&"version".to_string()));
}

#[test]
fn failures_report_stable_reasons() {
    let fixture = Fixture::new();
    let daemon = GitDaemon::start(&fixture.repos());
    let ws = tempfile::tempdir().expect("workspace");
    let url = daemon.url("app.git");

    let mut opts = options(ws.path(), url.clone(), "main");
    opts.dockerfile = Dockerfile::Path("nope/Dockerfile".into());
    let report = source::run(&opts);
    assert_eq!(report.reason.as_deref(), Some("DockerfileNotFound"));
    assert_eq!(report.source.expect("checked out").commit, fixture.c3);

    opts.dockerfile = Dockerfile::Inline("FROM scratch\nFROBNICATE /a\n".into());
    let report = source::run(&opts);
    assert_eq!(
        report.reason.as_deref(),
        Some("DockerfileInvalid"),
        "{report:#?}"
    );
    assert_eq!(report.line, Some(2));
    assert!(report.error.expect("error").starts_with("Dockerfile:2:"));

    opts.dockerfile = Dockerfile::Path("Dockerfile".into());
    opts.context_dir = "../..".into();
    let report = source::run(&opts);
    assert_eq!(report.reason.as_deref(), Some("ContextInvalid"));

    let report = source::run(&options(ws.path(), url.clone(), "no-such-branch"));
    assert_eq!(report.reason.as_deref(), Some("RevisionNotFound"));
    let outcome = PodOutcome::from_message(&source::outcome(&report).to_message().expect("fits"))
        .expect("outcome");
    assert!(!outcome.succeeded);
    assert!(outcome.message.expect("message").contains(&url));

    let report = source::run(&options(
        ws.path(),
        format!("git://127.0.0.1:{}/app.git", free_port()),
        "main",
    ));
    assert_eq!(report.reason.as_deref(), Some("GitUnreachable"));
}

/// `FROM` and `COPY --from` images of the local registry, pinned to the digests it
/// serves for the platform, their configs beside the plan.
#[test]
fn plan_pins_digests_the_local_registry_serves() {
    let reg = registry();
    let dockerfile = format!(
        "FROM {reg}/stagecoach/busybox:1 AS build\nRUN echo hi > /x\n\
         FROM {reg}/stagecoach/runtime:1\nCOPY --from=build /x /x\n\
         COPY --from={reg}/stagecoach/busybox:1 /bin/busybox /bb\n"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).expect("mkdir");
    git(&repo, &["init", "--quiet", "--initial-branch=main"]);
    let head = commit(&repo, &[("Dockerfile", &dockerfile)], "images");
    let ws = dir.path().join("ws");
    let report = source::run(&options(&ws, format!("file://{}", repo.display()), ""));
    assert!(report.succeeded, "{report:#?}");
    assert_eq!(report.summary.expect("summary").commit, Some(head));

    let plan = Plan::from_json(&read(&ws.join("plan.json"))).expect("plan");
    let mut pinned = 0;
    for stage in &plan.stages {
        let stagecoach_plan::Base::Image { reference, digest } = &stage.base else {
            continue;
        };
        let inspect = |args: &[&str]| {
            let out = check(
                tool("skopeo")
                    .args(["inspect", "--tls-verify=false"])
                    .args(args)
                    .arg(format!("docker://{reference}")),
            );
            String::from_utf8(out.stdout).expect("utf-8")
        };
        // The base images are indexes: pinned to their linux/amd64 entry.
        let served = stagecoach_e2e::podman::platform_digest(reference, "amd64");
        assert_eq!(digest.as_deref(), Some(served.as_str()), "{reference}");
        let config = inspect(&["--config", "--raw"]);
        assert_eq!(
            read(&Workspace::new(&ws).base_config(&stage.id)),
            config,
            "{reference}"
        );
        pinned += 1;
    }
    assert_eq!(pinned, 3, "two FROM images and one COPY --from image");

    // An image the registry does not have.
    let missing = format!("FROM {reg}/stagecoach/busybox:no-such-tag\nRUN true\n");
    let head = commit(&repo, &[("Dockerfile", &missing)], "missing");
    let report = source::run(&options(&ws, format!("file://{}", repo.display()), &head));
    assert_eq!(
        report.reason.as_deref(),
        Some("BaseImageNotFound"),
        "{report:#?}"
    );
    assert_eq!(report.line, Some(1));
}

#[test]
fn ssh_in_the_builder_image() {
    let fixture = Fixture::new();
    let server = SshServer::start(&fixture.dir.path().join("ssh"));
    let url = server.url(&fixture.repos().join("app.git"));
    let mounts = tempfile::tempdir().expect("tempdir");
    let secret = readable_dir(
        mounts.path(),
        "ssh-secret",
        &[
            (
                "ssh-privatekey",
                &read(&server.secret.join("ssh-privatekey")),
            ),
            ("known_hosts", &read(&server.secret.join("known_hosts"))),
        ],
    );
    let ca = readable_dir(mounts.path(), "ca", &[("ca.pem", "")]);
    let name = "e2e-source-ssh";
    let volume = Volume::create(&format!("{name}-ws"));
    std::fs::set_permissions(&volume.path, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let run = play(
        &source_pod(name, &volume.name, &url, &secret, &ca),
        name,
        "source",
    );
    assert_eq!(run.exit_code, 0, "{}", run.logs);
    let outcome =
        PodOutcome::from_message(&read(&volume.path.join(format!("outcomes/{name}.json"))))
            .expect("an outcome");
    assert_eq!(
        outcome.summary.and_then(|s| s.commit).as_deref(),
        Some(fixture.c1.as_str())
    );
    assert_eq!(read(&volume.path.join("source/version")), "1");
}

/// The source pod as the operator renders it (non-root, read-only root, the Secret and
/// a CA mounted), running the builder image with `podman kube play`.
fn source_pod(name: &str, claim: &str, url: &str, secret: &Path, ca: &Path) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  restartPolicy: Never
  automountServiceAccountToken: false
  containers:
  - name: source
    image: {image}
    imagePullPolicy: Always
    args: ["source", "--url", "{url}", "--revision", "v1-annotated",
           "--git-secret", "/var/run/secrets/stagecoach/git"]
    env:
    - {{name: SSL_CERT_FILE, value: /ca/ca.pem}}
    - {{name: STAGECOACH_OUTCOME_FILE, value: /workspace/outcomes/{name}.json}}
    securityContext:
      runAsUser: 65532
      runAsNonRoot: true
      readOnlyRootFilesystem: true
      allowPrivilegeEscalation: false
    volumeMounts:
    - {{name: workspace, mountPath: /workspace}}
    - {{name: git-credentials, mountPath: /var/run/secrets/stagecoach/git, readOnly: true}}
    - {{name: ca, mountPath: /ca, readOnly: true}}
    - {{name: {name}-tmp, mountPath: /tmp}}
  volumes:
  - name: workspace
    persistentVolumeClaim: {{claimName: {claim}}}
  - name: git-credentials
    hostPath: {{path: {secret}, type: Directory}}
  - name: ca
    hostPath: {{path: {ca}, type: Directory}}
  - name: {name}-tmp
    emptyDir: {{}}
"#,
        image = builder_image(),
        secret = secret.display(),
        ca = ca.display(),
    )
}

/// A directory the pod's user can read, with these files.
fn readable_dir(parent: &Path, name: &str, files: &[(&str, &str)]) -> PathBuf {
    let dir = parent.join(name);
    std::fs::create_dir_all(&dir).expect("mkdir");
    for (file, content) in files {
        std::fs::write(dir.join(file), content).expect("write");
        std::fs::set_permissions(dir.join(file), std::fs::Permissions::from_mode(0o644))
            .expect("chmod");
    }
    for d in [parent, &dir] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    dir
}

/// Every file below `dir` that contains `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let t = e.file_type().expect("type");
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                let bytes = std::fs::read(e.path()).expect("read");
                if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                    hits.push(e.path());
                }
            }
        }
    }
    hits
}

#[test]
fn https_with_basic_auth_in_a_pod_leaks_no_secret() {
    let fixture = Fixture::new();
    let tls = fixture.dir.path().join("tls");
    let server = HttpsGit::start(&fixture.repos(), &tls, "alice", SECRET);
    let mounts = tempfile::tempdir().expect("tempdir");
    let ca = readable_dir(mounts.path(), "ca", &[("ca.pem", &read(&server.ca))]);
    let url = server.url("app.git");

    for (name, password, ok) in [
        ("e2e-source-https", SECRET, true),
        ("e2e-source-badpw", "not-the-pa55-e2e", false),
    ] {
        let secret = readable_dir(
            mounts.path(),
            name,
            &[("username", "alice"), ("password", password)],
        );
        let volume = Volume::create(&format!("{name}-ws"));
        std::fs::set_permissions(&volume.path, std::fs::Permissions::from_mode(0o777))
            .expect("chmod");
        let run = play(
            &source_pod(name, &volume.name, &url, &secret, &ca),
            name,
            "source",
        );
        let outcome: PodOutcome =
            PodOutcome::from_message(&read(&volume.path.join(format!("outcomes/{name}.json"))))
                .unwrap_or_else(|| panic!("an outcome; logs:\n{}", run.logs));
        if ok {
            assert_eq!(run.exit_code, 0, "{}", run.logs);
            assert!(outcome.succeeded, "{outcome:#?}");
            let summary = outcome.summary.expect("summary");
            assert_eq!(summary.commit.as_deref(), Some(fixture.c1.as_str()));
            assert_eq!(read(&volume.path.join("source/version")), "1");
            assert!(!volume.path.join("source/app.env").exists());
            let report = read(&volume.path.join("pods/source/report.json"));
            assert!(report.contains("\"resolvedRef\": \"refs/tags/v1-annotated\""));
        } else {
            assert_ne!(run.exit_code, 0, "{}", run.logs);
            assert_eq!(
                outcome.reason.as_deref(),
                Some("GitAuthFailed"),
                "{outcome:#?}"
            );
            assert!(run.logs.contains(&url), "{}", run.logs);
        }
        for line in run.logs.lines() {
            assert!(
                !line.contains(password),
                "the output shows the password: {line}"
            );
        }
        assert_eq!(
            files_containing(&volume.path, password),
            Vec::<PathBuf>::new(),
            "files on the workspace hold the password"
        );
    }
}
