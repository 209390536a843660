//! Pruning a stage cache: the entries stored longer ago than a cutoff are deleted, so
//! that a CronJob keeps a cache bounded on registries without lifecycle rules. Deleting
//! an entry only makes its stage run once more; blobs that images share with it stay
//! (the registry's garbage collector frees only what nothing references).

use jiff::Timestamp;
use serde::Deserialize;

use super::entry::{self, ARTIFACT_TYPE, CREATED_ANNOTATION};
use crate::oci::{self, Registry};

/// What a prune did.
#[derive(Debug, PartialEq, Eq)]
pub struct Pruned {
    /// Entries stored before this went.
    pub cutoff: Timestamp,
    /// The entry tags deleted (or, on a dry run, to delete).
    pub deleted: Vec<String>,
    /// Entries younger than the cutoff.
    pub kept: usize,
    /// `stage-` tags that are no entry of ours, left alone.
    pub foreign: Vec<String>,
}

/// Deletes the entries of `repository` stored longer than `older_than` ago (on a dry
/// run: lists them, deletes nothing). An entry without a creation time is
/// older than any cutoff: only builders from before creation times were recorded wrote
/// such entries.
pub fn prune(
    settings: &oci::Settings,
    repository: &str,
    older_than: std::time::Duration,
    dry_run: bool,
) -> oci::Result<Pruned> {
    let cutoff = jiff::SignedDuration::try_from(older_than)
        .ok()
        .and_then(|age| Timestamp::now().checked_sub(age).ok())
        .unwrap_or(Timestamp::MIN);
    let registry = Registry::new(settings)?;
    let repo = oci::parse_reference(repository)?;
    oci::runtime()?.block_on(async {
        let mut pruned = Pruned {
            cutoff,
            deleted: Vec::new(),
            kept: 0,
            foreign: Vec::new(),
        };
        let tags = registry.tags(&repo).await?;
        for tag in tags.into_iter().filter(|t| entry::is_tag(t)) {
            let reference = oci::parse_reference(&format!("{repository}:{tag}"))?;
            let Some((bytes, digest)) = registry.artifact(&reference).await? else {
                continue; // deleted meanwhile
            };
            match stored_at(&bytes) {
                Stored::Foreign => pruned.foreign.push(tag),
                Stored::At(at) if at >= cutoff => pruned.kept += 1,
                Stored::At(_) | Stored::Unknown => {
                    if !dry_run {
                        registry.delete_manifest(&repo, &digest).await?;
                    }
                    pruned.deleted.push(tag);
                }
            }
        }
        Ok(pruned)
    })
}

enum Stored {
    At(Timestamp),
    Unknown,
    Foreign,
}

fn stored_at(manifest: &[u8]) -> Stored {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Manifest {
        artifact_type: Option<String>,
        #[serde(default)]
        annotations: std::collections::BTreeMap<String, String>,
    }
    let Ok(manifest) = serde_json::from_slice::<Manifest>(manifest) else {
        return Stored::Foreign;
    };
    if manifest.artifact_type.as_deref() != Some(ARTIFACT_TYPE) {
        return Stored::Foreign;
    }
    match manifest
        .annotations
        .get(CREATED_ANNOTATION)
        .and_then(|t| t.parse().ok())
    {
        Some(at) => Stored::At(at),
        None => Stored::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_entries_are_judged_by_their_creation_time() {
        let entry = |annotations: &str| {
            format!(r#"{{"artifactType": "{ARTIFACT_TYPE}", "annotations": {annotations}}}"#)
        };
        let at = entry(r#"{"org.opencontainers.image.created": "2026-12-01T10:00:00Z"}"#);
        assert!(
            matches!(stored_at(at.as_bytes()), Stored::At(t) if t == "2026-12-01T10:00:00Z".parse().expect("time"))
        );
        assert!(matches!(stored_at(entry("{}").as_bytes()), Stored::Unknown));
        let image = br#"{"mediaType": "application/vnd.oci.image.manifest.v1+json"}"#;
        assert!(
            matches!(stored_at(image), Stored::Foreign),
            "an image under a stage- tag"
        );
        assert!(matches!(stored_at(b"not json"), Stored::Foreign));
        assert!(entry::is_tag(&entry::tag(&"ab".repeat(32))));
        assert!(
            !entry::is_tag("stage-latest") && !entry::is_tag(&format!("stage-{}", "A".repeat(64)))
        );
    }
}
