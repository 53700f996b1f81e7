//! Everything that runs in this process without an outside server: the pure parts (intent files,
//! rendering, Talos configs, `kiln plan` offline), the simulated lab and the demo, and the scenario
//! tier that drives the whole engine over the lab to prove each safety rule of DESIGN.md §7.
//! One binary for all of them, so the dependency tree is linked once (docs/testing.md).

#[path = "engine/bench_fixture.rs"]
mod bench_fixture;
#[path = "engine/demo.rs"]
mod demo;
#[path = "engine/plan_cli.rs"]
mod plan_cli;
#[path = "engine/render.rs"]
mod render;
#[path = "engine/spec.rs"]
mod spec;
#[path = "engine/spec_load.rs"]
mod spec_load;
#[path = "engine/talos_config.rs"]
mod talos_config;

#[allow(dead_code)]
#[path = "support/kubectl.rs"]
mod kubectl_cli;

#[path = "engine/scenarios.rs"]
mod scenarios;

// Shared by the demo's engine tests and the scenarios: one instance, so one counter hands out the
// loopback blocks and no two tests of this binary get the same one.
#[allow(dead_code)]
#[path = "e2e/fixture.rs"]
mod fixture;
#[allow(dead_code)]
#[path = "adapters/git/support.rs"]
mod gitrepo;
