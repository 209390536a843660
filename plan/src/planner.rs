//! From a Dockerfile and build options to the [`Plan`]: stages, their bases, the stage
//! graph, target pruning, fused chains and parallel waves.

use std::collections::{BTreeMap, BTreeSet};

use oci_spec::distribution::Reference;

use crate::contract::{Base, Execution, PLAN_VERSION, Plan, Platform, Read, Stage, Variable};
use crate::instruction::{self, Instruction, Kind};
use crate::scope::{self, Expansion, Scope};
use crate::shell::Lexer;
use crate::syntax;

/// What the planner needs besides the Dockerfile text.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    /// The Dockerfile's name in messages (`Dockerfile:12: ...`).
    pub dockerfile_name: String,
    /// The stage to build; the last stage when none.
    pub target: Option<String>,
    pub build_args: BTreeMap<String, String>,
    /// The platform of the image being built (and of the builder's nodes).
    pub platform: Platform,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions {
            dockerfile_name: "Dockerfile".into(),
            target: None,
            build_args: BTreeMap::new(),
            platform: Platform::default(),
        }
    }
}

/// A Dockerfile the planner rejects, with the place when there is one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.render())]
pub struct PlanError {
    pub file: String,
    pub line: Option<usize>,
    pub message: String,
}

impl PlanError {
    fn render(&self) -> String {
        match self.line {
            Some(line) => format!("{}:{}: {}", self.file, line, self.message),
            None => format!("{}: {}", self.file, self.message),
        }
    }
}

type Result<T, E = PlanError> = std::result::Result<T, E>;

/// A Dockerfile stage while it is being planned.
struct Draft {
    id: String,
    name: Option<String>,
    index: usize,
    line: usize,
    base: Base,
    platform: Option<String>,
    instructions: Vec<Instruction>,
    /// Other stages this one reads: its FROM parent, `--from` stages.
    stage_reads: Vec<StageRead>,
    /// Images read with `--from=<image>`: (normalised reference, paths, line, value).
    image_reads: Vec<(String, Vec<String>, usize, String)>,
    /// Whether the environment is fully known at plan time (the chain starts at scratch).
    env_known: bool,
    /// Variables whose values may differ at build time (they read the base image's env).
    uncertain: BTreeSet<String>,
    scope: Scope,
}

/// One stage reading another: the whole filesystem (`FROM`) or some paths (`--from`).
struct StageRead {
    stage: usize,
    /// None for `FROM <stage>`.
    paths: Option<Vec<String>>,
    /// The instruction's line and its `--from` value (expanded), for the contract.
    origin: (usize, String),
}

/// Plans a Dockerfile.
pub fn plan(dockerfile: &str, options: &PlanOptions) -> Result<Plan> {
    let err = |line: Option<usize>, message: String| PlanError {
        file: options.dockerfile_name.clone(),
        line,
        message,
    };
    let parsed = syntax::parse(dockerfile).map_err(|e| err(Some(e.line), e.message))?;
    let lexer = Lexer::new(parsed.escape);
    let instructions = instruction::parse_all(&parsed).map_err(|e| err(Some(e.line), e.message))?;

    // Global ARGs come before the first FROM; nothing else may.
    let Some(first_from) = instructions
        .iter()
        .position(|i| matches!(i.kind, Kind::From(_)))
    else {
        return Err(err(None, "dockerfile contains no stages to build".into()));
    };
    let (global_part, stage_part) = instructions.split_at(first_from);
    for inst in global_part {
        if !matches!(inst.kind, Kind::Arg { .. }) {
            return Err(err(
                Some(inst.line),
                format!(
                    "{} before the first FROM: only ARG may come before FROM",
                    inst.kind.keyword()
                ),
            ));
        }
    }

    // Split into stages: each FROM begins one.
    let mut raw_stages: Vec<(&Instruction, &instruction::From, Vec<Instruction>)> = Vec::new();
    for inst in stage_part {
        match (&inst.kind, raw_stages.last_mut()) {
            (Kind::From(from), _) => raw_stages.push((inst, from, Vec::new())),
            (_, Some(last)) => last.2.push(inst.clone()),
            (_, None) => unreachable!("the first stage instruction is a FROM"),
        }
    }

    // Stage names are literal, so the target is known before any expansion.
    let names: Vec<Option<String>> = raw_stages.iter().map(|s| s.1.name.clone()).collect();
    for (i, name) in names.iter().enumerate() {
        let Some(name) = name else { continue };
        if let Some(first) = names[..i].iter().position(|n| n.as_ref() == Some(name)) {
            return Err(err(
                Some(raw_stages[i].0.line),
                format!(
                    "duplicate stage name {name:?}, first defined on line {}",
                    raw_stages[first].0.line
                ),
            ));
        }
    }
    let target_index = match &options.target {
        None => raw_stages.len() - 1,
        Some(t) => {
            let wanted = t.to_ascii_lowercase();
            names
                .iter()
                .position(|n| n.as_deref() == Some(wanted.as_str()))
                .ok_or_else(|| err(None, format!("target stage {t:?} could not be found")))?
        }
    };

    let mut globals = automatic_args(
        &options.platform,
        names[target_index].as_deref().unwrap_or("default"),
    );
    for inst in global_part {
        if let Kind::Arg { args } = &inst.kind {
            globals = scope::global_args(lexer, globals, args, &options.build_args)
                .map_err(|e| err(Some(inst.line), e.to_string()))?;
        }
    }
    let global_vars: Vec<(String, String)> = globals
        .iter()
        .map(|v| (v.name.clone(), v.value.clone()))
        .collect();

    let ids = stage_ids(&names);
    let mut drafts: Vec<Draft> = Vec::with_capacity(raw_stages.len());
    for (index, (from_inst, from, body)) in raw_stages.into_iter().enumerate() {
        let line = from_inst.line;
        let at = |message: String| err(Some(line), message);
        let image = scope::expand(lexer, &from.image, &global_vars)
            .map_err(|e| at(e.to_string()))?
            .value;
        if image.is_empty() {
            return Err(at(format!(
                "base name ({}) should not be blank",
                from.image
            )));
        }
        let platform = from
            .platform
            .as_ref()
            .map(|p| scope::expand(lexer, p, &global_vars).map(|e| e.value))
            .transpose()
            .map_err(|e| at(e.to_string()))?;
        // `scratch` is reserved: it never names a stage, even one called so.
        let parent = names[..index]
            .iter()
            .position(|n| n.as_deref() == Some(image.to_ascii_lowercase().as_str()))
            .filter(|_| image != "scratch");
        let (base, env_known, uncertain, scope) = match parent {
            Some(p) => (
                Base::Stage { id: ids[p].clone() },
                drafts[p].env_known,
                drafts[p].uncertain.clone(),
                drafts[p].scope.clone(),
            ),
            None if image == "scratch" => (Base::Scratch, true, BTreeSet::new(), Scope::default()),
            None => (
                Base::Image {
                    reference: normalise_image(&image).map_err(at)?,
                    digest: None,
                },
                false,
                BTreeSet::new(),
                Scope::default(),
            ),
        };
        let mut draft = Draft {
            id: ids[index].clone(),
            name: names[index].clone(),
            index,
            line,
            base,
            platform,
            instructions: Vec::new(),
            stage_reads: parent
                .map(|stage| StageRead {
                    stage,
                    paths: None,
                    origin: (line, image.clone()),
                })
                .into_iter()
                .collect(),
            image_reads: Vec::new(),
            env_known,
            uncertain,
            scope,
        };
        for inst in body {
            walk_instruction(&mut draft, &inst, lexer, &names, &globals, options)
                .map_err(|message| err(Some(inst.line), message))?;
            draft.instructions.push(inst);
        }
        drafts.push(draft);
    }

    check_cycles(&drafts).map_err(|(line, message)| err(Some(line), message))?;

    // Keep what the target needs.
    let mut needed = BTreeSet::new();
    let mut pending = vec![target_index];
    while let Some(i) = pending.pop() {
        if needed.insert(i) {
            pending.extend(drafts[i].stage_reads.iter().map(|r| r.stage));
        }
    }
    // What needed readers take from each stage.
    let mut exports: Vec<BTreeSet<String>> = vec![BTreeSet::new(); drafts.len()];
    let mut filesystem_users = BTreeSet::from([target_index]);
    for &i in &needed {
        for read in &drafts[i].stage_reads {
            match &read.paths {
                None => {
                    filesystem_users.insert(read.stage);
                }
                Some(paths) => exports[read.stage].extend(paths.iter().cloned()),
            }
        }
    }

    let mut stages: Vec<Stage> = Vec::new();
    let mut images: Vec<(String, BTreeSet<String>, usize)> = Vec::new();
    let mut pruned = Vec::new();
    for (i, draft) in drafts.into_iter().enumerate() {
        if !needed.contains(&i) {
            pruned.push(draft.id);
            continue;
        }
        let mut depends_on: Vec<String> = Vec::new();
        let mut reads: Vec<Read> = Vec::new();
        for read in &draft.stage_reads {
            push_unique(&mut depends_on, ids[read.stage].clone());
            if read.paths.is_some() {
                reads.push(Read {
                    line: read.origin.0,
                    from: read.origin.1.clone(),
                    stage: ids[read.stage].clone(),
                });
            }
        }
        for (reference, paths, line, from) in draft.image_reads {
            let position = images
                .iter()
                .position(|(r, _, _)| *r == reference)
                .unwrap_or_else(|| {
                    images.push((reference, BTreeSet::new(), line));
                    images.len() - 1
                });
            images[position].1.extend(paths);
            push_unique(&mut depends_on, format!("image-{position}"));
            reads.push(Read {
                line,
                from,
                stage: format!("image-{position}"),
            });
        }
        let execution = if i == target_index && only_copies_and_metadata(&draft.instructions) {
            Execution::Assemble
        } else if i != target_index && draft.instructions.is_empty() && exports[i].is_empty() {
            Execution::Nothing
        } else {
            Execution::Pod { runs: Vec::new() }
        };
        stages.push(Stage {
            id: draft.id,
            name: draft.name,
            index: Some(draft.index),
            line: draft.line,
            base: draft.base,
            platform: draft.platform,
            instructions: draft.instructions,
            depends_on,
            reads,
            exports: covering_paths(std::mem::take(&mut exports[i])),
            needs_filesystem: filesystem_users.contains(&i),
            execution,
        });
    }
    for (n, (reference, paths, line)) in images.into_iter().enumerate() {
        stages.push(Stage {
            id: format!("image-{n}"),
            name: None,
            index: None,
            line,
            base: Base::Image {
                reference,
                digest: None,
            },
            platform: None,
            instructions: Vec::new(),
            depends_on: Vec::new(),
            reads: Vec::new(),
            exports: covering_paths(paths),
            needs_filesystem: false,
            execution: Execution::Pod { runs: Vec::new() },
        });
    }

    fuse_chains(&mut stages);
    let waves = waves(&stages);
    Ok(Plan {
        version: PLAN_VERSION.into(),
        dockerfile: options.dockerfile_name.clone(),
        escape: parsed.escape,
        syntax: parsed
            .directives
            .iter()
            .find(|d| d.name == "syntax")
            .map(|d| d.value.clone()),
        platform: options.platform.clone(),
        build_args: options.build_args.clone(),
        global_args: globals,
        target: ids[target_index].clone(),
        stages,
        waves,
        pruned,
    })
}

/// A target that only copies files and sets metadata needs no stage pod: the assemble
/// pod can build its layers. RUN needs a container; ADD may fetch or unpack; ONBUILD
/// triggers of the base could run anything; a VOLUME makes its directory in the image
/// (as buildah and Docker's classic builder do).
fn only_copies_and_metadata(instructions: &[Instruction]) -> bool {
    instructions.iter().all(|inst| {
        !matches!(
            inst.kind,
            Kind::Run(_) | Kind::Add(_) | Kind::Onbuild { .. } | Kind::Volume { .. }
        )
    })
}

/// Export paths without those the whole filesystem (`/`) already covers.
fn covering_paths(paths: BTreeSet<String>) -> Vec<String> {
    if paths.contains("/") {
        vec!["/".to_string()]
    } else {
        paths.into_iter().collect()
    }
}

fn push_unique(list: &mut Vec<String>, item: String) {
    if !list.contains(&item) {
        list.push(item);
    }
}

/// `TARGETPLATFORM`, `BUILDPLATFORM` and friends, and `TARGETSTAGE`.
fn automatic_args(platform: &Platform, target_stage: &str) -> Vec<Variable> {
    let var = |name: String, value: String| Variable { name, value };
    let mut vars = Vec::new();
    for prefix in ["BUILD", "TARGET"] {
        vars.push(var(format!("{prefix}PLATFORM"), platform.to_string()));
        vars.push(var(format!("{prefix}OS"), platform.os.clone()));
        vars.push(var(format!("{prefix}ARCH"), platform.architecture.clone()));
        vars.push(var(
            format!("{prefix}VARIANT"),
            platform.variant.clone().unwrap_or_default(),
        ));
    }
    vars.push(var("TARGETSTAGE".into(), target_stage.to_string()));
    vars
}

/// Ids: the stage name, or `stage-<index>` (kept apart from any stage named like that).
fn stage_ids(names: &[Option<String>]) -> Vec<String> {
    let taken: BTreeSet<&str> = names.iter().flatten().map(String::as_str).collect();
    names
        .iter()
        .enumerate()
        .map(|(i, name)| match name {
            Some(n) => n.clone(),
            None => {
                let mut id = format!("stage-{i}");
                while taken.contains(id.as_str()) {
                    id.push('x');
                }
                id
            }
        })
        .collect()
}

/// Normalises an image reference the way Docker does: `golang:1.20` is
/// `docker.io/library/golang:1.20`, and no tag means `:latest`.
pub fn normalise_image(image: &str) -> Result<String, String> {
    Reference::try_from(image)
        .map(|r| r.whole())
        .map_err(|e| format!("invalid image reference {image:?}: {e}"))
}

/// Follows ARG/ENV through a stage and records what it reads from other stages and images.
fn walk_instruction(
    draft: &mut Draft,
    inst: &Instruction,
    lexer: Lexer,
    names: &[Option<String>],
    globals: &[Variable],
    options: &PlanOptions,
) -> Result<(), String> {
    match &inst.kind {
        Kind::Arg { args } => {
            for decl in args {
                let e = draft
                    .scope
                    .declare_arg(lexer, decl, globals, &options.build_args)
                    .map_err(|e| e.to_string())?;
                draft.note_certainty(&decl.name, e.as_ref());
            }
        }
        Kind::Env { pairs } => {
            let expansions = draft
                .scope
                .set_env(lexer, pairs)
                .map_err(|e| e.to_string())?;
            for (key, e) in &expansions {
                draft.note_certainty(key, Some(e));
            }
        }
        Kind::Copy(copy) => {
            if let Some(from) = &copy.from {
                let mut paths = Vec::new();
                for source in &copy.sources {
                    match read_path(draft, lexer, source)? {
                        Some(path) => paths.push(path),
                        None => {
                            paths = vec!["/".to_string()];
                            break;
                        }
                    }
                }
                read_from(draft, lexer, names, from, paths, inst.line, "COPY")?;
            }
        }
        Kind::Run(run) => {
            for mount in &run.mounts {
                let expanded = draft
                    .scope
                    .expand(lexer, mount)
                    .map_err(|e| e.to_string())?
                    .value;
                let spec = MountSpec::parse(&expanded)?;
                if let Some(from) = spec.from {
                    let source = absolute(spec.source.as_deref().unwrap_or("/"));
                    read_from(
                        draft,
                        lexer,
                        names,
                        &from,
                        vec![source],
                        inst.line,
                        "RUN --mount",
                    )?;
                }
            }
        }
        _ => {}
    }
    Ok(())
}

impl Draft {
    /// Whether an expansion's value is final at plan time: it is when the stage's whole
    /// environment is known, or when it read no unset variable and no uncertain one.
    fn is_certain(&self, e: &Expansion) -> bool {
        self.env_known || (e.unset.is_empty() && !e.used.iter().any(|n| self.uncertain.contains(n)))
    }

    /// Records whether a variable just set has a value that is final at plan time.
    fn note_certainty(&mut self, name: &str, e: Option<&Expansion>) {
        if e.is_none_or(|e| self.is_certain(e)) {
            self.uncertain.remove(name);
        } else {
            self.uncertain.insert(name.to_string());
        }
    }
}

/// A COPY source path as the reader expands it; None when it may depend on the base
/// image's environment, which is not known at plan time.
fn read_path(draft: &Draft, lexer: Lexer, word: &str) -> Result<Option<String>, String> {
    let e = draft.scope.expand(lexer, word).map_err(|e| e.to_string())?;
    Ok(draft.is_certain(&e).then(|| absolute(&e.value)))
}

fn absolute(path: &str) -> String {
    if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    }
}

/// Resolves a `--from` value: a stage name (any position), a stage index, or an image.
fn read_from(
    draft: &mut Draft,
    lexer: Lexer,
    names: &[Option<String>],
    from: &str,
    paths: Vec<String>,
    line: usize,
    what: &str,
) -> Result<(), String> {
    let value = draft
        .scope
        .expand(lexer, from)
        .map_err(|e| e.to_string())?
        .value;
    if value.is_empty() {
        return Err(format!(
            "{what} --from={from}: the stage or image name is empty"
        ));
    }
    let lower = value.to_ascii_lowercase();
    let stage = match names
        .iter()
        .position(|n| n.as_deref() == Some(lower.as_str()))
    {
        Some(i) => Some(i),
        None => match value.parse::<usize>() {
            Ok(index) if index < names.len() => Some(index),
            Ok(index) => {
                return Err(format!(
                    "{what} --from={value}: invalid stage index {index}, the Dockerfile has {} stages",
                    names.len()
                ));
            }
            Err(_) => None,
        },
    };
    match stage {
        Some(stage) => draft.stage_reads.push(StageRead {
            stage,
            paths: Some(paths),
            origin: (line, value),
        }),
        None => {
            let reference = normalise_image(&value)
                .map_err(|_| format!("{what} --from={value}: no stage or image named {value:?}"))?;
            draft.image_reads.push((reference, paths, line, value));
        }
    }
    Ok(())
}

/// The parts of a `RUN --mount=` value the graph needs.
#[derive(Debug, Default, PartialEq, Eq)]
struct MountSpec {
    from: Option<String>,
    source: Option<String>,
}

impl MountSpec {
    /// Parses `type=bind,from=build,source=/out,target=/in,ro` (BuildKit's CSV form).
    fn parse(value: &str) -> Result<Self, String> {
        let mut spec = MountSpec::default();
        let mut kind = "bind".to_string();
        for field in value.split(',').filter(|f| !f.is_empty()) {
            let (key, val) = field.split_once('=').unwrap_or((field, ""));
            match key.to_ascii_lowercase().as_str() {
                "type" => kind = val.to_ascii_lowercase(),
                "from" => spec.from = Some(val.to_string()),
                "source" | "src" => spec.source = Some(val.to_string()),
                "target" | "dst" | "destination" | "id" | "ro" | "readonly" | "rw"
                | "readwrite" | "sharing" | "mode" | "uid" | "gid" | "required" | "env"
                | "size" | "bind-propagation" => {}
                other => return Err(format!("--mount: unexpected key {other:?} in {value:?}")),
            }
        }
        if !matches!(kind.as_str(), "bind" | "cache" | "tmpfs" | "secret" | "ssh") {
            return Err(format!("--mount: unsupported mount type {kind:?}"));
        }
        if spec.from.is_some() && !matches!(kind.as_str(), "bind" | "cache") {
            return Err(format!("--mount: from= is not allowed for type={kind}"));
        }
        Ok(spec)
    }
}

/// Fails on a stage that (through others) reads itself; BuildKit's message.
fn check_cycles(drafts: &[Draft]) -> Result<(), (usize, String)> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Visiting,
        Done,
    }
    fn visit(i: usize, drafts: &[Draft], marks: &mut [Mark]) -> Result<(), (usize, String)> {
        match marks[i] {
            Mark::Done => return Ok(()),
            Mark::Visiting => {
                let d = &drafts[i];
                let name = d.name.clone().unwrap_or_else(|| d.index.to_string());
                return Err((
                    d.line,
                    format!("circular dependency detected on stage: {name}"),
                ));
            }
            Mark::New => {}
        }
        marks[i] = Mark::Visiting;
        for read in &drafts[i].stage_reads {
            visit(read.stage, drafts, marks)?;
        }
        marks[i] = Mark::Done;
        Ok(())
    }
    let mut marks = vec![Mark::New; drafts.len()];
    (0..drafts.len()).try_for_each(|i| visit(i, drafts, &mut marks))
}

/// Fuses linear chains: a stage whose only user builds `FROM` it (and copies nothing out
/// of it) runs in that user's pod, saving a pod start and a round of layer extraction.
fn fuse_chains(stages: &mut [Stage]) {
    let users = |id: &str, stages: &[Stage]| -> usize {
        stages
            .iter()
            .filter(|s| s.depends_on.iter().any(|d| d == id))
            .count()
    };
    // Later stages first, so a chain collapses into its last pod.
    for i in (0..stages.len()).rev() {
        let pod = match &stages[i].execution {
            Execution::Pod { .. } => stages[i].id.clone(),
            Execution::Fused { pod } => pod.clone(),
            Execution::Assemble | Execution::Nothing => continue,
        };
        let Base::Stage { id: parent } = &stages[i].base else {
            continue;
        };
        let parent = parent.clone();
        let Some(p) = stages.iter().position(|s| s.id == parent) else {
            continue;
        };
        let copied_from = !stages[p].exports.is_empty();
        if users(&parent, stages) == 1
            && !copied_from
            && matches!(stages[p].execution, Execution::Pod { .. })
        {
            stages[p].execution = Execution::Fused { pod };
        }
    }
    // Each pod runs its fused ancestors first, then itself.
    for i in 0..stages.len() {
        if !matches!(stages[i].execution, Execution::Pod { .. }) {
            continue;
        }
        let id = stages[i].id.clone();
        let runs: Vec<String> = stages
            .iter()
            .filter(|s| {
                s.id == id || matches!(&s.execution, Execution::Fused { pod } if *pod == id)
            })
            .map(|s| s.id.clone())
            .collect();
        stages[i].execution = Execution::Pod { runs };
    }
}

/// Groups pods into waves: a pod starts once every pod it reads from has finished.
fn waves(stages: &[Stage]) -> Vec<Vec<String>> {
    fn pod_of(stages: &[Stage], id: &str) -> Option<String> {
        let s = stages.iter().find(|s| s.id == id)?;
        match (&s.execution, &s.base) {
            (Execution::Pod { .. }, _) => Some(s.id.clone()),
            (Execution::Fused { pod }, _) => Some(pod.clone()),
            (Execution::Nothing, Base::Stage { id }) => pod_of(stages, id),
            (Execution::Nothing | Execution::Assemble, _) => None,
        }
    }
    let pods: Vec<&Stage> = stages
        .iter()
        .filter(|s| matches!(s.execution, Execution::Pod { .. }))
        .collect();
    let mut level: BTreeMap<String, usize> = BTreeMap::new();
    // Stages are in dependency order except for `--from` reading later stages, so
    // iterate to a fixed point (bounded by the number of pods; cycles were rejected).
    for _ in 0..=pods.len() {
        let mut changed = false;
        for pod in &pods {
            let Execution::Pod { runs } = &pod.execution else {
                continue;
            };
            let deps = runs
                .iter()
                .filter_map(|r| stages.iter().find(|s| s.id == *r))
                .flat_map(|s| s.depends_on.iter())
                .filter_map(|d| pod_of(stages, d))
                .filter(|d| *d != pod.id);
            let l = deps
                .map(|d| level.get(&d).map_or(1, |l| l + 1))
                .max()
                .unwrap_or(0);
            if level.get(&pod.id) != Some(&l) {
                level.insert(pod.id.clone(), l);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let depth = level.values().max().map_or(0, |m| m + 1);
    let mut waves = vec![Vec::new(); depth];
    for pod in pods {
        waves[level[&pod.id]].push(pod.id.clone());
    }
    waves
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan_of(src: &str) -> Plan {
        plan(src, &PlanOptions::default()).unwrap_or_else(|e| panic!("{e}"))
    }

    fn error_of(src: &str) -> String {
        plan(src, &PlanOptions::default())
            .expect_err("must fail")
            .to_string()
    }

    fn with_target(src: &str, target: &str) -> Result<Plan> {
        plan(
            src,
            &PlanOptions {
                target: Some(target.into()),
                ..PlanOptions::default()
            },
        )
    }

    fn stage<'a>(plan: &'a Plan, id: &str) -> &'a Stage {
        plan.stage(id).unwrap_or_else(|| panic!("no stage {id}"))
    }

    #[test]
    fn errors_name_the_file_and_line() {
        let cases = [
            (
                "FROM a\nCOPY --from=buidler:: x /\n",
                "Dockerfile:2: COPY --from=buidler::: no stage or image named \"buidler::\"",
            ),
            (
                "FROM a AS x\nFROM b\nCOPY --from=7 f /\n",
                "Dockerfile:3: COPY --from=7: invalid stage index 7, the Dockerfile has 2 stages",
            ),
            (
                "FROM a AS x\nFROM b AS X\n",
                "Dockerfile:2: duplicate stage name \"x\", first defined on line 1",
            ),
            (
                "FROM ${NOPE}\n",
                "Dockerfile:1: base name (${NOPE}) should not be blank",
            ),
            (
                "FROM a\nRUN <<EOF\nno end\n",
                "Dockerfile:2: unterminated heredoc \"EOF\"",
            ),
            ("", "Dockerfile:1: file with no instructions"),
            (
                "ARG x\n",
                "Dockerfile: dockerfile contains no stages to build",
            ),
            (
                "RUN true\nFROM a\n",
                "Dockerfile:1: RUN before the first FROM: only ARG may come before FROM",
            ),
            (
                "FROM a\nCOPY --chmod 1 /\n",
                "Dockerfile:2: missing a value on flag: chmod",
            ),
            (
                "FROM UPPER:case\n",
                "Dockerfile:1: invalid image reference \"UPPER:case\": invalid reference format",
            ),
            (
                "FROM a\nRUN --mount=type=nope true\n",
                "Dockerfile:2: --mount: unsupported mount type \"nope\"",
            ),
            (
                "FROM a AS one\nCOPY --from=two x /\nFROM b AS two\nCOPY --from=one y /\n",
                "Dockerfile:1: circular dependency detected on stage: one",
            ),
        ];
        for (src, want) in cases {
            let got = error_of(src);
            assert!(got.starts_with(want), "{src:?}\n got: {got}\nwant: {want}");
        }
        let err = with_target("FROM a AS x\n", "nosuch").expect_err("target");
        assert_eq!(
            err.to_string(),
            "Dockerfile: target stage \"nosuch\" could not be found"
        );
    }

    #[test]
    fn independent_stages_share_a_wave() {
        let p = plan_of(
            "FROM busybox AS a\nRUN touch /a\nFROM busybox AS b\nRUN touch /b\n\
             FROM busybox AS c\nRUN touch /c\n\
             FROM scratch\nCOPY --from=a /a /\nCOPY --from=b /b /\nCOPY --from=c /c /\n",
        );
        assert_eq!(p.waves, [["a", "b", "c"]]);
        assert_eq!(stage(&p, "stage-3").execution, Execution::Assemble);
        assert_eq!(stage(&p, "stage-3").depends_on, ["a", "b", "c"]);
        assert_eq!(stage(&p, "a").exports, ["/a"]);
        assert!(!stage(&p, "a").needs_filesystem);
    }

    #[test]
    fn linear_chains_fuse_and_shared_parents_do_not() {
        let p = plan_of(
            "FROM busybox AS deps\nRUN touch /d\nFROM deps AS build\nRUN touch /b\n\
             FROM busybox\nRUN true\nCOPY --from=build /b /\n",
        );
        assert_eq!(
            stage(&p, "deps").execution,
            Execution::Fused {
                pod: "build".into()
            }
        );
        assert_eq!(
            stage(&p, "build").execution,
            Execution::Pod {
                runs: vec!["deps".into(), "build".into()]
            }
        );
        assert_eq!(p.waves, [vec!["build"], vec!["stage-2"]]);
        assert!(stage(&p, "deps").needs_filesystem);

        let p = plan_of(
            "FROM busybox AS base\nRUN touch /x\nFROM base AS one\nRUN true\n\
             FROM base AS two\nRUN true\nFROM scratch\nCOPY --from=one / /1\nCOPY --from=two / /2\n",
        );
        assert_eq!(
            stage(&p, "base").execution,
            Execution::Pod {
                runs: vec!["base".into()]
            }
        );
        assert_eq!(p.waves, [vec!["base"], vec!["one", "two"]]);
    }

    #[test]
    fn target_prunes_what_it_does_not_need() {
        let src = "FROM busybox AS base\nRUN true\nFROM base AS test\nRUN false\n\
                   FROM base AS release\nRUN true\nFROM release\nRUN exit 3\n";
        let p = with_target(src, "Release").expect("plans");
        assert_eq!(p.target, "release");
        assert_eq!(p.pruned, ["test", "stage-3"]);
        assert_eq!(
            p.stages.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
            ["base", "release"]
        );
    }

    #[test]
    fn images_named_by_from_are_export_stages() {
        let p = plan_of(
            "FROM busybox AS build\nRUN --mount=from=golang:1.22,source=/usr/local/go,target=/go true\n\
             FROM scratch\nCOPY --from=busybox:1.36 /bin/busybox /bin/\nCOPY --from=golang:1.22 /etc/os-release /\n\
             COPY --from=build /x /\n",
        );
        let golang = stage(&p, "image-0");
        assert_eq!(
            golang.base,
            Base::Image {
                reference: "docker.io/library/golang:1.22".into(),
                digest: None
            }
        );
        assert_eq!(golang.exports, ["/etc/os-release", "/usr/local/go"]);
        assert_eq!(stage(&p, "image-1").exports, ["/bin/busybox"]);
        assert_eq!(stage(&p, "build").depends_on, ["image-0"]);
        assert_eq!(p.waves, [vec!["image-0", "image-1"], vec!["build"]]);
    }

    #[test]
    fn a_stage_named_like_an_image_wins() {
        let p =
            plan_of("FROM busybox AS golang\nRUN true\nFROM scratch\nCOPY --from=golang /x /\n");
        assert_eq!(stage(&p, "stage-1").depends_on, ["golang"]);
        assert!(p.stage("image-0").is_none());
    }

    #[test]
    fn from_expands_global_args_and_build_args() {
        let src = "ARG TAG=1.0\nARG IMG=registry.example:5000/team/app\nFROM ${IMG}:${TAG} AS a\n\
                   FROM --platform=$BUILDPLATFORM a\nRUN true\n";
        let p = plan(
            src,
            &PlanOptions {
                build_args: BTreeMap::from([("TAG".into(), "2.0".into())]),
                ..PlanOptions::default()
            },
        )
        .expect("plans");
        assert_eq!(
            stage(&p, "a").base,
            Base::Image {
                reference: "registry.example:5000/team/app:2.0".into(),
                digest: None
            }
        );
        assert_eq!(
            stage(&p, "stage-1").platform.as_deref(),
            Some("linux/amd64")
        );
    }

    #[test]
    fn global_args_are_invisible_in_stages_until_redeclared() {
        // The COPY --from path shows what the stage sees.
        let p = plan_of(
            "ARG DIR=/out\nFROM scratch AS a\nCOPY f /f\n\
             FROM scratch AS b\nCOPY --from=a $DIR/x /\nARG DIR\nCOPY --from=a $DIR/y /\n",
        );
        assert_eq!(stage(&p, "a").exports, ["/out/y", "/x"]);
    }

    #[test]
    fn paths_that_may_read_the_base_environment_export_everything() {
        let p = plan_of(
            "FROM busybox AS a\nRUN true\nFROM busybox\nENV D=${HOME}/x\nCOPY --from=a $D /\nRUN true\n",
        );
        assert_eq!(stage(&p, "a").exports, ["/"]);
        let p = plan_of(
            "FROM busybox AS a\nRUN true\nFROM busybox\nARG D=/opt\nENV E=$D/x\nCOPY --from=a $E /\nRUN true\n",
        );
        assert_eq!(
            stage(&p, "a").exports,
            ["/opt/x"],
            "ARG and ENV of the Dockerfile are known"
        );
    }

    #[test]
    fn env_and_args_flow_into_child_stages() {
        let p = plan_of(
            "FROM scratch AS a\nENV P=/p\nARG Q=/q\nFROM a AS b\nCOPY x /\n\
             FROM busybox\nCOPY --from=b $P $Q /\nRUN true\n",
        );
        // ENV P is not visible in the unrelated last stage; the paths fall back to `/`.
        assert_eq!(stage(&p, "b").exports, ["/"]);
        let p = with_target(
            "FROM scratch AS a\nENV P=/p\nFROM a AS b\nCOPY --from=c $P /\nFROM scratch AS c\nCOPY x /x\n",
            "b",
        )
        .expect("plans");
        assert_eq!(
            stage(&p, "c").exports,
            ["/p"],
            "ENV of the parent stage is seen"
        );
    }

    #[test]
    fn target_stage_arg_and_automatic_platform_args() {
        let src = "FROM scratch AS base\nARG TARGETSTAGE\nARG TARGETARCH\nCOPY x /\n\
                   FROM scratch AS foo\nCOPY --from=base /x$TARGETSTAGE /\nARG TARGETSTAGE\nCOPY --from=base /y$TARGETSTAGE-$TARGETARCH /\n";
        let p = with_target(src, "foo").expect("plans");
        // Only re-declared automatic args are seen inside a stage.
        assert_eq!(stage(&p, "base").exports, ["/x", "/yfoo-"]);
        let names: Vec<&str> = p.global_args.iter().map(|v| v.name.as_str()).collect();
        assert!(names.contains(&"TARGETPLATFORM") && names.contains(&"BUILDARCH"));
    }

    #[test]
    fn summary_lists_pods_with_their_images_and_waits() {
        let mut p = plan_of(
            "FROM busybox AS deps\nRUN a\nFROM deps AS build\nRUN b\nFROM scratch AS assets\nCOPY x /x\n\
             FROM busybox AS other\nRUN c\nFROM alpine\nCOPY --from=build /b /\nCOPY --from=assets /x /\n\
             COPY --from=other /c /\nRUN true\n",
        );
        if let Base::Image { digest, .. } = &mut p.stages[0].base {
            *digest = Some(format!("sha256:{}", "a".repeat(64)));
        }
        let s = p.summary(Some("abc".into()), Some(1));
        let pods: Vec<(&str, Option<&str>, Vec<&str>)> = s
            .pods
            .iter()
            .map(|p| {
                (
                    p.id.as_str(),
                    p.image.as_deref(),
                    p.waits_for.iter().map(String::as_str).collect(),
                )
            })
            .collect();
        let pinned = format!("docker.io/library/busybox:latest@sha256:{}", "a".repeat(64));
        assert_eq!(
            pods,
            [
                ("build", Some(pinned.as_str()), vec![]),
                ("assets", None, vec![]),
                ("other", Some("docker.io/library/busybox:latest"), vec![]),
                (
                    "stage-4",
                    Some("docker.io/library/alpine:latest"),
                    vec!["build", "assets", "other"]
                ),
            ]
        );
        assert_eq!(s.pods[0].stages, ["deps", "build"]);
        assert!(serde_json::to_string(&s).expect("json").len() < 1024);
    }

    #[test]
    fn plan_round_trips_through_json_and_refuses_other_versions() {
        let p = plan_of(
            "FROM busybox AS a\nRUN <<EOF\necho hi\nEOF\nFROM scratch\nCOPY --from=a / /\n",
        );
        let json = p.to_json();
        assert_eq!(Plan::from_json(&json).expect("reads"), p);
        let other = json.replace(PLAN_VERSION, "stagecoach.dev/plan/v0");
        assert!(Plan::from_json(&other).is_err());
    }
}
