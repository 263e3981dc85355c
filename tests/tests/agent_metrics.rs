//! The real agent's textfile metrics (FLEETLET_METRICS_FILE): the `.prom` file passes
//! `promtool check metrics` (FLEETLET_PROMTOOL, from deploy/dev/validators.sh), says what the
//! agent converged, is replaced atomically, and is not rewritten by passes that change nothing.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use fleetlet_tests::agent::{
    AgentDirs, AgentOptions, AgentProcess, ManagerProcess, file_resource, manifest,
    unique_agent_id, wait_for,
};
use fleetlet_tests::tools::promtool_check;

/// Bounds a wait for the agent; a passing test never waits it out.
const WAIT: Duration = Duration::from_secs(30);

/// The value of one series, written exactly as in the file (`name{label="v"}`).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.parse().ok())
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Waits until the metrics file holds `series` with `expected`, and returns its text.
async fn wait_for_value(path: &Path, series: &str, expected: f64) -> anyhow::Result<String> {
    wait_for(
        &format!("{} to say {series} {expected}", path.display()),
        WAIT,
        || async {
            let text = read(path);
            (value(&text, series) == Some(expected)).then_some(text)
        },
    )
    .await
}

#[tokio::test]
async fn a_standalone_agent_writes_what_it_converged_to_a_prom_file() -> anyhow::Result<()> {
    let agent_id = "pi-metrics";
    let dirs = AgentDirs::new()?;
    let root = dirs.root();
    let collector = dirs.base().join("textfile_collector");
    std::fs::create_dir(&collector)?;
    let path = collector.join("fleetlet.prom");
    let resources = vec![
        file_resource("motd", &root.join("etc/motd"), "hello\n", "0644"),
        file_resource("conf", &root.join("etc/app.ini"), "a=1\n", "0600"),
        file_resource("banner", &root.join("etc/banner"), "hi\n", "0644"),
    ];
    let ready = resources.len() as f64;
    dirs.write_manifest(&manifest(agent_id, resources.clone()))?;
    let mut options = AgentOptions::standalone(agent_id);
    options
        .env
        .push(("FLEETLET_METRICS_FILE".into(), path.display().to_string()));
    let agent = AgentProcess::start(&dirs, &options)?;

    let ready_series = "fleetlet_agent_resources{kind=\"File\",phase=\"Ready\"}";
    let text = wait_for_value(&path, ready_series, ready).await?;
    promtool_check(&text);
    let status = wait_for("the stored status", WAIT, || async {
        dirs.stored_status(agent_id)
            .filter(|s| s.observed_generation == s.manifest_generation)
    })
    .await?;
    let text = wait_for_value(
        &path,
        "fleetlet_agent_observed_generation",
        status.observed_generation as f64,
    )
    .await?;
    assert_eq!(
        value(&text, "fleetlet_agent_manifest_generation"),
        Some(status.manifest_generation as f64)
    );
    assert_eq!(value(&text, ready_series), Some(ready));
    assert_eq!(
        value(
            &text,
            "fleetlet_agent_resources{kind=\"File\",phase=\"Failed\"}"
        ),
        Some(0.0)
    );
    assert_eq!(
        value(&text, "fleetlet_agent_condition{type=\"Ready\"}"),
        Some(1.0)
    );
    assert_eq!(value(&text, "fleetlet_agent_store_errors_total"), Some(0.0));
    let info = format!(
        "fleetlet_agent_info{{version=\"{}\",arch=\"{}\",os=\"linux\"}}",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::ARCH
    );
    assert_eq!(value(&text, &info), Some(1.0), "{text}");
    let passes = value(&text, "fleetlet_agent_pass_duration_seconds_count").unwrap_or(0.0);
    assert!(passes >= 1.0, "{text}");
    // Standalone: no manager, so no report delivery.
    assert!(!text.contains("fleetlet_agent_report_pending"), "{text}");

    // Idle passes (every 500 ms here) do not rewrite the file: the same inode stays while
    // several run. That they did run shows in the pass count of the next write.
    let inode = std::fs::metadata(&path)?.ino();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        std::fs::metadata(&path)?.ino(),
        inode,
        "rewritten with nothing new"
    );

    // A resource outside the file roots fails: the next write says so at once.
    let mut failing = resources;
    failing.push(file_resource(
        "outside",
        &dirs.outside().join("evil.txt"),
        "no\n",
        "0644",
    ));
    dirs.write_manifest(&manifest(agent_id, failing))?;
    let text = wait_for_value(
        &path,
        "fleetlet_agent_resources{kind=\"File\",phase=\"Failed\"}",
        1.0,
    )
    .await?;
    promtool_check(&text);
    assert_eq!(
        value(
            &text,
            "fleetlet_agent_failed_resources{reason=\"PathNotAllowed\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(value(&text, ready_series), Some(ready));
    let later = value(&text, "fleetlet_agent_pass_duration_seconds_count").unwrap_or(0.0);
    assert!(
        later >= passes + 3.0,
        "the idle wait saw {} passes",
        later - passes
    );
    // A hand edit is repaired, and the repair is counted.
    std::fs::write(root.join("etc/motd"), "edited by hand\n")?;
    let text = wait_for_value(&path, "fleetlet_agent_repairs{kind=\"File\"}", 1.0).await?;
    promtool_check(&text);
    // Only the file is in the collector's directory: the temporary one was renamed over it.
    let names: Vec<_> = std::fs::read_dir(&collector)?
        .map(|entry| entry.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    assert_eq!(names, ["fleetlet.prom"]);
    drop(agent);
    Ok(())
}

#[tokio::test]
async fn an_agent_with_a_manager_reports_delivery_in_its_prom_file() -> anyhow::Result<()> {
    let manager = ManagerProcess::start().await?;
    let agent_id = unique_agent_id("pi-metrics");
    let mut options = manager.enroll(&agent_id).await?;
    let dirs = AgentDirs::new()?;
    let root = dirs.root();
    let path = dirs.base().join("agent.prom");
    let generation = manager
        .put_resources(
            &agent_id,
            vec![
                file_resource("motd", &root.join("etc/motd"), "hello\n", "0644"),
                file_resource("conf", &root.join("etc/app.ini"), "a=1\n", "0600"),
            ],
        )
        .await?;
    options
        .env
        .push(("FLEETLET_METRICS_FILE".into(), path.display().to_string()));
    let agent = AgentProcess::start(&dirs, &options)?;

    // The report of the converged state reaches the manager; a later pass sees the outbox
    // empty and writes when that report was made: the observedAt of the status the manager
    // holds.
    let text = wait_for("the converged report delivered", WAIT, || async {
        let held = manager
            .status(&agent_id)
            .await
            .ok()?
            .status?
            .observed_at
            .unix_timestamp();
        let text = read(&path);
        (value(&text, "fleetlet_agent_observed_generation") == Some(generation as f64)
            && value(&text, "fleetlet_agent_report_pending") == Some(0.0)
            && value(&text, "fleetlet_agent_last_report_timestamp_seconds") == Some(held as f64))
        .then_some(text)
    })
    .await?;
    promtool_check(&text);
    assert_eq!(
        value(&text, "fleetlet_agent_manifest_generation"),
        Some(generation as f64)
    );
    assert_eq!(
        value(
            &text,
            "fleetlet_agent_resources{kind=\"File\",phase=\"Ready\"}"
        ),
        Some(2.0)
    );
    assert_eq!(
        value(&text, "fleetlet_agent_condition{type=\"Offline\"}"),
        Some(0.0),
        "{text}"
    );
    drop(agent);
    Ok(())
}
