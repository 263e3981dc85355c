//! A bounded, deterministic fuzz run of manifest and status parsing that works on stable Rust and
//! so runs in CI with every `cargo test` (issue 8, acceptance 3).
//!
//! Seeds are the committed corpus in `fuzz/corpus/{manifest,status}/` plus the examples. Each
//! round mutates a seed, either as bytes (flips, cuts, splices, interesting tokens) or as JSON
//! (type swaps, huge numbers, deep nesting, odd unicode, removed and unknown fields), and feeds
//! it to `AgentManifest::from_slice` and to `AgentStatus` parsing plus `check()`. The properties:
//!
//! - nothing panics;
//! - every rejection of a manifest lists at least one violation, each with a message, and a path
//!   unless it is about the document as a whole;
//! - every accepted manifest serializes and parses back to itself (so what the manager stores is
//!   what the agent gets), and its hashes can be computed;
//! - every accepted status serializes and parses back to itself, and `check()` names a path for
//!   every violation.
//!
//! The round count is `FLEETLET_FUZZ_ROUNDS` (default 4000 per target, a few seconds). A failure
//! prints the seed file and round, and writes the offending input to `target/fuzz-failures/`.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use fleetlet_manifests::{AgentManifest, AgentStatus, ManifestError};
use serde_json::{Map, Value, json};

const DEFAULT_ROUNDS: u64 = 4000;

/// xorshift64*: tiny, deterministic and good enough to choose mutations. A fixed seed makes a
/// failure reproducible from its round number alone.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, bound: usize) -> usize {
        if bound == 0 {
            return 0;
        }
        usize::try_from(self.next() % bound as u64).unwrap_or(0)
    }

    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

/// Byte strings that tend to break parsers and validators.
const TOKENS: &[&str] = &[
    "null",
    "true",
    "-0",
    "1e999",
    "-1",
    "18446744073709551616",
    "9223372036854775808",
    "0.5",
    "\"\"",
    "\"\\u0000\"",
    "\"\\ud800\"",
    "[]",
    "{}",
    "\"..\"",
    "\"/../../etc/shadow\"",
    "\"File\"",
    "\"Container\"",
    "\"SystemdUnit\"",
    "\"SessionStorage\"",
    "\"resources\"",
    "\"spec\"",
    "[[[[[[[[",
    "}}}}",
    ",",
    ":",
    "\"",
    "\\",
];

/// Strings for structural mutations.
const STRINGS: &[&str] = &[
    "",
    "..",
    "/",
    "//etc",
    "/etc/../shadow",
    "/etc/motd/",
    "relative/path",
    "x.service",
    "bad unit.service",
    "0777",
    "9999",
    "2026-02-30T25:61:61Z",
    "localhost/busybox:test",
    "Grüße 👋",
    "\u{202e}evil",
    "\u{0}",
    "a\u{feff}b",
    "sha256:",
    "Always",
    "Started",
    "Ready",
    "File",
    "Widget",
];

fn huge_string(rng: &mut Rng) -> String {
    let unit = STRINGS[rng.below(STRINGS.len())];
    let unit = if unit.is_empty() { "x" } else { unit };
    // Mostly short, sometimes past the limits (names, paths, the 1 MiB content cap is tested
    // by the unit tests: here the point is odd lengths, not memory).
    let count = if rng.chance(8) {
        1 + rng.below(3000)
    } else {
        1 + rng.below(40)
    };
    unit.repeat(count)
}

fn random_scalar(rng: &mut Rng) -> Value {
    match rng.below(9) {
        0 => Value::Null,
        1 => Value::Bool(rng.chance(2)),
        2 => json!(u64::MAX),
        3 => json!(i64::MIN),
        4 => json!(-1),
        5 => json!(1e300),
        6 => json!(rng.next() % 100),
        7 => Value::String(huge_string(rng)),
        _ => Value::String(STRINGS[rng.below(STRINGS.len())].to_owned()),
    }
}

fn nested(depth: usize) -> Value {
    (0..depth).fold(json!(0), |inner, i| {
        if i % 2 == 0 {
            json!([inner])
        } else {
            json!({ "n": inner })
        }
    })
}

/// Replaces, removes or extends one randomly chosen node of the document.
fn mutate_value(value: &mut Value, rng: &mut Rng, depth: usize) {
    let descend = depth < 12 && rng.below(3) != 0;
    match value {
        Value::Object(map) if descend && !map.is_empty() => {
            let keys: Vec<String> = map.keys().cloned().collect();
            let key = &keys[rng.below(keys.len())];
            if let Some(child) = map.get_mut(key) {
                mutate_value(child, rng, depth + 1);
            }
            return;
        }
        Value::Array(items) if descend && !items.is_empty() => {
            let index = rng.below(items.len());
            mutate_value(&mut items[index], rng, depth + 1);
            return;
        }
        _ => {}
    }
    match rng.below(10) {
        0 => *value = random_scalar(rng),
        // Type swaps: the same content in another JSON type.
        1 => {
            *value = match value.take() {
                Value::String(text) => json!([text]),
                Value::Number(number) => Value::String(number.to_string()),
                Value::Array(items) => Value::Object(
                    items
                        .into_iter()
                        .enumerate()
                        .map(|(i, v)| (i.to_string(), v))
                        .collect(),
                ),
                Value::Object(map) => Value::Array(map.into_iter().map(|(_, v)| v).collect()),
                Value::Bool(flag) => json!(u8::from(flag)),
                Value::Null => json!({}),
            }
        }
        2 => *value = nested(100 + rng.below(200)),
        3 => {
            if let Value::Object(map) = value
                && !map.is_empty()
            {
                let keys: Vec<String> = map.keys().cloned().collect();
                map.remove(&keys[rng.below(keys.len())]);
            }
        }
        4 => {
            if let Value::Object(map) = value {
                map.insert(
                    STRINGS[rng.below(STRINGS.len())].to_owned(),
                    random_scalar(rng),
                );
            }
        }
        5 => {
            if let Value::Array(items) = value
                && let Some(first) = items.first().cloned()
            {
                // Duplicates: same ids, same paths, many resources.
                let copies = if rng.chance(16) {
                    1001
                } else {
                    1 + rng.below(8)
                };
                items.extend(std::iter::repeat_n(first, copies));
            }
        }
        6 => *value = Value::Object(Map::new()),
        7 => *value = Value::Array(Vec::new()),
        8 => *value = Value::String(huge_string(rng)),
        _ => {
            if let Value::String(text) = value {
                text.push_str(STRINGS[rng.below(STRINGS.len())]);
            }
        }
    }
}

fn mutate_bytes(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut bytes = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = bytes.len();
        match rng.below(6) {
            0 if len > 0 => {
                let at = rng.below(len);
                bytes[at] ^= 1 << rng.below(8);
            }
            1 if len > 0 => bytes.truncate(rng.below(len)),
            2 if len > 0 => {
                let start = rng.below(len);
                let end = (start + rng.below(64)).min(len);
                bytes.drain(start..end);
            }
            3 => {
                let at = rng.below(len + 1);
                let token = TOKENS[rng.below(TOKENS.len())].as_bytes();
                bytes.splice(at..at, token.iter().copied());
            }
            4 if len > 0 => {
                let start = rng.below(len);
                let end = (start + rng.below(128)).min(len);
                let chunk = bytes[start..end].to_vec();
                let at = rng.below(len + 1);
                bytes.splice(at..at, chunk);
            }
            _ => {
                let at = rng.below(len + 1);
                // A raw byte, often invalid UTF-8.
                bytes.insert(at, u8::try_from(rng.next() & 0xff).unwrap_or(0xff));
            }
        }
    }
    bytes
}

fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    if rng.chance(2) {
        return mutate_bytes(seed, rng);
    }
    let Ok(mut value) = serde_json::from_slice::<Value>(seed) else {
        return mutate_bytes(seed, rng);
    };
    for _ in 0..1 + rng.below(3) {
        mutate_value(&mut value, rng, 0);
    }
    serde_json::to_vec(&value).unwrap_or_default()
}

/// What one input did, or the property it broke.
type Outcome = Result<(), String>;

fn check_manifest(bytes: &[u8]) -> Outcome {
    match AgentManifest::from_slice(bytes) {
        Ok(manifest) => {
            let _ = manifest.content_hash();
            for resource in &manifest.resources {
                let _ = resource.spec_hash();
            }
            let serialized = serde_json::to_vec(&manifest).map_err(|e| e.to_string())?;
            let again = AgentManifest::from_slice(&serialized)
                .map_err(|e| format!("an accepted manifest does not parse back: {e:?}"))?;
            if again != manifest {
                return Err("an accepted manifest changes when it round-trips".into());
            }
            Ok(())
        }
        Err(ManifestError::Malformed(message)) => {
            if message.is_empty() {
                return Err("malformed JSON without a message".into());
            }
            Ok(())
        }
        Err(ManifestError::Invalid(violations)) => {
            if violations.is_empty() {
                return Err("a rejected manifest lists no violation".into());
            }
            // Only a document that is not an object at all has no field to point at.
            let root_is_object =
                serde_json::from_slice::<Value>(bytes).is_ok_and(|v| v.is_object());
            for violation in &violations {
                if violation.message.is_empty() {
                    return Err(format!("a violation without a message: {violation:?}"));
                }
                if violation.path.is_empty() && root_is_object {
                    return Err(format!("a violation without a path: {violation:?}"));
                }
            }
            Ok(())
        }
    }
}

fn check_status(bytes: &[u8]) -> Outcome {
    let Ok(status) = serde_json::from_slice::<AgentStatus>(bytes) else {
        // serde's own refusal: what matters is that it is an error, not a panic.
        return Ok(());
    };
    for violation in status.check() {
        if violation.path.is_empty() || violation.message.is_empty() {
            return Err(format!(
                "a status violation without path or message: {violation:?}"
            ));
        }
    }
    let serialized = serde_json::to_vec(&status).map_err(|e| e.to_string())?;
    let again: AgentStatus = serde_json::from_slice(&serialized)
        .map_err(|e| format!("an accepted status does not parse back: {e}"))?;
    if again != status {
        return Err("an accepted status changes when it round-trips".into());
    }
    Ok(())
}

fn run_guarded(check: fn(&[u8]) -> Outcome, bytes: &[u8]) -> Outcome {
    match catch_unwind(AssertUnwindSafe(|| check(bytes))) {
        Ok(outcome) => outcome,
        Err(panic) => Err(format!(
            "panicked: {}",
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default()
        )),
    }
}

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read_seeds(dirs: &[PathBuf]) -> Vec<(String, Vec<u8>)> {
    let mut seeds = Vec::new();
    for dir in dirs {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("cannot read the corpus {}: {e}", dir.display()))
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
            .collect();
        entries.sort();
        for path in entries {
            let bytes = std::fs::read(&path)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            let name = path
                .strip_prefix(crate_dir())
                .unwrap_or(&path)
                .display()
                .to_string();
            seeds.push((name, bytes));
        }
    }
    assert!(!seeds.is_empty(), "the corpus is empty");
    seeds
}

fn rounds() -> u64 {
    std::env::var("FLEETLET_FUZZ_ROUNDS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(DEFAULT_ROUNDS)
}

fn save_failure(target: &str, round: u64, bytes: &[u8]) -> PathBuf {
    let dir = crate_dir().join("../target/fuzz-failures");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("{target}-{round}.json"));
    let _ = std::fs::write(&path, bytes);
    path
}

/// Runs the seeds as they are, then `rounds()` mutations of them; returns every broken property.
fn fuzz(target: &str, check: fn(&[u8]) -> Outcome, seeds: &[(String, Vec<u8>)]) -> Vec<String> {
    let mut failures = Vec::new();
    for (name, bytes) in seeds {
        if let Err(problem) = run_guarded(check, bytes) {
            failures.push(format!("{target}: seed {name}: {problem}"));
        }
    }
    let mut rng = Rng(0x0f1e_e71e_7000_0008);
    for round in 0..rounds() {
        let (name, seed) = &seeds[rng.below(seeds.len())];
        let input = mutate(seed, &mut rng);
        if let Err(problem) = run_guarded(check, &input) {
            let saved = save_failure(target, round, &input);
            failures.push(format!(
                "{target}: round {round} (a mutation of {name}, saved to {}): {problem}",
                saved.display()
            ));
            if failures.len() >= 10 {
                break;
            }
        }
    }
    failures
}

fn assert_seed_expectations(seeds: &[(String, Vec<u8>)], accepts: fn(&[u8]) -> bool) {
    for (name, bytes) in seeds {
        let file = Path::new(name)
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        if file.starts_with("valid-") {
            assert!(accepts(bytes), "{name} should be accepted");
        } else if file.starts_with("invalid-") {
            assert!(!accepts(bytes), "{name} should be rejected");
        }
    }
}

#[test]
fn manifest_parsing_survives_mutations_of_the_corpus() {
    let seeds = read_seeds(&[
        crate_dir().join("fuzz/corpus/manifest"),
        crate_dir().join("examples"),
    ]);
    assert_seed_expectations(&seeds, |bytes| AgentManifest::from_slice(bytes).is_ok());
    let failures = fuzz("manifest", check_manifest, &seeds);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn status_parsing_and_checking_survive_mutations_of_the_corpus() {
    let seeds = read_seeds(&[crate_dir().join("fuzz/corpus/status")]);
    assert_seed_expectations(&seeds, |bytes| {
        serde_json::from_slice::<AgentStatus>(bytes).is_ok_and(|s| s.check().is_empty())
    });
    let failures = fuzz("status", check_status, &seeds);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn deep_nesting_is_refused_without_overflowing_the_stack() {
    // serde_json stops at 128 levels; far deeper input must be an error, never a crash.
    let deep = format!(
        "{{\"apiVersion\":\"fleetlet.dev/v1\",\"kind\":\"AgentManifest\",\"agentId\":\"a\",\"resources\":[{{\"id\":\"x\",\"kind\":\"Future\",\"spec\":{{\"a\":{}{}}}}}]}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    assert!(AgentManifest::from_slice(deep.as_bytes()).is_err());
    assert!(serde_json::from_slice::<AgentStatus>(deep.as_bytes()).is_err());
}
