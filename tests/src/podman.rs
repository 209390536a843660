//! Running build pods with `podman kube play` against the local registry, the way the
//! local runner does, with the project's container configuration.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The local registry the tests push to and pull from.
pub fn registry() -> String {
    std::env::var("REGISTRY").unwrap_or_else(|_| "127.0.0.1:5000".into())
}

/// The builder image reference (built and pushed by `scripts/image.sh builder`).
pub fn builder_image() -> String {
    std::env::var("BUILDER_IMAGE")
        .unwrap_or_else(|_| format!("{}/stagecoach/builder:dev", registry()))
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A podman command with the project's containers.conf and registries.conf.
pub fn podman() -> Command {
    tool("podman")
}

/// skopeo, buildah and umoci with the same configuration as podman.
pub fn tool(name: &str) -> Command {
    let root = repo_root();
    let mut cmd = Command::new(name);
    cmd.env("CONTAINERS_CONF", root.join("containers/containers.conf"))
        .env(
            "CONTAINERS_REGISTRIES_CONF",
            root.join("containers/registries.conf"),
        );
    cmd
}

/// The digest of the manifest a reference names for an architecture (linux): the
/// index's entry for it, or the manifest itself when the reference names no index.
pub fn platform_digest(reference: &str, arch: &str) -> String {
    use sha2::Digest as _;
    let out = check(tool("skopeo").args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{reference}"),
    ]));
    let raw: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a manifest");
    match raw["manifests"].as_array() {
        Some(entries) => entries
            .iter()
            .find(|m| m["platform"]["architecture"] == arch && m["platform"]["os"] == "linux")
            .and_then(|m| m["digest"].as_str())
            .unwrap_or_else(|| panic!("{reference} has no linux/{arch} image"))
            .to_string(),
        None => format!("sha256:{}", hex::encode(sha2::Sha256::digest(&out.stdout))),
    }
}

/// What `image` prints run on `platform` (`os/arch`; a foreign one under qemu).
pub fn run_on(platform: &str, image: &str) -> String {
    let out = check(podman().args([
        "run",
        "--rm",
        "--quiet",
        "--platform",
        platform,
        "--tls-verify=false",
        image,
    ]));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command, panicking with its output when it fails.
pub fn check(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A podman volume standing for a build's workspace claim; removed on drop.
#[derive(Debug)]
pub struct Volume {
    pub name: String,
    pub path: PathBuf,
}

impl Volume {
    pub fn create(name: &str) -> Volume {
        let _ = podman().args(["volume", "rm", "-f", name]).output();
        check(podman().args(["volume", "create", name]));
        let out = check(podman().args(["volume", "inspect", name, "--format", "{{.Mountpoint}}"]));
        let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        Volume {
            name: name.into(),
            path,
        }
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        let _ = podman().args(["volume", "rm", "-f", &self.name]).output();
    }
}

/// The result of one pod's main container.
#[derive(Debug)]
pub struct PodRun {
    pub exit_code: i32,
    pub logs: String,
}

/// Plays a pod manifest, waits for its main container, returns its exit code and logs,
/// and removes the pod.
pub fn play(manifest: &str, pod: &str, container: &str) -> PodRun {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("pod.yaml");
    std::fs::write(&file, manifest).expect("manifest");
    let _ = podman().args(["kube", "down"]).arg(&file).output();
    let played = podman()
        .args(["kube", "play", "--network", "host", "--tls-verify=false"])
        .arg(&file)
        .output()
        .expect("podman kube play");
    let name = format!("{pod}-{container}");
    let result = if played.status.success() {
        check(podman().args(["wait", &name]));
        let inspect = check(podman().args(["inspect", &name, "--format", "{{.State.ExitCode}}"]));
        let logs = podman().args(["logs", &name]).output().expect("logs");
        PodRun {
            exit_code: String::from_utf8_lossy(&inspect.stdout)
                .trim()
                .parse()
                .unwrap_or(-1),
            logs: format!(
                "{}{}",
                String::from_utf8_lossy(&logs.stdout),
                String::from_utf8_lossy(&logs.stderr)
            ),
        }
    } else {
        PodRun {
            exit_code: -1,
            logs: format!(
                "kube play failed:\n{}{}",
                String::from_utf8_lossy(&played.stdout),
                String::from_utf8_lossy(&played.stderr)
            ),
        }
    };
    let _ = podman().args(["kube", "down"]).arg(&file).output();
    result
}
