//! `cargo bench -p fleetlet-manifests`: the wire contract's pure code on a manifest of 1,000
//! resources (the most a manifest may hold): parse and validate, spec and content hashes, sign
//! and verify, and a status report's serialisation both ways.
//!
//! Std timing only (no bench framework): each case runs for about two seconds after a warm-up,
//! and the median and 99th percentile of single runs are printed. Figures are for comparing
//! builds on one machine, never test assertions.

use std::hint::black_box;
use std::time::{Duration, Instant};

use fleetlet_manifests::signature::{SecretKey, verify};
use fleetlet_manifests::{AgentManifest, AgentStatus};
use serde_json::json;

const RESOURCES: usize = 1000;
/// How long each case keeps running.
const BUDGET: Duration = Duration::from_secs(2);

/// Runs `case` repeatedly for [`BUDGET`] (at least 5 times) and prints median and p99.
fn measure<T>(name: &str, mut case: impl FnMut() -> T) {
    black_box(case());
    let started = Instant::now();
    let mut times = Vec::new();
    while times.len() < 5 || (started.elapsed() < BUDGET && times.len() < 100_000) {
        let run = Instant::now();
        black_box(case());
        times.push(run.elapsed());
    }
    times.sort();
    let at = |fraction: f64| times[((times.len() as f64 * fraction).ceil() as usize).max(1) - 1];
    println!(
        "{name:<44} {:>7} runs   median {:>12?}   p99 {:>12?}",
        times.len(),
        at(0.5),
        at(0.99)
    );
}

fn manifest_json() -> Vec<u8> {
    let resources: Vec<serde_json::Value> = (0..RESOURCES)
        .map(|i| {
            json!({
                "id": format!("file-{i}"),
                "kind": "File",
                "spec": {
                    "path": format!("/srv/app/dir-{}/file-{i}.conf", i % 10),
                    "content": {"text": format!("setting-{i} = {}\n", i * 7)},
                    "mode": "0644"
                }
            })
        })
        .collect();
    serde_json::to_vec(&json!({
        "apiVersion": "fleetlet.dev/v1",
        "kind": "AgentManifest",
        "agentId": "bench-agent",
        "generation": 7,
        "resources": resources
    }))
    .expect("manifest serialises")
}

fn status_json(manifest: &AgentManifest) -> Vec<u8> {
    let resources: serde_json::Map<String, serde_json::Value> = manifest
        .resources
        .iter()
        .map(|r| {
            (
                r.id.as_str().to_owned(),
                json!({"kind": "File", "phase": "Ready", "since": "2026-11-22T10:00:00Z",
                       "generation": 7, "specHash": r.spec_hash()}),
            )
        })
        .collect();
    serde_json::to_vec(&json!({
        "apiVersion": "fleetlet.dev/v1", "kind": "AgentStatus", "agentId": "bench-agent",
        "reportSeq": 1, "manifestGeneration": 7, "observedGeneration": 7,
        "observedAt": "2026-11-22T10:00:00Z",
        "agent": {"version": "0.1.0", "hostname": "bench", "arch": "x86_64", "os": "linux",
                  "bootId": "b", "startedAt": "2026-11-22T09:00:00Z", "supportedKinds": ["File"]},
        "conditions": [],
        "resources": resources
    }))
    .expect("status serialises")
}

fn main() {
    let bytes = manifest_json();
    println!(
        "manifest of {RESOURCES} File resources: {} KiB of JSON",
        bytes.len() / 1024
    );
    let manifest = AgentManifest::from_slice(&bytes).expect("the manifest is valid");

    measure("parse + validate manifest (1,000)", || {
        AgentManifest::from_slice(black_box(&bytes)).expect("valid")
    });
    measure("spec_hash of 1,000 resources", || {
        manifest
            .resources
            .iter()
            .map(|r| r.spec_hash().len())
            .sum::<usize>()
    });
    measure("content_hash (1,000)", || {
        black_box(&manifest).content_hash()
    });

    let key = SecretKey::from_seed([7; 32]);
    let trusted = [key.public()];
    let mut signed = manifest.clone();
    signed.signature = Some(key.sign(&manifest));
    measure("sign manifest (1,000)", || key.sign(black_box(&manifest)));
    measure("verify manifest (1,000)", || {
        verify(black_box(&signed), &trusted).expect("signature holds")
    });

    let status_bytes = status_json(&manifest);
    let status: AgentStatus = serde_json::from_slice(&status_bytes).expect("valid status");
    measure("status deserialize (1,000 resources)", || {
        serde_json::from_slice::<AgentStatus>(black_box(&status_bytes)).expect("valid")
    });
    measure("status serialize (1,000 resources)", || {
        serde_json::to_vec(black_box(&status)).expect("serialises")
    });
}
