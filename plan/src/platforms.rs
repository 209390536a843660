//! Planning one Dockerfile for several target platforms at once.
//!
//! Each platform gets its plan, with BuildKit's values: `TARGETPLATFORM` and its parts
//! are that platform's, `BUILDPLATFORM` and its parts the platform the build runs on
//! (one for all). A pod is **shared** (runs once, for every platform) when each stage it
//! runs is planned the same for every platform and nothing it starts from or reads
//! differs: its base is `scratch`, a shared stage, or an image with an explicit `FROM
//! --platform` (a cross-compiler on `$BUILDPLATFORM`); an image without one is resolved
//! to each platform's manifest, so its stage fans out, and so does every stage that
//! reads a platform's result. The rest run once per platform.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::contract::{Base, Execution, Plan, PlanSummary, Platform, Stage, Warning, platform_pod};
use crate::instruction::Kind;
use crate::planner::{PlanError, PlanOptions, plan};

/// The plans of every target platform and which of their pods run once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlatformPlans {
    pub build_platform: Platform,
    /// One plan per target platform, in the order asked for.
    pub plans: Vec<Plan>,
    /// Pods (by the id of the stage each is named after) that run once for every
    /// platform, on the build platform unless their `FROM --platform` says another.
    pub shared_pods: BTreeSet<String>,
}

/// Plans `dockerfile` for each of `platforms` (at least one; duplicates are refused)
/// with `options.build_platform` (default: the first platform) as `BUILDPLATFORM`.
pub fn plan_platforms(
    dockerfile: &str,
    options: &PlanOptions,
    platforms: &[Platform],
) -> Result<PlatformPlans, PlanError> {
    let refuse = |message: String| PlanError {
        file: options.dockerfile_name.clone(),
        line: None,
        message,
    };
    let Some(first) = platforms.first() else {
        return Err(refuse("no target platform".into()));
    };
    if platforms.len() > crate::limits::PLATFORMS {
        return Err(refuse(format!(
            "{} target platforms: at most {} (limit)",
            platforms.len(),
            crate::limits::PLATFORMS
        )));
    }
    for (i, p) in platforms.iter().enumerate() {
        if platforms[..i].contains(p) {
            return Err(refuse(format!("the platform {p} is asked for twice")));
        }
    }
    let build_platform = options
        .build_platform
        .clone()
        .unwrap_or_else(|| first.clone());
    let plans = platforms
        .iter()
        .map(|platform| {
            plan(
                dockerfile,
                &PlanOptions {
                    platform: platform.clone(),
                    build_platform: Some(build_platform.clone()),
                    ..options.clone()
                },
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let shared_pods = shared_pods(&plans);
    Ok(PlatformPlans {
        build_platform,
        plans,
        shared_pods,
    })
}

/// The stages planned alike for every platform whose inputs are alike too, then the
/// pods all of whose stages are such.
fn shared_pods(plans: &[Plan]) -> BTreeSet<String> {
    let first = &plans[0];
    // A stage's ARGs take their values from the global scope when the stage pod runs:
    // one that declares TARGETARCH (or a global derived from it) differs per platform.
    let global = |plan: &Plan, name: &str| {
        plan.global_args
            .iter()
            .rev()
            .find(|v| v.name == name)
            .map(|v| v.value.clone())
    };
    let alike = |stage: &Stage| {
        let args_alike = declared_args(stage).all(|name| {
            plans[1..]
                .iter()
                .all(|p| global(p, name) == global(first, name))
        });
        args_alike && plans[1..].iter().all(|p| p.stage(&stage.id) == Some(stage))
    };
    let mut shared: BTreeSet<&str> = first
        .stages
        .iter()
        .filter(|s| alike(s) && s.execution != Execution::Assemble)
        .filter(|s| match &s.base {
            Base::Image { .. } => s.platform.is_some(),
            Base::Scratch | Base::Stage { .. } => true,
        })
        .map(|s| s.id.as_str())
        .collect();
    // A stage that starts from or reads a platform's result is a platform's too.
    loop {
        let fanned: Vec<&str> = shared
            .iter()
            .copied()
            .filter(|id| {
                let stage = first.stage(id).expect("a stage of the plan");
                let base_shared = match &stage.base {
                    Base::Stage { id } => shared.contains(id.as_str()),
                    _ => true,
                };
                !base_shared
                    || stage
                        .depends_on
                        .iter()
                        .any(|d| !shared.contains(d.as_str()))
            })
            .collect();
        if fanned.is_empty() {
            break;
        }
        for id in fanned {
            shared.remove(id);
        }
    }
    first
        .stages
        .iter()
        .filter_map(|s| match &s.execution {
            Execution::Pod { runs } if runs.iter().all(|r| shared.contains(r.as_str())) => {
                Some(s.id.clone())
            }
            _ => None,
        })
        .collect()
}

/// The names a stage's ARG instructions declare.
fn declared_args(stage: &Stage) -> impl Iterator<Item = &str> {
    stage.instructions.iter().flat_map(|inst| match &inst.kind {
        Kind::Arg { args } => args.iter().map(|decl| decl.name.as_str()).collect(),
        _ => Vec::new(),
    })
}

/// `platforms.json` at the workspace root of a build for several platforms (see
/// [`crate::layout::PLATFORMS`]), for the pods that read every platform's part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlatformsFile {
    pub version: String,
    pub build_platform: Platform,
    /// The target platforms in the order asked for: the image index lists them so.
    pub platforms: Vec<Platform>,
    /// Stages run once, by the shared pods, in the first platform's part; the other
    /// platforms read them there.
    pub shared_stages: BTreeSet<String>,
}

impl PlatformPlans {
    /// The id of a pod in the build's summary: a pod every platform shares keeps its
    /// stage's id, the others are [`platform_pod`]'s.
    pub fn pod_id(&self, pod: &str, platform: &Platform) -> String {
        match self.shared_pods.contains(pod) {
            true => pod.to_string(),
            false => platform_pod(pod, platform),
        }
    }

    /// The stages the shared pods run.
    pub fn shared_stages(&self) -> BTreeSet<String> {
        self.plans[0]
            .stages
            .iter()
            .filter(|s| self.shared_pods.contains(&s.id))
            .flat_map(|s| match &s.execution {
                Execution::Pod { runs } => runs.clone(),
                _ => Vec::new(),
            })
            .collect()
    }

    pub fn file(&self) -> PlatformsFile {
        PlatformsFile {
            version: crate::PLAN_VERSION.to_string(),
            build_platform: self.build_platform.clone(),
            platforms: self.plans.iter().map(|p| p.platform.clone()).collect(),
            shared_stages: self.shared_stages(),
        }
    }

    /// One summary for the operator: the shared pods once, the others once per
    /// platform, each waiting for its own platform's pods (or the shared ones).
    pub fn summary(&self, commit: Option<String>, commit_time: Option<i64>) -> PlanSummary {
        let mut pods = Vec::new();
        let mut warnings: Vec<Warning> = Vec::new();
        for (i, plan) in self.plans.iter().enumerate() {
            let summary = plan.summary(commit.clone(), commit_time);
            for mut pod in summary.pods {
                let shared = self.shared_pods.contains(&pod.id);
                if shared && i > 0 {
                    continue;
                }
                for wait in &mut pod.waits_for {
                    *wait = self.pod_id(wait, &plan.platform);
                }
                pod.id = self.pod_id(&pod.id, &plan.platform);
                pod.platform = (!shared).then(|| plan.platform.to_string());
                pods.push(pod);
            }
            for warning in summary.warnings {
                if !warnings.contains(&warning) {
                    warnings.push(warning);
                }
            }
        }
        PlanSummary {
            commit,
            commit_time,
            target: self.plans[0].target.clone(),
            pods,
            warnings,
        }
    }

    /// What runs where, for people: each pod once or per platform.
    pub fn to_text(&self) -> String {
        let platforms: Vec<String> = self.plans.iter().map(|p| p.platform.to_string()).collect();
        let first = &self.plans[0];
        let mut out = format!(
            "plan for {} (target {}) on {} platforms: {}; build platform {}\n",
            first.dockerfile,
            first.target,
            platforms.len(),
            platforms.join(", "),
            self.build_platform
        );
        let mut pods = 0;
        for stage in &first.stages {
            let Execution::Pod { runs } = &stage.execution else {
                continue;
            };
            let what = if runs.len() > 1 {
                format!("pod {} (runs {})", stage.id, runs.join(" → "))
            } else {
                format!("pod {}", stage.id)
            };
            if self.shared_pods.contains(&stage.id) {
                let on = first
                    .runs_on(&stage.id)
                    .unwrap_or_else(|| self.build_platform.clone());
                out.push_str(&format!("  {what:<40} once, on {on} (shared)\n"));
                pods += 1;
            } else {
                out.push_str(&format!(
                    "  {what:<40} per platform ({})\n",
                    platforms.join(", ")
                ));
                pods += platforms.len();
            }
        }
        let alone: usize = self.plans.iter().map(|p| p.pod_stages().count()).sum();
        out.push_str(&format!(
            "stage pods: {pods} (a whole build per platform: {alone}); one image per platform, then an index\n"
        ));
        out
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("plans serialise")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn platforms() -> Vec<Platform> {
        ["linux/amd64", "linux/arm64"]
            .iter()
            .map(|p| p.parse().expect("platform"))
            .collect()
    }

    fn shared(dockerfile: &str) -> Vec<String> {
        plan_platforms(dockerfile, &PlanOptions::default(), &platforms())
            .expect("plans")
            .shared_pods
            .into_iter()
            .collect()
    }

    #[test]
    fn build_platform_stages_run_once_unless_they_read_a_target_value() {
        let dockerfile = "FROM --platform=$BUILDPLATFORM node:20 AS assets\n\
                          COPY web/ /web\nRUN make -C /web\n\
                          FROM --platform=$BUILDPLATFORM golang:1.23 AS build\n\
                          ARG TARGETOS TARGETARCH\n\
                          RUN GOOS=$TARGETOS GOARCH=$TARGETARCH go build -o /out/app\n\
                          FROM alpine:3.20\nRUN apk add ca-certificates\n\
                          COPY --from=assets /web/dist /srv\nCOPY --from=build /out/app /app\n";
        assert_eq!(shared(dockerfile), ["assets"]);
        let plans =
            plan_platforms(dockerfile, &PlanOptions::default(), &platforms()).expect("plans");
        let text = plans.to_text();
        assert!(
            text.contains("pod assets") && text.contains("once, on linux/amd64"),
            "{text}"
        );
        assert!(
            text.contains("stage pods: 5 (a whole build per platform: 6)"),
            "{text}"
        );
        // TARGETARCH is each platform's, BUILDARCH the build platform's for both.
        let value = |i: usize, name: &str| {
            let plan = &plans.plans[i];
            plan.global_args
                .iter()
                .find(|v| v.name == name)
                .map(|v| v.value.clone())
        };
        assert_eq!(value(0, "TARGETARCH").as_deref(), Some("amd64"));
        assert_eq!(value(1, "TARGETARCH").as_deref(), Some("arm64"));
        assert_eq!(value(1, "TARGETPLATFORM").as_deref(), Some("linux/arm64"));
        assert_eq!(value(1, "BUILDARCH").as_deref(), Some("amd64"));
    }

    #[test]
    fn the_summary_runs_shared_pods_once_and_the_others_per_platform_waiting_for_their_own() {
        let dockerfile = "FROM --platform=$BUILDPLATFORM busybox AS assets\nRUN echo a > /a\n\
                          FROM --platform=$BUILDPLATFORM busybox AS build\nARG TARGETARCH\n\
                          RUN echo $TARGETARCH > /b\n\
                          FROM busybox\nCOPY --from=assets /a /a\nCOPY --from=build /b /b\n\
                          RUN cat /a /b\n";
        let plans =
            plan_platforms(dockerfile, &PlanOptions::default(), &platforms()).expect("plans");
        let summary = plans.summary(None, None);
        type Pod<'a> = (&'a str, Option<&'a str>, Option<&'a str>, Vec<&'a str>);
        let pods: Vec<Pod> = summary
            .pods
            .iter()
            .map(|p| {
                (
                    p.id.as_str(),
                    p.platform.as_deref(),
                    p.runs_on.as_deref(),
                    p.waits_for.iter().map(String::as_str).collect(),
                )
            })
            .collect();
        let amd = Some("linux/amd64");
        let arm = Some("linux/arm64");
        assert_eq!(
            pods,
            [
                ("assets", None, amd, vec![]),
                ("build@linux/amd64", amd, amd, vec![]),
                (
                    "stage-2@linux/amd64",
                    amd,
                    amd,
                    vec!["assets", "build@linux/amd64"]
                ),
                // The cross-compiler fans out (it reads TARGETARCH) but runs on the build
                // platform; the last stage runs on each platform's busybox.
                ("build@linux/arm64", arm, amd, vec![]),
                (
                    "stage-2@linux/arm64",
                    arm,
                    arm,
                    vec!["assets", "build@linux/arm64"]
                ),
            ]
        );
        let file = plans.file();
        assert_eq!(
            file.shared_stages.into_iter().collect::<Vec<_>>(),
            ["assets"]
        );
        assert_eq!(file.platforms, platforms());
    }

    #[test]
    fn an_image_without_a_platform_fans_out_and_so_does_what_reads_it() {
        // Not a TARGET value in sight, but alpine is each platform's own alpine.
        let dockerfile = "FROM alpine:3.20 AS tools\nRUN apk add jq\n\
                          FROM --platform=$BUILDPLATFORM busybox AS gen\n\
                          COPY --from=tools /usr/bin/jq /jq\nRUN /jq --version > /v\n\
                          FROM scratch\nCOPY --from=gen /v /v\n";
        assert!(shared(dockerfile).is_empty(), "{:?}", shared(dockerfile));
    }

    #[test]
    fn buildplatform_args_and_scratch_stages_are_the_same_everywhere() {
        let dockerfile = "FROM --platform=$BUILDPLATFORM busybox AS host\n\
                          ARG BUILDARCH\nRUN echo $BUILDARCH > /arch\n\
                          FROM host AS more\nRUN echo more >> /arch\n\
                          FROM scratch AS files\nCOPY --from=more /arch /arch\nCOPY x /x\n\
                          FROM busybox\nCOPY --from=files / /\nRUN cat /arch\n";
        // `host` and `more` fuse into one pod, `files` (scratch, copies) has one of its
        // own: both run once. The last stage runs on each platform's busybox.
        let got = shared(dockerfile);
        assert_eq!(got, ["files", "more"], "{got:?}");
    }

    #[test]
    fn a_target_arg_in_from_or_global_scope_fans_the_stage_out() {
        let dockerfile = "ARG TARGETARCH\n\
                          FROM --platform=$BUILDPLATFORM example.com/cross:$TARGETARCH AS build\n\
                          RUN make\nFROM scratch\nCOPY --from=build /out /\n";
        assert!(shared(dockerfile).is_empty());
        // A stage re-declaring TARGETPLATFORM sees each platform's value.
        let dockerfile = "FROM --platform=$BUILDPLATFORM busybox AS a\nARG TARGETPLATFORM\n\
                          RUN echo $TARGETPLATFORM > /p\nFROM scratch\nCOPY --from=a /p /\n";
        assert!(shared(dockerfile).is_empty());
    }

    #[test]
    fn explicit_platforms_and_duplicates() {
        let err = plan_platforms(
            "FROM busybox\n",
            &PlanOptions::default(),
            &[
                "linux/amd64".parse().expect("p"),
                "linux/amd64".parse().expect("p"),
            ],
        )
        .expect_err("twice");
        assert!(err.message.contains("twice"), "{err}");
        let many: Vec<Platform> = (0..=crate::limits::PLATFORMS)
            .map(|n| format!("linux/arch{n}").parse().expect("p"))
            .collect();
        let err =
            plan_platforms("FROM busybox\n", &PlanOptions::default(), &many).expect_err("too many");
        assert!(err.message.contains("at most 8"), "{err}");
        // A build platform of its own: BUILDARCH follows it, not the first target.
        let options = PlanOptions {
            build_platform: Some("linux/arm64".parse().expect("p")),
            ..PlanOptions::default()
        };
        let plans = plan_platforms(
            "FROM --platform=$BUILDPLATFORM busybox AS a\nRUN true\nFROM scratch\nCOPY --from=a / /\n",
            &options,
            &platforms(),
        )
        .expect("plans");
        assert_eq!(
            plans.plans[0]
                .stage("a")
                .and_then(|s| s.platform.clone())
                .as_deref(),
            Some("linux/arm64")
        );
        assert!(
            plans.to_text().contains("once, on linux/arm64"),
            "{}",
            plans.to_text()
        );
    }
}
