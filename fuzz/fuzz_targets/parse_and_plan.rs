//! Any byte string given as a Dockerfile must plan or fail with an error, never panic,
//! and a plan must survive its own JSON round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stagecoach_plan::{Plan, PlanOptions, plan};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The first line may carry a target, to reach target pruning and its errors.
    let options = PlanOptions {
        target: text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("#target="))
            .map(str::to_string),
        ..PlanOptions::default()
    };
    if let Ok(plan) = plan(text, &options) {
        let json = plan.to_json();
        let back = Plan::from_json(&json).expect("a plan reads back");
        assert_eq!(back, plan);
        let _ = plan.to_text();
    }
});
