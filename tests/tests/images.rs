//! The two images `make` packages with Stagecoach's own image code (scripts/image.sh):
//! FROM scratch, one static binary and a CA bundle (the builder adds an ssh client for
//! ssh:// sources), non-root, image indexes of their platform, and they run.

use std::path::Path;

use stagecoach_e2e::podman::{builder_image, check, platform_digest, podman, registry};
use stagecoach_e2e::rootfs::Layout;

fn operator_image() -> String {
    format!("{}/stagecoach/operator:dev", registry())
}

/// Every path in the image's filesystem, directories included.
fn paths(image: &str) -> Vec<String> {
    let layout = Layout::from_registry(image);
    let bundle = layout.unpack();
    let root = bundle.path().join("b/rootfs");
    let mut found = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("dir").flatten() {
            let path = entry.path();
            found.push(
                path.strip_prefix(&root)
                    .expect("inside")
                    .display()
                    .to_string(),
            );
            if entry.file_type().expect("type").is_dir() {
                stack.push(path);
            }
        }
    }
    found.sort();
    found
}

/// Both images are indexes of the platforms their binaries can be made for here:
/// linux/amd64 (the arm64 ones are built by a cluster from images/*.Dockerfile).
#[test]
fn the_images_are_indexes_of_their_platforms() {
    for image in [operator_image(), builder_image()] {
        assert_eq!(
            Layout::index_from_registry(&image).platforms(),
            ["linux/amd64"]
        );
    }
}

#[test]
fn the_images_hold_their_binary_the_ca_bundle_and_for_the_builder_an_ssh_client() {
    let operator = paths(&operator_image());
    assert_eq!(
        operator,
        [
            "etc",
            "etc/ssl",
            "etc/ssl/certs",
            "etc/ssl/certs/ca-certificates.crt",
            "stagecoach"
        ]
    );
    let builder = paths(&builder_image());
    for path in [
        "stagecoach-builder",
        "etc/ssl/certs/ca-certificates.crt",
        "bin/sh",
        "usr/bin/ssh",
        "etc/passwd",
    ] {
        assert!(builder.iter().any(|p| p == path), "{path} in {builder:?}");
    }
    // Beside those: only ssh's shared libraries, and the directories that hold it all.
    let extra: Vec<&String> = builder
        .iter()
        .filter(|p| {
            ![
                "stagecoach-builder",
                "bin",
                "bin/sh",
                "usr",
                "usr/bin",
                "usr/bin/ssh",
                "etc",
                "etc/passwd",
                "etc/group",
                "etc/ssl",
                "etc/ssl/certs",
                "etc/ssl/certs/ca-certificates.crt",
                "lib",
                "lib64",
                "lib/x86_64-linux-gnu",
            ]
            .contains(&p.as_str())
                && !p.contains(".so")
        })
        .collect();
    assert!(extra.is_empty(), "unexpected files: {extra:?}");
    for (image, binary) in [
        (builder_image(), "stagecoach-builder"),
        (operator_image(), "stagecoach"),
    ] {
        let config = Layout::from_registry(&image).config();
        assert_eq!(config["config"]["User"], "65532:65532", "{image}");
        assert_eq!(
            config["config"]["Entrypoint"],
            serde_json::json!([format!("/{binary}")])
        );
    }
}

#[test]
fn the_operator_image_runs_and_prints_the_crd() {
    let out = check(podman().args([
        "run",
        "--rm",
        "--quiet",
        "--tls-verify=false",
        &operator_image(),
        "crd",
    ]));
    let expected = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/imagebuilds.stagecoach.dev.yaml"),
    )
    .expect("crds/");
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected);
}

#[test]
fn the_builder_image_resolves_a_base_image_as_the_source_pod_does() {
    let base = format!("{}/stagecoach/busybox:1", registry());
    // The base images are indexes of linux/amd64 and linux/arm64: each platform is
    // resolved to its own image, and the arm64 one runs here under qemu.
    for (platform, arch, machine) in [
        ("linux/amd64", "amd64", "x86_64"),
        ("linux/arm64", "arm64", "aarch64"),
    ] {
        let out = check(podman().args([
            "run",
            "--rm",
            "--quiet",
            "--network",
            "host",
            "--tls-verify=false",
            &builder_image(),
            "resolve",
            "--platform",
            platform,
            "--insecure-registry",
            &registry(),
            &base,
        ]));
        let printed = String::from_utf8_lossy(&out.stdout);
        let digest = platform_digest(&base, arch);
        assert_eq!(printed.trim(), format!("{base} {digest}"));
        let pinned = format!("{}@{digest}", base.trim_end_matches(":1"));
        let ran = check(podman().args([
            "run",
            "--rm",
            "--quiet",
            "--tls-verify=false",
            &pinned,
            "uname",
            "-m",
        ]));
        assert_eq!(
            String::from_utf8_lossy(&ran.stdout).trim(),
            machine,
            "{pinned}"
        );
    }
}

/// The builder is a container's first process, which the kernel gives no default action
/// for SIGTERM: it must exit on it itself (code 143), or a deleted pod waits out its
/// whole grace period and is killed (137). The ssh agent waits for its stage to end, so
/// it is still running when the signal comes.
#[test]
fn the_builder_as_first_process_exits_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("id_ed25519");
    check(std::process::Command::new("ssh-keygen").args([
        "-q",
        "-t",
        "ed25519",
        "-N",
        "",
        "-f",
        key.to_str().expect("utf-8"),
    ]));
    // The image's user (65532) reads it through the mount.
    for (path, mode) in [(dir.path(), 0o755), (key.as_path(), 0o644)] {
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode))
            .expect("chmod");
    }
    let name = format!("stagecoach-sigterm-{}", std::process::id());
    check(podman().args([
        "run",
        "-d",
        "--quiet",
        "--name",
        &name,
        "--tls-verify=false",
        "-v",
        &format!("{}:/keys:ro", dir.path().display()),
        "--tmpfs",
        "/agent:mode=1777",
        &builder_image(),
        "ssh-agent",
        "--key",
        "default=/keys/id_ed25519",
        "--dir",
        "/agent",
    ]));
    // Up to a minute for SIGTERM to work before podman sends SIGKILL.
    let stopped = podman().args(["stop", "--time", "60", &name]).output();
    let code = check(podman().args(["inspect", "--format", "{{.State.ExitCode}}", &name]));
    let logs = podman().args(["logs", &name]).output().expect("logs");
    let _ = podman().args(["rm", "--force", &name]).output();
    stopped.expect("podman stop");
    assert_eq!(
        String::from_utf8_lossy(&code.stdout).trim(),
        "143",
        "{}",
        String::from_utf8_lossy(&logs.stderr)
    );
}
