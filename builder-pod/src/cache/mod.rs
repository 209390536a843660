//! The stage cache: whole stages, content-addressed, in a registry, so any pod on any
//! node shares one cache and a stage found there needs no pod at all.
//!
//! The source pod keys every stage ([`key`]), looks each key up and restores onto the
//! workspace what the stages that still run (and the assemble pod) read from the stages
//! found ([`prepare`]). The assemble pod, which holds push credentials and where no RUN
//! ever ran, stores the stages this build ran ([`store`]). A missing, corrupt or
//! unreachable entry only means the stage runs: the cache never fails a build.

pub mod entry;
pub mod key;
pub mod prune;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use stagecoach_plan::contract::{Base, Execution, Plan, Stage, StageCache, Warning, WarningKind};

use crate::exec;
use crate::fs::filetree::FileTree;
use crate::image_config::ImageConfig;
use crate::oci::{self, Reference, Registry};
use crate::workspace::{self, Workspace};

/// Who may use the cache (`spec.cache.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Look stages up and store the ones that ran.
    ReadWrite,
    /// Look stages up, store nothing.
    ReadOnly,
}

/// Where the build's cache lives and what it may do there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The repository of the entries (`registry/team/app/cache`).
    pub repository: String,
    pub mode: Mode,
}

/// What the source pod found: the plan's stages are marked (key, hit or why uncached).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prepared {
    pub hits: Vec<String>,
    pub misses: Vec<String>,
}

/// Keys the plan's stages, looks them up, restores what the build reads from the hits
/// (of the stages several platforms share, as `shared` says), and records all of it in
/// `plan` (`stage.cache`). What goes wrong with the cache
/// becomes a warning in the plan and the build goes on without it.
pub fn prepare(
    plan: &mut Plan,
    ws: &Workspace,
    context: &Path,
    registry: &oci::Settings,
    cache: &Settings,
    shared: Shared,
) -> Prepared {
    let warn = |plan: &mut Plan, message: String| {
        plan.warnings.push(Warning {
            kind: WarningKind::CacheUnavailable,
            message,
            line: None,
        });
    };
    let keys = match stage_keys(plan, ws, context) {
        Ok(keys) => keys,
        Err(message) => {
            warn(plan, format!("the stage cache is not used: {message}"));
            return Prepared::default();
        }
    };
    for stage in &mut plan.stages {
        stage.cache = keys.get(&stage.id).map(|keyed| StageCache {
            key: keyed.as_ref().ok().cloned(),
            hit: false,
            uncacheable: keyed.as_ref().err().cloned(),
        });
    }
    let (skipped, warnings) = match oci::runtime() {
        Ok(runtime) => runtime.block_on(look_up_and_restore(plan, ws, registry, cache, shared)),
        Err(e) => (BTreeSet::new(), vec![crate::error::chain(&e)]),
    };
    for message in warnings {
        warn(plan, message);
    }
    let mut prepared = Prepared::default();
    for stage in &mut plan.stages {
        let in_a_pod = runs_in_a_pod(stage);
        if let Some(c) = &mut stage.cache {
            c.hit = skipped.contains(&stage.id);
            if c.key.is_some() && in_a_pod {
                match c.hit {
                    true => prepared.hits.push(stage.id.clone()),
                    false => prepared.misses.push(stage.id.clone()),
                }
            }
        }
    }
    prepared
}

/// Every stage's key (or why it has none); the target assembled without a pod is
/// built anew each time (it only copies), so it has none.
fn stage_keys(
    plan: &Plan,
    ws: &Workspace,
    context: &Path,
) -> Result<BTreeMap<String, key::Keyed>, String> {
    let tree = FileTree::from_checkout(context).map_err(|e| crate::error::chain(&e))?;
    let base_config = |stage: &Stage| -> Result<Option<ImageConfig>, String> {
        if !matches!(stage.base, Base::Image { .. }) {
            return Ok(None);
        }
        match workspace::read_json(&ws.base_config(&stage.id)) {
            Ok(config) => Ok(Some(config)),
            Err(e) => Err(format!("the config of its base image: {e}")),
        }
    };
    let mut keyer = key::Keyer::new(plan, &tree, &base_config);
    Ok(plan
        .stages
        .iter()
        .filter(|s| s.execution != Execution::Assemble)
        .map(|s| (s.id.clone(), keyer.key(&s.id)))
        .collect())
}

fn runs_in_a_pod(stage: &Stage) -> bool {
    matches!(
        stage.execution,
        Execution::Pod { .. } | Execution::Fused { .. }
    )
}

/// Finds the entries of the keyed stages, decides which pods are not needed, and
/// restores what the rest of the build reads from them. An entry that cannot be
/// restored is dropped and the decision made again, so its stage simply runs.
async fn look_up_and_restore(
    plan: &Plan,
    ws: &Workspace,
    settings: &oci::Settings,
    cache: &Settings,
    shared: Shared<'_>,
) -> (BTreeSet<String>, Vec<String>) {
    let mut warnings = Vec::new();
    let registry = match Registry::new(settings) {
        Ok(r) => r,
        Err(e) => return (BTreeSet::new(), vec![crate::error::chain(&e)]),
    };
    let keyed: Vec<(&str, &str)> = plan
        .stages
        .iter()
        .filter(|s| runs_in_a_pod(s))
        .filter_map(|s| Some((s.id.as_str(), s.cache.as_ref()?.key.as_deref()?)))
        .collect();
    let lookups = keyed.iter().map(|(id, key)| {
        let registry = &registry;
        async move { (*id, entry::find(registry, &cache.repository, key).await) }
    });
    let mut entries = BTreeMap::new();
    for (id, found) in futures::future::join_all(lookups).await {
        match found {
            Ok(Some(entry)) => {
                entries.insert(id.to_string(), entry);
            }
            Ok(None) => {}
            Err(e) => {
                let message = format!(
                    "stage cache {}: {}; the build goes on without it",
                    cache.repository,
                    crate::error::chain(&e)
                );
                if !warnings.contains(&message) {
                    warnings.push(message);
                }
            }
        }
    }
    let mut restored: BTreeMap<String, Need> = BTreeMap::new();
    loop {
        let skipped = skipped_pods(plan, &entries);
        let mut failed = false;
        for (id, need) in restores(plan, &skipped, shared) {
            let done = restored.get(&id).copied().unwrap_or_default();
            let filesystem = need.filesystem && !done.filesystem;
            let export = need.export && !done.export;
            if !filesystem && !export {
                continue;
            }
            let entry = &entries[&id];
            match entry.restore(&registry, ws, &id, filesystem, export).await {
                Ok(()) => {
                    let done = restored.entry(id).or_default();
                    done.filesystem |= filesystem;
                    done.export |= export;
                }
                Err(e) => {
                    warnings.push(format!(
                        "stage {id}: its cache entry cannot be used ({}); it runs",
                        crate::error::chain(&e)
                    ));
                    entries.remove(&id);
                    restored.remove(&id);
                    failed = true;
                }
            }
        }
        if !failed {
            return (skipped, warnings);
        }
    }
}

/// The stages nothing needs to run: each pod's own stage found in the cache, with
/// every stage it builds FROM found too (a stage pod lays its ancestors' layers down
/// first). Their fused ancestors do not run either.
fn skipped_pods(plan: &Plan, entries: &BTreeMap<String, entry::Entry>) -> BTreeSet<String> {
    let available = |id: &str| -> bool {
        let Ok(chain) = exec::from_chain(plan, id) else {
            return false;
        };
        chain.iter().all(|s| {
            entries.contains_key(s)
                || plan
                    .stage(s)
                    .is_some_and(|s| s.execution == Execution::Nothing)
        })
    };
    let mut skipped = BTreeSet::new();
    for stage in &plan.stages {
        if let Execution::Pod { runs } = &stage.execution
            && available(&stage.id)
        {
            skipped.insert(stage.id.clone());
            skipped.extend(runs.iter().cloned());
        }
    }
    skipped
}

/// What a stage found in the cache must put on the workspace.
#[derive(Debug, Clone, Copy, Default)]
struct Need {
    /// Layers, config and scope: a stage that runs builds FROM it, or it is the target.
    filesystem: bool,
    /// Its export: a stage that runs copies or mounts from it.
    export: bool,
}

/// In a build for several platforms, what a part of the workspace does with the stages
/// the platforms share (run once, in the first platform's part).
#[derive(Debug, Clone, Copy)]
pub enum Shared<'a> {
    /// A build for one platform.
    None,
    /// The first part holds them for all: found in the cache, they are restored whole.
    Holds(&'a BTreeSet<String>),
    /// Another part reads them through links to the first: nothing of them is restored.
    Elsewhere(&'a BTreeSet<String>),
}

/// The restores the stages that still run need from the skipped ones; the shared
/// stages as `shared` says.
fn restores(plan: &Plan, skipped: &BTreeSet<String>, shared: Shared) -> BTreeMap<String, Need> {
    let mut needs: BTreeMap<String, Need> = BTreeMap::new();
    let filesystem_of = |id: &str, needs: &mut BTreeMap<String, Need>| {
        for s in exec::from_chain(plan, id).unwrap_or_default() {
            if skipped.contains(&s) && plan.stage(&s).is_some_and(runs_in_a_pod) {
                needs.entry(s).or_default().filesystem = true;
            }
        }
    };
    let running = plan.stages.iter().filter(|s| {
        !skipped.contains(&s.id) && (runs_in_a_pod(s) || s.execution == Execution::Assemble)
    });
    for stage in running {
        let base = match &stage.base {
            Base::Stage { id } => Some(id.as_str()),
            _ => None,
        };
        for dep in &stage.depends_on {
            if !skipped.contains(dep) {
                continue;
            }
            if Some(dep.as_str()) == base {
                filesystem_of(dep, &mut needs);
            } else {
                needs.entry(dep.clone()).or_default().export = true;
            }
        }
    }
    if skipped.contains(&plan.target) {
        filesystem_of(&plan.target, &mut needs);
    }
    match shared {
        Shared::None => {}
        Shared::Holds(whole) => {
            for id in whole.iter().filter(|id| skipped.contains(*id)) {
                if plan.stage(id).is_some_and(runs_in_a_pod) {
                    filesystem_of(id, &mut needs);
                    needs.entry(id.clone()).or_default().export = true;
                }
            }
        }
        Shared::Elsewhere(linked) => needs.retain(|id, _| !linked.contains(id)),
    }
    needs
}

/// What [`store`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stored {
    /// Stages stored as entries.
    pub stages: Vec<String>,
    /// Stages that could not be, said for people.
    pub warnings: Vec<String>,
}

/// Stores every stage this build ran that has a key (after a failure: those that
/// succeeded). Layers already in `image`'s repository are mounted from there. Failures
/// are warnings: the image is pushed, and the stage runs again next time.
pub async fn store(
    plan: &Plan,
    ws: &Workspace,
    registry: &Registry,
    cache: &Settings,
    image: &Reference,
) -> Stored {
    let ran = plan.stages.iter().filter(|s| {
        runs_in_a_pod(s)
            && s.cache.as_ref().is_some_and(|c| c.key.is_some() && !c.hit)
            && ws.config(&s.id).is_file()
            && ws.layer_index(&s.id).is_file()
    });
    let stores = ran.map(|stage| async move {
        let key = stage
            .cache
            .as_ref()
            .and_then(|c| c.key.as_deref())
            .unwrap_or_default();
        let result = entry::store(registry, &cache.repository, key, ws, &stage.id, image).await;
        (stage.id.as_str(), result)
    });
    let mut stored = Stored::default();
    for (id, result) in futures::future::join_all(stores).await {
        match result {
            Ok(_) => stored.stages.push(id.to_string()),
            Err(e) => stored.warnings.push(format!(
                "stage {id} was not stored in the stage cache {}: {}",
                cache.repository,
                crate::error::chain(&e)
            )),
        }
    }
    stored
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_stages_found_are_restored_whole_for_the_other_platforms() {
        let plan = stagecoach_plan::plan(
            "FROM --platform=$BUILDPLATFORM busybox AS assets\nRUN make\n\
             FROM busybox AS app\nCOPY --from=assets /a /a\nRUN true\n",
            &stagecoach_plan::PlanOptions::default(),
        )
        .expect("plans");
        let all: BTreeSet<String> = ["assets", "app"].map(String::from).into();
        // Everything found: this platform needs only its target, not what it copied.
        let needs = restores(&plan, &all, Shared::None);
        assert!(!needs.contains_key("assets"), "{needs:?}");
        // The first platform's part holds the shared stage for the others: whole.
        let shared: BTreeSet<String> = ["assets".to_string()].into();
        let needs = restores(&plan, &all, Shared::Holds(&shared));
        let assets = needs["assets"];
        assert!(assets.filesystem && assets.export, "{needs:?}");
        // Another part reads it through a link: it restores none of it, even when its
        // own stages that copy from it run.
        let only_assets: BTreeSet<String> = shared.clone();
        assert!(restores(&plan, &only_assets, Shared::Elsewhere(&shared)).is_empty());
        assert!(restores(&plan, &only_assets, Shared::None).contains_key("assets"));
    }
}
