//! From a Dockerfile and build options to the [`Plan`]: stages, their bases, the stage
//! graph, target pruning, fused chains and parallel waves.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};

use oci_spec::distribution::Reference;

use crate::contract::{
    Base, Execution, PLAN_VERSION, Plan, Platform, Read, Stage, Variable, Warning, WarningKind,
};
use crate::instruction::{self, Instruction, Kind};
use crate::limits::{self, DOCKERFILE_BYTES, EXPANDED_BYTES, STAGES};
use crate::scope::{self, Expansion, Scope};
use crate::shell::Lexer;
use crate::suggest;
use crate::syntax::{self, Dockerfile};

/// What the planner needs besides the Dockerfile text.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    /// The Dockerfile's name in messages (`Dockerfile:12: ...`).
    pub dockerfile_name: String,
    /// The stage to build; the last stage when none.
    pub target: Option<String>,
    pub build_args: BTreeMap<String, String>,
    /// The platform of the image being built: `TARGETPLATFORM` and its parts.
    pub platform: Platform,
    /// The platform the build stages run on: `BUILDPLATFORM` and its parts (none: the
    /// target platform, as for a single-platform build on its own nodes).
    pub build_platform: Option<Platform>,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions {
            dockerfile_name: "Dockerfile".into(),
            target: None,
            build_args: BTreeMap::new(),
            platform: Platform::default(),
            build_platform: None,
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
    /// An error in the options' Dockerfile, at a line when there is one.
    fn at(options: &PlanOptions, line: Option<usize>, message: String) -> Self {
        PlanError {
            file: options.dockerfile_name.clone(),
            line,
            message,
        }
    }

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
    /// Images this stage reads whose names look like a stage's: (line, what to say).
    looks_like_stage: Vec<(usize, String)>,
    /// The build secrets its RUN steps mount (`--mount=type=secret`), by id.
    secrets: BTreeSet<String>,
    /// Whether a RUN mounts a persistent cache (`--mount=type=cache`).
    run_cache: bool,
    /// The ssh agent ids its RUN steps mount (`--mount=type=ssh`).
    ssh: BTreeSet<String>,
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
    let (parsed, instructions) = parse(dockerfile, options)?;
    let planner = Planner {
        options,
        lexer: Lexer::new(parsed.escape),
        expanded: Budget::default(),
    };
    let (global_part, stage_part) = planner.split_globals(&instructions)?;
    let raw_stages = split_stages(stage_part);
    if let Some(over) = raw_stages.get(STAGES) {
        return Err(planner.error(
            Some(over.line),
            format!("more than {STAGES} stages, Stagecoach's limit"),
        ));
    }
    let names = planner.stage_names(&raw_stages)?;
    let target = planner.target_index(&names)?;
    let globals = planner.global_args(global_part, names[target].as_deref())?;
    let ids = stage_ids(&names);
    let drafts = planner.draft_stages(raw_stages, &names, &ids, &globals)?;
    check_cycles(&drafts).map_err(|(line, message)| planner.error(Some(line), message))?;
    let needed = needed_stages(&drafts, target);
    let warnings = warnings(&drafts, &needed, global_part, options);
    let takes = what_readers_take(&drafts, &needed, target);
    let (mut stages, pruned) = contract_stages(drafts, &needed, takes, &ids, target);
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
        target: ids[target].clone(),
        stages,
        waves,
        pruned,
        warnings,
    })
}

/// Parses the text and types its instructions, so later steps see checked instructions.
fn parse(dockerfile: &str, options: &PlanOptions) -> Result<(Dockerfile, Vec<Instruction>)> {
    if dockerfile.len() > DOCKERFILE_BYTES {
        return Err(PlanError::at(options, None, too_large()));
    }
    let err = |line: usize, message: String| PlanError::at(options, Some(line), message);
    let parsed = syntax::parse(dockerfile).map_err(|e| err(e.line, e.message))?;
    let instructions = instruction::parse_all(&parsed).map_err(|e| err(e.line, e.message))?;
    Ok((parsed, instructions))
}

/// A stage as written: its FROM and the instructions up to the next FROM.
struct RawStage<'a> {
    line: usize,
    from: &'a instruction::From,
    body: Vec<Instruction>,
}

/// Why a Dockerfile past [`DOCKERFILE_BYTES`] is refused (its readers stop reading there).
fn too_large() -> String {
    format!(
        "the Dockerfile is larger than {}, Stagecoach's limit",
        limits::human(DOCKERFILE_BYTES)
    )
}

/// What every step of one planning run shares: the options, the lexer of the
/// Dockerfile's escape character, and what has been expanded so far.
struct Planner<'a> {
    options: &'a PlanOptions,
    lexer: Lexer,
    expanded: Budget,
}

/// The bytes one planning run has expanded or holds in stage scopes, against
/// [`EXPANDED_BYTES`]: each word is bounded on its own, but many words add up.
#[derive(Default)]
struct Budget(Cell<usize>);

impl Budget {
    fn spend(&self, bytes: usize) -> Result<(), String> {
        let total = self.0.get().saturating_add(bytes);
        self.0.set(total);
        if total > EXPANDED_BYTES {
            return Err(format!(
                "the expansions in this Dockerfile add up to more than {}, Stagecoach's limit",
                limits::human(EXPANDED_BYTES)
            ));
        }
        Ok(())
    }
}

impl Planner<'_> {
    /// An error in this Dockerfile, so every message names the file (and the line).
    fn error(&self, line: Option<usize>, message: String) -> PlanError {
        PlanError::at(self.options, line, message)
    }

    /// Splits the global part (before the first FROM) from the stages; only ARG may come
    /// before FROM, as in BuildKit.
    fn split_globals<'i>(
        &self,
        instructions: &'i [Instruction],
    ) -> Result<(&'i [Instruction], &'i [Instruction])> {
        let Some(first_from) = instructions
            .iter()
            .position(|i| matches!(i.kind, Kind::From(_)))
        else {
            return Err(self.error(None, "dockerfile contains no stages to build".into()));
        };
        let (global_part, stage_part) = instructions.split_at(first_from);
        for inst in global_part {
            if !matches!(inst.kind, Kind::Arg { .. }) {
                return Err(self.error(
                    Some(inst.line),
                    format!(
                        "{} before the first FROM: only ARG may come before FROM",
                        inst.kind.keyword()
                    ),
                ));
            }
        }
        Ok((global_part, stage_part))
    }

    /// The stage names, duplicates rejected; names are literal, so the target is known
    /// before any expansion.
    fn stage_names(&self, raw_stages: &[RawStage]) -> Result<Vec<Option<String>>> {
        let names: Vec<Option<String>> = raw_stages.iter().map(|s| s.from.name.clone()).collect();
        for (i, name) in names.iter().enumerate() {
            let Some(name) = name else { continue };
            if let Some(first) = names[..i].iter().position(|n| n.as_ref() == Some(name)) {
                return Err(self.error(
                    Some(raw_stages[i].line),
                    format!(
                        "duplicate stage name {name:?}, first defined on line {}",
                        raw_stages[first].line
                    ),
                ));
            }
        }
        Ok(names)
    }

    /// The index of the stage to build: the one the options name (case-insensitively), or
    /// the last.
    fn target_index(&self, names: &[Option<String>]) -> Result<usize> {
        match &self.options.target {
            None => Ok(names.len() - 1),
            Some(t) => {
                let wanted = t.to_ascii_lowercase();
                names
                    .iter()
                    .position(|n| n.as_deref() == Some(wanted.as_str()))
                    .ok_or_else(|| {
                        let hint = target_hint(&wanted, names);
                        self.error(None, format!("target stage {t:?} could not be found{hint}"))
                    })
            }
        }
    }

    /// The global ARGs with the build args applied, after the automatic ones (platforms,
    /// and `TARGETSTAGE`: the target's name, `default` when it has none); FROM lines see them.
    fn global_args(
        &self,
        global_part: &[Instruction],
        target_name: Option<&str>,
    ) -> Result<Vec<Variable>> {
        let mut globals = automatic_args(self.options, target_name.unwrap_or("default"));
        for inst in global_part {
            if let Kind::Arg { args } = &inst.kind {
                let at = |message: String| self.error(Some(inst.line), message);
                globals = scope::global_args(self.lexer, globals, args, &self.options.build_args)
                    .map_err(|e| at(e.to_string()))?;
                let set: usize = globals
                    .iter()
                    .filter(|v| args.iter().any(|decl| decl.name == v.name))
                    .map(|v| v.value.len())
                    .sum();
                self.expanded.spend(set).map_err(at)?;
            }
        }
        Ok(globals)
    }

    /// Drafts the stages in order, so each can take its `FROM` parent's environment.
    fn draft_stages(
        &self,
        raw_stages: Vec<RawStage>,
        names: &[Option<String>],
        ids: &[String],
        globals: &[Variable],
    ) -> Result<Vec<Draft>> {
        let global_vars: Vec<(String, String)> = globals
            .iter()
            .map(|v| (v.name.clone(), v.value.clone()))
            .collect();
        let mut drafts: Vec<Draft> = Vec::with_capacity(raw_stages.len());
        for (index, raw) in raw_stages.into_iter().enumerate() {
            let mut draft = self.start_draft(index, &raw, names, ids, &global_vars, &drafts)?;
            self.walk_body(&mut draft, raw.body, names, globals)?;
            // A stage's scope is its own copy (children clone their parent's).
            self.expanded
                .spend(draft.scope.bytes())
                .map_err(|message| self.error(Some(draft.line), message))?;
            drafts.push(draft);
        }
        Ok(drafts)
    }

    /// A stage's draft as its FROM line makes it: expanded base and platform, and the
    /// parent stage (an earlier one) it reads whole.
    fn start_draft(
        &self,
        index: usize,
        raw: &RawStage,
        names: &[Option<String>],
        ids: &[String],
        global_vars: &[(String, String)],
        earlier: &[Draft],
    ) -> Result<Draft> {
        let line = raw.line;
        let at = |message: String| self.error(Some(line), message);
        let (image, platform) = self.expand_from(raw.from, global_vars).map_err(at)?;
        // `scratch` is reserved: it never names a stage, even one called so.
        let parent = names[..index]
            .iter()
            .position(|n| n.as_deref() == Some(image.to_ascii_lowercase().as_str()))
            .filter(|_| image != "scratch");
        let (base, env_known, uncertain, scope) =
            base_and_environment(&image, parent, ids, earlier).map_err(at)?;
        let earlier_names = names[..index].iter().flatten().map(String::as_str);
        let looks_like_stage = match &base {
            Base::Image { reference, .. } => {
                looks_like_stage(&format!("FROM {image}"), &image, reference, earlier_names)
            }
            _ => None,
        };
        Ok(Draft {
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
            looks_like_stage: looks_like_stage
                .map(|text| (line, text))
                .into_iter()
                .collect(),
            secrets: BTreeSet::new(),
            run_cache: false,
            ssh: BTreeSet::new(),
        })
    }

    /// The FROM image and `--platform`, expanded with the global ARGs (all a FROM line
    /// sees); a blank image is an error, as in BuildKit.
    fn expand_from(
        &self,
        from: &instruction::From,
        global_vars: &[(String, String)],
    ) -> Result<(String, Option<String>), String> {
        let image = scope::expand(self.lexer, &from.image, global_vars)
            .map_err(|e| e.to_string())?
            .value;
        self.expanded.spend(image.len())?;
        if image.is_empty() {
            return Err(format!("base name ({}) should not be blank", from.image));
        }
        let platform = from
            .platform
            .as_ref()
            .map(|p| scope::expand(self.lexer, p, global_vars).map(|e| e.value))
            .transpose()
            .map_err(|e| e.to_string())?;
        self.expanded
            .spend(platform.as_ref().map_or(0, String::len))?;
        Ok((image, platform))
    }

    /// Walks a stage's body in order, so each instruction sees the ARG/ENV before it and
    /// its reads of other stages and images are recorded.
    fn walk_body(
        &self,
        draft: &mut Draft,
        body: Vec<Instruction>,
        names: &[Option<String>],
        globals: &[Variable],
    ) -> Result<()> {
        for inst in body {
            walk_instruction(draft, &inst, self, names, globals)
                .map_err(|message| self.error(Some(inst.line), message))?;
            draft.instructions.push(inst);
        }
        Ok(())
    }
}

/// Groups the instructions from the first FROM on into stages: each FROM begins one.
fn split_stages(stage_part: &[Instruction]) -> Vec<RawStage<'_>> {
    let mut raw_stages: Vec<RawStage> = Vec::new();
    for inst in stage_part {
        match (&inst.kind, raw_stages.last_mut()) {
            (Kind::From(from), _) => raw_stages.push(RawStage {
                line: inst.line,
                from,
                body: Vec::new(),
            }),
            (_, Some(last)) => last.body.push(inst.clone()),
            (_, None) => unreachable!("the first stage instruction is a FROM"),
        }
    }
    raw_stages
}

/// A stage's base and its starting environment: a parent stage's (inherited), scratch's
/// (empty and fully known) or an image's (unknown until the stage pod reads it).
fn base_and_environment(
    image: &str,
    parent: Option<usize>,
    ids: &[String],
    earlier: &[Draft],
) -> Result<(Base, bool, BTreeSet<String>, Scope), String> {
    Ok(match parent {
        Some(p) => (
            Base::Stage { id: ids[p].clone() },
            earlier[p].env_known,
            earlier[p].uncertain.clone(),
            earlier[p].scope.clone(),
        ),
        None if image == "scratch" => (Base::Scratch, true, BTreeSet::new(), Scope::default()),
        None => (
            Base::Image {
                reference: normalise_image(image)?,
                digest: None,
            },
            false,
            BTreeSet::new(),
            Scope::default(),
        ),
    })
}

/// The stages the target needs: itself and, transitively, every stage it reads; the rest
/// are pruned.
fn needed_stages(drafts: &[Draft], target: usize) -> BTreeSet<usize> {
    let mut needed = BTreeSet::new();
    let mut pending = vec![target];
    while let Some(i) = pending.pop() {
        if needed.insert(i) {
            pending.extend(drafts[i].stage_reads.iter().map(|r| r.stage));
        }
    }
    needed
}

/// What the needed stages take from each stage.
struct Takes {
    /// The paths read with `--from`, by stage index.
    exports: Vec<BTreeSet<String>>,
    /// The stages whose whole filesystem is read: the target and every `FROM` parent.
    filesystem: BTreeSet<usize>,
}

/// What needed readers take from each stage, so a stage exports only what is read.
fn what_readers_take(drafts: &[Draft], needed: &BTreeSet<usize>, target: usize) -> Takes {
    let mut exports: Vec<BTreeSet<String>> = vec![BTreeSet::new(); drafts.len()];
    let mut filesystem = BTreeSet::from([target]);
    for &i in needed {
        for read in &drafts[i].stage_reads {
            match &read.paths {
                None => {
                    filesystem.insert(read.stage);
                }
                Some(paths) => exports[read.stage].extend(paths.iter().cloned()),
            }
        }
    }
    Takes {
        exports,
        filesystem,
    }
}

/// An image read with `--from`, gathered over all readers: its normalised reference, the
/// paths they read, and the line of the first read.
struct ImageSource {
    reference: String,
    paths: BTreeSet<String>,
    line: usize,
}

/// The contract's stages (the needed drafts in Dockerfile order, then one export-only stage
/// per image read with `--from`) and the ids of the pruned drafts.
fn contract_stages(
    drafts: Vec<Draft>,
    needed: &BTreeSet<usize>,
    mut takes: Takes,
    ids: &[String],
    target: usize,
) -> (Vec<Stage>, Vec<String>) {
    let mut stages: Vec<Stage> = Vec::new();
    let mut images: Vec<ImageSource> = Vec::new();
    let mut pruned = Vec::new();
    for (i, draft) in drafts.into_iter().enumerate() {
        if !needed.contains(&i) {
            pruned.push(draft.id);
            continue;
        }
        let (depends_on, reads) = links(&draft.stage_reads, draft.image_reads, ids, &mut images);
        let execution = execution_of(&draft.instructions, i == target, &takes.exports[i]);
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
            exports: covering_paths(std::mem::take(&mut takes.exports[i])),
            needs_filesystem: takes.filesystem.contains(&i),
            execution,
            cache: None,
            secrets: draft.secrets.into_iter().collect(),
            run_cache: draft.run_cache,
            ssh: draft.ssh.into_iter().collect(),
        });
    }
    stages.extend(images.into_iter().enumerate().map(image_stage));
    (stages, pruned)
}

/// A stage's `depends_on` and `reads` (`--from` only): stages, then images; each image
/// is registered once in `images`, where its position gives its id `image-<n>`.
fn links(
    stage_reads: &[StageRead],
    image_reads: Vec<(String, Vec<String>, usize, String)>,
    ids: &[String],
    images: &mut Vec<ImageSource>,
) -> (Vec<String>, Vec<Read>) {
    let mut depends_on: Vec<String> = Vec::new();
    let mut reads: Vec<Read> = Vec::new();
    for read in stage_reads {
        push_unique(&mut depends_on, ids[read.stage].clone());
        if read.paths.is_some() {
            reads.push(Read {
                line: read.origin.0,
                from: read.origin.1.clone(),
                stage: ids[read.stage].clone(),
            });
        }
    }
    for (reference, paths, line, from) in image_reads {
        let position = images
            .iter()
            .position(|image| image.reference == reference)
            .unwrap_or_else(|| {
                images.push(ImageSource {
                    reference,
                    paths: BTreeSet::new(),
                    line,
                });
                images.len() - 1
            });
        images[position].paths.extend(paths);
        push_unique(&mut depends_on, format!("image-{position}"));
        reads.push(Read {
            line,
            from,
            stage: format!("image-{position}"),
        });
    }
    (depends_on, reads)
}

/// How a stage runs: the assemble pod builds a target that only copies and sets metadata;
/// a stage that does nothing and exports nothing needs no pod; every other stage gets one.
fn execution_of(
    instructions: &[Instruction],
    is_target: bool,
    exports: &BTreeSet<String>,
) -> Execution {
    if is_target && only_copies_and_metadata(instructions) {
        Execution::Assemble
    } else if !is_target && instructions.is_empty() && exports.is_empty() {
        Execution::Nothing
    } else {
        Execution::Pod { runs: Vec::new() }
    }
}

/// The export-only stage `image-<n>` of an image read with `--from`: a pod on that image
/// that provides the paths its readers take.
fn image_stage((n, image): (usize, ImageSource)) -> Stage {
    Stage {
        id: format!("image-{n}"),
        name: None,
        index: None,
        line: image.line,
        base: Base::Image {
            reference: image.reference,
            digest: None,
        },
        platform: None,
        instructions: Vec::new(),
        depends_on: Vec::new(),
        reads: Vec::new(),
        exports: covering_paths(image.paths),
        needs_filesystem: false,
        execution: Execution::Pod { runs: Vec::new() },
        cache: None,
        secrets: Vec::new(),
        run_cache: false,
        ssh: Vec::new(),
    }
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
fn automatic_args(options: &PlanOptions, target_stage: &str) -> Vec<Variable> {
    let var = |name: String, value: String| Variable { name, value };
    let mut vars = Vec::new();
    let build = options.build_platform.as_ref().unwrap_or(&options.platform);
    for (prefix, platform) in [("BUILD", build), ("TARGET", &options.platform)] {
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
    planner: &Planner,
    names: &[Option<String>],
    globals: &[Variable],
) -> Result<(), String> {
    let lexer = planner.lexer;
    let budget = &planner.expanded;
    match &inst.kind {
        Kind::Arg { args } => {
            for decl in args {
                let e = draft
                    .scope
                    .declare_arg(lexer, decl, globals, &planner.options.build_args)
                    .map_err(|e| e.to_string())?;
                budget.spend(e.as_ref().map_or(0, |e| e.value.len()))?;
                draft.note_certainty(&decl.name, e.as_ref());
            }
        }
        Kind::Env { pairs } => {
            let expansions = draft
                .scope
                .set_env(lexer, pairs)
                .map_err(|e| e.to_string())?;
            for (key, e) in &expansions {
                budget.spend(e.value.len())?;
                draft.note_certainty(key, Some(e));
            }
        }
        Kind::Copy(copy) => {
            if let Some(from) = &copy.from {
                let mut paths = Vec::new();
                for source in &copy.sources {
                    match read_path(draft, lexer, budget, source)? {
                        Some(path) => paths.push(path),
                        None => {
                            paths = vec!["/".to_string()];
                            break;
                        }
                    }
                }
                read_from(draft, planner, names, from, paths, inst.line, Reader::Copy)?;
            }
        }
        Kind::Run(run) => {
            for mount in &run.mounts {
                let expansion = draft
                    .scope
                    .expand(lexer, mount)
                    .map_err(|e| e.to_string())?;
                budget.spend(expansion.value.len())?;
                let spec = MountSpec::parse(&expansion.value)?;
                draft.run_cache |= spec.cache;
                if let Some(id) = spec.ssh {
                    // Only the pods that mount an id get its key's agent.
                    if !draft.is_certain(&expansion) {
                        return Err(format!(
                            "--mount=type=ssh: the id in {mount:?} must not depend on the base image's environment"
                        ));
                    }
                    draft.ssh.insert(id);
                }
                if let Some(id) = spec.secret {
                    // The operator mounts a Secret only into the pods that use it, so
                    // which one a RUN takes must be known before any pod runs.
                    if !draft.is_certain(&expansion) {
                        return Err(format!(
                            "--mount=type=secret: the secret id in {mount:?} must not depend on the base image's environment"
                        ));
                    }
                    if id.is_empty() {
                        return Err(format!(
                            "--mount=type=secret: id or target is required in {mount:?}"
                        ));
                    }
                    draft.secrets.insert(id);
                }
                if let Some(from) = spec.from {
                    let source = absolute(spec.source.as_deref().unwrap_or("/"));
                    read_from(
                        draft,
                        planner,
                        names,
                        &from,
                        vec![source],
                        inst.line,
                        Reader::Mount,
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
fn read_path(
    draft: &Draft,
    lexer: Lexer,
    budget: &Budget,
    word: &str,
) -> Result<Option<String>, String> {
    let e = draft.scope.expand(lexer, word).map_err(|e| e.to_string())?;
    budget.spend(e.value.len())?;
    Ok(draft.is_certain(&e).then(|| absolute(&e.value)))
}

fn absolute(path: &str) -> String {
    if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    }
}

/// What reads another stage or an image with a `from` value.
#[derive(Debug, Clone, Copy)]
enum Reader {
    /// `COPY --from=`
    Copy,
    /// `RUN --mount=from=`
    Mount,
}

impl Reader {
    /// The instruction, as errors name it.
    fn what(self) -> &'static str {
        match self {
            Reader::Copy => "COPY",
            Reader::Mount => "RUN --mount",
        }
    }

    /// The flag with its value, as warnings quote it.
    fn flag(self, value: &str) -> String {
        match self {
            Reader::Copy => format!("--from={value}"),
            Reader::Mount => format!("--mount=from={value}"),
        }
    }
}

/// Resolves a `--from` value: a stage name (any position), a stage index, or an image.
fn read_from(
    draft: &mut Draft,
    planner: &Planner,
    names: &[Option<String>],
    from: &str,
    paths: Vec<String>,
    line: usize,
    reader: Reader,
) -> Result<(), String> {
    let what = reader.what();
    let value = draft
        .scope
        .expand(planner.lexer, from)
        .map_err(|e| e.to_string())?
        .value;
    planner.expanded.spend(value.len())?;
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
            let others = names
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != draft.index)
                .filter_map(|(_, n)| n.as_deref());
            if let Some(text) = looks_like_stage(&reader.flag(&value), &value, &reference, others) {
                draft.looks_like_stage.push((line, text));
            }
            draft.image_reads.push((reference, paths, line, value));
        }
    }
    Ok(())
}

/// What to say about an image read as `written` (`FROM x`, `--from=x`) when its name
/// `value` is close to a stage's (one of `stages`): probably a typo for that stage. None
/// for names that are plainly images (with a registry, path, tag or digest) and for names
/// close to no stage.
fn looks_like_stage<'s>(
    written: &str,
    value: &str,
    reference: &str,
    stages: impl IntoIterator<Item = &'s str>,
) -> Option<String> {
    if value.contains(['/', ':', '@']) {
        return None;
    }
    let stage = suggest::nearest(value, stages)?;
    Some(format!(
        "{written} names no stage, so it is pulled as the image {reference}; \
         did you mean the stage {stage:?}?"
    ))
}

/// The plan's warnings: images named like stages in the stages the target needs (in line
/// order), then the build args no ARG consumes.
fn warnings(
    drafts: &[Draft],
    needed: &BTreeSet<usize>,
    global_part: &[Instruction],
    options: &PlanOptions,
) -> Vec<Warning> {
    let mut lines: Vec<&(usize, String)> = needed
        .iter()
        .flat_map(|&i| &drafts[i].looks_like_stage)
        .collect();
    lines.sort_by_key(|(line, _)| *line);
    let mut warnings: Vec<Warning> = lines
        .into_iter()
        .map(|(line, text)| Warning {
            kind: WarningKind::FromLooksLikeStage,
            message: format!("{}:{line}: {text}", options.dockerfile_name),
            line: Some(*line),
        })
        .collect();
    let stage_parts = needed.iter().map(|&i| drafts[i].instructions.as_slice());
    warnings.extend(unused_build_args(
        std::iter::once(global_part).chain(stage_parts),
        options,
    ));
    warnings
}

/// The build args no ARG declares in `parts` (the global scope and the stages the target
/// needs), as one warning; the automatic args (`TARGETPLATFORM`, ...) are never unused.
/// As Docker's "One or more build-args [...] were not consumed", but naming where it looked.
fn unused_build_args<'i>(
    parts: impl IntoIterator<Item = &'i [Instruction]>,
    options: &PlanOptions,
) -> Option<Warning> {
    let mut declared: BTreeSet<String> = automatic_args(options, "")
        .into_iter()
        .map(|v| v.name)
        .collect();
    for inst in parts.into_iter().flatten() {
        if let Kind::Arg { args } = &inst.kind {
            declared.extend(args.iter().map(|decl| decl.name.clone()));
        }
    }
    let unused: Vec<&str> = options
        .build_args
        .keys()
        .filter(|name| !declared.contains(*name))
        .map(String::as_str)
        .collect();
    let message = match unused.as_slice() {
        [] => return None,
        [name] => format!(
            "build arg {name} is not used by any ARG in the stages the target needs; \
             declare it with ARG {name} in the stage that reads it, or leave it out"
        ),
        names => format!(
            "build args {} are not used by any ARG in the stages the target needs; \
             declare each with ARG in the stage that reads it, or leave them out",
            names.join(", ")
        ),
    };
    Some(Warning {
        kind: WarningKind::BuildArgUnused,
        message,
        line: None,
    })
}

/// The end of the "target stage could not be found" message: the nearest stage name, or
/// the names when there are a few to choose from.
fn target_hint(wanted: &str, names: &[Option<String>]) -> String {
    /// The most names listed; past that a list is no help.
    const LISTED_AT_MOST: usize = 10;
    let named: Vec<&str> = names.iter().flatten().map(String::as_str).collect();
    if let Some(near) = suggest::nearest(wanted, named.iter().copied()) {
        return format!("; did you mean {near:?}?");
    }
    match named.len() {
        0 => "; no stage has a name (name one with FROM <image> AS <name>)".into(),
        // A lone name is not listed: the message stays exactly BuildKit's.
        1 => String::new(),
        n if n <= LISTED_AT_MOST => format!("; the named stages are: {}", named.join(", ")),
        _ => String::new(),
    }
}

/// The parts of a `RUN --mount=` value the graph needs.
#[derive(Debug, Default, PartialEq, Eq)]
struct MountSpec {
    from: Option<String>,
    source: Option<String>,
    /// For `type=secret`: the id (BuildKit's default: the target's file name).
    secret: Option<String>,
    /// `type=cache`: the pod needs the run cache volume.
    cache: bool,
    /// For `type=ssh`: the agent id (`default` when none is given).
    ssh: Option<String>,
}

impl MountSpec {
    /// Parses `type=bind,from=build,source=/out,target=/in,ro` (BuildKit's CSV form).
    fn parse(value: &str) -> Result<Self, String> {
        let mut spec = MountSpec::default();
        let mut kind = "bind".to_string();
        let (mut id, mut target) = (None, None);
        for field in value.split(',').filter(|f| !f.is_empty()) {
            let (key, val) = field.split_once('=').unwrap_or((field, ""));
            match key.to_ascii_lowercase().as_str() {
                "type" => kind = val.to_ascii_lowercase(),
                "from" => spec.from = Some(val.to_string()),
                "source" | "src" => spec.source = Some(val.to_string()),
                "id" => id = Some(val.to_string()),
                "target" | "dst" | "destination" => target = Some(val.to_string()),
                "ro" | "readonly" | "rw" | "readwrite" | "sharing" | "mode" | "uid" | "gid"
                | "required" | "env" | "size" | "bind-propagation" => {}
                other => return Err(format!("--mount: unexpected key {other:?} in {value:?}")),
            }
        }
        if !matches!(kind.as_str(), "bind" | "cache" | "tmpfs" | "secret" | "ssh") {
            return Err(format!("--mount: unsupported mount type {kind:?}"));
        }
        if spec.from.is_some() && !matches!(kind.as_str(), "bind" | "cache") {
            return Err(format!("--mount: from= is not allowed for type={kind}"));
        }
        spec.cache = kind == "cache";
        if kind == "ssh" {
            spec.ssh = Some(
                id.clone()
                    .filter(|i| !i.is_empty())
                    .unwrap_or_else(|| "default".into()),
            );
        }
        if kind == "secret" {
            let from_target = target.as_deref().map(|t| {
                let t = t.trim_end_matches('/');
                t.rsplit('/').next().unwrap_or(t).to_string()
            });
            // Empty when neither gives one: refused by the caller once it knows the
            // value is final.
            spec.secret = Some(
                id.filter(|i| !i.is_empty())
                    .or(from_target)
                    .unwrap_or_default(),
            );
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
        // A pod gets the Secrets and ssh keys of every stage it runs: fusing stages
        // that mount different ones would show each to the other's RUN steps.
        let same_secrets = stages[p].secrets == stages[i].secrets && stages[p].ssh == stages[i].ssh;
        if users(&parent, stages) == 1
            && !copied_from
            && same_secrets
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

    /// A pod gets the run cache when one of its stages mounts a cache (fused chains
    /// included), and the ssh ids its stages mount; stages with other ssh ids stay apart.
    #[test]
    fn cache_and_ssh_mounts_are_recorded_for_their_pods() {
        let p = plan(
            "FROM a AS deps
RUN --mount=type=cache,target=/root/.cache true
             FROM deps AS build
RUN --mount=type=ssh true
RUN --mount=type=ssh,id=github true
             FROM b
RUN true
COPY --from=build /out /out
",
            &PlanOptions::default(),
        )
        .expect("plan");
        assert!(stage(&p, "deps").run_cache && !stage(&p, "build").run_cache);
        assert_eq!(stage(&p, "build").ssh, ["default", "github"]);
        assert!(stage(&p, "deps").ssh.is_empty());
        assert!(matches!(stage(&p, "deps").execution, Execution::Pod { .. }));
        let summary = p.summary(None, None);
        let pod = |id: &str| summary.pods.iter().find(|pod| pod.id == id).expect(id);
        assert!(pod("deps").run_cache && !pod("stage-2").run_cache);
        assert_eq!(pod("build").ssh, ["default", "github"]);

        // Fused: the pod of the chain gets the cache its first stage mounts.
        let fused = plan(
            "FROM a AS deps
RUN --mount=type=cache,target=/c true
FROM deps
RUN true
",
            &PlanOptions::default(),
        )
        .expect("plan");
        let summary = fused.summary(None, None);
        assert_eq!(summary.pods.len(), 1, "{summary:?}");
        assert!(summary.pods[0].run_cache);
        assert_eq!(
            error_of("FROM a\nRUN --mount=type=ssh,id=$FROM_BASE true\n"),
            "Dockerfile:2: --mount=type=ssh: the id in \"type=ssh,id=$FROM_BASE\" must not depend on the base image's environment"
        );
    }

    #[test]
    fn secret_mounts_are_recorded_by_id_and_keep_stages_apart() {
        let p = plan(
            "FROM a AS deps\nARG TOKEN_ID=npm\nRUN --mount=type=secret,id=$TOKEN_ID true\n\
             RUN --mount=type=secret,target=/root/.netrc true\n\
             FROM deps AS build\nRUN make\n\
             FROM b\nRUN --mount=type=secret,id=npm,env=NPM_TOKEN true\n\
             COPY --from=build /out /out\n",
            &PlanOptions::default(),
        )
        .expect("plan");
        assert_eq!(stage(&p, "deps").secrets, [".netrc", "npm"]);
        assert!(stage(&p, "build").secrets.is_empty());
        assert_eq!(stage(&p, "stage-2").secrets, ["npm"]);
        // `deps` mounts secrets that `build` does not: each keeps its own pod.
        assert!(matches!(stage(&p, "deps").execution, Execution::Pod { .. }));
        let summary = p.summary(None, None);
        let pod = |id: &str| summary.pods.iter().find(|pod| pod.id == id).expect(id);
        assert_eq!(pod("deps").secrets, [".netrc", "npm"]);
        assert!(pod("build").secrets.is_empty());

        let same = plan(
            "FROM a AS deps\nRUN --mount=type=secret,id=npm true\n\
             FROM deps\nRUN --mount=type=secret,id=npm true\n",
            &PlanOptions::default(),
        )
        .expect("plan");
        assert!(matches!(
            stage(&same, "deps").execution,
            Execution::Fused { .. }
        ));

        for (src, want) in [
            (
                "FROM a\nRUN --mount=type=secret,id=$FROM_BASE true\n",
                "Dockerfile:2: --mount=type=secret: the secret id in \"type=secret,id=$FROM_BASE\" must not depend on the base image's environment",
            ),
            (
                "FROM a\nRUN --mount=type=secret true\n",
                "Dockerfile:2: --mount=type=secret: id or target is required",
            ),
            (
                "FROM a\nRUN --mount=type=secret,from=x,id=y true\n",
                "Dockerfile:2: --mount: from= is not allowed for type=secret",
            ),
        ] {
            let got = error_of(src);
            assert!(got.starts_with(want), "{src:?}\n got: {got}\nwant: {want}");
        }
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

    /// Every hostile input class fails at its line, naming the limit, instead of
    /// growing until the pod is killed. Each case would need gigabytes unbounded.
    #[test]
    fn hostile_dockerfiles_fail_at_their_line_against_a_limit() {
        let doubling: String = std::iter::once("ARG A0=x\n".to_string())
            .chain((0..30).map(|n| format!("ARG A{}=${{A{n}}}${{A{n}}}\n", n + 1)))
            .chain(std::iter::once("FROM busybox:${A30}\n".to_string()))
            .collect();
        // Lines are bounded too, so a large value is built from a quarter of it.
        let half_mib = format!(
            "FROM scratch\nENV Q={}\nENV A=$Q$Q$Q$Q\n",
            "x".repeat(128 << 10)
        );
        let many_envs = format!("{half_mib}{}", "ENV C=${A}\n".repeat(40));
        let stages = "FROM scratch\n".repeat(STAGES + 1);
        let long_line = format!(
            "FROM scratch\nRUN {}\n",
            "echo \\\n".repeat(limits::LINE_BYTES / 5 + 1)
        );
        let long_heredoc = format!(
            "FROM scratch\nRUN <<EOF\n{}EOF\n",
            "x\n".repeat(limits::HEREDOC_BYTES / 2 + 1)
        );
        let cases: Vec<(String, &str)> = vec![
            // The doubling chain is refused where a value outgrows one word (2^21 bytes).
            (
                doubling,
                "Dockerfile:22: the word expands to more than 1 MiB",
            ),
            (
                format!(
                    "FROM scratch\nENV A={}\nENV B=\"{}\"\n",
                    "y".repeat(4096),
                    "$A".repeat(300)
                ),
                "Dockerfile:3: the word expands to more than 1 MiB",
            ),
            (
                format!(
                    "FROM scratch\nENV A={}\nENV B=${{A//?/{}}}\n",
                    "y".repeat(4096),
                    "z".repeat(300)
                ),
                "Dockerfile:3: the word expands to more than 1 MiB",
            ),
            (
                format!(
                    "FROM scratch\nENV A0={}\nENV A=$A0$A0$A0$A0\nENV B=${{A%{}}}\n",
                    "y".repeat(64 << 10),
                    "*y".repeat(8)
                ),
                "Dockerfile:4: a pattern of 16 characters over a value of 262144 characters is past",
            ),
            (
                format!(
                    "{half_mib}{}",
                    (0..8).map(|n| format!("ENV B{n}=$A\n")).collect::<String>()
                ),
                "Dockerfile:10: the ARG and ENV values in scope add up to more than 4 MiB",
            ),
            (
                many_envs,
                "Dockerfile:34: the expansions in this Dockerfile add up to more than 16 MiB",
            ),
            (
                stages,
                "Dockerfile:1001: more than 1000 stages, Stagecoach's limit",
            ),
            (
                format!(
                    "FROM scratch\n{}",
                    (0..=4096)
                        .map(|n| format!("ENV V{n}=1\n"))
                        .collect::<String>()
                ),
                "Dockerfile:4098: more than 4096 ARG and ENV names in scope",
            ),
            (
                format!("FROM scratch\n{}", "RUN true\n".repeat(10_000)),
                "Dockerfile:10001: more than 10000 instructions, Stagecoach's limit",
            ),
            (
                "#".repeat(DOCKERFILE_BYTES + 1),
                "Dockerfile: the Dockerfile is larger than 1 MiB, Stagecoach's limit",
            ),
            (
                long_line,
                "Dockerfile:2: the instruction is longer than 256 KiB",
            ),
            (
                long_heredoc,
                "Dockerfile:2: heredoc \"EOF\" is longer than 256 KiB",
            ),
        ];
        for (src, want) in cases {
            let got = error_of(&src);
            assert!(
                got.contains(want),
                "{:?}...\n got: {got}\nwant: {want}",
                &src[..40.min(src.len())]
            );
        }
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

    fn with_build_args(src: &str, target: Option<&str>, build_args: &[&str]) -> Plan {
        plan(
            src,
            &PlanOptions {
                target: target.map(str::to_string),
                build_args: build_args
                    .iter()
                    .map(|name| (name.to_string(), "1".to_string()))
                    .collect(),
                ..PlanOptions::default()
            },
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn messages(plan: &Plan) -> Vec<&str> {
        plan.warnings.iter().map(|w| w.message.as_str()).collect()
    }

    #[test]
    fn a_missing_target_names_the_nearest_stage_or_the_stages() {
        let three = "FROM a AS build\nRUN x\nFROM b AS test\nRUN y\nFROM c\nRUN z\n";
        let many: String = (0..11).map(|i| format!("FROM a AS s{i}\n")).collect();
        let cases = [
            (
                three,
                "buidl",
                "Dockerfile: target stage \"buidl\" could not be found; did you mean \"build\"?",
            ),
            (
                three,
                "BUIDL",
                "Dockerfile: target stage \"BUIDL\" could not be found; did you mean \"build\"?",
            ),
            (
                three,
                "tset",
                "Dockerfile: target stage \"tset\" could not be found; did you mean \"test\"?",
            ),
            (
                three,
                "release",
                "Dockerfile: target stage \"release\" could not be found; \
                 the named stages are: build, test",
            ),
            (
                "FROM a\nRUN x\nFROM b\n",
                "release",
                "Dockerfile: target stage \"release\" could not be found; \
                 no stage has a name (name one with FROM <image> AS <name>)",
            ),
            (
                many.as_str(),
                "release",
                "Dockerfile: target stage \"release\" could not be found",
            ),
            (
                "FROM a AS x\n",
                "nosuch",
                "Dockerfile: target stage \"nosuch\" could not be found",
            ),
        ];
        for (src, target, want) in cases {
            let err = with_target(src, target).expect_err("no such target");
            assert_eq!(err.to_string(), want, "{src:?} --target {target}");
        }
    }

    #[test]
    fn build_args_no_arg_consumes_are_warned_about() {
        let one = "build arg FOO is not used by any ARG in the stages the target needs; \
                   declare it with ARG FOO in the stage that reads it, or leave it out";
        let two = "build args BAR, FOO are not used by any ARG in the stages the target needs; \
                   declare each with ARG in the stage that reads it, or leave them out";
        /// (what, Dockerfile, target, build args, the warning).
        type Case<'a> = (
            &'a str,
            &'a str,
            Option<&'a str>,
            &'a [&'a str],
            Option<&'a str>,
        );
        let cases: [Case; 11] = [
            (
                "none consumed",
                "FROM a\nRUN x\n",
                None,
                &["FOO", "BAR"],
                Some(two),
            ),
            (
                "one of two",
                "FROM a\nARG BAR\nRUN x\n",
                None,
                &["FOO", "BAR"],
                Some(one),
            ),
            (
                "stage ARG",
                "FROM a\nARG FOO=x\nRUN x\n",
                None,
                &["FOO"],
                None,
            ),
            (
                "global ARG, used by nothing",
                "ARG FOO\nFROM a\nRUN x\n",
                None,
                &["FOO"],
                None,
            ),
            (
                "global ARG in FROM",
                "ARG FOO=a\nFROM $FOO\n",
                None,
                &["FOO"],
                None,
            ),
            (
                "ARG of the FROM parent",
                "FROM a AS base\nARG FOO\nFROM base\nRUN x\n",
                None,
                &["FOO"],
                None,
            ),
            (
                "ARG of a stage read with --from",
                "FROM a AS tools\nARG FOO\nRUN x\nFROM b\nCOPY --from=tools /x /\n",
                None,
                &["FOO"],
                None,
            ),
            (
                "ARG only in a pruned stage",
                "FROM a AS other\nARG FOO\nFROM b AS app\nRUN x\n",
                Some("app"),
                &["FOO"],
                Some(one),
            ),
            (
                "names are case-sensitive",
                "FROM a\nARG foo\n",
                None,
                &["FOO"],
                Some(one),
            ),
            (
                "automatic args",
                "FROM a\nRUN x\n",
                None,
                &[
                    "TARGETPLATFORM",
                    "TARGETOS",
                    "TARGETARCH",
                    "TARGETVARIANT",
                    "BUILDPLATFORM",
                    "BUILDOS",
                    "BUILDARCH",
                    "BUILDVARIANT",
                    "TARGETSTAGE",
                ],
                None,
            ),
            ("no build args", "FROM a\nRUN x\n", None, &[], None),
        ];
        for (what, src, target, build_args, want) in cases {
            let p = with_build_args(src, target, build_args);
            let got: Vec<&Warning> = p
                .warnings
                .iter()
                .filter(|w| w.kind == WarningKind::BuildArgUnused)
                .collect();
            assert_eq!(got.len(), usize::from(want.is_some()), "{what}: {got:?}");
            if let (Some(w), Some(want)) = (got.first(), want) {
                assert_eq!(w.message, want, "{what}");
                assert_eq!(w.line, None, "{what}");
            }
        }
    }

    #[test]
    fn images_named_almost_like_a_stage_are_warned_about() {
        let build = "FROM busybox AS build\nRUN x\n";
        let warned = |line: usize, written: &str, image: &str| {
            format!(
                "Dockerfile:{line}: {written} names no stage, so it is pulled as the image \
                 docker.io/library/{image}; did you mean the stage \"build\"?"
            )
        };
        let cases: [(&str, String, Option<String>); 14] = [
            (
                "COPY --from",
                format!("{build}FROM scratch\nCOPY --from=buidler /x /\n"),
                Some(warned(4, "--from=buidler", "buidler:latest")),
            ),
            (
                "COPY --from, expanded",
                format!("{build}FROM scratch\nARG S=buidl\nCOPY --from=$S /x /\n"),
                Some(warned(5, "--from=buidl", "buidl:latest")),
            ),
            (
                "RUN --mount=from",
                format!("{build}FROM busybox\nRUN --mount=from=biuld,source=/x,target=/y true\n"),
                Some(warned(4, "--mount=from=biuld", "biuld:latest")),
            ),
            (
                "FROM",
                format!("{build}FROM buidl\nRUN y\n"),
                Some(warned(3, "FROM buidl", "buidl:latest")),
            ),
            (
                "a tag",
                format!("{build}FROM scratch\nCOPY --from=buidl:1 /x /\n"),
                None,
            ),
            (
                "a path",
                format!("{build}FROM scratch\nCOPY --from=x/buidl /x /\n"),
                None,
            ),
            (
                "a path in FROM",
                format!("{build}FROM x/build\nRUN y\n"),
                None,
            ),
            (
                "a digest",
                format!(
                    "{build}FROM scratch\nCOPY --from=buidl@sha256:{} /x /\n",
                    "a".repeat(64)
                ),
                None,
            ),
            (
                "not close",
                format!("{build}FROM scratch\nCOPY --from=golang /x /\n"),
                None,
            ),
            (
                "the stage itself",
                format!("{build}FROM scratch\nCOPY --from=build /x /\n"),
                None,
            ),
            (
                "close only to the reading stage",
                "FROM busybox AS build\nCOPY --from=buidl /x /\n".to_string(),
                None,
            ),
            (
                "FROM sees only earlier stages",
                "FROM buidl AS first\nRUN x\nFROM busybox AS build\nCOPY --from=first /x /\n"
                    .to_string(),
                None,
            ),
            (
                "in a stage the target does not need",
                format!("{build}FROM scratch AS other\nCOPY --from=buidl /x /\nFROM build\n"),
                None,
            ),
            (
                "scratch",
                "FROM busybox AS scratc\nFROM scratch\n".to_string(),
                None,
            ),
        ];
        for (what, src, want) in cases {
            let p = plan_of(&src);
            assert_eq!(messages(&p), want.as_slice(), "{what}");
            assert!(
                p.warnings
                    .iter()
                    .all(|w| w.kind == WarningKind::FromLooksLikeStage
                        && w.line
                            .is_some_and(|l| w.message.starts_with(&format!("Dockerfile:{l}: ")))),
                "{what}: {:?}",
                p.warnings
            );
        }
    }

    #[test]
    fn warnings_come_in_line_order_then_the_build_args() {
        let p = with_build_args(
            "FROM busybox AS build\nRUN x\nFROM scratch\nCOPY --from=buidl /b /\n\
             COPY --from=biuld /a /\n",
            None,
            &["FOO"],
        );
        let kinds: Vec<(&str, Option<usize>)> = p
            .warnings
            .iter()
            .map(|w| (w.kind.as_str(), w.line))
            .collect();
        assert_eq!(
            kinds,
            [
                ("FromLooksLikeStage", Some(4)),
                ("FromLooksLikeStage", Some(5)),
                ("BuildArgUnused", None)
            ]
        );
        let text = p.to_text();
        assert!(
            text.ends_with(&format!(
                "warnings:\n  {}\n  {}\n  {}\n",
                p.warnings[0], p.warnings[1], p.warnings[2]
            )),
            "{text}"
        );
        assert!(!plan_of("FROM a\n").to_text().contains("warnings"));
    }

    #[test]
    fn warnings_round_trip_through_json() {
        let p = with_build_args(
            "FROM busybox AS build\nRUN x\nFROM scratch\nCOPY --from=buidl /b /\n",
            None,
            &["FOO"],
        );
        assert_eq!(p.warnings.len(), 2);
        let json = p.to_json();
        assert!(json.contains("\"kind\": \"FromLooksLikeStage\""), "{json}");
        assert!(json.contains("\"line\": 4"), "{json}");
        assert_eq!(Plan::from_json(&json).expect("reads"), p);

        let summary = p.summary(Some("abc".into()), Some(1));
        assert_eq!(summary.warnings, p.warnings);
        let outcome = crate::contract::PodOutcome {
            succeeded: true,
            summary: Some(summary.clone()),
            ..Default::default()
        };
        let message = outcome.to_message().expect("fits");
        assert_eq!(
            crate::contract::PodOutcome::from_message(&message).expect("reads"),
            outcome
        );

        // Written before warnings existed: no field, nothing lost.
        let quiet = plan_of("FROM busybox\nRUN x\n");
        assert!(!quiet.to_json().contains("warnings"));
        let summary_json = serde_json::to_string(&quiet.summary(None, None)).expect("json");
        assert!(!summary_json.contains("warnings"), "{summary_json}");

        // A kind from a newer writer is kept, not refused.
        let newer = json.replace("\"FromLooksLikeStage\"", "\"SomethingNew\"");
        let read = Plan::from_json(&newer).expect("reads a newer kind");
        assert_eq!(
            read.warnings[0].kind,
            WarningKind::Other("SomethingNew".into())
        );
        assert_eq!(Plan::from_json(&read.to_json()).expect("reads"), read);
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
