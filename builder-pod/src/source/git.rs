//! Checking out a repository at a revision, in-process with gix (the builder image has no
//! git binary): https (basic auth from a mounted Secret), ssh (key from a mounted
//! Secret), `git://`, and local repositories (`file://` or a path), which are opened
//! directly rather than through `git upload-pack`.
//!
//! gix has no ssh client of its own: for `ssh://` it runs `sh -c 'ssh …'` (an
//! OpenSSH-compatible `ssh` with our options needs a shell), so the builder image ships
//! `/bin/sh` (busybox), Debian's OpenSSH client with its libraries, and a passwd entry
//! for its uid (scripts/image.sh).
//!
//! Remote repositories are fetched into a bare scratch database and only the wanted
//! commit's tree is written to the destination: the checkout never holds a `.git`
//! directory, a remote URL or a credential. Fetches are shallow (depth 1) whenever the
//! revision names a ref or a full commit id; a short commit id that no ref points at
//! needs the full history to be found.

use std::fs;
use std::io;
use std::num::NonZeroU32;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use gix::ObjectId;
use gix::bstr::ByteSlice as _;
use gix::credentials::helper::{Action, NextAction};
use gix::credentials::protocol::{Context, Outcome};
use gix::protocol::handshake::Ref;
use gix::refspec::parse::Operation;
use gix::remote::Direction;
use gix::remote::fetch::{Shallow, Tags};
use serde::{Deserialize, Serialize};

/// Why a checkout failed. Every variant names the URL without credentials.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot reach the repository {url} (revision {})", show(revision))]
    Unreachable {
        url: String,
        revision: String,
        #[source]
        source: gix::Error,
    },
    #[error("authentication to {url} failed (revision {})", show(revision))]
    AuthFailed {
        url: String,
        revision: String,
        #[source]
        source: gix::Error,
    },
    #[error("revision {} not found in {url}{}", show(revision), detail.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    RevisionNotFound {
        url: String,
        revision: String,
        detail: Option<String>,
    },
    #[error("{url:?} is not a usable git URL{}", detail.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    InvalidUrl { url: String, detail: Option<String> },
    #[error("fetching {} from {url} failed", show(revision))]
    Fetch {
        url: String,
        revision: String,
        #[source]
        source: gix::Error,
    },
    #[error("cannot check out {commit} of {url}")]
    Checkout {
        url: String,
        commit: String,
        #[source]
        source: gix::Error,
    },
    #[error("submodule {path}: {message}")]
    Submodule { path: String, message: String },
    #[error("the git credentials in {} are unusable: {message}", dir.display())]
    Credentials { dir: PathBuf, message: String },
    #[error("cannot prepare {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The stable reason a build reports for this failure.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Unreachable { .. } => "GitUnreachable",
            Error::AuthFailed { .. } | Error::Credentials { .. } => "GitAuthFailed",
            Error::RevisionNotFound { .. } => "RevisionNotFound",
            Error::InvalidUrl { .. } => "SourceInvalid",
            Error::Fetch { .. }
            | Error::Checkout { .. }
            | Error::Submodule { .. }
            | Error::Io { .. } => "GitFailed",
        }
    }
}

fn show(revision: &str) -> String {
    if revision.is_empty() {
        "the default branch".to_string()
    } else {
        format!("{revision:?}")
    }
}

/// Credentials from a mounted Secret. The password never leaves this value: it is not
/// printed (see the `Debug` impl), not put into URLs and not written anywhere.
#[derive(Clone, Default)]
pub enum Credentials {
    #[default]
    None,
    /// `kubernetes.io/basic-auth`: `username` and `password` (or a token).
    Basic { username: String, password: String },
    /// `kubernetes.io/ssh-auth`: `ssh-privatekey`, plus `known_hosts` when given.
    Ssh {
        key: PathBuf,
        known_hosts: Option<PathBuf>,
    },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::None => f.write_str("None"),
            Credentials::Basic { username, .. } => {
                write!(
                    f,
                    "Basic {{ username: {username:?}, password: <redacted> }}"
                )
            }
            Credentials::Ssh { key, known_hosts } => f
                .debug_struct("Ssh")
                .field("key", key)
                .field("known_hosts", known_hosts)
                .finish(),
        }
    }
}

impl Credentials {
    /// Reads a mounted Secret directory: basic-auth when it has `username`/`password`,
    /// ssh-auth when it has `ssh-privatekey`.
    pub fn from_secret_dir(dir: &Path) -> Result<Credentials> {
        let bad = |message: String| Error::Credentials {
            dir: dir.to_path_buf(),
            message,
        };
        let read = |name: &str| -> Result<Option<String>> {
            match fs::read_to_string(dir.join(name)) {
                Ok(s) => Ok(Some(s.trim_end_matches(['\n', '\r']).to_string())),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(bad(format!("cannot read {name}: {e}"))),
            }
        };
        if dir.join("ssh-privatekey").is_file() {
            let known_hosts = dir.join("known_hosts");
            return Ok(Credentials::Ssh {
                key: dir.join("ssh-privatekey"),
                known_hosts: known_hosts.is_file().then_some(known_hosts),
            });
        }
        match (read("username")?, read("password")?) {
            (Some(username), Some(password)) => Ok(Credentials::Basic { username, password }),
            // A token alone is accepted by most forges with any user name.
            (None, Some(password)) => Ok(Credentials::Basic {
                username: "git".into(),
                password,
            }),
            _ => Err(bad(
                "expected `username` and `password` (kubernetes.io/basic-auth) or \
                 `ssh-privatekey` (kubernetes.io/ssh-auth)"
                    .into(),
            )),
        }
    }
}

/// What to check out.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub url: &'a str,
    /// Branch, tag, full ref name, full or short commit id; empty for the default branch.
    pub revision: &'a str,
    pub submodules: bool,
    pub credentials: &'a Credentials,
    /// An empty directory for the fetched objects (removed by the caller afterwards);
    /// on the workspace volume, which is sized for the build, not in memory.
    pub scratch: &'a Path,
    /// A private directory for a copy of the ssh key (`/tmp`, an emptyDir in the pod):
    /// ssh refuses keys other users could read, and a Secret mount may be group-readable.
    pub private_tmp: &'a Path,
}

/// The checked-out source, as the plan and the status record it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Checkout {
    /// The URL without credentials.
    pub url: String,
    /// The revision as asked for.
    pub revision: String,
    pub commit: String,
    /// The committer time (Unix seconds): the source timestamp of reproducible images.
    pub commit_time: i64,
    /// The full ref name the revision resolved to (`refs/heads/main`, `refs/tags/v1`),
    /// none when it named a commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_ref: Option<String>,
    /// Whether only the commit itself was fetched.
    pub shallow: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub submodules: Vec<SubmoduleCheckout>,
}

/// A submodule checked out at the commit the superproject records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubmoduleCheckout {
    pub path: String,
    pub url: String,
    pub commit: String,
}

/// Where a URL points, once credentials are taken out of it.
struct Target {
    url: gix::Url,
    /// For messages and reports.
    shown: String,
    local: Option<PathBuf>,
}

fn target(raw: &str, credentials: &mut Credentials) -> Result<Target> {
    // gix quotes the whole input in its errors: keep them only when it holds no secret.
    let invalid = |source: Option<gix::Error>| Error::InvalidUrl {
        url: redact(raw),
        detail: source
            .filter(|_| !raw.contains('@'))
            .map(|e| crate::error::chain(&e)),
    };
    let mut url = gix::url::parse(raw.as_bytes().as_bstr()).map_err(|e| invalid(Some(e)))?;
    // Credentials written into an https URL are used like a basic-auth Secret, but kept
    // out of the URL gix sees, so no error message or file can carry them.
    if let Some(password) = url.set_password(None) {
        let username = url.set_user(None).unwrap_or_else(|| "git".into());
        if matches!(credentials, Credentials::None) {
            *credentials = Credentials::Basic { username, password };
        }
    } else if matches!(url.scheme, gix::url::Scheme::Http | gix::url::Scheme::Https) {
        url.set_user(None);
    }
    let shown = url.to_bstring().to_string();
    let local = match url.scheme {
        gix::url::Scheme::File => Some(PathBuf::from(url.path.to_str_lossy().into_owned())),
        gix::url::Scheme::Git
        | gix::url::Scheme::Ssh
        | gix::url::Scheme::Http
        | gix::url::Scheme::Https => None,
        gix::url::Scheme::Ext | gix::url::Scheme::Helper(_) | gix::url::Scheme::HelperUrl(_) => {
            return Err(invalid(None));
        }
    };
    Ok(Target { url, shown, local })
}

/// A URL as it may be shown: without a password, even when it does not parse.
pub fn redact(raw: &str) -> String {
    match gix::url::parse(raw.as_bytes().as_bstr()) {
        Ok(mut url) => {
            url.set_password(None);
            url.to_bstring().to_string()
        }
        Err(_) => match (raw.find("://"), raw.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!("{}://<redacted>@{}", &raw[..scheme], &raw[at + 1..])
            }
            _ => raw.to_string(),
        },
    }
}

/// Checks out `request.revision` of `request.url` into `dest` (created, must be empty).
pub fn checkout(request: &Request, dest: &Path) -> Result<Checkout> {
    let mut credentials = request.credentials.clone();
    let target = target(request.url, &mut credentials)?;
    let job = Job {
        target: &target,
        credentials: &credentials,
        request,
        dest,
    };
    match &target.local {
        Some(path) => job.local(path),
        None => job.remote(),
    }
}

/// One checkout: the repository, its credentials, what to check out, and where.
#[derive(Clone, Copy)]
struct Job<'a> {
    target: &'a Target,
    credentials: &'a Credentials,
    request: &'a Request<'a>,
    dest: &'a Path,
}

/// Opens a repository without reading any user or system git configuration: nothing on
/// the node or in the image may change what is fetched or run. A repository mounted from
/// elsewhere is owned by another user, so gix trusts it less and reads no object over
/// 16 MiB into memory; a loose object (a large file committed and not yet packed) is
/// read whole, so files up to [`OBJECT_BYTES`] are allowed.
fn open_options() -> gix::open::Options {
    gix::open::Options::isolated().config_overrides([format!(
        "gitoxide.objects.allocLimitIfReducedTrust={OBJECT_BYTES}"
    )])
}

/// The largest object a checkout reads into memory.
const OBJECT_BYTES: u64 = 1 << 30;

impl Job<'_> {
    /// A repository on a path: opened directly (gix would run `git upload-pack`).
    fn local(self, path: &Path) -> Result<Checkout> {
        let Job {
            target,
            request,
            dest,
            ..
        } = self;
        let revision = request.revision;
        let unreachable = |source| Error::Unreachable {
            url: target.shown.clone(),
            revision: revision.to_string(),
            source,
        };
        let repo = gix::open_opts(path, open_options()).map_err(unreachable)?;
        let refs = local_refs(&repo, revision).map_err(unreachable)?;
        let not_found = |detail: Option<String>| Error::RevisionNotFound {
            url: target.shown.clone(),
            revision: revision.to_string(),
            detail,
        };
        let (id, resolved_ref) = match decide(revision, &refs)
            .ok_or_else(|| not_found(hint(revision, &ref_names(&repo))))?
        {
            Want::Ref { name, id } => (id, (name != "HEAD").then_some(name)),
            Want::Object(id) => (id, None),
            Want::Search(prefix) => (find_prefix(&repo, &prefix).map_err(not_found)?, None),
        };
        let commit = peel_to_commit(&repo, id).map_err(not_found)?;
        let found = Found {
            commit,
            resolved_ref,
            shallow: false,
        };
        finish(&repo, found, target, self.credentials, request, dest)
    }
}

/// The refs a revision can name, listed from a local repository the way a server
/// advertises them.
/// Every branch and tag of a local repository, for [`hint`] (a remote one lists them
/// all anyway).
fn ref_names(repo: &gix::Repository) -> Vec<Ref> {
    let Ok(platform) = repo.references() else {
        return Vec::new();
    };
    let Ok(all) = platform.all() else {
        return Vec::new();
    };
    all.filter_map(Result::ok)
        .filter_map(|mut r| {
            let object = r.peel_to_id().ok()?.detach();
            Some(Ref::Direct {
                full_ref_name: r.name().as_bstr().to_owned(),
                object,
            })
        })
        .collect()
}

fn local_refs(repo: &gix::Repository, revision: &str) -> gix::Result<Vec<Ref>> {
    let mut refs = Vec::new();
    if let Ok(mut head) = repo.head()
        && let Some(id) = head.try_peel_to_id()?
    {
        let id = id.detach();
        refs.push(match repo.head_name()? {
            Some(name) => Ref::Symbolic {
                full_ref_name: "HEAD".into(),
                target: name.as_bstr().to_owned(),
                tag: None,
                object: id,
            },
            None => Ref::Direct {
                full_ref_name: "HEAD".into(),
                object: id,
            },
        });
    }
    let mut names = vec![
        format!("refs/heads/{revision}"),
        format!("refs/tags/{revision}"),
    ];
    if revision.starts_with("refs/") {
        names.push(revision.to_string());
    }
    for name in names {
        let Ok(Some(mut reference)) = repo.try_find_reference(name.as_str()) else {
            continue;
        };
        let id = reference.peel_to_id()?.detach();
        refs.push(Ref::Direct {
            full_ref_name: reference.name().as_bstr().to_owned(),
            object: id,
        });
    }
    Ok(refs)
}

/// What to fetch for a revision, decided from the refs the server advertises.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Want {
    /// An advertised ref (a branch, a tag, `HEAD`): fetched by name, shallow.
    Ref { name: String, id: ObjectId },
    /// A full object id: fetched by id, shallow where the server allows it.
    Object(ObjectId),
    /// A short commit id no ref points at: it can only be found in the full history.
    Search(String),
}

/// Git's order for `clone --branch`: a full ref name, a branch, then a tag; then commit
/// ids. None when nothing can match.
/// What to say of a revision that names no branch, tag or commit there: the nearest
/// branch or tag, else the branches (a few), so a typo or a tag taken for a branch shows.
fn hint(revision: &str, refs: &[Ref]) -> Option<String> {
    let names: Vec<&str> = refs
        .iter()
        .filter_map(|r| {
            let name = r.unpack().0.to_str().ok()?;
            name.strip_prefix("refs/heads/")
                .or_else(|| name.strip_prefix("refs/tags/"))
        })
        .collect();
    if let Some(near) = stagecoach_plan::suggest::nearest(revision, names.iter().copied()) {
        return Some(format!(
            "it is no branch, tag or commit there; did you mean {near:?}?"
        ));
    }
    let branches: Vec<&str> = refs
        .iter()
        .filter_map(|r| r.unpack().0.to_str().ok()?.strip_prefix("refs/heads/"))
        .take(5)
        .collect();
    (!branches.is_empty()).then(|| {
        format!(
            "it is no branch, tag or commit there (a branch, a tag, or a commit SHA); branches: {}",
            branches.join(", ")
        )
    })
}

fn decide(revision: &str, refs: &[Ref]) -> Option<Want> {
    let find = |name: &str| {
        refs.iter().find_map(|r| {
            let (ref_name, target, peeled) = r.unpack();
            (ref_name == name).then(|| (r, peeled.or(target)))
        })
    };
    if revision.is_empty() {
        let (head, id) = find("HEAD")?;
        let name = match head {
            Ref::Symbolic { target, .. } => target.to_string(),
            _ => "HEAD".to_string(),
        };
        return Some(Want::Ref {
            name,
            id: id?.to_owned(),
        });
    }
    let mut candidates = vec![
        format!("refs/heads/{revision}"),
        format!("refs/tags/{revision}"),
    ];
    if revision.starts_with("refs/") {
        candidates.insert(0, revision.to_string());
    }
    for name in candidates {
        if let Some((_, Some(id))) = find(&name) {
            return Some(Want::Ref {
                name,
                id: id.to_owned(),
            });
        }
    }
    let is_hex = revision.len() >= 4 && revision.bytes().all(|b| b.is_ascii_hexdigit());
    if !is_hex {
        return None;
    }
    let lower = revision.to_ascii_lowercase();
    if let Ok(id) = ObjectId::from_hex(lower.as_bytes()) {
        return Some(Want::Object(id));
    }
    // A short id of an advertised tip needs no search.
    let mut tips: Vec<ObjectId> = refs
        .iter()
        .filter_map(|r| {
            let (_, target, peeled) = r.unpack();
            peeled.or(target).map(ToOwned::to_owned)
        })
        .filter(|id| id.to_hex().to_string().starts_with(&lower))
        .collect();
    tips.sort();
    tips.dedup();
    match tips.as_slice() {
        [one] => Some(Want::Object(*one)),
        _ => Some(Want::Search(lower)),
    }
}

fn find_prefix(repo: &gix::Repository, prefix: &str) -> Result<ObjectId, Option<String>> {
    let parsed = gix::hash::Prefix::from_hex(prefix).map_err(|e| Some(e.to_string()))?;
    match repo.objects.lookup_prefix(parsed, None) {
        Ok(Some(Ok(id))) => Ok(id),
        Ok(Some(Err(()))) => Err(Some("the short commit id is ambiguous".into())),
        Ok(None) => Err(None),
        Err(e) => Err(Some(e.to_string())),
    }
}

fn peel_to_commit(repo: &gix::Repository, id: ObjectId) -> Result<ObjectId, Option<String>> {
    let object = repo.find_object(id).map_err(|_| None)?;
    object
        .peel_to_commit()
        .map(|c| c.id)
        .map_err(|_| Some(format!("{id} is not a commit")))
}

impl Job<'_> {
    /// A repository behind a URL: a shallow fetch where the server allows it.
    fn remote(self) -> Result<Checkout> {
        let Job {
            target,
            credentials,
            request,
            dest,
        } = self;
        let revision = request.revision;
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::Io { path, source }
        };
        let git_dir = request.scratch.join("objects.git");
        fs::create_dir_all(&git_dir).map_err(io_err(&git_dir))?;
        let mut repo = gix::ThreadSafeRepository::init_opts(
            &git_dir,
            gix::create::Kind::Bare,
            gix::create::Options::default(),
            open_options(),
        )
        .map_err(|source| Error::Fetch {
            url: target.shown.clone(),
            revision: revision.to_string(),
            source,
        })?
        .to_thread_local();
        let _key = configure_ssh(&mut repo, credentials, request.private_tmp)?;
        let remote = Remote {
            repo: &repo,
            target,
            credentials,
            revision,
        };

        let refs = remote.list_refs()?;
        let not_found = |detail| Error::RevisionNotFound {
            url: target.shown.clone(),
            revision: revision.to_string(),
            detail,
        };
        let want = decide(revision, &refs).ok_or_else(|| not_found(hint(revision, &refs)))?;
        let (id, resolved_ref, shallow) = match want {
            Want::Ref { name, id } => {
                let fetched = remote.fetch(&[name.as_str()], true)?;
                // The ref may have moved since it was listed; what was fetched counts.
                let id = fetched
                    .mappings
                    .iter()
                    .find(|m| m.remote.as_name() == Some(name.as_bytes().as_bstr()))
                    .and_then(|m| m.remote.peeled_id())
                    .map(ToOwned::to_owned)
                    .unwrap_or(id);
                (id, (name != "HEAD").then_some(name), true)
            }
            Want::Object(id) => {
                let hex = id.to_string();
                match remote.fetch(&[hex.as_str()], true) {
                    Ok(_) => (id, None, true),
                    // Servers that allow only advertised tips (protocol v0/v1, dumb HTTP)
                    // refuse an id; the full history has it if anything does.
                    Err(Error::Fetch { .. }) => {
                        remote.fetch_everything()?;
                        (id, None, false)
                    }
                    Err(e) => return Err(e),
                }
            }
            Want::Search(prefix) => {
                remote.fetch_everything()?;
                (find_prefix(&repo, &prefix).map_err(not_found)?, None, false)
            }
        };
        let commit = peel_to_commit(&repo, id).map_err(not_found)?;
        let found = Found {
            commit,
            resolved_ref,
            shallow,
        };
        finish(&repo, found, target, credentials, request, dest)
    }
}

/// One remote, with what every connection to it needs. Each operation opens its own
/// connection: gix consumes a connection per ref listing or fetch.
struct Remote<'a> {
    repo: &'a gix::Repository,
    target: &'a Target,
    credentials: &'a Credentials,
    revision: &'a str,
}

impl Remote<'_> {
    /// The refs a revision may name: `HEAD`, branches, tags (and a full ref name asked
    /// for), as the server advertises them, peeled.
    fn list_refs(&self) -> Result<Vec<Ref>> {
        let mut specs = vec![
            "HEAD",
            "+refs/heads/*:refs/heads/*",
            "+refs/tags/*:refs/tags/*",
        ];
        if self.revision.starts_with("refs/") {
            specs.push(self.revision);
        }
        let remote = self.remote()?;
        let mut connection = remote
            .connect(Direction::Fetch)
            .map_err(|e| self.failure(e, false))?;
        self.authenticate(&mut connection);
        let (ref_map, _) = connection
            .ref_map(gix::progress::Discard, self.options(&specs)?)
            .map_err(|e| self.failure(e, false))?;
        Ok(ref_map.remote_refs)
    }

    /// Fetches what the refspecs name, without writing any ref.
    fn fetch(&self, specs: &[&str], shallow: bool) -> Result<gix::remote::fetch::RefMap> {
        let remote = self.remote()?;
        let mut connection = remote
            .connect(Direction::Fetch)
            .map_err(|e| self.failure(e, true))?;
        self.authenticate(&mut connection);
        let depth = NonZeroU32::new(1).expect("one is not zero");
        let outcome = connection
            .prepare_fetch(gix::progress::Discard, self.options(specs)?)
            .map_err(|e| self.failure(e, true))?
            .with_shallow(if shallow {
                Shallow::DepthAtRemote(depth)
            } else {
                Shallow::NoChange
            })
            .receive(gix::progress::Discard, &AtomicBool::new(false))
            .map_err(|e| self.failure(e, true))?;
        Ok(outcome.ref_map)
    }

    /// Every branch and tag with full history: the last resort for a commit id that
    /// cannot be fetched directly.
    fn fetch_everything(&self) -> Result<()> {
        self.fetch(
            &["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"],
            false,
        )
        .map(drop)
    }

    fn remote(&self) -> Result<gix::Remote<'_>> {
        self.repo
            .remote_at(self.target.url.clone())
            .map(|r| r.with_fetch_tags(Tags::None))
            .map_err(|source| Error::InvalidUrl {
                url: self.target.shown.clone(),
                detail: Some(crate::error::chain(&source)),
            })
    }

    fn options(&self, specs: &[&str]) -> Result<gix::remote::ref_map::Options> {
        let mut extra_refspecs = Vec::new();
        for spec in specs {
            let parsed =
                gix::refspec::parse(spec.as_bytes().as_bstr(), Operation::Fetch).map_err(|e| {
                    Error::RevisionNotFound {
                        url: self.target.shown.clone(),
                        revision: self.revision.to_string(),
                        detail: Some(format!("{spec:?} is not a valid refspec: {e}")),
                    }
                })?;
            extra_refspecs.push(parsed.to_owned());
        }
        Ok(gix::remote::ref_map::Options {
            extra_refspecs,
            ..Default::default()
        })
    }

    /// Answers credential requests from the Secret only, never from git configuration
    /// or a prompt (a pod has no terminal).
    fn authenticate<T>(&self, connection: &mut gix::remote::Connection<'_, '_, '_, T>)
    where
        T: gix::protocol::transport::client::blocking_io::Transport,
    {
        let credentials = self.credentials.clone();
        connection.set_credentials(move |action| Ok(answer(&credentials, action)));
    }

    /// Sorts a gix failure into the stable reasons. Before the server answered, anything
    /// but an authentication problem means the repository could not be reached.
    fn failure(&self, source: gix::Error, connected: bool) -> Error {
        let url = self.target.shown.clone();
        let revision = self.revision.to_string();
        if source.is_unauthenticated() || source.is_permission_denied() {
            Error::AuthFailed {
                url,
                revision,
                source,
            }
        } else if !connected || is_network(&source) {
            Error::Unreachable {
                url,
                revision,
                source,
            }
        } else {
            Error::Fetch {
                url,
                revision,
                source,
            }
        }
    }
}

fn is_network(error: &gix::Error) -> bool {
    use io::ErrorKind::*;
    error.iter_errors().any(|e| {
        e.downcast_ref::<io::Error>().is_some_and(|e| {
            matches!(
                e.kind(),
                ConnectionRefused
                    | ConnectionReset
                    | ConnectionAborted
                    | NotConnected
                    | TimedOut
                    | HostUnreachable
                    | NetworkUnreachable
                    | NetworkDown
                    | BrokenPipe
                    | UnexpectedEof
            )
        })
    })
}

fn answer(credentials: &Credentials, action: Action) -> Option<Outcome> {
    match (credentials, action) {
        (Credentials::Basic { username, password }, Action::Get(context)) => Some(Outcome {
            identity: gix::sec::identity::Account {
                username: username.clone(),
                password: password.clone(),
                oauth_refresh_token: None,
            },
            next: NextAction::from(Context {
                // Nothing to store or erase later: keep the context free of secrets.
                password: None,
                ..context
            }),
        }),
        _ => None,
    }
}

/// The ssh program gix runs for `ssh://` URLs, told to use only the Secret's key and
/// known hosts. The key is copied to a private file first (removed when the returned
/// guard drops): ssh refuses a key file that others may read.
fn configure_ssh(
    repo: &mut gix::Repository,
    credentials: &Credentials,
    private_tmp: &Path,
) -> Result<Option<PrivateKey>> {
    let Credentials::Ssh { key, known_hosts } = credentials else {
        return Ok(None);
    };
    let copy = PrivateKey::copy(key, private_tmp)?;
    let mut command = format!(
        "ssh -i {} -o IdentitiesOnly=yes -o BatchMode=yes",
        quote(&copy.0)
    );
    match known_hosts {
        Some(file) => command.push_str(&format!(
            " -o StrictHostKeyChecking=yes -o UserKnownHostsFile={}",
            quote(file)
        )),
        // Without known hosts the host key cannot be checked, as with Tekton and
        // Shipwright when the Secret has none.
        None => command.push_str(" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"),
    }
    let mut config = repo.config_snapshot_mut();
    config
        .set_raw_value(gix::config::tree::Core::SSH_COMMAND, command.as_str())
        .map_err(|e| Error::Credentials {
            dir: key.clone(),
            message: e.to_string(),
        })?;
    config.commit().map_err(|e| Error::Credentials {
        dir: key.clone(),
        message: e.to_string(),
    })?;
    Ok(Some(copy))
}

/// A private copy of an ssh key, deleted on drop.
struct PrivateKey(PathBuf);

impl PrivateKey {
    fn copy(key: &Path, dir: &Path) -> Result<PrivateKey> {
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::Io { path, source }
        };
        let bytes = fs::read(key).map_err(io_err(key))?;
        let path = dir.join(format!("stagecoach-ssh-key-{}", std::process::id()));
        let _ = fs::remove_file(&path);
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err(&path))?;
        io::Write::write_all(&mut file, &bytes).map_err(io_err(&path))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).map_err(io_err(&path))?;
        Ok(PrivateKey(path))
    }
}

impl Drop for PrivateKey {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// Single-quotes a path for the shell gix runs the ssh command with.
fn quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

/// Writes the commit's tree into `dest` (no `.git`): files, symlinks as symlinks,
/// executable bits, `.gitattributes` conversions as git applies them.
fn write_tree(
    repo: &gix::Repository,
    commit: ObjectId,
    dest: &Path,
    url: &str,
) -> Result<gix::index::File> {
    let failed = |source| Error::Checkout {
        url: url.to_string(),
        commit: commit.to_string(),
        source,
    };
    fs::create_dir_all(dest).map_err(|source| Error::Io {
        path: dest.to_path_buf(),
        source,
    })?;
    let tree = repo
        .find_commit(commit)
        .and_then(|c| c.tree_id())
        .map_err(failed)?;
    let mut index = repo.index_from_tree(&tree).map_err(failed)?;
    let mut options = repo
        .checkout_options(gix::worktree::stack::state::attributes::Source::IdMapping)
        .map_err(failed)?;
    options.destination_is_initially_empty = true;
    let objects = repo
        .objects
        .clone()
        .into_arc()
        .map_err(|e| failed(gix::Error::from_error(e)))?;
    let outcome = gix::worktree::state::checkout(
        &mut index,
        dest,
        objects,
        &gix::progress::Discard,
        &gix::progress::Discard,
        &AtomicBool::new(false),
        options,
    )
    .map_err(failed)?;
    if let Some(e) = outcome.errors.first() {
        return Err(Error::Checkout {
            url: url.to_string(),
            commit: commit.to_string(),
            source: gix::Error::from_error(io::Error::other(format!("{}: {}", e.path, e.error))),
        });
    }
    Ok(index)
}

/// The commit a revision resolved to.
struct Found {
    commit: ObjectId,
    resolved_ref: Option<String>,
    shallow: bool,
}

/// Writes the tree, records the commit, and checks out submodules when asked.
fn finish(
    repo: &gix::Repository,
    found: Found,
    target: &Target,
    credentials: &Credentials,
    request: &Request,
    dest: &Path,
) -> Result<Checkout> {
    let Found {
        commit,
        resolved_ref,
        shallow,
    } = found;
    let index = write_tree(repo, commit, dest, &target.shown)?;
    let time = repo
        .find_commit(commit)
        .and_then(|c| c.time())
        .map_err(|source| Error::Checkout {
            url: target.shown.clone(),
            commit: commit.to_string(),
            source,
        })?;
    let submodules = if request.submodules {
        submodules(repo, &index, target, credentials, request, dest)?
    } else {
        Vec::new()
    };
    Ok(Checkout {
        url: target.shown.clone(),
        revision: request.revision.to_string(),
        commit: commit.to_string(),
        commit_time: time.seconds,
        resolved_ref,
        shallow,
        submodules,
    })
}

/// Checks out every submodule `.gitmodules` names and the tree records (as a gitlink)
/// at the recorded commit, recursively. Relative URLs resolve against the superproject's
/// URL; credentials go only to the superproject's host; local submodules only from a
/// local superproject (git's `protocol.file.allow=user` for the same reason).
fn submodules(
    repo: &gix::Repository,
    index: &gix::index::File,
    target: &Target,
    credentials: &Credentials,
    request: &Request,
    dest: &Path,
) -> Result<Vec<SubmoduleCheckout>> {
    let Some(entry) = index.entry_by_path(".gitmodules".into()) else {
        return Ok(Vec::new());
    };
    let failed = |path: &str, message: String| Error::Submodule {
        path: path.to_string(),
        message,
    };
    let data = repo
        .find_object(entry.id)
        .map_err(|e| failed(".gitmodules", e.to_string()))?
        .detach()
        .data;
    let file = gix::submodule::File::from_bytes(&data, None, &Default::default())
        .map_err(|e| failed(".gitmodules", e.to_string()))?;
    let names: Vec<_> = file.names().map(ToOwned::to_owned).collect();
    let mut out = Vec::new();
    for (n, name) in names.iter().enumerate() {
        let shown_name = name.to_string();
        let path = file
            .path(name.as_ref())
            .map_err(|e| failed(&shown_name, e.to_string()))?
            .to_string();
        let gitlink = index
            .entry_by_path(path.as_bytes().as_bstr())
            .filter(|e| e.mode == gix::index::entry::Mode::COMMIT);
        // Git checks out only submodules the tree records.
        let Some(gitlink) = gitlink else { continue };
        let raw = file
            .config()
            .string_by("submodule", Some(name.as_ref()), "url")
            .ok_or_else(|| failed(&path, "no url in .gitmodules".into()))?
            .to_string();
        let url = resolve_relative(&target.shown, &raw);
        let mut sub_credentials = Credentials::None;
        let sub = gix::url::parse(url.as_bytes().as_bstr())
            .map_err(|e| failed(&path, format!("{url:?} is not a usable git URL: {e}")))?;
        if sub.scheme == gix::url::Scheme::File && target.local.is_none() {
            return Err(failed(
                &path,
                "a local submodule URL in a remote repository is refused".into(),
            ));
        }
        if sub.host() == target.url.host() && sub.scheme == target.url.scheme {
            sub_credentials = credentials.clone();
        }
        let revision = gitlink.id.to_string();
        let scratch = request.scratch.join("modules").join(n.to_string());
        let nested = Request {
            url: &url,
            revision: &revision,
            submodules: true,
            credentials: &sub_credentials,
            scratch: &scratch,
            private_tmp: request.private_tmp,
        };
        let done =
            checkout(&nested, &dest.join(&path)).map_err(|e| failed(&path, e.to_string()))?;
        out.push(SubmoduleCheckout {
            path: path.clone(),
            url: done.url,
            commit: done.commit,
        });
        for inner in done.submodules {
            out.push(SubmoduleCheckout {
                path: format!("{path}/{}", inner.path),
                ..inner
            });
        }
    }
    Ok(out)
}

/// Git's rule for `./x` and `../x` submodule URLs: relative to the superproject's URL,
/// each `../` dropping one path component (never the host).
fn resolve_relative(base: &str, url: &str) -> String {
    if !(url.starts_with("./") || url.starts_with("../")) {
        return url.to_string();
    }
    let mut base = base.trim_end_matches('/').to_string();
    let path_start = match base.find("://") {
        Some(i) => base[i + 3..].find('/').map_or(base.len(), |j| i + 3 + j),
        // scp-like `user@host:path`, or a local path.
        None => base.find(':').map_or(0, |i| i + 1),
    };
    let mut rest = url;
    loop {
        if let Some(r) = rest.strip_prefix("./") {
            rest = r;
        } else if let Some(r) = rest.strip_prefix("../") {
            rest = r;
            let cut = base[path_start..]
                .rfind('/')
                .map_or(path_start, |i| path_start + i);
            base.truncate(cut);
        } else {
            break;
        }
    }
    if base.is_empty() || base.ends_with(':') {
        format!("{base}{rest}")
    } else {
        format!("{base}/{rest}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(c: char) -> ObjectId {
        ObjectId::from_hex(c.to_string().repeat(40).as_bytes()).expect("hex")
    }

    fn refs() -> Vec<Ref> {
        vec![
            Ref::Symbolic {
                full_ref_name: "HEAD".into(),
                target: "refs/heads/main".into(),
                tag: None,
                object: id('a'),
            },
            Ref::Direct {
                full_ref_name: "refs/heads/main".into(),
                object: id('a'),
            },
            Ref::Direct {
                full_ref_name: "refs/heads/v1".into(),
                object: id('b'),
            },
            Ref::Direct {
                full_ref_name: "refs/tags/v1".into(),
                object: id('c'),
            },
            Ref::Peeled {
                full_ref_name: "refs/tags/v2".into(),
                tag: id('d'),
                object: id('e'),
            },
            Ref::Direct {
                full_ref_name: "refs/heads/cafe".into(),
                object: id('f'),
            },
        ]
    }

    #[test]
    fn revisions_resolve_like_git_clone_branch() {
        let by_ref = |name: &str, c: char| {
            Some(Want::Ref {
                name: name.into(),
                id: id(c),
            })
        };
        let cases = [
            ("", by_ref("refs/heads/main", 'a')),
            ("main", by_ref("refs/heads/main", 'a')),
            // A branch wins over a tag of the same name, as with `git clone --branch`.
            ("v1", by_ref("refs/heads/v1", 'b')),
            ("refs/tags/v1", by_ref("refs/tags/v1", 'c')),
            // Annotated tags are followed to their commit.
            ("v2", by_ref("refs/tags/v2", 'e')),
            // A branch that looks like a short commit id is still the branch.
            ("cafe", by_ref("refs/heads/cafe", 'f')),
            (&"9".repeat(40), Some(Want::Object(id('9')))),
            (&"A".repeat(40), Some(Want::Object(id('a')))),
            // A short id of an advertised tip needs no search.
            ("eeeeeee", Some(Want::Object(id('e')))),
            ("1234abc", Some(Want::Search("1234abc".into()))),
            ("123", None),
            ("nope", None),
            ("refs/heads/nope", None),
        ];
        for (revision, want) in cases {
            assert_eq!(decide(revision, &refs()), want, "{revision:?}");
        }
        assert_eq!(decide("", &[]), None, "an empty repository has no HEAD");
    }

    #[test]
    fn a_revision_not_found_names_the_nearest_branch_or_tag_or_the_branches() {
        assert_eq!(
            hint("mian", &refs()).as_deref(),
            Some("it is no branch, tag or commit there; did you mean \"main\"?")
        );
        assert_eq!(
            hint("cafee", &refs()).as_deref(),
            Some("it is no branch, tag or commit there; did you mean \"cafe\"?")
        );
        let listed = hint("release-2024", &refs()).expect("branches");
        assert!(listed.ends_with("branches: main, v1, cafe"), "{listed}");
        assert_eq!(hint("x", &[]), None);
    }

    #[test]
    fn relative_submodule_urls() {
        for (base, url, want) in [
            (
                "git://h:9418/super.git",
                "../sub.git",
                "git://h:9418/sub.git",
            ),
            ("https://h/org/super/", "./sub", "https://h/org/super/sub"),
            ("https://h/org/super", "../../x.git", "https://h/x.git"),
            (
                "git@host:org/super.git",
                "../lib.git",
                "git@host:org/lib.git",
            ),
            ("file:///srv/super.git", "../sub.git", "file:///srv/sub.git"),
            ("/srv/repos/super.git", "../sub.git", "/srv/repos/sub.git"),
            (
                "https://h/super",
                "https://other/x.git",
                "https://other/x.git",
            ),
        ] {
            assert_eq!(resolve_relative(base, url), want, "{base} + {url}");
        }
    }

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact("https://alice:hunter2@example.com/r.git"),
            "https://alice@example.com/r.git"
        );
        assert_eq!(
            redact("ht!tp://alice:hunter2@x/r"),
            "ht!tp://<redacted>@x/r"
        );
        let mut credentials = Credentials::None;
        let t = target("https://alice:hunter2@example.com/r.git", &mut credentials).expect("url");
        assert_eq!(t.shown, "https://example.com/r.git");
        assert!(
            matches!(&credentials, Credentials::Basic { username, password } if username == "alice" && password == "hunter2")
        );
        assert!(!format!("{credentials:?}").contains("hunter2"));
        match target("ht!tp://alice:hunter2@x/r", &mut Credentials::None) {
            Err(e) => assert!(!e.to_string().contains("hunter2"), "{e}"),
            Ok(_) => panic!("not a URL"),
        }
    }

    #[test]
    fn credentials_from_secret_directories() {
        let dir = tempfile::tempdir().expect("tempdir");
        let basic = dir.path().join("basic");
        fs::create_dir(&basic).expect("mkdir");
        fs::write(basic.join("username"), "alice\n").expect("write");
        fs::write(basic.join("password"), "hunter2\n").expect("write");
        match Credentials::from_secret_dir(&basic).expect("basic") {
            Credentials::Basic { username, password } => {
                assert_eq!((username.as_str(), password.as_str()), ("alice", "hunter2"))
            }
            other => panic!("{other:?}"),
        }
        let ssh = dir.path().join("ssh");
        fs::create_dir(&ssh).expect("mkdir");
        fs::write(ssh.join("ssh-privatekey"), "key").expect("write");
        assert!(matches!(
            Credentials::from_secret_dir(&ssh).expect("ssh"),
            Credentials::Ssh {
                known_hosts: None,
                ..
            }
        ));
        let empty = dir.path().join("empty");
        fs::create_dir(&empty).expect("mkdir");
        let e = Credentials::from_secret_dir(&empty).expect_err("nothing in it");
        assert_eq!(e.reason(), "GitAuthFailed");
    }
}
