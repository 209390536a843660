//! Which entry of an image index (OCI index or Docker manifest list) is the image for a
//! platform, matched the way containerd does (`arm64` means `arm64/v8`), and how the
//! platforms an index offers are named when none matches.

use oci_client::manifest::ImageIndexEntry;
use stagecoach_plan::Platform;

/// The variant a platform means when it names none (containerd's normalisation).
fn default_variant(architecture: &str) -> Option<&'static str> {
    match architecture {
        "arm64" => Some("v8"),
        "arm" => Some("v7"),
        _ => None,
    }
}

/// The index entry for a platform: same OS and architecture, and the same variant once
/// defaults are filled in (`arm64` is `arm64/v8`).
pub fn select_platform<'a>(
    entries: &'a [ImageIndexEntry],
    platform: &Platform,
) -> Option<&'a ImageIndexEntry> {
    let want_variant = platform
        .variant
        .as_deref()
        .or_else(|| default_variant(&platform.architecture));
    entries.iter().find(|entry| {
        entry.platform.as_ref().is_some_and(|p| {
            let arch = p.architecture.to_string();
            let variant = p.variant.as_deref().or_else(|| default_variant(&arch));
            p.os.to_string() == platform.os
                && arch == platform.architecture
                && variant == want_variant
        })
    })
}

pub(super) fn available_platforms(entries: &[ImageIndexEntry]) -> String {
    let names: Vec<String> = entries
        .iter()
        .filter_map(|e| e.platform.as_ref())
        .map(|p| match &p.variant {
            Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
            None => format!("{}/{}", p.os, p.architecture),
        })
        .collect();
    if names.is_empty() {
        "no platforms".to_string()
    } else {
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_client::manifest::OciImageIndex;

    #[test]
    fn index_entries_match_os_architecture_and_variant() {
        let index: OciImageIndex = serde_json::from_str(
            r#"{"schemaVersion": 2, "manifests": [
              {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:arm", "size": 1,
               "platform": {"os": "linux", "architecture": "arm", "variant": "v6"}},
              {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:arm64", "size": 1,
               "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
              {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:att", "size": 1,
               "platform": {"os": "unknown", "architecture": "unknown"}},
              {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:amd64", "size": 1,
               "platform": {"os": "linux", "architecture": "amd64"}}
            ]}"#,
        )
        .expect("index");
        let pick = |p: &str| {
            select_platform(&index.manifests, &p.parse().expect("platform"))
                .map(|e| e.digest.clone())
        };
        assert_eq!(pick("linux/amd64").as_deref(), Some("sha256:amd64"));
        assert_eq!(
            pick("linux/arm64").as_deref(),
            Some("sha256:arm64"),
            "arm64 means v8"
        );
        assert_eq!(pick("linux/arm/v6").as_deref(), Some("sha256:arm"));
        assert_eq!(pick("linux/arm"), None, "arm means v7");
        assert_eq!(pick("windows/amd64"), None);
        assert_eq!(
            available_platforms(&index.manifests),
            "linux/arm/v6, linux/arm64/v8, unknown/unknown, linux/amd64"
        );
    }
}
