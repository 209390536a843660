//! Planning a generated 500-stage Dockerfile: prints the median and spread of many runs.
//! `cargo bench -p stagecoach-plan --bench plan` (or `make bench-plan`).

use std::time::{Duration, Instant};

use stagecoach_plan::{PlanOptions, plan};

/// 500 stages: a chain of bases, fan-out of builders that copy from earlier ones, ARGs,
/// ENV expansion, cache mounts and a final stage that copies from all of them.
fn generated_dockerfile(stages: usize) -> String {
    let mut df =
        String::from("# syntax=docker/dockerfile:1\nARG BASE=debian:12\nARG VERSION=1.0\n");
    df += "FROM ${BASE} AS s0\nENV PATH=/opt/bin:$PATH\nRUN echo base > /base\n";
    for i in 1..stages - 1 {
        if i % 10 == 0 {
            df += &format!("FROM s{} AS s{i}\n", i - 1);
        } else {
            df += &format!("FROM ${{BASE}} AS s{i}\n");
        }
        df += &format!(
            "ARG VERSION\nENV STAGE=s{i} OUT=/out/s{i}\nWORKDIR /src/$STAGE\n\
             COPY --from=s{} /out/ /in/\n\
             RUN --mount=type=cache,target=/root/.cache <<EOF\nset -e\nmkdir -p $OUT && echo $VERSION > $OUT/v\nEOF\n\
             LABEL stage=\"s{i}\" version=\"$VERSION\"\n",
            i / 2
        );
    }
    df += "FROM scratch\n";
    for i in 1..stages - 1 {
        df += &format!("COPY --from=s{i} /out/s{i} /out/s{i}\n");
    }
    df
}

fn main() {
    let df = generated_dockerfile(500);
    let options = PlanOptions::default();
    let first = plan(&df, &options).expect("the generated Dockerfile plans");
    let runs = 50;
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            let p = plan(&df, &options).expect("plans");
            let elapsed = start.elapsed();
            std::hint::black_box(p);
            elapsed
        })
        .collect();
    times.sort();
    println!(
        "plan 500-stage Dockerfile ({} lines, {} bytes): {} stages kept, {} waves",
        df.lines().count(),
        df.len(),
        first.stages.len(),
        first.waves.len()
    );
    println!(
        "  median {:?}, min {:?}, max {:?} over {runs} runs; plan.json {} bytes",
        times[runs / 2],
        times[0],
        times[runs - 1],
        first.to_json().len()
    );
}
