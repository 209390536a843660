//! Pods and the workspace claim of a build, rendered from the ImageBuild and the plan
//! summary by pure functions (docs/architecture.md: source pod, stage pods, assemble pod).
//! The security rules live here: no service account token, never privileged, secrets
//! mounted only where they are needed, non-root read-only source and assemble pods.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, EnvVar, KeyToPath, NodeAffinity, NodeSelector,
    NodeSelectorRequirement, NodeSelectorTerm, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, Pod, PodSecurityContext, PodSpec, ResourceRequirements,
    SeccompProfile, SecretVolumeSource, SecurityContext, Volume, VolumeMount,
    VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use stagecoach_plan::contract::PodSummary;
use stagecoach_plan::layout;

use crate::api::{BuildSecret, BuildSsh, CacheMode, ImageBuild};

/// The uid source and assemble pods run as (the builder image's non-root user).
pub const BUILDER_UID: i64 = 65532;

/// Where build pods mount things.
pub const WORKSPACE: &str = "/workspace";
pub const TOOLS: &str = "/stagecoach";
pub const GIT_SECRET: &str = "/var/run/secrets/stagecoach/git";
pub const PULL_SECRETS: &str = "/var/run/secrets/stagecoach/pull";
pub const PUSH_SECRET: &str = "/var/run/secrets/stagecoach/push";
/// Build secrets in the stage pods that mount them: `<n>/value`, n the entry of
/// `spec.secrets`.
pub const BUILD_SECRETS: &str = "/var/run/secrets/stagecoach/build";
/// ssh keys, in the ssh agent container only: `<n>/ssh-privatekey`, n the entry of
/// `spec.ssh`.
pub const SSH_KEYS: &str = "/var/run/secrets/stagecoach/ssh";
/// The agent sockets, on a volume the agent and stage containers share.
pub const SSH_SOCKETS: &str = "/stagecoach-ssh";
/// The `known_hosts` of the ssh-auth Secrets (public), in the stage container:
/// `<n>/known_hosts`, n the entry of `spec.ssh`.
pub const SSH_KNOWN_HOSTS: &str = "/var/run/secrets/stagecoach/ssh-known-hosts";

/// Label keys on everything the operator creates.
pub const LABEL_BUILD: &str = "stagecoach.dev/build";
pub const LABEL_STAGE: &str = "stagecoach.dev/stage";
pub const LABEL_ROLE: &str = "app.kubernetes.io/component";
pub const LABEL_GENERATION: &str = "stagecoach.dev/generation";
pub const LABEL_ATTEMPT: &str = "stagecoach.dev/attempt";

/// Operator settings that are not part of the ImageBuild spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorConfig {
    /// The builder image (static stagecoach-builder + CA bundle).
    pub builder_image: String,
    pub default_workspace_size: String,
    pub default_storage_class: Option<String>,
    /// Registries (`host:port`) reached over plain HTTP by the source and assemble pods
    /// (base images and pushes); every other registry is HTTPS.
    pub insecure_registries: Vec<String>,
    /// The stage cache repository of builds that name none; without it a build's is
    /// `<output repository>/cache`.
    pub cache_repository: Option<String>,
    /// The claim of persistent `RUN --mount=type=cache` directories in each build
    /// namespace; without it (and without `spec.runCache.claimName`) cache mounts start
    /// empty.
    pub run_cache: Option<RunCacheConfig>,
    /// The platform of the nodes the builder image's pods run on, `BUILDPLATFORM`.
    pub build_platform: String,
    /// Platforms whose stage pods go to build-platform nodes that emulate them
    /// (qemu-user-static registered with binfmt_misc), for clusters without native
    /// nodes of theirs; `all` for every platform.
    pub emulated_platforms: Vec<String>,
}

impl OperatorConfig {
    /// The platform of the node a pod whose image is for `platform` goes to: its own,
    /// or the build platform's when the operator emulates it.
    pub fn node_platform<'a>(&'a self, platform: &'a str) -> &'a str {
        let emulated = self
            .emulated_platforms
            .iter()
            .any(|p| p == platform || p == "all");
        match emulated {
            true => &self.build_platform,
            false => platform,
        }
    }
}

/// The operator's run cache claim, made in a build's namespace when a stage pod first
/// needs it and owned by no build, so it outlives them all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunCacheConfig {
    pub claim: String,
    pub size: String,
    pub storage_class: Option<String>,
    /// `ReadWriteOnce` keeps the pods that mount it on the node it is attached to (a pod
    /// elsewhere waits for it); `ReadWriteMany` lets every node use it at once.
    pub access_mode: String,
    /// Stage pods evict least recently used caches down to this many bytes.
    pub max_bytes: Option<u64>,
}

impl Default for RunCacheConfig {
    /// The operator's defaults (`--run-cache-*`).
    fn default() -> Self {
        RunCacheConfig {
            claim: "stagecoach-run-cache".into(),
            size: "20Gi".into(),
            storage_class: None,
            access_mode: "ReadWriteOnce".into(),
            max_bytes: None,
        }
    }
}

/// Where the run cache volume is mounted in stage pods that mount caches.
pub const RUN_CACHE: &str = "/stagecoach-run-cache";
/// The label that marks the operator's run cache claim.
pub const LABEL_RUN_CACHE: &str = "stagecoach.dev/run-cache";

/// Which pod of a build.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Source,
    Stage(String),
    Assemble,
    /// After a failure: stores the stages that succeeded in the stage cache.
    Cache,
}

impl Role {
    pub fn label(&self) -> &'static str {
        match self {
            Role::Source => "source",
            Role::Stage(_) => "stage",
            Role::Assemble => "assemble",
            Role::Cache => "cache",
        }
    }

    /// The role a rendered pod's labels give; None for a pod that is not ours. Labels hold
    /// a stage's DNS-safe form: the real name comes back from `stage_names` (the status's).
    pub fn from_labels(labels: &BTreeMap<String, String>, stage_names: &[String]) -> Option<Role> {
        match labels.get(LABEL_ROLE)?.as_str() {
            "source" => Some(Role::Source),
            "assemble" => Some(Role::Assemble),
            "cache" => Some(Role::Cache),
            "stage" => {
                let label = labels.get(LABEL_STAGE)?;
                let name = stage_names
                    .iter()
                    .find(|n| label_value(n) == *label)
                    .unwrap_or(label);
                Some(Role::Stage(name.clone()))
            }
            _ => None,
        }
    }
}

/// The build's workspace claim name.
pub fn claim_name(build: &ImageBuild) -> String {
    bounded_name(&format!("{}-workspace", name_of(build)), "")
}

/// Deterministic pod names within 63 characters: `<build>-<role>[-<stage>]-g<gen>[-r<n>]`.
pub fn pod_name(build: &ImageBuild, role: &Role, attempt: u32) -> String {
    let generation = build.metadata.generation.unwrap_or(1);
    let mut suffix = format!("-g{generation}");
    if attempt > 0 {
        suffix.push_str(&format!("-r{attempt}"));
    }
    let base = match role {
        Role::Source => format!("{}-source", name_of(build)),
        Role::Assemble => format!("{}-assemble", name_of(build)),
        Role::Cache => format!("{}-cache", name_of(build)),
        Role::Stage(id) => format!("{}-stage-{}", name_of(build), dns_label(id)),
    };
    bounded_name(&base, &suffix)
}

fn name_of(build: &ImageBuild) -> &str {
    build.metadata.name.as_deref().unwrap_or("build")
}

/// A stage name in a pod name. Stage names allow `_` and `.`, pod names do not: a name
/// changed to fit gets a hash of the original, so `a_b` and `a.b` get pods of their own.
pub fn dns_label(s: &str) -> String {
    let safe: String = s
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if safe == s {
        safe
    } else {
        format!("{safe}-{:08x}", fnv1a(s.as_bytes()))
    }
}

/// A name as a label value (at most 63 characters of `[A-Za-z0-9._-]`, alphanumeric at
/// both ends). A name that is not one as it is (ImageBuild names run to 253 characters)
/// keeps a readable start and gets a hash of the whole, so no two names share a value.
pub fn label_value(name: &str) -> String {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    let ends_ok = |s: &str| {
        s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric())
    };
    if name.is_empty() || (name.len() <= 63 && name.chars().all(allowed) && ends_ok(name)) {
        return name.to_string();
    }
    let start: String = name
        .chars()
        .map(|c| if allowed(c) { c } else { '-' })
        .take(54)
        .collect();
    let start = start.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    let hash = fnv1a(name.as_bytes());
    match start.is_empty() {
        true => format!("{hash:08x}"),
        false => format!("{start}-{hash:08x}"),
    }
}

/// `base + suffix` cut to 63 characters; a cut name gets a short hash so two long names
/// stay apart.
fn bounded_name(base: &str, suffix: &str) -> String {
    let full = format!("{base}{suffix}");
    if full.len() <= 63 {
        return full;
    }
    let hash = fnv1a(base.as_bytes());
    let keep = 63 - suffix.len() - 9;
    let cut = base[..keep].trim_end_matches('-');
    format!("{cut}-{hash:08x}{suffix}")
}

/// A small stable hash for name suffixes (not for security).
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

fn owner_reference(build: &ImageBuild) -> OwnerReference {
    OwnerReference {
        api_version: "stagecoach.dev/v1alpha1".into(),
        kind: "ImageBuild".into(),
        name: name_of(build).to_string(),
        uid: build.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn labels(build: &ImageBuild, role: &Role, attempt: u32) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        (
            "app.kubernetes.io/name".to_string(),
            "stagecoach".to_string(),
        ),
        (
            "app.kubernetes.io/managed-by".to_string(),
            "stagecoach".to_string(),
        ),
        (LABEL_ROLE.to_string(), role.label().to_string()),
        (LABEL_BUILD.to_string(), label_value(name_of(build))),
        (
            LABEL_GENERATION.to_string(),
            build.metadata.generation.unwrap_or(1).to_string(),
        ),
        (LABEL_ATTEMPT.to_string(), attempt.to_string()),
    ]);
    if let Role::Stage(id) = role {
        labels.insert(LABEL_STAGE.to_string(), label_value(id));
    }
    labels
}

fn metadata(build: &ImageBuild, name: String, role: &Role, attempt: u32) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: build.metadata.namespace.clone(),
        labels: Some(labels(build, role, attempt)),
        owner_references: Some(vec![owner_reference(build)]),
        ..ObjectMeta::default()
    }
}

/// The workspace's access modes: the ImageBuild's, else ReadWriteOnce.
fn access_modes(build: &ImageBuild) -> Vec<String> {
    build
        .spec
        .workspace
        .as_ref()
        .map(|w| w.access_modes.clone())
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| vec!["ReadWriteOnce".into()])
}

/// Whether the workspace can be attached to one node only (ReadWriteOnce, and
/// ReadWriteOncePod): then a build's pods must all run on the node of its first pod.
pub fn workspace_is_node_local(build: &ImageBuild) -> bool {
    !access_modes(build).iter().any(|m| m == "ReadWriteMany")
}

/// The node field a pod is pinned by: the node's name itself (its `hostname` label may
/// differ), as the DaemonSet controller pins its pods.
const NODE_NAME_FIELD: &str = "metadata.name";

/// Requires `pod` to run on `node`, added to every required term of the user's node
/// affinity (terms are alternatives, so each must carry it) and replacing none of it.
pub fn pin_to_node(pod: &mut Pod, node: &str) {
    let Some(spec) = pod.spec.as_mut() else {
        return;
    };
    let pin = NodeSelectorRequirement {
        key: NODE_NAME_FIELD.into(),
        operator: "In".into(),
        values: Some(vec![node.to_string()]),
    };
    let required = spec
        .affinity
        .get_or_insert_with(Affinity::default)
        .node_affinity
        .get_or_insert_with(NodeAffinity::default)
        .required_during_scheduling_ignored_during_execution
        .get_or_insert_with(|| NodeSelector {
            node_selector_terms: Vec::new(),
        });
    if required.node_selector_terms.is_empty() {
        required
            .node_selector_terms
            .push(NodeSelectorTerm::default());
    }
    for term in &mut required.node_selector_terms {
        term.match_fields
            .get_or_insert_with(Vec::new)
            .push(pin.clone());
    }
}

/// The node [`pin_to_node`] pinned `pod` to.
pub fn pinned_node(pod: &Pod) -> Option<&str> {
    let terms = &pod
        .spec
        .as_ref()?
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms;
    terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|r| r.key == NODE_NAME_FIELD && r.operator == "In")
        .and_then(|r| r.values.as_ref()?.first())
        .map(String::as_str)
}

/// The workspace claim, owned by the ImageBuild.
pub fn render_claim(build: &ImageBuild, config: &OperatorConfig) -> PersistentVolumeClaim {
    let ws = build.spec.workspace.as_ref();
    let access_modes = access_modes(build);
    let size = ws
        .and_then(|w| w.size.clone())
        .unwrap_or_else(|| config.default_workspace_size.clone());
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(claim_name(build)),
            namespace: build.metadata.namespace.clone(),
            labels: Some(
                labels(build, &Role::Source, 0)
                    .into_iter()
                    .filter(|(k, _)| k != LABEL_ROLE && k != LABEL_ATTEMPT)
                    .collect(),
            ),
            owner_references: Some(vec![owner_reference(build)]),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(access_modes),
            storage_class_name: ws
                .and_then(|w| w.storage_class_name.clone())
                .or_else(|| config.default_storage_class.clone()),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_string(), Quantity(size))])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    }
}

/// The run cache claim a build's stage pods mount, and whether the operator makes it:
/// `spec.runCache.claimName` (the user's), else the operator's; none when disabled.
pub fn run_cache_claim(build: &ImageBuild, config: &OperatorConfig) -> Option<(String, bool)> {
    let spec = build.spec.run_cache.clone().unwrap_or_default();
    if spec.disabled {
        return None;
    }
    match spec.claim_name {
        Some(claim) => Some((claim, false)),
        None => config.run_cache.as_ref().map(|c| (c.claim.clone(), true)),
    }
}

/// The run cache claim the operator makes for the build's pods, when it is the
/// operator's (none when the build names its own or turns the cache off).
pub fn operator_run_cache_claim(
    build: &ImageBuild,
    config: &OperatorConfig,
) -> Option<PersistentVolumeClaim> {
    let run_cache = config.run_cache.as_ref()?;
    matches!(run_cache_claim(build, config), Some((_, true)))
        .then(|| render_run_cache_claim(build, run_cache))
}

/// The operator's run cache claim in the build's namespace: no owner, so no build's
/// deletion takes it; created when missing (a create that finds it is no error).
pub fn render_run_cache_claim(
    build: &ImageBuild,
    config: &RunCacheConfig,
) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(config.claim.clone()),
            namespace: build.metadata.namespace.clone(),
            labels: Some(BTreeMap::from([
                (
                    "app.kubernetes.io/managed-by".to_string(),
                    "stagecoach".to_string(),
                ),
                (LABEL_RUN_CACHE.to_string(), "true".to_string()),
            ])),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec![config.access_mode.clone()]),
            storage_class_name: config.storage_class.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(config.size.clone()),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    }
}

fn workspace_volume(build: &ImageBuild) -> Volume {
    Volume {
        name: "workspace".into(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: claim_name(build),
            read_only: None,
        }),
        ..Volume::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    }
}

fn secret_volume(name: &str, secret: &str) -> Volume {
    Volume {
        name: name.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.into()),
            default_mode: Some(0o440),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

fn empty_dir(name: &str) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(Default::default()),
        ..Volume::default()
    }
}

/// Non-root, read-only root, nothing to escalate: the source and assemble containers.
fn restricted() -> SecurityContext {
    SecurityContext {
        run_as_user: Some(BUILDER_UID),
        run_as_group: Some(BUILDER_UID),
        run_as_non_root: Some(true),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        ..SecurityContext::default()
    }
}

/// Stage containers run RUN steps as root inside the base image, but are never
/// privileged and cannot gain privileges.
fn stage_security() -> SecurityContext {
    SecurityContext {
        run_as_user: Some(0),
        run_as_non_root: Some(false),
        privileged: Some(false),
        allow_privilege_escalation: Some(false),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        ..SecurityContext::default()
    }
}

fn resources_for(build: &ImageBuild, stage: Option<&str>) -> Option<ResourceRequirements> {
    let r = build.spec.resources.as_ref()?;
    stage
        .and_then(|s| r.stages.get(s).cloned())
        .or_else(|| r.default.clone())
}

/// Seconds a build may take, from `spec.timeout` (default one hour).
pub fn timeout_seconds(build: &ImageBuild) -> i64 {
    build
        .spec
        .timeout
        .as_deref()
        .and_then(stagecoach_plan::instruction::parse_go_duration)
        .map_or(3600, |ns| (ns / 1_000_000_000).max(1) as i64)
}

/// The ImageBuild's node selector with the node's OS and architecture (Kubernetes'
/// well-known labels) for `platform`; the ImageBuild's own values for those keys win.
fn node_selector(build: &ImageBuild, platform: &str) -> BTreeMap<String, String> {
    let mut selector = build.spec.node_selector.clone().unwrap_or_default();
    let mut parts = platform.split('/');
    for key in ["kubernetes.io/os", "kubernetes.io/arch"] {
        if let Some(value) = parts.next() {
            selector
                .entry(key.to_string())
                .or_insert_with(|| value.to_string());
        }
    }
    selector
}

fn pod(
    build: &ImageBuild,
    role: &Role,
    attempt: u32,
    node_platform: &str,
    containers: Vec<Container>,
    init_containers: Vec<Container>,
    volumes: Vec<Volume>,
) -> Pod {
    Pod {
        metadata: metadata(build, pod_name(build, role, attempt), role, attempt),
        spec: Some(PodSpec {
            restart_policy: Some("Never".into()),
            automount_service_account_token: Some(false),
            active_deadline_seconds: Some(timeout_seconds(build)),
            service_account_name: build.spec.service_account_name.clone(),
            image_pull_secrets: build.spec.image_pull_secrets.clone(),
            node_selector: Some(node_selector(build, node_platform)),
            tolerations: build.spec.tolerations.clone(),
            affinity: build.spec.affinity.clone(),
            // OnRootMismatch: the kubelet walks the volume only while its root is not
            // the fsGroup's yet (the first pod), instead of re-chowning every file and
            // putting setgid and group write back at each pod start.
            security_context: Some(PodSecurityContext {
                fs_group: Some(BUILDER_UID),
                fs_group_change_policy: Some("OnRootMismatch".into()),
                ..PodSecurityContext::default()
            }),
            init_containers: (!init_containers.is_empty()).then_some(init_containers),
            containers,
            volumes: Some(volumes),
            ..PodSpec::default()
        }),
        ..Pod::default()
    }
}

fn container(name: &str, image: &str, args: Vec<String>) -> Container {
    Container {
        name: name.into(),
        image: Some(image.into()),
        image_pull_policy: Some("IfNotPresent".into()),
        args: Some(args),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Container::default()
    }
}

/// The source pod: clone, context, plan with pinned base images. Git credentials and
/// pull secrets (for digest resolution) are mounted here and nowhere else.
pub fn render_source_pod(build: &ImageBuild, config: &OperatorConfig, attempt: u32) -> Pod {
    let spec = &build.spec;
    let mut args = vec!["source".to_string()];
    if let Some(git) = &spec.source.git {
        args.extend(["--url".into(), git.url.clone()]);
        if let Some(rev) = &git.revision {
            args.extend(["--revision".into(), rev.clone()]);
        }
    }
    if let Some(oci) = &spec.source.oci {
        args.extend(["--context-image".into(), oci.image.clone()]);
    }
    if let Some(dir) = &spec.source.context_dir {
        args.extend(["--context-dir".into(), dir.clone()]);
    }
    if let Some(path) = &spec.dockerfile {
        args.extend(["--dockerfile".into(), path.clone()]);
    }
    if let Some(inline) = &spec.dockerfile_inline {
        args.extend(["--dockerfile-inline".into(), inline.clone()]);
    }
    if let Some(target) = &spec.target {
        args.extend(["--target".into(), target.clone()]);
    }
    // Without platforms, the image is the build platform's.
    let platforms = match spec.platforms.is_empty() {
        true => config.build_platform.clone(),
        false => spec.platforms.join(","),
    };
    args.extend(["--platform".into(), platforms]);
    args.extend(["--build-platform".into(), config.build_platform.clone()]);
    for arg in &spec.build_args {
        args.extend(["--build-arg".into(), format!("{}={}", arg.name, arg.value)]);
    }
    let mut insecure = config.insecure_registries.clone();
    if let Some((repository, _)) = cache_settings(build, config) {
        // The cache on the output's plain-HTTP registry is read over HTTP too.
        let host = registry_host(&repository);
        if spec.output.insecure_registry && host == registry_host(&spec.output.image) {
            insecure.push(host);
        }
    }
    for registry in &insecure {
        args.extend(["--insecure-registry".into(), registry.clone()]);
    }
    args.extend(cache_args(build, config));
    let mut volumes = vec![workspace_volume(build), empty_dir("tmp")];
    let mut mounts = vec![
        mount("workspace", WORKSPACE, false),
        mount("tmp", "/tmp", false),
    ];
    let git_secret = spec.source.git.as_ref().and_then(|g| g.secret_ref.as_ref());
    if let Some(secret) = git_secret {
        volumes.push(secret_volume("git-credentials", &secret.name));
        mounts.push(mount("git-credentials", GIT_SECRET, true));
        args.extend(["--git-secret".into(), GIT_SECRET.into()]);
    }
    // The context artifact's pull secret joins the image pull secrets, in this pod only.
    let context_secret = spec
        .source
        .oci
        .as_ref()
        .and_then(|o| o.pull_secret_ref.as_ref());
    let pull = spec
        .image_pull_secrets
        .iter()
        .flatten()
        .chain(context_secret);
    for (n, secret) in pull.enumerate() {
        let name = format!("pull-{n}");
        volumes.push(secret_volume(&name, &secret.name));
        mounts.push(mount(&name, &format!("{PULL_SECRETS}/{n}"), true));
    }
    let mut c = container("source", &config.builder_image, args);
    c.volume_mounts = Some(mounts);
    c.security_context = Some(restricted());
    c.resources = resources_for(build, None);
    let platform = &config.build_platform;
    pod(
        build,
        &Role::Source,
        attempt,
        platform,
        vec![c],
        vec![],
        volumes,
    )
}

/// A stage pod: the builder installed by an init container, then run as root on the
/// stage's base image (the builder image for a chain that starts at `scratch`). Base
/// images come through imagePullSecrets; the only Secrets mounted are the build
/// secrets its stages' RUN steps mount, one key each.
pub fn render_stage_pod(
    build: &ImageBuild,
    config: &OperatorConfig,
    stage: &PodSummary,
    source_date_epoch: Option<i64>,
    attempt: u32,
) -> Pod {
    let role = Role::Stage(stage.id.clone());
    let tools = "tools";
    let mut install = container(
        "install",
        &config.builder_image,
        vec!["install".into(), TOOLS.into()],
    );
    install.volume_mounts = Some(vec![mount(tools, TOOLS, false)]);
    install.security_context = Some(restricted());
    let id = stage.stage_id();
    let mut args = vec!["stage".to_string(), id.to_string()];
    // In a build for several platforms, its stages are in its platform's part of the
    // workspace, or the first platform's for a pod they all share.
    let platforms = &build.spec.platforms;
    let part = stage
        .platform
        .as_ref()
        .or(platforms.first().filter(|_| platforms.len() > 1));
    let in_part = |path: String| match part {
        Some(p) => format!("{}/{path}", layout::platform_dir(p)),
        None => path,
    };
    if let Some(platform) = part {
        args.extend(["--part".into(), platform.clone()]);
    }
    if let Some(dir) = &build.spec.source.context_dir {
        args.extend(["--context-dir".into(), dir.clone()]);
    }
    args.extend(compression_args(build));
    // The workspace is read-only to the stage pod (RUN steps run in its container),
    // but for the directories of its own stages and its own pod directory.
    let mut writable: Vec<String> = stage
        .stages
        .iter()
        .map(|s| in_part(layout::stage_dir(s)))
        .collect();
    writable.push(in_part(layout::pod_dir(&layout::stage_pod(id))));
    let image = match &stage.image {
        Some(image) => image.clone(),
        None => {
            let root = in_part(layout::scratch_root(id));
            args.extend(["--root".into(), format!("{WORKSPACE}/{root}")]);
            writable.push(root);
            config.builder_image.clone()
        }
    };
    let mut volumes = vec![workspace_volume(build), empty_dir(tools)];
    let mut extra_mounts = Vec::new();
    for (n, secret) in build_secrets(build, stage) {
        let name = format!("secret-{n}");
        let dir = format!("{BUILD_SECRETS}/{n}");
        args.extend(["--secret".into(), format!("{}={dir}/value", secret.id)]);
        let (secret_name, key) = (&secret.secret_ref.name, &secret.secret_ref.key);
        volumes.push(secret_key_volume(&name, secret_name, key, "value", 0o400));
        extra_mounts.push(mount(&name, &dir, true));
    }
    if stage.run_cache
        && let Some((claim, managed)) = run_cache_claim(build, config)
    {
        args.extend(["--run-cache".into(), RUN_CACHE.into()]);
        // The operator knows the size of its own claim; a user's is theirs to size.
        let budget = config.run_cache.as_ref().and_then(|c| c.max_bytes);
        if let Some(bytes) = budget.filter(|_| managed) {
            args.extend(["--run-cache-max-bytes".into(), bytes.to_string()]);
        }
        volumes.push(Volume {
            name: "run-cache".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim,
                read_only: None,
            }),
            ..Volume::default()
        });
        extra_mounts.push(mount("run-cache", RUN_CACHE, false));
    }
    let agent = ssh_agent_container(
        build,
        config,
        stage,
        &mut args,
        &mut volumes,
        &mut extra_mounts,
    );
    let mut c = container("stage", &image, args);
    c.command = Some(vec![format!("{TOOLS}/stagecoach-builder")]);
    let mut mounts = vec![mount("workspace", WORKSPACE, true)];
    mounts.extend(writable.into_iter().map(|dir| VolumeMount {
        name: "workspace".into(),
        mount_path: format!("{WORKSPACE}/{dir}"),
        sub_path: Some(dir),
        ..VolumeMount::default()
    }));
    mounts.push(mount(tools, TOOLS, true));
    mounts.extend(extra_mounts);
    c.volume_mounts = Some(mounts);
    c.security_context = Some(stage_security());
    c.resources = resources_for(build, Some(id));
    c.env = source_date_epoch.map(|t| {
        vec![EnvVar {
            name: "SOURCE_DATE_EPOCH".into(),
            value: Some(t.to_string()),
            value_from: None,
        }]
    });
    let containers = std::iter::once(c).chain(agent).collect();
    let runs_on = stage.runs_on.as_deref().unwrap_or(&config.build_platform);
    let platform = config.node_platform(runs_on);
    pod(
        build,
        &role,
        attempt,
        platform,
        containers,
        vec![install],
        volumes,
    )
}

/// A volume of one key of a Secret, at `path`, with `mode`.
fn secret_key_volume(name: &str, secret: &str, key: &str, path: &str, mode: i32) -> Volume {
    Volume {
        name: name.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.into()),
            items: Some(vec![KeyToPath {
                key: key.into(),
                path: path.into(),
                mode: None,
            }]),
            default_mode: Some(mode),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// The ssh agent beside a stage container whose stages mount ssh ids the build gives
/// keys for: the builder image, non-root, the only container with the keys' Secrets; it
/// serves one socket per key on a volume the stage container shares, and stops when
/// the stage container is done. Adds what the stage container gets (the sockets, and
/// each Secret's optional, public `known_hosts`) to its `args`, `volumes` and mounts.
fn ssh_agent_container(
    build: &ImageBuild,
    config: &OperatorConfig,
    stage: &PodSummary,
    args: &mut Vec<String>,
    volumes: &mut Vec<Volume>,
    stage_mounts: &mut Vec<VolumeMount>,
) -> Option<Container> {
    let entries = &build.spec.ssh;
    let served: Vec<(usize, &BuildSsh)> = entries
        .iter()
        .enumerate()
        .filter(|(n, s)| stage.ssh.contains(&s.id) && !entries[..*n].iter().any(|t| t.id == s.id))
        .collect();
    if served.is_empty() {
        return None;
    }
    let mut agent_args = vec!["ssh-agent".to_string(), "--dir".into(), SSH_SOCKETS.into()];
    let mut mounts = vec![mount("ssh-sockets", SSH_SOCKETS, false)];
    for (socket, (n, ssh)) in served.into_iter().enumerate() {
        let name = format!("ssh-key-{n}");
        let dir = format!("{SSH_KEYS}/{n}");
        agent_args.extend(["--key".into(), format!("{}={dir}/ssh-privatekey", ssh.id)]);
        args.extend([
            "--ssh".into(),
            format!("{}={SSH_SOCKETS}/agent-{socket}.sock", ssh.id),
        ]);
        // Read through the pods' fsGroup: the agent is not root.
        let key = "ssh-privatekey";
        volumes.push(secret_key_volume(
            &name,
            &ssh.secret_ref.name,
            key,
            key,
            0o440,
        ));
        let hosts = "known_hosts";
        let known_name = format!("ssh-known-hosts-{n}");
        stage_mounts.push(mount(&known_name, &format!("{SSH_KNOWN_HOSTS}/{n}"), true));
        let mut known = secret_key_volume(&known_name, &ssh.secret_ref.name, hosts, hosts, 0o444);
        if let Some(secret) = known.secret.as_mut() {
            secret.optional = Some(true);
        }
        volumes.push(known);
        args.extend([
            "--ssh-known-hosts".into(),
            format!("{}={SSH_KNOWN_HOSTS}/{n}/{hosts}", ssh.id),
        ]);
        mounts.push(mount(&name, &dir, true));
    }
    volumes.push(empty_dir("ssh-sockets"));
    stage_mounts.push(mount("ssh-sockets", SSH_SOCKETS, false));
    let mut agent = container("ssh-agent", &config.builder_image, agent_args);
    agent.volume_mounts = Some(mounts);
    agent.security_context = Some(restricted());
    Some(agent)
}

/// The entries of `spec.secrets` (with their position) that a stage pod mounts: those
/// its stages' RUN steps name, the first entry of an id only.
fn build_secrets<'a>(
    build: &'a ImageBuild,
    stage: &'a PodSummary,
) -> impl Iterator<Item = (usize, &'a BuildSecret)> {
    let secrets = &build.spec.secrets;
    secrets.iter().enumerate().filter(move |(n, s)| {
        stage.secrets.contains(&s.id) && !secrets[..*n].iter().any(|t| t.id == s.id)
    })
}

/// The stage cache of a build: its repository and mode; none when disabled.
pub fn cache_settings(build: &ImageBuild, config: &OperatorConfig) -> Option<(String, CacheMode)> {
    let spec = build.spec.cache.clone().unwrap_or_default();
    let mode = spec.mode.unwrap_or(CacheMode::ReadWrite);
    if mode == CacheMode::Disabled {
        return None;
    }
    let repository = spec
        .repository
        .or_else(|| config.cache_repository.clone())
        .unwrap_or_else(|| format!("{}/cache", repository_of(&build.spec.output.image)));
    Some((repository, mode))
}

/// The builder's argument for layer compression, for the pods that write layers.
fn compression_args(build: &ImageBuild) -> Vec<String> {
    match build.spec.output.compression {
        Some(crate::api::LayerCompression::Zstd) => vec!["--compression".into(), "zstd".into()],
        Some(crate::api::LayerCompression::Gzip) | None => Vec::new(),
    }
}

/// The platform build pods run on (BUILDPLATFORM) unless the operator is told another:
/// the builder image's.
pub const DEFAULT_BUILD_PLATFORM: &str = "linux/amd64";

/// The builder's arguments for the stage cache.
fn cache_args(build: &ImageBuild, config: &OperatorConfig) -> Vec<String> {
    match cache_settings(build, config) {
        None => vec!["--cache-mode".into(), "disabled".into()],
        Some((repository, mode)) => vec![
            "--cache-repository".into(),
            repository,
            "--cache-mode".into(),
            match mode {
                CacheMode::ReadOnly => "read-only",
                _ => "read-write",
            }
            .into(),
        ],
    }
}

/// `registry/team/app` of `registry/team/app:1` or `…@sha256:…`.
pub fn repository_of(image: &str) -> &str {
    let image = image.split('@').next().unwrap_or(image);
    match image.rsplit_once(':') {
        Some((repository, tag)) if !tag.contains('/') => repository,
        _ => image,
    }
}

/// The registry part of an image reference (`host[:port]`), Docker Hub's for a
/// reference without one.
pub fn registry_host(image: &str) -> String {
    match image.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first.into(),
        _ => "docker.io".into(),
    }
}

/// The assemble pod: builds the runtime image and pushes it. The push credentials are
/// mounted here and nowhere else.
pub fn render_assemble_pod(
    build: &ImageBuild,
    config: &OperatorConfig,
    commit: Option<&str>,
    source_date_epoch: Option<i64>,
    attempt: u32,
) -> Pod {
    assemble_pod(
        build,
        config,
        commit,
        source_date_epoch,
        attempt,
        Role::Assemble,
    )
}

/// The `org.opencontainers.image.source` of the image: the repository, or the context
/// artifact's repository.
fn source_url(build: &ImageBuild) -> String {
    let location = build.spec.source.location();
    match &build.spec.source.oci {
        Some(_) => location
            .split_once('@')
            .map_or(location, |(repo, _)| repo)
            .to_string(),
        None => location.to_string(),
    }
}

/// The cache pod of a failed build: the assemble pod's image, rights and credentials,
/// storing the stages that succeeded in the stage cache and pushing no image, so that
/// the fixed build resumes from the failed stage.
pub fn render_cache_pod(
    build: &ImageBuild,
    config: &OperatorConfig,
    commit: Option<&str>,
    source_date_epoch: Option<i64>,
) -> Pod {
    assemble_pod(build, config, commit, source_date_epoch, 0, Role::Cache)
}

fn assemble_pod(
    build: &ImageBuild,
    config: &OperatorConfig,
    commit: Option<&str>,
    source_date_epoch: Option<i64>,
    attempt: u32,
    role: Role,
) -> Pod {
    let out = &build.spec.output;
    let mut args = vec![
        "assemble".to_string(),
        "--image".into(),
        out.image.clone(),
        "--pod".into(),
        pod_name(build, &role, attempt),
        "--source-url".into(),
        source_url(build),
    ];
    if let Some(dir) = &build.spec.source.context_dir {
        args.extend(["--context-dir".into(), dir.clone()]);
    }
    for tag in &out.tags {
        args.extend(["--tag".into(), tag.clone()]);
    }
    if let Some(commit) = commit {
        args.extend(["--revision".into(), commit.to_string()]);
    }
    if let Some(t) = source_date_epoch {
        args.extend(["--source-date-epoch".into(), t.to_string()]);
    }
    args.extend(cache_args(build, config));
    args.extend(compression_args(build));
    if role == Role::Cache {
        args.push("--cache-only".into());
    }
    let output_registry = out.insecure_registry.then(|| registry_host(&out.image));
    for registry in config
        .insecure_registries
        .iter()
        .chain(output_registry.iter())
    {
        args.extend(["--insecure-registry".into(), registry.clone()]);
    }
    for (k, v) in &out.labels {
        args.extend(["--label".into(), format!("{k}={v}")]);
    }
    for (k, v) in &out.annotations {
        args.extend(["--annotation".into(), format!("{k}={v}")]);
    }
    let mut volumes = vec![workspace_volume(build), empty_dir("tmp")];
    let mut mounts = vec![
        mount("workspace", WORKSPACE, false),
        mount("tmp", "/tmp", false),
    ];
    if let Some(secret) = &out.push_secret_ref {
        volumes.push(Volume {
            name: "push-credentials".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.name.clone()),
                default_mode: Some(0o440),
                items: Some(vec![k8s_openapi::api::core::v1::KeyToPath {
                    key: ".dockerconfigjson".into(),
                    path: "config.json".into(),
                    mode: None,
                }]),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
        mounts.push(mount("push-credentials", PUSH_SECRET, true));
        args.extend(["--auth-file".into(), format!("{PUSH_SECRET}/config.json")]);
    }
    let mut c = container(
        crate::observe::main_container(&role),
        &config.builder_image,
        args,
    );
    c.volume_mounts = Some(mounts);
    c.security_context = Some(restricted());
    c.resources = resources_for(build, None);
    let platform = &config.build_platform;
    pod(build, &role, attempt, platform, vec![c], vec![], volumes)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn build(yaml: &str) -> ImageBuild {
        let mut b: ImageBuild = serde_saphyr::from_str(yaml).expect("valid ImageBuild");
        b.metadata.uid = Some("uid-1".into());
        b.metadata.generation = Some(3);
        b
    }

    pub(crate) fn config() -> OperatorConfig {
        OperatorConfig {
            builder_image: "registry.example/stagecoach/builder:1".into(),
            default_workspace_size: "10Gi".into(),
            default_storage_class: None,
            insecure_registries: Vec::new(),
            cache_repository: None,
            run_cache: None,
            build_platform: DEFAULT_BUILD_PLATFORM.into(),
            emulated_platforms: Vec::new(),
        }
    }

    const FULL: &str = r#"
apiVersion: stagecoach.dev/v1alpha1
kind: ImageBuild
metadata: {name: app, namespace: team}
spec:
  source:
    git: {url: "https://git.example/app.git", revision: main, secretRef: {name: git-creds}}
    contextDir: svc
  buildArgs: [{name: V, value: "1"}]
  imagePullSecrets: [{name: pull-creds}]
  output: {image: "registry.example/app:1", tags: [latest], pushSecretRef: {name: push-creds}}
  timeout: 30m
"#;

    fn stage() -> PodSummary {
        stage_named("build_x")
    }

    fn stage_named(id: &str) -> PodSummary {
        PodSummary {
            id: id.into(),
            stages: vec![id.into()],
            image: Some("docker.io/library/busybox@sha256:aaaa".into()),
            waits_for: vec![],
            cache: None,
            secrets: vec![],
            run_cache: false,
            ssh: Vec::new(),
            platform: None,
            runs_on: None,
        }
    }

    fn secret_names(pod: &Pod) -> Vec<String> {
        pod.spec
            .as_ref()
            .and_then(|s| s.volumes.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|v| v.secret.as_ref()?.secret_name.clone())
            .collect()
    }

    /// The first container's arguments.
    fn args(pod: &Pod) -> Vec<String> {
        pod.spec.as_ref().expect("spec").containers[0]
            .args
            .clone()
            .expect("args")
    }

    /// Layer compression reaches the pods that write layers, and only those.
    #[test]
    fn zstd_goes_to_the_pods_that_write_layers() {
        let zstd = |p: &Pod| args(p).windows(2).any(|w| w == ["--compression", "zstd"]);
        let mut b = build(FULL);
        assert!(!zstd(&render_stage_pod(
            &b,
            &config(),
            &stage(),
            Some(1),
            0
        )));
        b.spec.output.compression = Some(crate::api::LayerCompression::Zstd);
        assert!(zstd(&render_stage_pod(&b, &config(), &stage(), Some(1), 0)));
        assert!(zstd(&render_assemble_pod(
            &b,
            &config(),
            Some("abc"),
            Some(1),
            0
        )));
        assert!(zstd(&render_cache_pod(&b, &config(), Some("abc"), Some(1))));
        assert!(!args(&render_source_pod(&b, &config(), 0)).contains(&"--compression".into()));
    }

    fn claim_names(pod: &Pod) -> Vec<String> {
        let volumes = pod.spec.as_ref().and_then(|s| s.volumes.as_ref());
        volumes
            .into_iter()
            .flatten()
            .filter_map(|v| Some(v.persistent_volume_claim.as_ref()?.claim_name.clone()))
            .collect()
    }

    /// The run cache claim reaches the stage pods whose RUN steps mount caches, and no
    /// other pod: the operator's by default (with the eviction budget), the build's own
    /// when it names one, none when disabled. The operator's claim has no owner.
    #[test]
    fn the_run_cache_goes_only_to_stage_pods_with_cache_mounts() {
        let mut config = config();
        config.run_cache = Some(RunCacheConfig {
            claim: "stagecoach-run-cache".into(),
            size: "20Gi".into(),
            storage_class: Some("nfs".into()),
            access_mode: "ReadWriteMany".into(),
            max_bytes: Some(1 << 30),
        });
        let mut b = build(FULL);
        let mut caching = stage_named("deps");
        caching.run_cache = true;
        let pod = render_stage_pod(&b, &config, &caching, Some(1), 0);
        assert!(claim_names(&pod).contains(&"stagecoach-run-cache".to_string()));
        let c = &pod.spec.as_ref().expect("spec").containers[0];
        let given = c.args.clone().expect("args");
        assert!(given.windows(2).any(|w| w == ["--run-cache", RUN_CACHE]));
        assert!(
            given
                .windows(2)
                .any(|w| w == ["--run-cache-max-bytes", "1073741824"])
        );
        let mounted = c
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == "run-cache");
        assert_eq!(
            mounted.map(|m| (m.mount_path.as_str(), m.read_only)),
            Some((RUN_CACHE, None)),
            "writable"
        );

        for other in [
            render_stage_pod(&b, &config, &stage(), Some(1), 0),
            render_source_pod(&b, &config, 0),
            render_assemble_pod(&b, &config, Some("abc"), Some(1), 0),
        ] {
            assert!(!claim_names(&other).contains(&"stagecoach-run-cache".to_string()));
        }

        let claim = render_run_cache_claim(&b, config.run_cache.as_ref().expect("config"));
        assert!(
            claim.metadata.owner_references.is_none(),
            "no build owns it"
        );
        let labels = claim.metadata.labels.clone().unwrap_or_default();
        assert_eq!(
            labels.get(LABEL_RUN_CACHE).map(String::as_str),
            Some("true")
        );
        let spec = claim.spec.expect("spec");
        assert_eq!(spec.access_modes, Some(vec!["ReadWriteMany".to_string()]));
        assert_eq!(spec.storage_class_name.as_deref(), Some("nfs"));

        b.spec.run_cache = Some(crate::api::RunCacheSpec {
            claim_name: Some("team-caches".into()),
            disabled: false,
        });
        let pod = render_stage_pod(&b, &config, &caching, Some(1), 0);
        assert!(claim_names(&pod).contains(&"team-caches".to_string()));
        let given = pod.spec.expect("spec").containers[0]
            .args
            .clone()
            .expect("args");
        assert!(
            !given.contains(&"--run-cache-max-bytes".to_string()),
            "a user's claim is theirs to size"
        );
        assert_eq!(
            run_cache_claim(&b, &config),
            Some(("team-caches".into(), false))
        );

        b.spec.run_cache = Some(crate::api::RunCacheSpec {
            claim_name: None,
            disabled: true,
        });
        let pod = render_stage_pod(&b, &config, &caching, Some(1), 0);
        assert!(
            !pod.spec.expect("spec").containers[0]
                .args
                .clone()
                .expect("args")
                .contains(&"--run-cache".to_string())
        );
    }

    /// An ssh key reaches only the agent container beside a stage container whose
    /// stages mount its id: the stage container gets the socket, never the key.
    #[test]
    fn ssh_keys_go_only_to_the_agent_beside_the_stages_that_mount_them() {
        let mut b = build(FULL);
        b.spec.ssh = serde_json::from_value(serde_json::json!([
            {"id": "github", "secretRef": {"name": "github-key"}},
            {"secretRef": {"name": "default-key"}},
        ]))
        .expect("ssh");
        assert_eq!(b.spec.ssh[1].id, "default");
        let mut mounting = stage_named("deps");
        mounting.ssh = vec!["default".into()];
        let pod = render_stage_pod(&b, &config(), &mounting, Some(1), 0);
        let spec = pod.spec.as_ref().expect("spec");
        assert_eq!(
            secret_names(&pod),
            ["default-key", "default-key"],
            "its key for the agent, its known_hosts for the stage container"
        );
        let [stage_c, agent] = spec.containers.as_slice() else {
            panic!("a stage and an agent container: {:?}", spec.containers)
        };
        assert_eq!(agent.name, "ssh-agent");
        let volumes_of = |c: &Container| -> Vec<String> {
            c.volume_mounts
                .iter()
                .flatten()
                .map(|m| m.name.clone())
                .collect()
        };
        assert!(volumes_of(agent).contains(&"ssh-key-1".to_string()));
        assert!(!volumes_of(stage_c).iter().any(|v| v.starts_with("ssh-key")));
        assert!(volumes_of(stage_c).contains(&"ssh-sockets".to_string()));
        assert!(
            volumes_of(stage_c).contains(&"ssh-known-hosts-1".to_string()),
            "the public known_hosts goes to the stage container"
        );
        let stage_args = stage_c.args.clone().expect("args");
        assert!(
            stage_args
                .windows(2)
                .any(|w| w == ["--ssh", "default=/stagecoach-ssh/agent-0.sock"])
        );
        let agent_args = agent.args.clone().expect("args");
        assert!(agent_args.windows(2).any(|w| w
            == [
                "--key",
                "default=/var/run/secrets/stagecoach/ssh/1/ssh-privatekey"
            ]));
        let security = agent.security_context.clone().expect("security");
        assert_eq!(security.run_as_non_root, Some(true));

        let other = render_stage_pod(&b, &config(), &stage(), Some(1), 0);
        assert_eq!(other.spec.expect("spec").containers.len(), 1);
    }

    /// A build secret reaches the pods of the stages that mount it, one key under an
    /// index (no id in a path), read by root only; other pods get nothing.
    #[test]
    fn build_secrets_go_only_to_the_stage_pods_that_mount_them() {
        let mut b = build(FULL);
        b.spec.secrets = serde_json::from_value(serde_json::json!([
            {"id": "npm", "secretRef": {"name": "npm-token", "key": "token"}},
            {"id": "netrc", "secretRef": {"name": "netrc", "key": ".netrc"}},
            {"id": "npm", "secretRef": {"name": "shadowed", "key": "token"}},
        ]))
        .expect("secrets");
        let mut mounting = stage_named("deps");
        mounting.secrets = vec!["netrc".into(), "npm".into(), "absent".into()];
        let pod = render_stage_pod(&b, &config(), &mounting, Some(1), 0);
        assert_eq!(secret_names(&pod), ["npm-token", "netrc"]);
        let spec = pod.spec.as_ref().expect("spec");
        let volume = spec.volumes.iter().flatten().find(|v| v.name == "secret-1");
        let secret = volume.and_then(|v| v.secret.as_ref()).expect("secret-1");
        assert_eq!(secret.default_mode, Some(0o400));
        let items = secret.items.as_ref().expect("items");
        assert_eq!(
            (items[0].key.as_str(), items[0].path.as_str()),
            (".netrc", "value")
        );
        let c = &spec.containers[0];
        let args = c.args.clone().expect("args");
        let given: Vec<&str> = args
            .windows(2)
            .filter(|w| w[0] == "--secret")
            .map(|w| w[1].as_str())
            .collect();
        assert_eq!(
            given,
            [
                "npm=/var/run/secrets/stagecoach/build/0/value",
                "netrc=/var/run/secrets/stagecoach/build/1/value"
            ]
        );
        let mounts = c.volume_mounts.as_ref().expect("mounts");
        let secret_mount = mounts.iter().find(|m| m.name == "secret-0").expect("mount");
        assert_eq!(
            secret_mount.mount_path,
            "/var/run/secrets/stagecoach/build/0"
        );
        assert_eq!(secret_mount.read_only, Some(true));

        let other = render_stage_pod(&b, &config(), &stage(), Some(1), 0);
        assert!(secret_names(&other).is_empty());
        for p in [
            render_source_pod(&b, &config(), 0),
            render_assemble_pod(&b, &config(), Some("abc"), Some(1), 0),
            render_cache_pod(&b, &config(), Some("abc"), Some(1)),
        ] {
            let names = secret_names(&p);
            assert!(
                !names
                    .iter()
                    .any(|n| ["npm-token", "netrc", "shadowed"].contains(&n.as_str())),
                "{names:?}"
            );
        }
    }

    #[test]
    fn a_target_platform_reaches_the_source_pod_with_the_build_platform() {
        let platforms = |b: &ImageBuild, config: &OperatorConfig| {
            let a = args(&render_source_pod(b, config, 0));
            let at = a
                .iter()
                .position(|x| x == "--platform")
                .expect("--platform");
            assert_eq!(a[at + 2], "--build-platform", "{a:?}");
            (a[at + 1].clone(), a[at + 3].clone())
        };
        let mut b = build(FULL);
        // Without platforms, the operator's build platform's image.
        let arm_builder = OperatorConfig {
            build_platform: "linux/arm64".into(),
            ..config()
        };
        assert_eq!(
            platforms(&b, &arm_builder),
            ("linux/arm64".into(), "linux/arm64".into())
        );
        b.spec.platforms = vec!["linux/arm64".into()];
        assert_eq!(
            platforms(&b, &config()),
            ("linux/arm64".into(), "linux/amd64".into())
        );
    }

    fn selector(pod: &Pod) -> Vec<(String, String)> {
        let spec = pod.spec.as_ref().expect("spec");
        spec.node_selector
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    fn stage_mounts(pod: &Pod) -> Vec<(String, Option<String>)> {
        let spec = pod.spec.as_ref().expect("spec");
        let stage = spec
            .containers
            .iter()
            .find(|c| c.name == "stage")
            .expect("stage");
        stage
            .volume_mounts
            .iter()
            .flatten()
            .filter(|m| m.name == "workspace")
            .map(|m| (m.mount_path.clone(), m.sub_path.clone()))
            .collect()
    }

    #[test]
    fn pods_of_several_platforms_go_to_nodes_of_their_image_in_their_part_of_the_workspace() {
        let mut b = build(FULL);
        b.spec.platforms = vec!["linux/amd64".into(), "linux/arm64".into()];
        b.spec.node_selector = Some([("pool".to_string(), "builds".to_string())].into());
        let source = render_source_pod(&b, &config(), 0);
        assert!(
            args(&source)
                .windows(2)
                .any(|w| w == ["--platform", "linux/amd64,linux/arm64"])
        );
        let node = |arch: &str| {
            vec![
                ("kubernetes.io/arch".to_string(), arch.to_string()),
                ("kubernetes.io/os".to_string(), "linux".to_string()),
                ("pool".to_string(), "builds".to_string()),
            ]
        };
        // The builder image's pods run on the build platform.
        assert_eq!(selector(&source), node("amd64"));
        assert_eq!(
            selector(&render_assemble_pod(&b, &config(), None, None, 0)),
            node("amd64")
        );
        // A per-platform pod: its platform's part, on a node of its image's platform.
        let arm = PodSummary {
            id: "run@linux/arm64".into(),
            stages: vec!["deps".into(), "run".into()],
            platform: Some("linux/arm64".into()),
            runs_on: Some("linux/arm64".into()),
            ..stage_named("run")
        };
        let pod = render_stage_pod(&b, &config(), &arm, None, 0);
        assert_eq!(selector(&pod), node("arm64"));
        let a = args(&pod);
        assert_eq!(a[..2], ["stage", "run"]);
        assert!(
            a.windows(2).any(|w| w == ["--part", "linux/arm64"]),
            "{a:?}"
        );
        let mounts = stage_mounts(&pod);
        for dir in [
            "platforms/linux-arm64/stages/deps",
            "platforms/linux-arm64/stages/run",
            "platforms/linux-arm64/pods/stage-run",
        ] {
            assert!(
                mounts.contains(&(format!("{WORKSPACE}/{dir}"), Some(dir.to_string()))),
                "{dir}: {mounts:?}"
            );
        }
        assert_ne!(
            pod_name(&b, &Role::Stage(arm.id.clone()), 0),
            pod_name(&b, &Role::Stage("run@linux/amd64".into()), 0)
        );
        // A cross-compiler of arm64's that runs on the build platform's image.
        let cross = PodSummary {
            runs_on: Some("linux/amd64".into()),
            ..arm.clone()
        };
        assert_eq!(
            selector(&render_stage_pod(&b, &config(), &cross, None, 0)),
            node("amd64")
        );
        // A pod every platform shares is in the first platform's part.
        let shared = PodSummary {
            runs_on: Some("linux/amd64".into()),
            ..stage_named("assets")
        };
        let a = args(&render_stage_pod(&b, &config(), &shared, None, 0));
        assert!(
            a.windows(2).any(|w| w == ["--part", "linux/amd64"]),
            "{a:?}"
        );
        // With arm64 emulated, its pods go to build-platform nodes.
        let emulating = OperatorConfig {
            emulated_platforms: vec!["linux/arm64".into()],
            ..config()
        };
        let pod = render_stage_pod(&b, &emulating, &arm, None, 0);
        assert_eq!(selector(&pod), node("amd64"));
        // The ImageBuild's own value for a key wins.
        b.spec.node_selector =
            Some([("kubernetes.io/arch".to_string(), "arm64".to_string())].into());
        let pod = render_stage_pod(&b, &config(), &cross, None, 0);
        assert_eq!(
            selector(&pod)[0],
            ("kubernetes.io/arch".into(), "arm64".into())
        );
    }

    #[test]
    fn a_one_platform_build_keeps_its_workspace_layout() {
        let b = build(FULL);
        let pod = render_stage_pod(&b, &config(), &stage_named("run"), None, 0);
        assert!(!args(&pod).contains(&"--part".to_string()));
        assert!(
            stage_mounts(&pod)
                .contains(&(format!("{WORKSPACE}/stages/run"), Some("stages/run".into())))
        );
    }

    #[test]
    fn a_context_artifact_is_pulled_by_the_source_pod_alone_with_its_secret() {
        let digest = format!("sha256:{}", "a".repeat(64));
        let b = build(&format!(
            r#"
apiVersion: stagecoach.dev/v1alpha1
kind: ImageBuild
metadata: {{name: app, namespace: team}}
spec:
  source:
    oci: {{image: "registry.example/ctx@{digest}", pullSecretRef: {{name: ctx-creds}}}}
  imagePullSecrets: [{{name: pull-creds}}]
  output: {{image: "registry.example/app:1"}}
"#
        ));
        let source = render_source_pod(&b, &config(), 0);
        let source_args = args(&source);
        let at = source_args
            .iter()
            .position(|a| a == "--context-image")
            .expect("--context-image");
        assert_eq!(
            source_args[at + 1],
            format!("registry.example/ctx@{digest}")
        );
        assert!(
            !source_args.contains(&"--url".to_string()),
            "{source_args:?}"
        );
        assert_eq!(secret_names(&source), ["pull-creds", "ctx-creds"]);
        let stage = render_stage_pod(&b, &config(), &stage(), Some(1), 0);
        let assemble = render_assemble_pod(&b, &config(), Some(&digest), Some(1), 0);
        assert!(!secret_names(&stage).contains(&"ctx-creds".to_string()));
        assert!(secret_names(&assemble).is_empty());
        let assemble_args = args(&assemble);
        let at = assemble_args
            .iter()
            .position(|a| a == "--source-url")
            .expect("--source-url");
        assert_eq!(assemble_args[at + 1], "registry.example/ctx");
    }

    #[test]
    fn secrets_go_only_where_the_rules_allow() {
        let b = build(FULL);
        let source = render_source_pod(&b, &config(), 0);
        let stage = render_stage_pod(&b, &config(), &stage(), Some(1), 0);
        let assemble = render_assemble_pod(&b, &config(), Some("abc"), Some(1), 0);
        assert_eq!(secret_names(&source), ["git-creds", "pull-creds"]);
        assert!(
            secret_names(&stage).is_empty(),
            "a stage pod that mounts no build secret gets no Secret"
        );
        assert_eq!(secret_names(&assemble), ["push-creds"]);
        let stage_spec = stage.spec.as_ref().expect("spec");
        assert_eq!(
            stage_spec
                .image_pull_secrets
                .as_ref()
                .map(|s| s[0].name.as_str()),
            Some("pull-creds"),
            "base images come through imagePullSecrets"
        );
        for p in [&source, &stage, &assemble] {
            let spec = p.spec.as_ref().expect("spec");
            assert_eq!(spec.automount_service_account_token, Some(false));
            let pod_security = spec.security_context.as_ref().expect("pod security");
            assert_eq!(
                pod_security.fs_group_change_policy.as_deref(),
                Some("OnRootMismatch"),
                "the workspace is not walked again at every pod start"
            );
            assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
            assert_eq!(spec.active_deadline_seconds, Some(1800));
            assert!(
                spec.volumes.iter().flatten().all(|v| v.host_path.is_none()),
                "no host mounts"
            );
            for c in spec
                .containers
                .iter()
                .chain(spec.init_containers.iter().flatten())
            {
                let sc = c.security_context.as_ref().expect("security context");
                assert_eq!(sc.privileged, Some(false));
                assert_eq!(sc.allow_privilege_escalation, Some(false));
            }
        }
        for p in [&source, &assemble] {
            let sc = p.spec.as_ref().expect("spec").containers[0]
                .security_context
                .clone()
                .expect("sc");
            assert_eq!(sc.run_as_non_root, Some(true));
            assert_eq!(sc.read_only_root_filesystem, Some(true));
        }
    }

    #[test]
    fn names_are_deterministic_and_bounded() {
        let b = build(FULL);
        assert_eq!(pod_name(&b, &Role::Source, 0), "app-source-g3");
        assert_eq!(
            pod_name(&b, &Role::Stage("build-x".into()), 2),
            "app-stage-build-x-g3-r2"
        );
        // Stage names that a pod name cannot hold as they are never share a pod.
        let (under, dot) = (Role::Stage("a_b".into()), Role::Stage("a.b".into()));
        assert_ne!(pod_name(&b, &under, 0), pod_name(&b, &dot, 0));
        assert!(pod_name(&b, &under, 0).starts_with("app-stage-a-b-"));
        let mut long = b.clone();
        long.metadata.name = Some("a".repeat(60));
        let n1 = pod_name(&long, &Role::Stage("one".repeat(10)), 0);
        let n2 = pod_name(&long, &Role::Stage("two".repeat(10)), 0);
        assert!(n1.len() <= 63 && n2.len() <= 63);
        assert_ne!(n1, n2);
        assert!(claim_name(&long).len() <= 63);
    }

    /// Label values hold at most 63 characters: a build name of 253 and two that differ
    /// only past the cut get values of their own, which the list selector uses too.
    #[test]
    fn label_values_are_bounded_and_stay_apart() {
        let valid = |v: &str| {
            v.len() <= 63
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                && v.starts_with(|c: char| c.is_ascii_alphanumeric())
                && v.ends_with(|c: char| c.is_ascii_alphanumeric())
        };
        let long = format!("{}.example", "a".repeat(244));
        let other = format!("{}.exampl3", "a".repeat(244));
        for name in [long.as_str(), other.as_str(), "a_b", "-x-", "app"] {
            assert!(valid(&label_value(name)), "{name}: {}", label_value(name));
        }
        assert_ne!(label_value(&long), label_value(&other));
        assert_eq!(label_value("a_b"), "a_b", "valid values stay as they are");
        let mut b = build(FULL);
        b.metadata.name = Some(long.clone());
        let pod = render_source_pod(&b, &config(), 0);
        let labels = pod.metadata.labels.expect("labels");
        assert!(labels.values().all(|v| valid(v)), "{labels:?}");
        let names = ["a_b".to_string(), "a.b".to_string()];
        for name in &names {
            let pod = render_stage_pod(&b, &config(), &stage_named(name), Some(1), 0);
            let labels = pod.metadata.labels.expect("labels");
            assert_eq!(
                Role::from_labels(&labels, &names),
                Some(Role::Stage(name.clone()))
            );
        }
    }

    #[test]
    fn roles_read_back_from_the_labels_they_render() {
        let b = build(FULL);
        let names = vec!["build_x".to_string()];
        for role in [Role::Source, Role::Stage("build_x".into()), Role::Assemble] {
            let labels = labels(&b, &role, 1);
            assert_eq!(Role::from_labels(&labels, &names), Some(role));
        }
        // A valid label value is the stage name itself: no names needed to read it back.
        let stage = labels(&b, &Role::Stage("build_x".into()), 0);
        assert_eq!(
            Role::from_labels(&stage, &[]),
            Some(Role::Stage("build_x".into()))
        );
        let foreign = BTreeMap::from([(LABEL_ROLE.to_string(), "other".to_string())]);
        assert_eq!(Role::from_labels(&foreign, &names), None);
    }

    #[test]
    fn stage_pod_runs_the_installed_builder_on_the_base_image() {
        let b = build(FULL);
        let p = render_stage_pod(&b, &config(), &stage(), Some(42), 0);
        let spec = p.spec.expect("spec");
        let c = &spec.containers[0];
        assert_eq!(
            c.image.as_deref(),
            Some("docker.io/library/busybox@sha256:aaaa")
        );
        assert_eq!(
            c.command.as_deref(),
            Some(&["/stagecoach/stagecoach-builder".to_string()][..])
        );
        assert_eq!(
            c.args.as_deref(),
            Some(
                &[
                    "stage".to_string(),
                    "build_x".into(),
                    "--context-dir".into(),
                    "svc".into()
                ][..]
            )
        );
        let init = &spec.init_containers.expect("init")[0];
        assert_eq!(
            init.image.as_deref(),
            Some("registry.example/stagecoach/builder:1")
        );
        // The workspace read-only but for the pod's own stage and pod directories.
        let mounts: Vec<_> = c
            .volume_mounts
            .iter()
            .flatten()
            .filter(|m| m.name == "workspace")
            .map(|m| (m.mount_path.as_str(), m.sub_path.as_deref(), m.read_only))
            .collect();
        assert_eq!(
            mounts,
            [
                ("/workspace", None, Some(true)),
                ("/workspace/stages/build_x", Some("stages/build_x"), None),
                (
                    "/workspace/pods/stage-build_x",
                    Some("pods/stage-build_x"),
                    None
                ),
            ]
        );
        let labels = p.metadata.labels.expect("labels");
        assert_eq!(labels[LABEL_STAGE], "build_x");
        assert_eq!(labels[LABEL_BUILD], "app");
        let owner = &p.metadata.owner_references.expect("owner")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("ImageBuild", "uid-1")
        );

        let mut scratch = stage();
        scratch.image = None;
        let p = render_stage_pod(&b, &config(), &scratch, None, 0);
        let c = &p.spec.expect("spec").containers[0];
        assert_eq!(
            c.image.as_deref(),
            Some("registry.example/stagecoach/builder:1")
        );
        assert!(
            c.volume_mounts
                .iter()
                .flatten()
                .any(|m| m.sub_path.as_deref() == Some("roots/build_x"))
        );
        assert!(
            c.args
                .as_ref()
                .expect("args")
                .contains(&"/workspace/roots/build_x".to_string())
        );
    }

    #[test]
    fn claim_uses_spec_or_defaults() {
        let b = build(FULL);
        let pvc = render_claim(&b, &config());
        let spec = pvc.spec.expect("spec");
        assert_eq!(
            spec.access_modes.as_deref(),
            Some(&["ReadWriteOnce".to_string()][..])
        );
        assert_eq!(
            spec.resources
                .and_then(|r| r.requests)
                .map(|r| r["storage"].0.clone()),
            Some("10Gi".to_string())
        );
    }
}
