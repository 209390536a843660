//! The podman side of the local runner: the podman command line, what `podman ps` and
//! `podman logs` show, and the changes a rendered pod needs to run under `podman kube
//! play` (outcome file, repository and Secrets as host directories, unique emptyDirs).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::core::v1::{EnvVar, HostPathVolumeSource, Pod, Volume, VolumeMount};

use super::{Error, LocalOptions, Result};
use crate::render;

/// A container as `podman ps --format json` lists it.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct PsEntry {
    pub(super) names: Vec<String>,
    /// `created`, `running`, `exited`, ...
    pub(super) state: String,
    pub(super) exit_code: i32,
}

/// Where a pod's outcome lands on the workspace volume.
pub(super) fn outcome_path(pod: &str) -> String {
    format!("{}/{OUTCOMES}/{pod}/outcome.json", render::WORKSPACE)
}

const OUTCOMES: &str = "outcomes";

/// A rendered pod as podman runs it on the workspace volume at `claim` (its host path):
/// its outcome written to the workspace (podman keeps no termination messages), subPath
/// mounts of the claim as host directories (podman 4 ignores subPath on named volumes
/// and would mount the whole volume), a `file://` repository mounted read-only into the
/// source pod, and emptyDir names made unique (podman names those volumes globally).
pub fn podman_manifest(
    mut pod: Pod,
    repository: Option<&str>,
    claim: &Path,
) -> Result<String, String> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    if let Some(spec) = pod.spec.as_mut() {
        let claims: Vec<String> = spec
            .volumes
            .iter()
            .flatten()
            .filter(|v| v.persistent_volume_claim.is_some())
            .map(|v| v.name.clone())
            .collect();
        let mut host_dirs = Vec::new();
        for c in spec
            .containers
            .iter_mut()
            .chain(spec.init_containers.iter_mut().flatten())
        {
            let mounts = c.volume_mounts.get_or_insert_with(Vec::new);
            // A pod that sees the workspace read-only writes its outcome into a
            // directory of its own, mounted writable as a kubelet mounts the
            // termination-log file.
            let read_only = mounts.iter().any(|m| {
                claims.contains(&m.name) && m.sub_path.is_none() && m.read_only == Some(true)
            });
            for m in mounts.iter_mut().filter(|m| claims.contains(&m.name)) {
                if let Some(sub) = m.sub_path.take() {
                    m.name = format!("{name}-sub-{}", host_dirs.len());
                    host_dirs.push((m.name.clone(), claim.join(sub)));
                }
            }
            let outcome = format!("{name}-outcome");
            if read_only && !host_dirs.iter().any(|(volume, _)| *volume == outcome) {
                let dir = format!("{OUTCOMES}/{name}");
                mounts.push(VolumeMount {
                    name: outcome.clone(),
                    mount_path: format!("{}/{dir}", render::WORKSPACE),
                    ..VolumeMount::default()
                });
                host_dirs.push((outcome, claim.join(dir)));
            }
        }
        for (volume, path) in host_dirs {
            spec.volumes.get_or_insert_with(Vec::new).push(Volume {
                name: volume,
                host_path: Some(HostPathVolumeSource {
                    path: path.display().to_string(),
                    type_: Some("DirectoryOrCreate".into()),
                }),
                ..Volume::default()
            });
        }
        for c in &mut spec.containers {
            c.env.get_or_insert_with(Vec::new).push(EnvVar {
                name: "STAGECOACH_OUTCOME_FILE".into(),
                value: Some(outcome_path(&name)),
                value_from: None,
            });
        }
        if let Some(repo) = repository {
            spec.volumes.get_or_insert_with(Vec::new).push(Volume {
                name: format!("{name}-repository"),
                host_path: Some(HostPathVolumeSource {
                    path: repo.to_string(),
                    type_: Some("Directory".into()),
                }),
                ..Volume::default()
            });
            for c in &mut spec.containers {
                c.volume_mounts
                    .get_or_insert_with(Vec::new)
                    .push(VolumeMount {
                        name: format!("{name}-repository"),
                        mount_path: repo.to_string(),
                        read_only: Some(true),
                        ..VolumeMount::default()
                    });
            }
        }
        for v in spec
            .volumes
            .iter_mut()
            .flatten()
            .filter(|v| v.empty_dir.is_some())
        {
            let unique = format!("{name}-{}", v.name);
            for c in spec
                .containers
                .iter_mut()
                .chain(spec.init_containers.iter_mut().flatten())
            {
                for m in c
                    .volume_mounts
                    .iter_mut()
                    .flatten()
                    .filter(|m| m.name == v.name)
                {
                    m.name = unique.clone();
                }
            }
            v.name = unique;
        }
    }
    serde_saphyr::to_string(&pod).map_err(|e| e.to_string())
}

/// Podman with the project's containers.conf and registries.conf.
#[derive(Debug, Clone)]
pub(super) struct Podman {
    containers_conf: Option<PathBuf>,
    registries_conf: Option<PathBuf>,
}

impl Podman {
    pub(super) fn new(opts: &LocalOptions) -> Podman {
        Podman {
            containers_conf: opts.containers_conf.clone(),
            registries_conf: opts.registries_conf.clone(),
        }
    }

    /// A podman command line.
    pub(super) fn command(&self) -> Command {
        let mut cmd = Command::new("podman");
        if let Some(c) = &self.containers_conf {
            cmd.env("CONTAINERS_CONF", c);
        }
        if let Some(r) = &self.registries_conf {
            cmd.env("CONTAINERS_REGISTRIES_CONF", r);
        }
        cmd
    }

    /// Runs podman; its stdout, or its stderr as the error.
    pub(super) fn ok(&self, args: &[&str]) -> Result<String> {
        let out = self
            .command()
            .args(args)
            .output()
            .map_err(|e| Error::Podman {
                args: args.join(" "),
                message: e.to_string(),
            })?;
        if !out.status.success() {
            return Err(Error::Podman {
                args: args.join(" "),
                message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Every container podman knows, by name: one `podman ps` for all pods.
    pub(super) fn containers(&self) -> Result<BTreeMap<String, PsEntry>> {
        let json = self.ok(&["ps", "--all", "--format", "json"])?;
        let entries: Vec<PsEntry> = serde_json::from_str(&json).map_err(|e| Error::Podman {
            args: "ps --all --format json".into(),
            message: e.to_string(),
        })?;
        Ok(entries
            .into_iter()
            .flat_map(|e| {
                e.names
                    .clone()
                    .into_iter()
                    .map(move |name| (name, e.clone()))
            })
            .collect())
    }

    /// Whether podman has a pod of this name. (`ps --pod`, which would name each
    /// container's pod, fails while another build removes a pod.)
    pub(super) fn pod_exists(&self, pod: &str) -> bool {
        self.command()
            .args(["pod", "exists", pod])
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// The last lines a container wrote, stdout and stderr.
    pub(super) fn log_tail(&self, container: &str) -> String {
        let logs = self
            .command()
            .args(["logs", "--tail", "20", container])
            .output()
            .map(|o| {
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )
            })
            .unwrap_or_default();
        logs.trim().to_string()
    }
}

/// emptyDir volumes become host directories under `dir`, world-writable as a kubelet
/// makes an emptyDir. Podman's own emptyDir is a volume it gives to the user of the
/// first container that mounts it (0755), so a non-root container beside a root one
/// (the ssh agent beside a stage) could not write into it, or only some of the time.
pub(super) fn empty_dirs_on_host(pod: &mut Pod, dir: &Path) -> Result<()> {
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    let Some(spec) = pod.spec.as_mut() else {
        return Ok(());
    };
    for volume in spec.volumes.iter_mut().flatten() {
        if volume.empty_dir.take().is_none() {
            continue;
        }
        let path = dir
            .join("empty-dirs")
            .join(format!("{pod_name}-{}", volume.name));
        let made = std::fs::create_dir_all(&path)
            .and_then(|()| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)));
        made.map_err(|source| Error::Read {
            path: path.clone(),
            source,
        })?;
        volume.host_path = Some(HostPathVolumeSource {
            path: path.display().to_string(),
            type_: Some("Directory".into()),
        });
    }
    Ok(())
}

/// Secret volumes become read-only host directories holding the Secret's keys (from
/// `--secret NAME=DIR`, with the volume's key-to-path items applied), owned by the
/// builder user as a kubelet would give them to the pod's fsGroup.
pub(super) fn mount_secrets(
    pod: &mut Pod,
    secrets: &BTreeMap<String, PathBuf>,
    dir: &Path,
) -> Result<()> {
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    let Some(spec) = pod.spec.as_mut() else {
        return Ok(());
    };
    for volume in spec.volumes.iter_mut().flatten() {
        let Some(secret) = volume.secret.take() else {
            continue;
        };
        let name = secret.secret_name.clone().unwrap_or_default();
        let source = secrets
            .get(&name)
            .ok_or_else(|| Error::MissingSecret { name: name.clone() })?;
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::Read { path, source }
        };
        let keys: Vec<(String, String)> = match &secret.items {
            Some(items) => items
                .iter()
                .map(|i| (i.key.clone(), i.path.clone()))
                .collect(),
            None => std::fs::read_dir(source)
                .map_err(io(source))?
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .map(|k| (k.clone(), k))
                .collect(),
        };
        let dir = dir
            .join("secrets")
            .join(format!("{pod_name}-{}", volume.name));
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        for (key, path) in keys {
            let target = dir.join(&path);
            if !source.join(&key).is_file() && secret.optional == Some(true) {
                continue;
            }
            if !source.join(&key).is_file() {
                return Err(Error::MissingSecretKey {
                    name: name.clone(),
                    key,
                    dir: source.clone(),
                });
            }
            std::fs::copy(source.join(&key), &target).map_err(io(&source.join(&key)))?;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o440))
                .map_err(io(&target))?;
        }
        // The builder user must read them; without the right to chown (rootless
        // podman) the pod could not, so say so now rather than fail in the pod.
        let chowned = Command::new("chown")
            .arg("-R")
            .arg(format!("{0}:{0}", render::BUILDER_UID))
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        if !chowned {
            return Err(Error::Podman {
                args: format!("secret {name}"),
                message: format!(
                    "cannot give {} to the pods' user {}",
                    dir.display(),
                    render::BUILDER_UID
                ),
            });
        }
        volume.host_path = Some(HostPathVolumeSource {
            path: dir.display().to_string(),
            type_: Some("Directory".into()),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An emptyDir is a world-writable host directory of the pod's own, whichever of its
    /// containers (root or not) comes first.
    #[test]
    fn empty_dirs_are_world_writable_host_directories() {
        use std::os::unix::fs::PermissionsExt as _;
        let mut pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "b-stage-x-g1"},
            "spec": {"containers": [], "volumes": [{"name": "ssh-sockets", "emptyDir": {}}]}
        }))
        .expect("pod");
        let work = tempfile::tempdir().expect("dir");
        empty_dirs_on_host(&mut pod, work.path()).expect("host dirs");
        let volume = &pod.spec.expect("spec").volumes.expect("volumes")[0];
        assert!(volume.empty_dir.is_none());
        let path = volume.host_path.as_ref().expect("hostPath").path.clone();
        assert!(path.ends_with("b-stage-x-g1-ssh-sockets"), "{path}");
        let mode = std::fs::metadata(&path).expect("made").permissions().mode();
        assert_eq!(mode & 0o777, 0o777);
    }

    #[test]
    fn a_secret_directory_without_a_key_the_pod_needs_is_refused_by_name() {
        let mut pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "source"}], "volumes": [{"name": "git",
                "secret": {"secretName": "git-creds", "items": [{"key": "password", "path": "password"}]}}]},
        }))
        .expect("pod");
        let given = tempfile::tempdir().expect("tempdir");
        std::fs::write(given.path().join("username"), "me").expect("write");
        let work = tempfile::tempdir().expect("tempdir");
        let secrets = BTreeMap::from([("git-creds".to_string(), given.path().to_path_buf())]);
        let mut other = pod.clone();
        let e = mount_secrets(&mut pod, &secrets, work.path()).expect_err("no password");
        assert!(
            matches!(&e, Error::MissingSecretKey { key, .. } if key == "password"),
            "{e}"
        );
        let e = mount_secrets(&mut other, &BTreeMap::new(), work.path()).expect_err("no secret");
        assert_eq!(
            e.to_string(),
            "the pods need Secret \"git-creds\": give it with --secret git-creds=DIR"
        );
    }
}
