//! The docs say what the code does: every source file opens with a `//!` summary line, and the
//! numbers README.md, ARCHITECTURE.md, docs/*.md and the agent's systemd unit quote (timeouts,
//! limits, defaults) are the code's.
//!
//! A quoted number is found by the words around it: a check is a phrase with `{}` where the
//! number stands (`bodies {} MiB (413)`), matched in the doc with its line breaks folded into
//! spaces. Every match must show the code's value, in the unit of the phrase, and at least one
//! match must exist: a reworded sentence fails the check until the check is updated, so a number
//! cannot drift out of sight. The agent's settings and their defaults in the README's table are
//! checked by `agent/src/config/tests.rs`, not here.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::CommandFactory;

/// The crates whose `.rs` files must open with a `//!` line (their src, tests and benches).
const CRATES: [&str; 5] = ["agent", "manager", "manifests", "cli", "tests"];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every `.rs` file below `dir`, skipping `target` and hidden directories.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
    for entry in entries {
        let entry = entry.unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
        let path = entry.path();
        let name = entry.file_name();
        let kind = entry
            .file_type()
            .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
        if kind.is_dir() {
            if name != "target" && !name.to_string_lossy().starts_with('.') {
                rust_files(&path, out);
            }
        } else if kind.is_file() && path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

/// The `.rs` files of `crates` under `root` (relative to `root`, sorted) and, among them, those
/// whose first line is not a `//!` line.
fn files_without_summary(root: &Path, crates: &[&str]) -> (Vec<String>, Vec<String>) {
    let mut files = Vec::new();
    for krate in crates {
        rust_files(&root.join(krate), &mut files);
    }
    let mut all: Vec<String> = Vec::new();
    let mut missing = Vec::new();
    for path in &files {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let relative = path
            .strip_prefix(root)
            .expect("below the root")
            .to_string_lossy()
            .into_owned();
        if !text
            .lines()
            .next()
            .is_some_and(|line| line.starts_with("//!"))
        {
            missing.push(relative.clone());
        }
        all.push(relative);
    }
    all.sort();
    missing.sort();
    (all, missing)
}

#[test]
fn every_source_file_opens_with_a_summary_line() {
    let root = repo_root();
    let (all, missing) = files_without_summary(&root, &CRATES);
    for krate in CRATES {
        assert!(
            all.iter().any(|f| f.starts_with(&format!("{krate}/src/"))),
            "found no .rs file under {krate}/src: is the walk looking in the right place ({})?",
            root.display()
        );
    }
    assert!(
        missing.is_empty(),
        "these source files do not start with a `//!` line saying what they hold:\n  {}",
        missing.join("\n  ")
    );
}

#[test]
fn the_summary_check_finds_files_without_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |path: &str, text: &str| {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    };
    write("a/src/lib.rs", "//! Holds a.\n\nmod b;\n");
    write("a/src/b.rs", "use std::io;\n//! too late\n");
    write(
        "a/src/c.rs",
        "/// an item doc, not the module's\nfn c() {}\n",
    );
    write("a/tests/empty.rs", "");
    write("a/benches/d.rs", "//! Benches d.\n");
    write("a/target/debug/build/out.rs", "fn generated() {}\n");
    write("a/.hidden/x.rs", "fn x() {}\n");
    write("a/src/notes.txt", "not rust\n");
    write("other/src/e.rs", "fn e() {}\n");
    let (all, missing) = files_without_summary(dir.path(), &["a"]);
    assert_eq!(
        all,
        [
            "a/benches/d.rs",
            "a/src/b.rs",
            "a/src/c.rs",
            "a/src/lib.rs",
            "a/tests/empty.rs"
        ]
    );
    assert_eq!(missing, ["a/src/b.rs", "a/src/c.rs", "a/tests/empty.rs"]);
}

// ---------------------------------------------------------------------------------------------
// Quoted numbers

/// A doc's text with every run of whitespace (line breaks included) folded into one space.
fn folded(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn read_doc(name: &str) -> String {
    let path = repo_root().join(name);
    folded(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {name}: {e}")))
}

/// One number a doc quotes and the value the code has.
struct Quote {
    doc: &'static str,
    /// The words around the number, with `{}` where it stands; the text before `{}` must not be
    /// empty.
    phrase: &'static str,
    /// The code's value, written as the phrase writes it (e.g. `8` for 8 MiB, `1,000`).
    code: String,
    /// Where the value comes from, and in what unit the phrase gives it.
    source: &'static str,
}

fn quote(doc: &'static str, phrase: &'static str, code: String, source: &'static str) -> Quote {
    Quote {
        doc,
        phrase,
        code,
        source,
    }
}

/// The number (or word) at the start of `text`: ASCII letters and digits, with `.` and `,`
/// inside it (`1,000`, `1.5`), as in `8 MiB`, `3×`, `(1,000)`, `` `2m` ``.
fn token_at(text: &str) -> &str {
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == ','))
        .unwrap_or(text.len());
    text[..end].trim_end_matches(['.', ','])
}

/// Every value `phrase` (with `{}`) shows in `text`.
fn quoted_values(text: &str, phrase: &str) -> Vec<String> {
    let (prefix, suffix) = phrase
        .split_once("{}")
        .unwrap_or_else(|| panic!("the phrase {phrase:?} has no {{}}"));
    assert!(
        !prefix.is_empty(),
        "the phrase {phrase:?} must start with words before {{}}"
    );
    let mut values = Vec::new();
    for (at, _) in text.match_indices(prefix) {
        let rest = &text[at + prefix.len()..];
        let token = token_at(rest);
        if !token.is_empty() && rest[token.len()..].starts_with(suffix) {
            values.push(token.to_string());
        }
    }
    values
}

/// What is wrong with `quote` in `text`, one line per problem.
fn check_quote(text: &str, quote: &Quote) -> Vec<String> {
    let values = quoted_values(text, quote.phrase);
    if values.is_empty() {
        return vec![format!(
            "{}: no text matches \"{}\" any more, which should say {} ({}); if the sentence was \
             reworded, update its check in tests/tests/docs_match_code.rs",
            quote.doc, quote.phrase, quote.code, quote.source
        )];
    }
    values
        .iter()
        .filter(|value| **value != quote.code)
        .map(|value| {
            format!(
                "{}: \"{}\" says {value}, but the code says {} ({})",
                quote.doc,
                quote.phrase.replacen("{}", value, 1),
                quote.code,
                quote.source
            )
        })
        .collect()
}

#[test]
fn the_quote_check_reports_a_wrong_or_a_missing_number() {
    let text = folded("the 75 s request\n   timeout (408) and the 75 s request timeout (408).");
    let wrong = quote(
        "X.md",
        "the {} s request timeout (408)",
        "315".into(),
        "T, in s",
    );
    assert_eq!(
        check_quote(&text, &wrong),
        [
            "X.md: \"the 75 s request timeout (408)\" says 75, but the code says 315 (T, in s)",
            "X.md: \"the 75 s request timeout (408)\" says 75, but the code says 315 (T, in s)",
        ]
    );
    let right = quote(
        "X.md",
        "the {} s request timeout (408)",
        "75".into(),
        "T, in s",
    );
    assert!(check_quote(&text, &right).is_empty());
    let gone = quote("X.md", "the {} s deadline", "75".into(), "T, in s");
    let problems = check_quote(&text, &gone);
    assert_eq!(problems.len(), 1);
    assert!(
        problems[0].starts_with("X.md: no text matches \"the {} s deadline\""),
        "{problems:?}"
    );
    assert_eq!(
        quoted_values("(stale after 3× without any)", "after {}× without"),
        ["3"]
    );
    assert_eq!(
        quoted_values("at most 1,000), reads", "at most {})"),
        ["1,000"]
    );
    assert_eq!(quoted_values("| `2m` |", "| `{}` |"), ["2m"]);
    assert_eq!(quoted_values("1..=86400, `x`", "1..={},"), ["86400"]);
}

fn whole_secs(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        d.as_secs().to_string()
    } else {
        format!("{d:?} (not a whole number of seconds)")
    }
}

/// Seconds with a decimal point when needed: `4.5` for 4500 ms.
fn decimal_secs(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs.fract() == 0.0 {
        d.as_secs().to_string()
    } else {
        secs.to_string()
    }
}

fn whole_millis(d: Duration) -> String {
    if d.subsec_nanos().is_multiple_of(1_000_000) {
        d.as_millis().to_string()
    } else {
        format!("{d:?} (not a whole number of milliseconds)")
    }
}

fn whole_minutes(d: Duration) -> String {
    if d.subsec_nanos() == 0 && d.as_secs().is_multiple_of(60) {
        (d.as_secs() / 60).to_string()
    } else {
        format!("{d:?} (not a whole number of minutes)")
    }
}

fn time_minutes(d: time::Duration) -> String {
    whole_minutes(Duration::try_from(d).expect("a positive duration"))
}

/// `word` when `d` is exactly one `unit` (for "written every second", "once a day"), else `d`.
fn per(d: Duration, unit: Duration, word: &str) -> String {
    if d == unit {
        word.to_string()
    } else {
        format!("{d:?} (not one {word})")
    }
}

fn whole_units(bytes: u64, unit: u64, name: &str) -> String {
    if bytes.is_multiple_of(unit) {
        (bytes / unit).to_string()
    } else {
        format!("{bytes} bytes (not a whole number of {name})")
    }
}

fn mib(bytes: usize) -> String {
    whole_units(bytes as u64, 1 << 20, "MiB")
}

fn kib(bytes: usize) -> String {
    whole_units(bytes as u64, 1 << 10, "KiB")
}

/// `1,000` for 1000: thousands grouped with commas, as the docs write counts.
fn grouped(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// Small counts as the docs spell them in prose.
fn word(n: usize) -> String {
    const WORDS: [&str; 11] = [
        "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    ];
    WORDS
        .get(n)
        .map_or_else(|| n.to_string(), |w| (*w).to_string())
}

/// The default the manager's `Config` declares for its flag `id` (the field name).
fn manager_default(id: &str) -> String {
    let command = fleetlet_manager::config::Config::command();
    let arg = command
        .get_arguments()
        .find(|arg| arg.get_id() == id)
        .unwrap_or_else(|| panic!("the manager has no setting {id}"));
    let defaults = arg.get_default_values();
    assert_eq!(defaults.len(), 1, "the manager's {id} has one default");
    defaults[0].to_string_lossy().into_owned()
}

/// The default the agent declares for the setting read from `env`.
fn agent_default(env: &str) -> String {
    fleetlet_agent::config::DECLARED
        .iter()
        .find(|setting| setting.env == env)
        .unwrap_or_else(|| panic!("the agent has no setting {env}"))
        .default
        .unwrap_or_else(|| panic!("the agent's {env} has no default"))
        .to_string()
}

fn agent_default_duration(env: &str) -> Duration {
    let text = agent_default(env);
    fleetlet_agent::config::parse_duration(&text)
        .unwrap_or_else(|e| panic!("the agent's {env} default {text:?}: {e}"))
}

/// The dashboard's refresh period, `const REFRESH_MS = N;` in its script.
fn dashboard_refresh() -> Duration {
    let path = repo_root().join("manager/src/http/dashboard/app.js");
    let script = std::fs::read_to_string(&path).expect("read the dashboard's app.js");
    let value = script
        .lines()
        .find_map(|line| line.trim().strip_prefix("const REFRESH_MS = "))
        .and_then(|rest| rest.strip_suffix(';'))
        .expect("app.js declares `const REFRESH_MS = N;`");
    Duration::from_millis(
        value
            .parse()
            .expect("REFRESH_MS is a number of milliseconds"),
    )
}

const README: &str = "README.md";
const REFERENCE: &str = "docs/reference.md";
const ARCHITECTURE: &str = "ARCHITECTURE.md";
const AGENT_STORE: &str = "docs/agent-store.md";
const AGENT_PROTOCOL: &str = "docs/agent-protocol.md";
const AGENT_RECONCILERS: &str = "docs/agent-reconcilers.md";
const MANAGER: &str = "docs/manager.md";
const AGENT_UNIT: &str = "deploy/systemd/fleetlet-agent.service";

/// Every number the docs quote whose value lives in a constant or a declared default.
fn quotes() -> Vec<Quote> {
    use fleetlet_agent::backoff::Backoff;
    use fleetlet_manager::http::limits::{MAX_LONG_POLLS_PER_CALLER, REQUEST_TIMEOUT};
    use fleetlet_manager::http::{
        BODY_LIMIT_BYTES, MAX_EVENTS_LIMIT, MAX_FLEET_LIMIT, MAX_HISTORY_LIMIT, MAX_WAIT_SECONDS,
    };
    use fleetlet_manager::store::postgres as pg;
    use fleetlet_manifests::manifest as m;

    let max_wait = MAX_WAIT_SECONDS.to_string();
    let request_timeout = whole_secs(REQUEST_TIMEOUT);
    let stale = fleetlet_manager::fleet::STALE_AFTER_INTERVALS as usize;
    let report_interval_default = manager_default("report_interval");
    let report_interval = fleetlet_manager::config::parse_duration(&report_interval_default)
        .expect("the manager's report interval default parses");
    let agent_watch_wait = agent_default_duration("FLEETLET_WATCH_WAIT");
    let agent_store_max = agent_default("FLEETLET_STORE_MAX_BYTES");
    let agent_store_max = fleetlet_agent::config::parse_bytes(&agent_store_max)
        .expect("the agent's store size default parses");
    let token = fleetlet_manager::token::mint_agent_token();
    let token_digits = token
        .strip_prefix(fleetlet_manager::token::AGENT_TOKEN_PREFIX)
        .expect("an agent token starts with its prefix")
        .len();
    let statement_timeout: u64 = pg::STATEMENT_TIMEOUT_MS
        .parse()
        .expect("STATEMENT_TIMEOUT_MS is a number");

    vec![
        // README.md: network partitions.
        quote(
            README,
            "caps each connection's retransmission interval at {} s",
            whole_secs(fleetlet_manager::server::tcp::RETRANSMIT_INTERVAL_MAX),
            "fleetlet_manager::server::tcp::RETRANSMIT_INTERVAL_MAX, in seconds",
        ),
        quote(
            README,
            "keeps resending for {} s",
            whole_secs(fleetlet_manager::server::tcp::UNACKED_LIMIT),
            "fleetlet_manager::server::tcp::UNACKED_LIMIT, in seconds",
        ),
        // README.md: running the manager.
        quote(
            README,
            "heartbeats (stale after {}× without any)",
            stale.to_string(),
            "fleetlet_manager::fleet::STALE_AFTER_INTERVALS",
        ),
        quote(
            README,
            "without any) | `FLEETLET_REPORT_INTERVAL` | `{}` |",
            report_interval_default.clone(),
            "the default of fleetlet_manager::config::Config's report_interval",
        ),
        quote(
            README,
            "| `FLEETLET_MAX_WAIT_SECONDS` | `{}` |",
            manager_default("max_wait_seconds"),
            "the default of fleetlet_manager::config::Config's max_wait_seconds",
        ),
        quote(
            README,
            "longest long-poll wait accepted (1–{} s;",
            max_wait.clone(),
            "fleetlet_manager::http::MAX_WAIT_SECONDS, in seconds",
        ),
        quote(
            README,
            "refreshing itself every {} s.",
            whole_secs(dashboard_refresh()),
            "REFRESH_MS in manager/src/http/dashboard/app.js, in seconds",
        ),
        quote(
            README,
            "Latency buckets reach the {} s request deadline",
            request_timeout.clone(),
            "fleetlet_manager::http::limits::REQUEST_TIMEOUT, in seconds",
        ),
        quote(
            README,
            "which last as long as the agent asked (up to {} s)",
            max_wait.clone(),
            "fleetlet_manager::http::MAX_WAIT_SECONDS, in seconds",
        ),
        quote(
            README,
            "Limits: bodies {} MiB (413)",
            mib(BODY_LIMIT_BYTES),
            "fleetlet_manager::http::BODY_LIMIT_BYTES, in MiB",
        ),
        quote(
            README,
            "request line and headers {} KiB (431)",
            kib(fleetlet_manager::server::MAX_HEADER_BYTES),
            "fleetlet_manager::server::MAX_HEADER_BYTES, in KiB",
        ),
        quote(
            README,
            "(431), {} s per request",
            request_timeout.clone(),
            "fleetlet_manager::http::limits::REQUEST_TIMEOUT, in seconds",
        ),
        quote(
            README,
            "(the longest long-poll plus {} s; 408)",
            whole_secs(REQUEST_TIMEOUT.saturating_sub(Duration::from_secs(MAX_WAIT_SECONDS))),
            "REQUEST_TIMEOUT - MAX_WAIT_SECONDS of fleetlet_manager::http, in seconds",
        ),
        quote(
            README,
            "at most {} waiting long-polls per caller and agent (429)",
            MAX_LONG_POLLS_PER_CALLER.to_string(),
            "fleetlet_manager::http::limits::MAX_LONG_POLLS_PER_CALLER",
        ),
        // README.md: running an agent.
        quote(
            README,
            "| resync, watch wait (≤ {} s)",
            whole_secs(fleetlet_agent::config::MAX_WATCH_WAIT),
            "fleetlet_agent::config::MAX_WATCH_WAIT, in seconds",
        ),
        quote(
            README,
            "(bytes, or `KiB`/`MiB`/`GiB`; ≥ {} MiB)",
            whole_units(fleetlet_agent::config::MIN_STORE_MAX_BYTES, 1 << 20, "MiB"),
            "fleetlet_agent::config::MIN_STORE_MAX_BYTES, in MiB",
        ),
        quote(
            README,
            "a change of the pass counters alone at most every {} minutes",
            whole_minutes(fleetlet_agent::metrics_file::PASS_REWRITE_INTERVAL),
            "fleetlet_agent::metrics_file::PASS_REWRITE_INTERVAL, in minutes",
        ),
        quote(
            README,
            "(and once a {} regardless)",
            per(
                fleetlet_agent::config::FULL_STATUS_INTERVAL,
                Duration::from_secs(24 * 3600),
                "day",
            ),
            "fleetlet_agent::config::FULL_STATUS_INTERVAL",
        ),
        quote(
            README,
            "makes the agent fall back to {} s.",
            whole_secs(fleetlet_agent::client::SAFE_WATCH_WAIT),
            "fleetlet_agent::client::SAFE_WATCH_WAIT, in seconds",
        ),
        // README.md: the CLI.
        quote(
            README,
            "a command stops quietly with exit status {} (128 + SIGPIPE",
            fleetlet_cli::output::OUTPUT_CLOSED_STATUS.to_string(),
            "fleetlet_cli::output::OUTPUT_CLOSED_STATUS",
        ),
        quote(
            README,
            "`stale` (no contact for {} intervals)",
            stale.to_string(),
            "fleetlet_manager::fleet::STALE_AFTER_INTERVALS",
        ),
        // docs/reference.md.
        quote(
            REFERENCE,
            "- Limits: {} MiB of inline content per file",
            mib(m::MAX_FILE_CONTENT_BYTES),
            "fleetlet_manifests::manifest::MAX_FILE_CONTENT_BYTES, in MiB",
        ),
        quote(
            REFERENCE,
            "of inline content per file, {} MiB per manifest",
            mib(m::MAX_MANIFEST_CONTENT_BYTES),
            "fleetlet_manifests::manifest::MAX_MANIFEST_CONTENT_BYTES, in MiB",
        ),
        quote(
            REFERENCE,
            "MiB per manifest, {} resources.",
            grouped(m::MAX_RESOURCES),
            "fleetlet_manifests::manifest::MAX_RESOURCES",
        ),
        quote(
            REFERENCE,
            "event when the count goes up, at most one per resource per {} minutes",
            time_minutes(fleetlet_manager::store::REPAIR_EVENT_INTERVAL),
            "fleetlet_manager::store::REPAIR_EVENT_INTERVAL, in minutes",
        ),
        quote(
            REFERENCE,
            "`stale` (no contact for {} contact intervals)",
            word(stale),
            "fleetlet_manager::fleet::STALE_AFTER_INTERVALS",
        ),
        quote(
            REFERENCE,
            "Failures back off per resource ({} s doubling",
            whole_secs(Backoff::RESOURCE.initial),
            "fleetlet_agent::backoff::Backoff::RESOURCE.initial, in seconds",
        ),
        quote(
            REFERENCE,
            "s doubling to {} min, reset on success)",
            whole_minutes(Backoff::RESOURCE.max),
            "fleetlet_agent::backoff::Backoff::RESOURCE.max, in minutes",
        ),
        quote(
            REFERENCE,
            "flush the store, exit 0, within {} s",
            decimal_secs(fleetlet_agent::shutdown::DRAIN_TIMEOUT),
            "fleetlet_agent::shutdown::DRAIN_TIMEOUT, in seconds",
        ),
        // The agent's systemd unit.
        quote(
            AGENT_UNIT,
            "and flushes the store for at most {} s,",
            decimal_secs(fleetlet_agent::shutdown::DRAIN_TIMEOUT),
            "fleetlet_agent::shutdown::DRAIN_TIMEOUT, in seconds",
        ),
        // ARCHITECTURE.md and the design documents in docs/: manifests.
        quote(
            AGENT_PROTOCOL,
            "(`progressDeadlineSeconds` 1..={},",
            m::MAX_PROGRESS_DEADLINE_SECONDS.to_string(),
            "fleetlet_manifests::manifest::MAX_PROGRESS_DEADLINE_SECONDS",
        ),
        quote(
            AGENT_PROTOCOL,
            "Key ids are the hex of the first {} bytes",
            fleetlet_manifests::ids::KEY_ID_BYTES.to_string(),
            "fleetlet_manifests::ids::KEY_ID_BYTES",
        ),
        // ARCHITECTURE.md and the design documents in docs/: manager.
        quote(
            MANAGER,
            "agent tokens are `flt_` + {} hex characters",
            token_digits.to_string(),
            "the length of fleetlet_manager::token::mint_agent_token() after its prefix",
        ),
        quote(
            MANAGER,
            "hex characters ({} random bytes)",
            (token_digits / 2).to_string(),
            "half the hex digits of fleetlet_manager::token::mint_agent_token()",
        ),
        quote(
            MANAGER,
            "goes out as one statement (lookups, up to {})",
            pg::LOOKUP_BATCH.to_string(),
            "fleetlet_manager::store::postgres::LOOKUP_BATCH",
        ),
        quote(
            MANAGER,
            "or one transaction (reports, up to {})",
            pg::REPORT_BATCH.to_string(),
            "fleetlet_manager::store::postgres::REPORT_BATCH",
        ),
        quote(
            MANAGER,
            "at most {} lookup batches",
            word(pg::BATCHES_IN_FLIGHT),
            "fleetlet_manager::store::postgres::BATCHES_IN_FLIGHT",
        ),
        quote(
            MANAGER,
            "lookup batches and {} report transactions at once",
            word(pg::REPORTS_IN_FLIGHT),
            "fleetlet_manager::store::postgres::REPORTS_IN_FLIGHT",
        ),
        quote(
            MANAGER,
            "the newest per agent kept in memory and written every {} with one",
            per(
                fleetlet_manager::CONTACT_WRITE_PERIOD,
                Duration::from_secs(1),
                "second",
            ),
            "fleetlet_manager::CONTACT_WRITE_PERIOD",
        ),
        quote(
            AGENT_PROTOCOL,
            "written for all agents with one statement a {},",
            per(
                fleetlet_manager::CONTACT_WRITE_PERIOD,
                Duration::from_secs(1),
                "second",
            ),
            "fleetlet_manager::CONTACT_WRITE_PERIOD",
        ),
        quote(
            MANAGER,
            "the agent's own watch poll — is older than {} × `FLEETLET_REPORT_INTERVAL`",
            stale.to_string(),
            "fleetlet_manager::fleet::STALE_AFTER_INTERVALS",
        ),
        quote(
            MANAGER,
            "long-poll slots per caller and agent ({};",
            MAX_LONG_POLLS_PER_CALLER.to_string(),
            "fleetlet_manager::http::limits::MAX_LONG_POLLS_PER_CALLER",
        ),
        quote(
            MANAGER,
            "the {} s request timeout (408)",
            request_timeout.clone(),
            "fleetlet_manager::http::limits::REQUEST_TIMEOUT, in seconds",
        ),
        quote(
            MANAGER,
            "and the {} KiB header check (431)",
            kib(fleetlet_manager::server::MAX_HEADER_BYTES),
            "fleetlet_manager::server::MAX_HEADER_BYTES, in KiB",
        ),
        quote(
            MANAGER,
            "Limits: request bodies {} MiB (413)",
            mib(BODY_LIMIT_BYTES),
            "fleetlet_manager::http::BODY_LIMIT_BYTES, in MiB",
        ),
        quote(
            MANAGER,
            "`FLEETLET_MAX_WAIT_SECONDS` (default and most {};",
            max_wait.clone(),
            "fleetlet_manager::http::MAX_WAIT_SECONDS, in seconds",
        ),
        quote(
            MANAGER,
            "`FLEETLET_MAX_WAIT_SECONDS` (default and most {};",
            manager_default("max_wait_seconds"),
            "the default of fleetlet_manager::config::Config's max_wait_seconds",
        ),
        quote(
            MANAGER,
            "pages are clamped (fleet {},",
            MAX_FLEET_LIMIT.to_string(),
            "fleetlet_manager::http::MAX_FLEET_LIMIT",
        ),
        quote(
            MANAGER,
            ", history {}, events",
            MAX_HISTORY_LIMIT.to_string(),
            "fleetlet_manager::http::MAX_HISTORY_LIMIT",
        ),
        quote(
            MANAGER,
            "events {}); the pool gives up",
            MAX_EVENTS_LIMIT.to_string(),
            "fleetlet_manager::http::MAX_EVENTS_LIMIT",
        ),
        quote(
            MANAGER,
            "the pool gives up acquiring a connection after {} s",
            whole_secs(pg::ACQUIRE_TIMEOUT),
            "fleetlet_manager::store::postgres::ACQUIRE_TIMEOUT, in seconds",
        ),
        quote(
            MANAGER,
            "and statements after {} s,",
            whole_secs(Duration::from_millis(statement_timeout)),
            "fleetlet_manager::store::postgres::STATEMENT_TIMEOUT_MS, in seconds",
        ),
        quote(
            MANAGER,
            "what drifted), at most one per resource per {} minutes (`REPAIR_EVENT_INTERVAL`",
            time_minutes(fleetlet_manager::store::REPAIR_EVENT_INTERVAL),
            "fleetlet_manager::store::REPAIR_EVENT_INTERVAL, in minutes",
        ),
        // ARCHITECTURE.md and the design documents in docs/: agent.
        quote(
            ARCHITECTURE,
            "within `DRAIN_TIMEOUT` ({} s;",
            decimal_secs(fleetlet_agent::shutdown::DRAIN_TIMEOUT),
            "fleetlet_agent::shutdown::DRAIN_TIMEOUT, in seconds",
        ),
        quote(
            ARCHITECTURE,
            "when the state part changed, or the pass part alone after {} minutes",
            whole_minutes(fleetlet_agent::metrics_file::PASS_REWRITE_INTERVAL),
            "fleetlet_agent::metrics_file::PASS_REWRITE_INTERVAL, in minutes",
        ),
        quote(
            AGENT_PROTOCOL,
            "timeouts on every call, {} s →",
            whole_secs(Backoff::MANAGER.initial),
            "fleetlet_agent::backoff::Backoff::MANAGER.initial, in seconds",
        ),
        quote(
            AGENT_PROTOCOL,
            "s → {} s backoff while the manager is unreachable",
            whole_secs(Backoff::MANAGER.max),
            "fleetlet_agent::backoff::Backoff::MANAGER.max, in seconds",
        ),
        quote(
            AGENT_RECONCILERS,
            "within a kind at most `FLEETLET_CONCURRENCY` ({}) resources",
            agent_default("FLEETLET_CONCURRENCY"),
            "the agent's declared default of FLEETLET_CONCURRENCY",
        ),
        quote(
            AGENT_RECONCILERS,
            "batches of at most {} files",
            fleetlet_agent::reconcile::file::BATCH_SIZE.to_string(),
            "fleetlet_agent::reconcile::file::BATCH_SIZE (defined in reconcile/file/schedule.rs)",
        ),
        quote(
            AGENT_RECONCILERS,
            "the retry policy as a pure function, outside the reconcilers: {} s doubling",
            whole_secs(Backoff::RESOURCE.initial),
            "fleetlet_agent::backoff::Backoff::RESOURCE.initial, in seconds",
        ),
        quote(
            AGENT_RECONCILERS,
            "s doubling to {} min, reset on success or when the spec hash changes",
            whole_minutes(Backoff::RESOURCE.max),
            "fleetlet_agent::backoff::Backoff::RESOURCE.max, in minutes",
        ),
        quote(
            AGENT_PROTOCOL,
            "at most every {} minutes (`REPAIR_REPORT_INTERVAL`)",
            time_minutes(fleetlet_agent::status::REPAIR_REPORT_INTERVAL),
            "fleetlet_agent::status::REPAIR_REPORT_INTERVAL, in minutes",
        ),
        quote(
            AGENT_RECONCILERS,
            "A start counts once the unit is still up after {} ms",
            whole_millis(fleetlet_agent::reconcile::systemd_unit::START_SETTLE),
            "fleetlet_agent::reconcile::systemd_unit::START_SETTLE, in ms",
        ),
        quote(
            AGENT_RECONCILERS,
            "(1 s, 2 s, 4 s … {} min)",
            whole_minutes(Backoff::RESOURCE.max),
            "fleetlet_agent::backoff::Backoff::RESOURCE.max (the container restart backoff), in minutes",
        ),
        quote(
            AGENT_RECONCILERS,
            "a run of {} minutes resets the streak",
            whole_minutes(fleetlet_agent::reconcile::container::STABLE_RUN),
            "fleetlet_agent::reconcile::container::STABLE_RUN, in minutes",
        ),
        quote(
            AGENT_RECONCILERS,
            "apply waits at most {} ms",
            whole_millis(fleetlet_agent::reconcile::session_storage::SUMMARY_WAIT),
            "fleetlet_agent::reconcile::session_storage::SUMMARY_WAIT, in ms",
        ),
        quote(
            AGENT_RECONCILERS,
            "`QuotaExceeded` retries every {} s",
            whole_secs(fleetlet_agent::reconcile::session_storage::QUOTA_RECHECK),
            "fleetlet_agent::reconcile::session_storage::QUOTA_RECHECK, in seconds",
        ),
        quote(
            AGENT_STORE,
            "`FLEETLET_STORE_MAX_BYTES`, {} MiB by default",
            whole_units(agent_store_max, 1 << 20, "MiB"),
            "the agent's declared default of FLEETLET_STORE_MAX_BYTES, in MiB",
        ),
        quote(
            AGENT_STORE,
            "MiB by default, at least {} MiB)",
            whole_units(fleetlet_agent::config::MIN_STORE_MAX_BYTES, 1 << 20, "MiB"),
            "fleetlet_agent::config::MIN_STORE_MAX_BYTES, in MiB",
        ),
        quote(
            AGENT_STORE,
            "cannot shrink: the logs then keep {} KiB",
            whole_units(fleetlet_agent::store::fs::MIN_LOG_BUDGET, 1 << 10, "KiB"),
            "fleetlet_agent::store::fs::MIN_LOG_BUDGET, in KiB",
        ),
        quote(
            AGENT_STORE,
            "when more than {} files and directories wait",
            word(fleetlet_agent::store::fs::MAX_SEPARATE_SYNCS),
            "fleetlet_agent::store::fs::MAX_SEPARATE_SYNCS",
        ),
        quote(
            AGENT_STORE,
            "events in order, at most {})",
            grouped(fleetlet_agent::store::resilient::MAX_PENDING_EVENTS),
            "fleetlet_agent::store::resilient::MAX_PENDING_EVENTS",
        ),
        quote(
            AGENT_PROTOCOL,
            "the watch's long-poll ({} s by default)",
            whole_secs(agent_watch_wait),
            "the agent's declared default of FLEETLET_WATCH_WAIT, in seconds",
        ),
        quote(
            AGENT_PROTOCOL,
            "Every `FLEETLET_REPORT_INTERVAL` ({} min) `send_heartbeats`",
            whole_minutes(agent_default_duration("FLEETLET_REPORT_INTERVAL")),
            "the agent's declared default of FLEETLET_REPORT_INTERVAL, in minutes",
        ),
        quote(
            AGENT_PROTOCOL,
            "So: waits ≤ {} s,",
            max_wait.clone(),
            "fleetlet_manager::http::MAX_WAIT_SECONDS, in seconds",
        ),
        quote(
            AGENT_PROTOCOL,
            "So: waits ≤ {} s,",
            whole_secs(fleetlet_agent::config::MAX_WATCH_WAIT),
            "fleetlet_agent::config::MAX_WATCH_WAIT, in seconds",
        ),
        quote(
            AGENT_PROTOCOL,
            "s, watch wait {} s, staleness",
            whole_secs(agent_watch_wait),
            "the agent's declared default of FLEETLET_WATCH_WAIT, in seconds",
        ),
        quote(
            AGENT_PROTOCOL,
            "staleness after {} × the manager's `FLEETLET_REPORT_INTERVAL`",
            stale.to_string(),
            "fleetlet_manager::fleet::STALE_AFTER_INTERVALS",
        ),
        quote(
            AGENT_PROTOCOL,
            "the manager's `FLEETLET_REPORT_INTERVAL` (default {} min,",
            whole_minutes(report_interval),
            "the default of fleetlet_manager::config::Config's report_interval, in minutes",
        ),
        quote(
            AGENT_PROTOCOL,
            "min, so {} min) of no contact at all",
            whole_minutes(report_interval * stale as u32),
            "STALE_AFTER_INTERVALS × the default report_interval of fleetlet_manager, in minutes",
        ),
        quote(
            AGENT_PROTOCOL,
            "a proxy) falls back to {} s instead of failing forever",
            whole_secs(fleetlet_agent::client::SAFE_WATCH_WAIT),
            "fleetlet_agent::client::SAFE_WATCH_WAIT, in seconds",
        ),
    ]
}

#[test]
fn the_numbers_the_docs_quote_are_the_codes() {
    let docs: Vec<(&str, String)> = [
        README,
        REFERENCE,
        ARCHITECTURE,
        AGENT_STORE,
        AGENT_PROTOCOL,
        AGENT_RECONCILERS,
        MANAGER,
        AGENT_UNIT,
    ]
    .into_iter()
    .map(|name| (name, read_doc(name)))
    .collect();
    let problems: Vec<String> = quotes()
        .iter()
        .flat_map(|quote| {
            let (_, text) = docs
                .iter()
                .find(|(doc, _)| *doc == quote.doc)
                .expect("a doc this test reads");
            check_quote(text, quote)
        })
        .collect();
    assert!(
        problems.is_empty(),
        "the docs quote numbers the code does not have:\n  {}",
        problems.join("\n  ")
    );
}

/// The value of the number placed where `phrase` has `{}` in `doc`; exactly one place.
fn the_quoted_number(doc: &str, phrase: &str) -> u64 {
    let values = quoted_values(&read_doc(doc), phrase);
    assert_eq!(
        values.len(),
        1,
        "{doc}: expected one text matching \"{phrase}\", found {values:?}; if the sentence was \
         reworded, update its check in tests/tests/docs_match_code.rs"
    );
    values[0]
        .replace(',', "")
        .parse()
        .unwrap_or_else(|e| panic!("{doc}: \"{phrase}\" shows {:?}: {e}", values[0]))
}

#[test]
fn the_quoted_ranges_are_what_the_code_accepts() {
    use clap::Parser;
    use fleetlet_manifests::ResourceId;

    // Resource ids: "1–N characters".
    let longest = the_quoted_number(REFERENCE, "Resource `id`: 1–{} characters");
    let id = |len: u64| "a".repeat(usize::try_from(len).expect("small"));
    assert!(
        ResourceId::try_from(id(1).as_str()).is_ok()
            && ResourceId::try_from(id(longest).as_str()).is_ok(),
        "{REFERENCE} says a resource id has 1–{longest} characters, but \
         fleetlet_manifests::ResourceId refuses 1 or {longest}"
    );
    assert!(
        ResourceId::try_from("").is_err()
            && ResourceId::try_from(id(longest + 1).as_str()).is_err(),
        "{REFERENCE} says a resource id has 1–{longest} characters, but \
         fleetlet_manifests::ResourceId takes an empty one or one of {} characters",
        longest + 1
    );

    // The manager's FLEETLET_MAX_WAIT_SECONDS: "(1–N s; …)" in the README's table.
    let most = the_quoted_number(README, "longest long-poll wait accepted (1–{} s;");
    let parses = |seconds: u64| {
        let value = seconds.to_string();
        fleetlet_manager::config::Config::try_parse_from([
            "fleetlet-manager",
            "--max-wait-seconds",
            value.as_str(),
        ])
        .is_ok()
    };
    assert!(
        parses(1) && parses(most) && !parses(0) && !parses(most + 1),
        "{README} says FLEETLET_MAX_WAIT_SECONDS takes 1–{most}, but the manager's flag takes \
         0: {}, 1: {}, {most}: {}, {}: {}",
        parses(0),
        parses(1),
        parses(most),
        most + 1,
        parses(most + 1)
    );
}

#[test]
fn the_unit_suffixes_the_reference_lists_are_the_codes() {
    let text = read_doc(REFERENCE);
    let lead = "**SystemdUnit**: `name` ends in ";
    let start = text
        .find(lead)
        .unwrap_or_else(|| panic!("{REFERENCE}: no text matches \"{lead}\" any more"))
        + lead.len();
    let sentence = &text[start..start + text[start..].find(';').expect("the list ends with ;")];
    let mut listed: Vec<&str> = sentence.split('`').skip(1).step_by(2).collect();
    let mut code = fleetlet_manifests::ids::UNIT_SUFFIXES.to_vec();
    listed.sort_unstable();
    code.sort_unstable();
    assert_eq!(
        listed, code,
        "{REFERENCE}: \"{lead}{sentence}\" lists other unit types than \
         fleetlet_manifests::ids::UNIT_SUFFIXES"
    );
}

#[test]
fn the_pause_reasons_docs_fleets_lists_are_the_codes() {
    use fleetlet_manager::rollout::state::PauseCause;
    let codes: Vec<String> = PauseCause::ALL
        .iter()
        .map(|cause| format!("`{}`", cause.as_str()))
        .collect();
    let (last, rest) = codes.split_last().expect("pause causes");
    let listed = format!("`RolloutPaused` (reason {} or {last}", rest.join(", "));
    let text = read_doc("docs/fleets.md");
    assert!(
        text.contains(&listed),
        "docs/fleets.md should list the pause reasons the controller emits as \"{listed}\" \
         (fleetlet_manager::rollout::state::PauseCause)"
    );
}
