//! The `ImageBuild` API (`imagebuilds.stagecoach.dev/v1alpha1`): what users apply and
//! what the operator reports back in the status.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, LocalObjectReference, ResourceRequirements, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Image references: optional registry (with port), lower-case path, tag and/or digest.
const IMAGE_REFERENCE: &str = r"^([a-zA-Z0-9.-]+(:[0-9]+)?/)?[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*)*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$";

/// A build of a container image from a Dockerfile in a git repository.
// Several printer columns repeat `type_`, which clippy takes for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "stagecoach.dev",
    version = "v1alpha1",
    kind = "ImageBuild",
    namespaced,
    status = "ImageBuildStatus",
    shortname = "ib",
    doc = "A multi-stage Dockerfile build, one pod per stage, pushed to a registry.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Image", type_ = "string", json_path = ".spec.output.image"),
    printcolumn(
        name = "Digest",
        type_ = "string",
        json_path = ".status.image.shortDigest"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("!(has(self.dockerfile) && has(self.dockerfileInline))").message("set at most one of dockerfile and dockerfileInline"))]
#[serde(rename_all = "camelCase")]
pub struct ImageBuildSpec {
    pub source: Source,
    /// Path of the Dockerfile relative to the context (default `Dockerfile`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dockerfile: Option<String>,
    /// The Dockerfile itself, instead of a path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dockerfile_inline: Option<String>,
    /// The stage to build (default: the last one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub build_args: Vec<BuildArg>,
    /// Build secrets for `RUN --mount=type=secret,id=<id>`, each mounted only into the
    /// pods of the stages whose RUN steps mount it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("self.all(s, self.exists_one(t, t.id == s.id))").message("each secret id at most once"))]
    pub secrets: Vec<BuildSecret>,
    /// ssh keys for `RUN --mount=type=ssh,id=<id>`: each served by an agent beside the
    /// stage pods that mount its id; RUN steps use the key through the agent's socket and
    /// never see the key itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new("self.all(s, self.exists_one(t, t.id == s.id))").message("each ssh id at most once"))]
    pub ssh: Vec<BuildSsh>,
    pub output: Output,
    /// The platforms to build the image for, `os/arch[/variant]` (default: the build
    /// platform, the operator's, linux/amd64 unless set). With several, the image is an
    /// index of one image per platform; stages that read no TARGET value and start from
    /// no platform's own image run once for all. TARGETPLATFORM and its parts are each
    /// platform's, BUILDPLATFORM the operator's. Each stage pod goes to a node of its
    /// image's platform (`kubernetes.io/os`, `kubernetes.io/arch`), or to a build
    /// platform node that emulates it when the operator emulates that platform.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = stagecoach_plan::limits::PLATFORMS))]
    #[x_kube(validation = Rule::new("self.all(p, self.exists_one(q, q == p))").message("each platform at most once"))]
    #[x_kube(validation = Rule::new("self.all(p, p.matches('^[a-z0-9]+/[a-z0-9_]+(/[a-z0-9]+)?$'))").message("os/arch or os/arch/variant, such as linux/arm64"))]
    pub platforms: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<WorkspaceSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<BuildResources>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Service account of the build pods (their token is never mounted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Pull secrets for base images, given to stage pods and the source pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_secrets: Option<Vec<LocalObjectReference>>,
    /// How long the whole build may take (`30m`, `1h`; default 1h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(\\\\.[0-9]+)?(ns|us|ms|s|m|h))+$')").message("a duration such as 30m or 1h30m"))]
    pub timeout: Option<String>,
    /// Times a pod lost to eviction, preemption or node failure is started again (a
    /// failing RUN is never retried).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10))]
    pub retries: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Retention>,
    /// The stage cache: unchanged stages are taken from it and run no pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheSpec>,
    /// Where `RUN --mount=type=cache` directories persist between builds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_cache: Option<RunCacheSpec>,
    /// Stop the build: its pods are deleted and it ends `Failed` with reason `Canceled`
    /// (a build that had already ended stays as it ended).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancel: bool,
}

/// Where a build's stage cache lives and how it is used.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CacheSpec {
    /// Repository of the entries (default: the operator's `--cache-repository`, else
    /// `<output repository>/cache`). Read with the pull secrets, written with the push
    /// secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// `ReadWrite` (default), `ReadOnly` (use entries, store none) or `Disabled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<CacheMode>,
}

/// The volume of a build's `RUN --mount=type=cache` directories, shared by every build
/// that names it (best-effort: a missing or cold cache never fails a build).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunCacheSpec {
    /// A PersistentVolumeClaim of the build's namespace, made by you (ReadWriteMany to
    /// share it across nodes); default: the operator's claim, which it creates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub claim_name: Option<String>,
    /// Cache mounts start empty on every build, as without a run cache.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum CacheMode {
    ReadWrite,
    ReadOnly,
    Disabled,
}

/// Where the build context comes from: a git repository or a context artifact.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("has(self.git) != has(self.oci)").message("set exactly one of git and oci"))]
#[serde(rename_all = "camelCase")]
pub struct Source {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<GitSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oci: Option<OciSource>,
    /// The context directory inside the repository or artifact (default: its root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("!self.startsWith('/') && !self.split('/').exists(p, p == '..')").message("a relative path inside the repository"))]
    pub context_dir: Option<String>,
}

impl Source {
    /// What the context is named by: the repository URL or the artifact reference.
    pub fn location(&self) -> &str {
        match (&self.git, &self.oci) {
            (Some(git), _) => &git.url,
            (None, Some(oci)) => &oci.image,
            (None, None) => "",
        }
    }
}

/// A build context packed as an OCI artifact: one tar layer (`stagecoach build
/// --context-push` makes them; Shipwright's source bundles and `oras push` of a tar work
/// too). The source pod checks every blob against its digest.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct OciSource {
    /// The artifact, best by digest (`registry.example.com/ctx@sha256:...`).
    #[schemars(regex(pattern = IMAGE_REFERENCE))]
    pub image: String,
    /// A `kubernetes.io/dockerconfigjson` Secret to pull it with, mounted only into the
    /// source pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_secret_ref: Option<LocalObjectReference>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct GitSource {
    /// `https://`, `ssh://`, `git@host:path`, `git://` or `file://` URL.
    #[schemars(length(min = 1))]
    pub url: String,
    /// Branch, tag, or full or short commit SHA (default: the default branch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// A `kubernetes.io/basic-auth` or `kubernetes.io/ssh-auth` Secret, mounted only
    /// into the source pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalObjectReference>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
pub struct BuildArg {
    #[schemars(length(min = 1))]
    pub name: String,
    #[serde(default)]
    pub value: String,
}

/// A build secret: the id RUN steps mount, and the key of a Secret that holds it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BuildSecret {
    /// BuildKit's id (`--mount=type=secret,id=npmrc`; without an id, the target's file name).
    #[schemars(length(max = 253), regex(pattern = r"^[A-Za-z0-9._-]{1,253}$"))]
    pub id: String,
    pub secret_ref: SecretKeyRef,
}

/// An ssh agent of the build: its id and the `kubernetes.io/ssh-auth` Secret whose
/// `ssh-privatekey` (OpenSSH format, no passphrase) it serves.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BuildSsh {
    /// BuildKit's id (`--mount=type=ssh,id=github`; `default` without one).
    #[serde(default = "default_ssh_id")]
    #[schemars(length(max = 253), regex(pattern = r"^[A-Za-z0-9._-]{1,253}$"))]
    pub id: String,
    pub secret_ref: LocalObjectReference,
}

fn default_ssh_id() -> String {
    "default".into()
}

/// One key of a Secret in the build's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
pub struct SecretKeyRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[schemars(regex(pattern = r"^[-._a-zA-Z0-9]{1,253}$"))]
    pub key: String,
}

/// Where the image goes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Output {
    /// The image reference to push, e.g. `registry.example.com/team/app:1.2`.
    #[schemars(regex(pattern = IMAGE_REFERENCE))]
    pub image: String,
    /// More tags for the same image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// A `kubernetes.io/dockerconfigjson` Secret, mounted only into the assemble pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push_secret_ref: Option<LocalObjectReference>,
    /// Push over plain HTTP.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_registry: bool,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations of the image manifest.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// How the layers this build makes are compressed: `Gzip` (default; every runtime
    /// pulls it) or `Zstd` (smaller, faster to unpack; containerd 1.5+, CRI-O, podman).
    /// Layers reused from base images or the stage cache keep theirs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<LayerCompression>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum LayerCompression {
    Gzip,
    Zstd,
}

/// The build's workspace volume.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// Size of the claim (default 10Gi).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    /// `ReadWriteOnce` keeps the build's pods on one node; `ReadWriteMany` lets stages
    /// run on several.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_modes: Vec<String>,
}

/// Compute resources of build pods: a default and overrides by stage name.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BuildResources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<ResourceRequirements>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub stages: BTreeMap<String, ResourceRequirements>,
}

/// What is kept after a build ends.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Retention {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_success: Option<Keep>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<Keep>,
    /// How long kept objects stay before they are deleted (e.g. `24h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Keep {
    #[serde(default)]
    pub pods: bool,
    #[serde(default)]
    pub workspace: bool,
}

/// Where a build is, following Kubernetes conventions (kstatus) so GitOps tools read it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageBuildStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    // Ready and Succeeded; Stalled (True) once failed; PodStartBlocked (True) while a pod
    // cannot start a container: its lastTransitionTime is the core's memory of since when
    // (core::START_BLOCKED), so a restarted operator keeps counting the grace period.
    // (Plain comments: doc comments here are the CRD's descriptions, in crds/.)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceStatus>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<StageStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    Pending,
    Cloning,
    Building,
    Pushing,
    Succeeded,
    Failed,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SourceStatus {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// The commit time (Unix seconds), the timestamp images are made reproducible with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_time: Option<i64>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct StageStatus {
    /// The stage the pod is named after (the last one it runs); in a build for several
    /// platforms, a pod that runs once per platform has `@<platform>` after it.
    pub name: String,
    /// The target platform the pod builds for, when it runs once per platform.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// The platform of the image it runs on (its node's, unless emulated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runs_on: Option<String>,
    /// Every stage the pod runs, fused ancestors first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runs: Vec<String>,
    /// The image the pod runs on (pinned), none for a chain from `scratch`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Pods (by stage name) that must succeed first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waits_for: Vec<String>,
    /// Ids of the build secrets its RUN steps mount (never their values).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// Whether its RUN steps mount persistent caches (its pod gets the run cache).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub run_cache: bool,
    /// Ids of the ssh agents its RUN steps mount.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh: Vec<String>,
    /// How many times the pod was started again after it was lost.
    #[serde(default)]
    pub attempts: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub phase: StagePhase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Taken from the stage cache: no pod ran.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cached: bool,
    /// The stage's cache key; none when it cannot be cached (`message` says why) or
    /// the cache is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_key: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum StagePhase {
    Waiting,
    Running,
    Succeeded,
    Failed,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageStatus {
    pub reference: String,
    pub digest: String,
    /// The first 12 hex digits of the digest, for `kubectl get`.
    pub short_digest: String,
    /// In a build for several platforms `digest` is the image index's, and each
    /// platform's image is here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = stagecoach_plan::limits::PLATFORMS))]
    pub platforms: Vec<PlatformImageStatus>,
}

/// One platform's image in the pushed index.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlatformImageStatus {
    /// `os/arch[/variant]`.
    pub platform: String,
    pub digest: String,
}

/// Why a build failed, and where.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    // Every reason: the builder pods' own (DockerfileInvalid, GitAuthFailed,
    // RevisionNotFound, BaseImageNotFound, StageFailed, PushDenied, ...) and the
    // operator's (core::reason: SourceFailed, StageFailed, PushFailed, Timeout, PodLost,
    // and for a pod that cannot start ImagePullFailed, SecretNotFound, PodStartFailed).
    // `stage` is set for a stage pod's failure, `pod` for every pod's.
    /// A stable CamelCase reason (`StageFailed`, `PushDenied`, ...).
    pub reason: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<i64>,
    /// The last lines of the failed pod's log.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log_tail: Vec<String>,
}

/// The CRD as YAML, as `stagecoach crd` prints it and `crds/` keeps it.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt as _;
    serde_saphyr::to_string(&ImageBuild::crd()).expect("the CRD serialises")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crd_file_is_up_to_date() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../crds/imagebuilds.stagecoach.dev.yaml"
        );
        let on_disk = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            on_disk == crd_yaml(),
            "crds/imagebuilds.stagecoach.dev.yaml is out of date: run `cargo run -p stagecoach-operator -- crd > crds/imagebuilds.stagecoach.dev.yaml`"
        );
    }

    #[test]
    fn crd_has_the_validations_and_columns() {
        let crd = crd_yaml();
        for needle in [
            "shortNames:\n    - ib",
            "has(self.dockerfile) && has(self.dockerfileInline)",
            "has(self.git) != has(self.oci)",
            "name: Phase",
            "name: Digest",
            "(@sha256:[a-f0-9]{64})?$",
            "subresources:",
        ] {
            assert!(crd.contains(needle), "CRD lacks {needle:?}:\n{crd}");
        }
    }

    #[test]
    fn a_minimal_build_reads_from_yaml() {
        let build: ImageBuild = serde_saphyr::from_str(
            "apiVersion: stagecoach.dev/v1alpha1\nkind: ImageBuild\nmetadata: {name: hello}\n\
             spec:\n  source: {git: {url: 'https://example.com/app.git', revision: main}}\n\
             \x20 output: {image: 'registry.example.com/app:1'}\n",
        )
        .expect("parses");
        let git = build.spec.source.git.as_ref().expect("a git source");
        assert_eq!(git.revision.as_deref(), Some("main"));
        assert_eq!(build.spec.output.image, "registry.example.com/app:1");
        assert!(build.status.is_none());
    }
}
