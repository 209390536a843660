//! The two images `make` packages with Stagecoach's own image code (scripts/image.sh):
//! FROM scratch, one static binary and a CA bundle, non-root, and they run.

use std::path::Path;

use stagecoach_e2e::podman::{builder_image, check, podman, registry, tool};
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

#[test]
fn the_images_hold_one_static_binary_and_the_ca_bundle() {
    for (image, binary) in [
        (builder_image(), "stagecoach-builder"),
        (operator_image(), "stagecoach"),
    ] {
        assert_eq!(
            paths(&image),
            [
                "etc",
                "etc/ssl",
                "etc/ssl/certs",
                "etc/ssl/certs/ca-certificates.crt",
                binary
            ],
            "{image}"
        );
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
    let out = check(podman().args([
        "run",
        "--rm",
        "--quiet",
        "--network",
        "host",
        "--tls-verify=false",
        &builder_image(),
        "resolve",
        "--insecure-registry",
        &registry(),
        &base,
    ]));
    let printed = String::from_utf8_lossy(&out.stdout);
    let inspect = check(tool("skopeo").args([
        "inspect",
        "--tls-verify=false",
        "--format",
        "{{.Digest}}",
        &format!("docker://{base}"),
    ]));
    let digest = String::from_utf8_lossy(&inspect.stdout).trim().to_string();
    assert_eq!(printed.trim(), format!("{base} {digest}"));
}
