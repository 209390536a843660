//! Root filesystems of images, unpacked with umoci (not with our own code), and compared
//! file by file: paths, types, modes, owners, contents, link targets.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::podman::{check, tool};

/// What is compared of one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// sha256 of a file's content, a symlink's target, or nothing.
    pub content: String,
}

/// Every path under `root` (relative, sorted) with its entry.
pub fn tree(root: &Path) -> BTreeMap<String, Entry> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Entry>) {
    let mut names: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("entry").path())
        .collect();
    names.sort();
    for path in names {
        let meta = fs::symlink_metadata(&path).expect("lstat");
        let ft = meta.file_type();
        let (kind, content) = if ft.is_dir() {
            ("dir", String::new())
        } else if ft.is_symlink() {
            (
                "symlink",
                fs::read_link(&path)
                    .expect("readlink")
                    .display()
                    .to_string(),
            )
        } else if ft.is_file() {
            let mut hasher = Sha256::new();
            let mut file = fs::File::open(&path).expect("open");
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = file.read(&mut buf).expect("read");
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
            ("file", hex::encode(hasher.finalize()))
        } else {
            ("special", format!("{:o}", meta.mode() & 0o170000))
        };
        let rel = path
            .strip_prefix(root)
            .expect("inside")
            .display()
            .to_string();
        out.insert(
            rel,
            Entry {
                kind,
                mode: meta.mode() & 0o7777,
                uid: meta.uid(),
                gid: meta.gid(),
                content,
            },
        );
        if ft.is_dir() {
            walk(root, &path, out);
        }
    }
}

/// Mount points `buildah bud --isolation chroot` leaves behind as empty files and
/// directories in every image it builds with RUN; Docker and BuildKit images lack them.
const BUILDAH_MOUNT_STUBS: [&str; 7] = [
    "dev",
    "proc",
    "sys",
    "run",
    "etc/hosts",
    "etc/hostname",
    "etc/resolv.conf",
];

/// The empty file's sha256, for recognising buildah's stubs.
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// The differences between two trees, one line each (empty when they are equal). Empty
/// mount stubs that only buildah's image has are not differences.
pub fn differences(ours: &Path, theirs: &Path) -> Vec<String> {
    let a = tree(ours);
    let mut b = tree(theirs);
    b.retain(|path, entry| {
        let stub = BUILDAH_MOUNT_STUBS.contains(&path.as_str())
            && (entry.kind == "dir" || entry.content == EMPTY_SHA256);
        !stub || a.contains_key(path)
    });
    let mut diffs = Vec::new();
    for (path, entry) in &a {
        match b.get(path) {
            None => diffs.push(format!("only in ours: {path} {entry:?}")),
            Some(other) if other != entry => diffs.push(format!(
                "differs: {path}\n  ours:   {entry:?}\n  theirs: {other:?}"
            )),
            Some(_) => {}
        }
    }
    for (path, entry) in &b {
        if !a.contains_key(path) {
            diffs.push(format!("only in theirs: {path} {entry:?}"));
        }
    }
    diffs
}

/// An OCI image layout on disk holding one image under the tag `img`.
#[derive(Debug)]
pub struct Layout {
    pub dir: tempfile::TempDir,
}

impl Layout {
    /// Copies an image from the registry.
    pub fn from_registry(reference: &str) -> Layout {
        let dir = tempfile::tempdir().expect("tempdir");
        check(tool("skopeo").args([
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{reference}"),
            &format!("oci:{}:img", dir.path().display()),
        ]));
        Layout { dir }
    }

    /// Copies an image from buildah's local storage.
    pub fn from_buildah(image: &str) -> Layout {
        let dir = tempfile::tempdir().expect("tempdir");
        check(tool("buildah").args([
            "push",
            "--quiet",
            image,
            &format!("oci:{}:img", dir.path().display()),
        ]));
        Layout { dir }
    }

    /// Copies a manifest list from buildah's local storage with every image it lists.
    pub fn from_buildah_manifest(list: &str) -> Layout {
        let dir = tempfile::tempdir().expect("tempdir");
        check(tool("buildah").args([
            "manifest",
            "push",
            "--all",
            "--quiet",
            list,
            &format!("oci:{}:img", dir.path().display()),
        ]));
        Layout { dir }
    }

    /// Copies an image index from the registry with every image it lists.
    pub fn index_from_registry(reference: &str) -> Layout {
        let dir = tempfile::tempdir().expect("tempdir");
        check(tool("skopeo").args([
            "copy",
            "--all",
            "--src-tls-verify=false",
            &format!("docker://{reference}"),
            &format!("oci:{}:img", dir.path().display()),
        ]));
        Layout { dir }
    }

    /// The platforms (`os/arch`) of the image index the layout holds, in its order.
    pub fn platforms(&self) -> Vec<String> {
        let index = self.read_json(self.top()["digest"].as_str().expect("digest"));
        index["manifests"]
            .as_array()
            .expect("an image index")
            .iter()
            .map(|m| {
                format!(
                    "{}/{}",
                    m["platform"]["os"].as_str().unwrap_or_default(),
                    m["platform"]["architecture"].as_str().unwrap_or_default()
                )
            })
            .collect()
    }

    /// Makes the layout's `img` the image the index lists for `arch`, so that the
    /// other methods read that platform's image.
    pub fn select_platform(&self, arch: &str) {
        let digest = self.top()["digest"].as_str().expect("digest").to_string();
        let index = self.read_json(&digest);
        let entry = index["manifests"]
            .as_array()
            .expect("an image index")
            .iter()
            .find(|m| m["platform"]["architecture"] == arch)
            .unwrap_or_else(|| panic!("no {arch} image in {index}"))
            .clone();
        let mut top = entry;
        top["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": "img"});
        let layout = serde_json::json!({"schemaVersion": 2, "manifests": [top]});
        fs::write(self.dir.path().join("index.json"), layout.to_string()).expect("index.json");
    }

    fn top(&self) -> serde_json::Value {
        let index: serde_json::Value =
            serde_json::from_slice(&fs::read(self.dir.path().join("index.json")).expect("index"))
                .expect("json");
        index["manifests"][0].clone()
    }

    /// The image's config blob, as stored (Docker's extensions included).
    pub fn config(&self) -> serde_json::Value {
        let index: serde_json::Value =
            serde_json::from_slice(&fs::read(self.dir.path().join("index.json")).expect("index"))
                .expect("json");
        let manifest = self.read_json(index["manifests"][0]["digest"].as_str().expect("digest"));
        self.read_json(manifest["config"]["digest"].as_str().expect("config"))
    }

    /// The paths in the image's last layer, as its tar lists them (whiteouts included).
    pub fn last_layer_paths(&self) -> Vec<String> {
        let index: serde_json::Value =
            serde_json::from_slice(&fs::read(self.dir.path().join("index.json")).expect("index"))
                .expect("json");
        let manifest = self.read_json(index["manifests"][0]["digest"].as_str().expect("digest"));
        let last = manifest["layers"]
            .as_array()
            .and_then(|l| l.last())
            .expect("a layer");
        let file =
            fs::File::open(self.blob(last["digest"].as_str().expect("digest"))).expect("blob");
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
        archive
            .entries()
            .expect("tar")
            .map(|e| {
                e.expect("entry")
                    .path()
                    .expect("path")
                    .display()
                    .to_string()
            })
            .collect()
    }

    fn blob(&self, digest: &str) -> PathBuf {
        let (alg, hex) = digest.split_once(':').expect("digest");
        self.dir.path().join("blobs").join(alg).join(hex)
    }

    fn read_json(&self, digest: &str) -> serde_json::Value {
        serde_json::from_slice(&fs::read(self.blob(digest)).expect("blob")).expect("json")
    }

    fn write_blob(&self, bytes: &[u8]) -> (String, u64) {
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
        fs::write(self.blob(&digest), bytes).expect("write blob");
        (digest, bytes.len() as u64)
    }

    /// Appends gzip layers (with their diff ids) to the image, as a new manifest.
    pub fn append_layers(&self, layers: &[(PathBuf, String)]) {
        let index_path = self.dir.path().join("index.json");
        let mut index: serde_json::Value =
            serde_json::from_slice(&fs::read(&index_path).expect("index")).expect("json");
        let manifest_digest = index["manifests"][0]["digest"]
            .as_str()
            .expect("digest")
            .to_string();
        let mut manifest = self.read_json(&manifest_digest);
        let config_digest = manifest["config"]["digest"]
            .as_str()
            .expect("config")
            .to_string();
        let mut config = self.read_json(&config_digest);
        for (path, diff_id) in layers {
            let bytes = fs::read(path).expect("layer");
            let (digest, size) = self.write_blob(&bytes);
            manifest["layers"]
                .as_array_mut()
                .expect("layers")
                .push(serde_json::json!({
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": digest,
                    "size": size,
                }));
            config["rootfs"]["diff_ids"]
                .as_array_mut()
                .expect("diff_ids")
                .push(diff_id.clone().into());
        }
        let (digest, size) = self.write_blob(&serde_json::to_vec(&config).expect("config"));
        manifest["config"]["digest"] = digest.into();
        manifest["config"]["size"] = size.into();
        let (digest, size) = self.write_blob(&serde_json::to_vec(&manifest).expect("manifest"));
        index["manifests"][0]["digest"] = digest.into();
        index["manifests"][0]["size"] = size.into();
        fs::write(index_path, serde_json::to_vec(&index).expect("index")).expect("write index");
    }

    /// Unpacks the image's root filesystem with umoci.
    pub fn unpack(&self) -> tempfile::TempDir {
        let bundle = tempfile::tempdir().expect("tempdir");
        let target = bundle.path().join("b");
        check(
            tool("umoci")
                .args([
                    "unpack",
                    "--image",
                    &format!("{}:img", self.dir.path().display()),
                ])
                .arg(&target),
        );
        bundle
    }
}

/// Builds a Dockerfile target with buildah (the reference builder), returns the image name.
pub fn buildah_bud(
    dockerfile: &Path,
    context: &Path,
    target: Option<&str>,
    build_args: &[(&str, &str)],
    tag: &str,
) -> String {
    buildah_bud_with(dockerfile, context, target, build_args, &[], tag)
}

/// [`buildah_bud`] with more of buildah's flags (`--secret id=X,src=FILE`).
pub fn buildah_bud_with(
    dockerfile: &Path,
    context: &Path,
    target: Option<&str>,
    build_args: &[(&str, &str)],
    extra: &[String],
    tag: &str,
) -> String {
    let mut cmd = tool("buildah");
    cmd.args([
        "bud",
        "--quiet",
        "--isolation",
        "chroot",
        "--tls-verify=false",
        "--layers=false",
    ])
    .arg("-f")
    .arg(dockerfile)
    .args(["-t", tag]);
    if let Some(t) = target {
        cmd.args(["--target", t]);
    }
    for (k, v) in build_args {
        cmd.arg("--build-arg").arg(format!("{k}={v}"));
    }
    cmd.args(extra);
    cmd.arg(context);
    // buildah's chroot isolation re-executes itself from a sealed memfd copy, which fails
    // now and then with EBUSY while other containers start beside it (a runtime race,
    // not a build failure): such a run is tried again, anything else fails the test.
    for attempt in 1..=3 {
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            break;
        }
        assert!(
            stderr.contains("sealing memfd copy") && attempt < 3,
            "{cmd:?} failed ({}):\n{}\n{stderr}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
        );
        eprintln!("buildah hit the memfd race (attempt {attempt}); trying again");
    }
    tag.to_string()
}
