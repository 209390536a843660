//! The build's workspace volume, as every build pod sees it at `/workspace`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use stagecoach_plan::layout;

/// Paths on the workspace volume (docs/architecture.md, "A build, step by step").
#[derive(Debug, Clone)]
pub struct Workspace {
    root: PathBuf,
    /// Where this platform's plan, bases, stages and pods are: the root, or in a build
    /// for several platforms its [`layout::platform_dir`].
    part: PathBuf,
}

impl Workspace {
    pub fn new(root: impl Into<PathBuf>) -> Workspace {
        let root = root.into();
        Workspace {
            part: root.clone(),
            root,
        }
    }

    /// The same volume seen from one target platform's part (`os/arch[/variant]`, see
    /// [`layout::platform_dir`]); the checkout stays the root's.
    pub fn for_platform(&self, platform: &str) -> Workspace {
        Workspace {
            root: self.root.clone(),
            part: self.root.join(layout::platform_dir(platform)),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// This workspace's part of the volume: the root, or one platform's directory.
    pub fn part(&self) -> &Path {
        &self.part
    }

    /// The target platforms of a build for several ([`stagecoach_plan::PlatformsFile`]).
    pub fn platforms(&self) -> PathBuf {
        self.root.join(layout::PLATFORMS)
    }

    /// The plan the source pod wrote.
    pub fn plan(&self) -> PathBuf {
        self.part.join("plan.json")
    }

    /// The git checkout; the context is `source/<contextDir>`.
    pub fn source(&self) -> PathBuf {
        self.root.join("source")
    }

    /// The config of the image a stage starts from, written by the source pod when it
    /// resolved the image (stages that start from another stage read that stage's).
    pub fn base_config(&self, stage: &str) -> PathBuf {
        self.part.join("bases").join(format!("{stage}.json"))
    }

    pub fn stage_dir(&self, stage: &str) -> PathBuf {
        self.part.join(layout::stage_dir(stage))
    }

    pub fn layers_dir(&self, stage: &str) -> PathBuf {
        self.stage_dir(stage).join("layers")
    }

    /// The list of a stage's layers, in order ([`LayerRecord`]s).
    pub fn layer_index(&self, stage: &str) -> PathBuf {
        self.layers_dir(stage).join("index.json")
    }

    /// The paths later stages copy from this stage, as one tar.
    pub fn export(&self, stage: &str) -> PathBuf {
        self.stage_dir(stage).join("export.tar")
    }

    /// The stage's resulting image config.
    pub fn config(&self, stage: &str) -> PathBuf {
        self.stage_dir(stage).join("config.json")
    }

    /// The stage's variable scope at its end, for child stages to inherit.
    pub fn scope(&self, stage: &str) -> PathBuf {
        self.stage_dir(stage).join("scope.json")
    }

    /// A pod's machine-readable result (`pod` as [`layout::stage_pod`] names stage pods).
    pub fn report(&self, pod: &str) -> PathBuf {
        self.pod_dir(pod).join("report.json")
    }

    /// Scratch space of one pod (extracted exports), removed when it ends.
    pub fn scratch(&self, pod: &str) -> PathBuf {
        self.pod_dir(pod).join("tmp")
    }

    fn pod_dir(&self, pod: &str) -> PathBuf {
        self.part.join(layout::pod_dir(pod))
    }

    /// Creates the directories later pods write into, owned by the source pod's user:
    /// stage pods run as root but the assemble pod does not, and it must be able to write
    /// into a COPY-only target's stage directory and its own pod directory. They exist
    /// before the stage pods start because those mount them one by one (the rest of the
    /// workspace is read-only to a stage pod).
    pub fn create_dirs<'a>(
        &self,
        stages: impl IntoIterator<Item = &'a str>,
        stage_pods: impl IntoIterator<Item = &'a str>,
    ) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        let mut dirs = vec![self.part.join(layout::PODS)];
        dirs.extend(stages.into_iter().map(|s| self.stage_dir(s)));
        for stage in stage_pods {
            dirs.push(self.pod_dir(&layout::stage_pod(stage)));
            dirs.push(self.part.join(layout::scratch_root(stage)));
        }
        for dir in dirs {
            std::fs::create_dir_all(&dir)?;
            // Group-writable and setgid, like a volume a kubelet gives to fsGroup.
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o2775))?;
        }
        Ok(())
    }
}

/// Empties a directory, keeping the directory itself: in a stage pod a stage's directory
/// is a mount point, which cannot be removed.
pub fn empty_dir(dir: &Path) -> std::io::Result<()> {
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries {
                let entry = entry?;
                match entry.file_type()?.is_dir() {
                    true => std::fs::remove_dir_all(entry.path())?,
                    false => std::fs::remove_file(entry.path())?,
                }
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir_all(dir),
        Err(e) => Err(e),
    }
}

/// One layer a stage wrote, as listed in its layer index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LayerRecord {
    /// File name inside the stage's `layers/` directory.
    pub file: String,
    /// `sha256:` of the compressed blob.
    pub digest: String,
    /// `sha256:` of the uncompressed tar.
    pub diff_id: String,
    /// Compressed size in bytes.
    pub size: u64,
    /// The blob's OCI media type (its compression).
    #[serde(default = "gzip_media_type")]
    pub media_type: String,
    /// The instruction that made it, for the image history.
    pub created_by: String,
    /// Its Dockerfile line.
    pub line: usize,
}

fn gzip_media_type() -> String {
    crate::layer::GZIP_MEDIA_TYPE.to_string()
}

/// Reads a JSON file of the workspace.
pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> std::io::Result<T> {
    let text = std::fs::read_to_string(path)?;
    serde_json::from_str(&text).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: {e}", path.display()),
        )
    })
}

/// Writes a JSON file of the workspace atomically (write then rename), so a reader never
/// sees half a file.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("json.tmp");
    std::fs::write(
        &tmp,
        serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(tmp, path)
}
