//! Stage cache keys. A stage's key is a hash chain over everything its result depends
//! on, so the same key always means the same layers, config, scope and export:
//!
//! the key format, the platform it runs on, the escape character; the base (its manifest digest,
//! or the parent stage's key); the key of every stage it reads with `--from`; for each
//! instruction (the base's ONBUILD triggers first) the variables in scope and the
//! instruction as planned (its line left out: moving a stage down the file is no
//! change), plus the content of every context path a COPY, ADD or bind mount selects;
//! and the paths later stages export from it.
//!
//! Words are expanded by the executor's own [`StageConfig`], and COPY sources are found
//! by the executor's own matcher, so a key selects exactly the files the pod copies.
//! Never part of a key: mtimes (a fresh clone must hit), owners of context files (COPY
//! makes them root's or `--chown`'s, which the instruction carries), cache mounts.
//! Each part is length-prefixed, so no two different inputs hash alike.

use std::collections::HashMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use stagecoach_plan::contract::{Base, Plan, Stage};
use stagecoach_plan::instruction::{self, Instruction, Kind};
use stagecoach_plan::shell::Lexer;

use crate::exec::{self, copy};
use crate::fs::filetree::{self, FileTree, Node};
use crate::image_config::{ImageConfig, StageConfig};
use crate::stage::mounts;

/// The version of what a key covers; a change to it is a new cache.
pub const FORMAT: &str = "stagecoach.dev/cache/v1";

/// A stage's key, or why it cannot have one (said to people as is).
pub type Keyed = Result<String, String>;

/// Computes the keys of a plan's stages.
pub struct Keyer<'a> {
    plan: &'a Plan,
    /// The build context after `.dockerignore`.
    context: &'a FileTree,
    /// The config of a stage's base image (none for scratch), as the source pod pinned it.
    base_config: &'a dyn Fn(&Stage) -> Result<Option<ImageConfig>, String>,
    /// Each stage walked: its key and the config and scope its children start from.
    done: HashMap<String, Result<(String, StageConfig), String>>,
    /// Content digests of context files, each file read once.
    file_digests: HashMap<PathBuf, String>,
}

impl std::fmt::Debug for Keyer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyer")
            .field("done", &self.done.len())
            .finish()
    }
}

impl<'a> Keyer<'a> {
    pub fn new(
        plan: &'a Plan,
        context: &'a FileTree,
        base_config: &'a dyn Fn(&Stage) -> Result<Option<ImageConfig>, String>,
    ) -> Keyer<'a> {
        Keyer {
            plan,
            context,
            base_config,
            done: HashMap::new(),
            file_digests: HashMap::new(),
        }
    }

    /// The key of stage `id`.
    pub fn key(&mut self, id: &str) -> Keyed {
        self.walk(id, &mut Vec::new()).map(|(key, _)| key)
    }

    fn walk(
        &mut self,
        id: &str,
        visiting: &mut Vec<String>,
    ) -> Result<(String, StageConfig), String> {
        if let Some(done) = self.done.get(id) {
            return done.clone();
        }
        if visiting.iter().any(|v| v == id) {
            return Err(format!("stage {id} depends on itself"));
        }
        visiting.push(id.to_string());
        let result = self.stage(id, visiting);
        visiting.pop();
        self.done.insert(id.to_string(), result.clone());
        result
    }

    fn stage(
        &mut self,
        id: &str,
        visiting: &mut Vec<String>,
    ) -> Result<(String, StageConfig), String> {
        let plan = self.plan;
        let stage = plan
            .stage(id)
            .ok_or_else(|| format!("no stage {id:?} in the plan"))?;
        let mut parts = Parts::new();
        parts.add("format", FORMAT);
        // Where it runs, not the target: a stage every target platform shares has one
        // key in each platform's plan, so they find one cache entry.
        parts.add(
            "platform",
            plan.runs_on(id)
                .unwrap_or_else(|| plan.platform.clone())
                .to_string(),
        );
        parts.add("escape", plan.escape.to_string());
        let lexer = Lexer::new(plan.escape);
        let mut sc = match &stage.base {
            Base::Stage { id: parent } => {
                let (key, sc) = self
                    .walk(parent, visiting)
                    .map_err(|e| format!("its base stage {parent}: {e}"))?;
                parts.add("base-stage", key);
                sc
            }
            Base::Image { reference, digest } => {
                let digest = digest
                    .as_deref()
                    .ok_or_else(|| format!("the image {reference} is not pinned to a digest"))?;
                parts.add("base-image", digest);
                let (config, scope) = exec::image_start(plan, (self.base_config)(stage)?);
                StageConfig::new(config, scope, lexer)
            }
            Base::Scratch => {
                parts.add("base", "scratch");
                let (config, scope) = exec::image_start(plan, None);
                StageConfig::new(config, scope, lexer)
            }
        };
        let base_id = match &stage.base {
            Base::Stage { id } => Some(id.as_str()),
            _ => None,
        };
        for read in stage
            .depends_on
            .iter()
            .filter(|d| Some(d.as_str()) != base_id)
        {
            let (key, _) = self
                .walk(read, visiting)
                .map_err(|e| format!("stage {read}, which it reads: {e}"))?;
            parts.add("reads", read);
            parts.add("reads-key", key);
        }
        let triggers = sc.config.config.on_build.take().unwrap_or_default();
        let mut steps = exec::triggers_of(plan, stage, &triggers).map_err(|e| e.message.clone())?;
        steps.extend(stage.instructions.iter().cloned());
        for inst in &steps {
            let place = |message: String| format!("{}:{}: {message}", plan.dockerfile, inst.line);
            parts.add("scope", json(&sc.scope));
            let mut unplaced = inst.clone();
            (unplaced.line, unplaced.end_line) = (0, 0);
            parts.add("instruction", json(&unplaced));
            self.inputs_of(inst, &sc, &mut parts).map_err(place)?;
            sc.apply(inst, &plan.global_args, &plan.build_args)
                .map_err(|e| place(crate::error::chain(&e)))?;
        }
        parts.add("exports", json(&stage.exports));
        Ok((parts.finish(), sc))
    }

    /// What an instruction reads from outside the stage: context files, downloads.
    fn inputs_of(
        &mut self,
        inst: &Instruction,
        sc: &StageConfig,
        parts: &mut Parts,
    ) -> Result<(), String> {
        let keyword = inst.kind.keyword();
        let expand = |w: &str| sc.expand(keyword, w).map_err(|e| crate::error::chain(&e));
        match &inst.kind {
            Kind::Copy(c) | Kind::Add(c) if c.from.is_none() => {
                for source in &c.sources {
                    let source = expand(source)?;
                    if instruction::is_url(&source) {
                        let checksum = c.checksum.as_deref().map(expand).transpose()?;
                        let Some(checksum) = checksum else {
                            return Err(format!(
                                "{keyword} {source} has no --checksum, so what it downloads \
                                 is unknown until it runs: the stage is not cached"
                            ));
                        };
                        parts.add("url", &source);
                        parts.add("checksum", checksum);
                    } else {
                        self.context_paths(&source, c.parents, parts)?;
                    }
                }
            }
            Kind::Run(r) => {
                for mount in &r.mounts {
                    let spec = mounts::Spec::parse(&expand(mount)?, &sc.config.working_dir())
                        .map_err(|e| crate::error::chain(&e))?;
                    // A secret's id is in the instruction's text, its value never in a key.
                    if let mounts::Kind::Bind { from: None, source } = &spec.kind {
                        self.context_paths(source, false, parts)?;
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Hashes what a context source selects: each match with everything under it.
    fn context_paths(
        &mut self,
        source: &str,
        parents: bool,
        parts: &mut Parts,
    ) -> Result<(), String> {
        let context = self.context;
        let clean = source.trim_start_matches('/');
        let matches = if clean.is_empty() || clean == "." {
            vec![PathBuf::new()]
        } else {
            copy::find_sources(context, &[clean.to_string()], parents)
                .map_err(|e| format!("{source:?}: {}", crate::error::chain(&e)))?
                .into_iter()
                .map(|(path, _)| path)
                .collect()
        };
        for path in matches {
            let node = context
                .get(&path)
                .ok_or_else(|| format!("{source:?}: not in the context"))?;
            let mut tree = Parts::new();
            let mut first_of_inode: HashMap<u64, PathBuf> = HashMap::new();
            let entries = std::iter::once((path.as_path(), node)).chain(context.descendants(&path));
            for (rel, node) in entries {
                self.entry(rel, node, &mut first_of_inode, &mut tree)?;
            }
            parts.add("context", tree.finish());
        }
        Ok(())
    }

    /// One file's part of a context hash: name, type, mode, link target, content.
    fn entry(
        &mut self,
        rel: &Path,
        node: &Node,
        first_of_inode: &mut HashMap<u64, PathBuf>,
        parts: &mut Parts,
    ) -> Result<(), String> {
        parts.add("path", rel.to_string_lossy().as_bytes());
        parts.add("kind", format!("{:?}", node.kind));
        parts.add("mode", format!("{:o}", node.mode));
        if let Some(target) = &node.link_target {
            parts.add("link", target.to_string_lossy().as_bytes());
        }
        if node.kind == filetree::Kind::CharDevice || node.kind == filetree::Kind::BlockDevice {
            parts.add("device", format!("{}:{}", node.device.0, node.device.1));
        }
        if let Some(inode) = node.inode {
            let first = first_of_inode
                .entry(inode)
                .or_insert_with(|| rel.to_path_buf());
            if first != rel {
                parts.add("hard-link-of", first.to_string_lossy().as_bytes());
                return Ok(());
            }
        }
        for (name, value) in &node.xattrs {
            parts.add("xattr", name);
            parts.add("xattr-value", value);
        }
        if node.kind == filetree::Kind::File {
            let digest = match &node.content {
                filetree::Content::File(path) => match self.file_digests.get(path) {
                    Some(d) => d.clone(),
                    None => {
                        let d = file_digest(node).map_err(|e| format!("{}: {e}", rel.display()))?;
                        self.file_digests.insert(path.clone(), d.clone());
                        d
                    }
                },
                _ => file_digest(node).map_err(|e| format!("{}: {e}", rel.display()))?,
            };
            parts.add("content", digest);
        }
        Ok(())
    }
}

fn file_digest(node: &Node) -> Result<String, String> {
    let mut reader = filetree::open_content(node).map_err(|e| crate::error::chain(&e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0; 256 << 10];
    loop {
        let n = reader.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

fn json(value: &impl serde::Serialize) -> Vec<u8> {
    serde_json::to_vec(value).expect("plan types always serialise")
}

/// A sha256 over labelled, length-prefixed parts.
struct Parts(Sha256);

impl Parts {
    fn new() -> Parts {
        Parts(Sha256::new())
    }

    fn add(&mut self, label: &str, value: impl AsRef<[u8]>) {
        for bytes in [label.as_bytes(), value.as_ref()] {
            self.0.update((bytes.len() as u64).to_be_bytes());
            self.0.update(bytes);
        }
    }

    fn finish(self) -> String {
        hex::encode(self.0.finalize())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use stagecoach_plan::PlanOptions;

    use super::*;

    /// Keys of every stage of `dockerfile` over a context with `files`, each base image
    /// pinned to `digest-of-<reference>` unless `digests` says otherwise.
    fn keys_of(
        dockerfile: &str,
        args: &[(&str, &str)],
        files: &[(&str, &str, u32)],
        digests: &[(&str, &str)],
    ) -> BTreeMap<String, Keyed> {
        let dir = tempfile::tempdir().expect("tempdir");
        for (path, body, mode) in files {
            use std::os::unix::fs::PermissionsExt as _;
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("dirs");
            std::fs::write(&path, body).expect("write");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode)).expect("mode");
        }
        let mut plan = stagecoach_plan::plan(
            dockerfile,
            &PlanOptions {
                build_args: args
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..PlanOptions::default()
            },
        )
        .expect("plans");
        for stage in &mut plan.stages {
            if let Base::Image { reference, digest } = &mut stage.base {
                let pinned = digests
                    .iter()
                    .find(|(r, _)| reference.contains(r))
                    .map(|(_, d)| d.to_string())
                    .unwrap_or_else(|| format!("sha256:{reference}"));
                *digest = Some(pinned);
            }
        }
        let context = FileTree::from_dir(dir.path()).expect("context");
        let config = |_: &Stage| Ok(Some(ImageConfig::default()));
        let mut keyer = Keyer::new(&plan, &context, &config);
        plan.stages
            .iter()
            .map(|s| (s.name.clone().unwrap_or(s.id.clone()), keyer.key(&s.id)))
            .collect()
    }

    const DOCKERFILE: &str = "\
FROM busybox AS deps
ARG LEVEL=1
COPY go.mod /src/
RUN echo $LEVEL > /level
FROM deps AS build
COPY main.go /src/
RUN cat /src/main.go > /app
FROM alpine AS assets
COPY web/ /web/
RUN ls /web
FROM busybox AS final
COPY --from=build /app /app
COPY --from=assets /web /web
RUN true
";

    const FILES: &[(&str, &str, u32)] = &[
        ("go.mod", "module x", 0o644),
        ("main.go", "package main", 0o644),
        ("web/index.html", "<p>hi</p>", 0o644),
        ("README.md", "not read", 0o644),
    ];

    /// The stages whose key differs between two runs.
    fn changed(a: &BTreeMap<String, Keyed>, b: &BTreeMap<String, Keyed>) -> Vec<String> {
        let mut out: Vec<String> = a
            .iter()
            .filter(|(id, key)| b.get(*id) != Some(key))
            .map(|(id, _)| id.clone())
            .collect();
        out.sort();
        out
    }

    fn with(
        files: &[(&'static str, &'static str, u32)],
        path: &str,
        body: &'static str,
        mode: u32,
    ) -> Vec<(&'static str, &'static str, u32)> {
        files
            .iter()
            .map(|f| if f.0 == path { (f.0, body, mode) } else { *f })
            .collect()
    }

    #[test]
    fn each_input_changed_alone_changes_exactly_the_keys_it_should() {
        let before = keys_of(DOCKERFILE, &[], FILES, &[]);
        assert!(before.values().all(Result::is_ok), "{before:?}");
        let all = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let cases: Vec<(&str, BTreeMap<String, Keyed>, Vec<String>)> = vec![
            ("nothing", keys_of(DOCKERFILE, &[], FILES, &[]), vec![]),
            (
                "a file only the build stage copies",
                keys_of(
                    DOCKERFILE,
                    &[],
                    &with(FILES, "main.go", "package other", 0o644),
                    &[],
                ),
                all(&["build", "final"]),
            ),
            (
                "its mode",
                keys_of(
                    DOCKERFILE,
                    &[],
                    &with(FILES, "main.go", "package main", 0o755),
                    &[],
                ),
                all(&["build", "final"]),
            ),
            (
                "a file of the assets stage's directory",
                keys_of(
                    DOCKERFILE,
                    &[],
                    &with(FILES, "web/index.html", "<p>ho</p>", 0o644),
                    &[],
                ),
                all(&["assets", "final"]),
            ),
            (
                "a file no instruction selects",
                keys_of(
                    DOCKERFILE,
                    &[],
                    &with(FILES, "README.md", "changed", 0o644),
                    &[],
                ),
                vec![],
            ),
            (
                "a build arg the deps stage declares",
                keys_of(DOCKERFILE, &[("LEVEL", "2")], FILES, &[]),
                all(&["build", "deps", "final"]),
            ),
            (
                "a build arg no stage declares",
                keys_of(DOCKERFILE, &[("OTHER", "2")], FILES, &[]),
                vec![],
            ),
            (
                "the alpine base's digest",
                keys_of(DOCKERFILE, &[], FILES, &[("alpine", "sha256:new")]),
                all(&["assets", "final"]),
            ),
            (
                "a RUN of the assets stage",
                keys_of(
                    &DOCKERFILE.replace("RUN ls /web", "RUN ls -l /web"),
                    &[],
                    FILES,
                    &[],
                ),
                all(&["assets", "final"]),
            ),
            (
                "what final copies out of assets (its export)",
                keys_of(
                    &DOCKERFILE.replace(
                        "COPY --from=assets /web /web",
                        "COPY --from=assets /web/index.html /i",
                    ),
                    &[],
                    FILES,
                    &[],
                ),
                all(&["assets", "final"]),
            ),
            (
                "comments and blank lines that move every line",
                keys_of(&format!("# syntax note\n\n{DOCKERFILE}"), &[], FILES, &[]),
                vec![],
            ),
        ];
        for (what, after, want) in cases {
            assert_eq!(changed(&before, &after), want, "changing {what}");
        }
    }

    #[test]
    fn mtimes_are_no_part_of_a_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a"), "x").expect("write");
        let plan = |d: &Path| {
            let plan = stagecoach_plan::plan("FROM scratch\nCOPY a /a\n", &PlanOptions::default())
                .expect("plans");
            let context = FileTree::from_dir(d).expect("context");
            let config = |_: &Stage| Ok(None);
            Keyer::new(&plan, &context, &config).key(&plan.target)
        };
        let first = plan(dir.path());
        filetime::set_file_mtime(
            dir.path().join("a"),
            filetime::FileTime::from_unix_time(1, 0),
        )
        .expect("touch");
        assert_eq!(plan(dir.path()), first);
    }

    #[test]
    fn a_stage_without_instructions_has_a_full_key() {
        let dockerfile = "FROM busybox AS empty\nFROM alpine\nCOPY --from=empty /bin/sh /sh\n";
        let before = keys_of(dockerfile, &[], &[], &[]);
        let empty = before["empty"].clone().expect("keyed");
        assert_ne!(
            empty,
            keys_of(dockerfile, &[], &[], &[("busybox", "sha256:other")])["empty"]
                .clone()
                .expect("keyed")
        );
    }

    #[test]
    fn a_download_is_keyed_by_its_checksum_or_not_at_all() {
        let unchecked = keys_of(
            "FROM busybox\nADD https://example.com/a.tgz /a\n",
            &[],
            &[],
            &[],
        );
        let why = unchecked
            .values()
            .next()
            .expect("a stage")
            .clone()
            .expect_err("uncacheable");
        assert!(
            why.starts_with("Dockerfile:2: ADD https://example.com/a.tgz has no --checksum"),
            "{why}"
        );
        let checked = |sum: &str| {
            keys_of(
                &format!("FROM busybox\nADD --checksum={sum} https://example.com/a.tgz /a\n"),
                &[],
                &[],
                &[],
            )
            .into_values()
            .next()
            .expect("a stage")
            .expect("keyed")
        };
        assert_ne!(checked("sha256:aa"), checked("sha256:bb"));
    }

    #[test]
    fn a_bind_mount_of_the_context_is_part_of_the_key() {
        let dockerfile = "FROM busybox\nRUN --mount=type=bind,source=src,target=/s cat /s/a\n";
        let key = |body: &'static str| {
            keys_of(
                dockerfile,
                &[],
                &[("src/a", body, 0o644), ("other", "x", 0o644)],
                &[],
            )
            .into_values()
            .next()
            .expect("a stage")
            .expect("keyed")
        };
        assert_ne!(key("one"), key("two"));
    }
}
