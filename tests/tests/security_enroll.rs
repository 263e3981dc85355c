//! Issue 8, acceptance 1, with the real binaries over PostgreSQL: a device enrolls itself with
//! the bootstrap token on first start, keeps its token (mode 0600) and reuses it after a
//! restart; a wrong bootstrap token is 401 and stops the agent; a rotated or revoked token is
//! refused at once. Conflicting token sources are configuration errors on both sides.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use fleetlet_tests::agent::{
    AgentDirs, AgentOptions, AgentProcess, file_resource, manifest, wait_for,
};
use fleetlet_tests::manager::{ManagerOptions, ManagerProcess, random_token, run_to_exit};
use fleetlet_tests::postgres::fresh_database;
use reqwest::Method;
use serde_json::{Value, json};

/// Agent options for a device that has no token, only the fleet's bootstrap token.
fn enrolling(agent_id: &str, url: &str, bootstrap: &str) -> AgentOptions {
    let mut options = AgentOptions::standalone(agent_id);
    options.standalone = false;
    options.env = vec![
        ("FLEETLET_MANAGER_URL".into(), url.to_owned()),
        ("FLEETLET_BOOTSTRAP_TOKEN".into(), bootstrap.to_owned()),
    ];
    options
}

async fn report_seq(
    manager: &ManagerProcess,
    client: &reqwest::Client,
    agent: &str,
) -> Option<u64> {
    let view = manager.status_json(client, agent).await?;
    view["status"]["reportSeq"].as_u64()
}

#[tokio::test]
async fn a_device_enrolls_keeps_its_token_and_loses_it_to_rotation_and_decommissioning()
-> anyhow::Result<()> {
    let database = fresh_database().await?;
    let bootstrap = random_token("bootstrap");
    let mut options = ManagerOptions::new(Some(&database.url));
    options
        .extra_env
        .insert("FLEETLET_BOOTSTRAP_TOKEN".into(), bootstrap.clone());
    // Debug level: the scan at the end must hold for what an operator turns on to debug.
    options.log_filter = "debug".to_owned();
    let mut manager = ManagerProcess::start_with(options).await?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let mut error_bodies = Vec::new();

    // First start: no token anywhere, so the agent enrolls and reports.
    let dirs = AgentDirs::new()?;
    let agent_options = enrolling("pi-enrolled", &manager.url, &bootstrap);
    let mut agent = AgentProcess::start(&dirs, &agent_options)?;
    let first_seq = wait_for(
        "the enrolled agent's first report",
        Duration::from_secs(30),
        || report_seq(&manager, &client, "pi-enrolled"),
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\nagent log:\n{}", agent.logs()))?;
    let token_file = dirs.state_dir().join("agents/pi-enrolled/token");
    let mode = std::fs::metadata(&token_file)?.permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the kept token is readable by others");
    let token = std::fs::read_to_string(&token_file)?.trim().to_owned();
    assert!(token.starts_with("flt_"));

    // The enrolled agent converges like any other.
    let target = dirs.root().join("motd");
    manager
        .put_manifest(
            &client,
            "pi-enrolled",
            &manifest(
                "pi-enrolled",
                vec![file_resource("motd", &target, "enrolled\n", "0644")],
            ),
        )
        .await?
        .error_for_status()?;
    wait_for(
        "the file to be written",
        Duration::from_secs(30),
        || async { (std::fs::read_to_string(&target).ok()? == "enrolled\n").then_some(()) },
    )
    .await?;

    // A restart reuses the kept token: a second enrollment would be a 409 and stop the agent.
    agent.terminate(Duration::from_secs(10))?;
    let agent = AgentProcess::start(&dirs, &agent_options)?;
    wait_for(
        "a report after the restart",
        Duration::from_secs(30),
        || async {
            let seq = report_seq(&manager, &client, "pi-enrolled").await?;
            (seq > first_seq).then_some(())
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\nagent log:\n{}", agent.logs()))?;
    assert_eq!(std::fs::read_to_string(&token_file)?.trim(), token);
    assert!(!agent.logs().contains(&token), "the agent logged its token");
    assert!(
        !agent.logs().contains(&bootstrap),
        "the agent logged the bootstrap token"
    );

    // Enrolling the same id again, by anyone, is a conflict.
    let again = client
        .post(format!("{}/api/v1/enroll", manager.url))
        .bearer_auth(&bootstrap)
        .json(&json!({"agentId": "pi-enrolled"}))
        .send()
        .await?;
    assert_eq!(again.status(), 409);
    error_bodies.push(again.text().await?);

    // Rotation: the kept token is refused on the very next request.
    let own_manifest = format!("{}/api/v1/agents/pi-enrolled/manifest", manager.url);
    assert_eq!(
        client
            .get(&own_manifest)
            .bearer_auth(&token)
            .send()
            .await?
            .status(),
        200
    );
    let new_token = manager.rotate_token(&client, "pi-enrolled").await?;
    let refused = client.get(&own_manifest).bearer_auth(&token).send().await?;
    assert_eq!(refused.status(), 401);
    error_bodies.push(refused.text().await?);
    assert_eq!(
        client
            .get(&own_manifest)
            .bearer_auth(&new_token)
            .send()
            .await?
            .status(),
        200
    );
    // Revocation by decommissioning: refused at once too.
    let response = manager
        .admin(&client, Method::DELETE, "/api/v1/agents/pi-enrolled")
        .send()
        .await?;
    assert_eq!(response.status(), 204);
    let refused = client
        .get(&own_manifest)
        .bearer_auth(&new_token)
        .send()
        .await?;
    assert_eq!(refused.status(), 401);
    error_bodies.push(refused.text().await?);

    // Acceptance 6 over this whole run: no token, no database password and no SQL in the
    // manager's or the agent's logs, nor in any error body.
    manager.kill()?;
    let password = database
        .url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .and_then(|(credentials, _)| credentials.split_once(':'))
        .map(|(_, password)| password.to_owned())
        .expect("the test database URL has a password");
    let texts = [
        ("manager log", manager.logs()),
        ("agent log", agent.logs()),
        ("error bodies", error_bodies.join("\n")),
    ];
    let secrets = [
        ("agent token", token.as_str()),
        ("rotated token", new_token.as_str()),
        ("bootstrap token", bootstrap.as_str()),
        ("admin token", manager.admin_token.as_str()),
        ("database password", password.as_str()),
    ];
    for (where_, text) in &texts {
        for (what, secret) in secrets {
            assert!(!text.contains(secret), "the {what} appears in the {where_}");
        }
        for sql in ["SELECT ", "INSERT INTO", "UPDATE agents", "token_hash"] {
            if let Some(line) = text.lines().find(|line| line.contains(sql)) {
                panic!("SQL text appears in the {where_}: {line}");
            }
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_wrong_bootstrap_token_is_unauthorized_and_stops_the_agent() -> anyhow::Result<()> {
    let database = fresh_database().await?;
    let mut options = ManagerOptions::new(Some(&database.url));
    options
        .extra_env
        .insert("FLEETLET_BOOTSTRAP_TOKEN".into(), random_token("bootstrap"));
    let manager = ManagerProcess::start_with(options).await?;
    let wrong = random_token("guess");

    let response = reqwest::Client::new()
        .post(format!("{}/api/v1/enroll", manager.url))
        .bearer_auth(&wrong)
        .json(&json!({"agentId": "pi-intruder"}))
        .send()
        .await?;
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await?;
    assert_eq!(body["error"]["kind"], "unauthorized");

    let dirs = AgentDirs::new()?;
    let mut agent = AgentProcess::start(&dirs, &enrolling("pi-intruder", &manager.url, &wrong))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = agent.exited()? {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the agent kept running with a wrong bootstrap token:\n{}",
            agent.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!status.success());
    let logs = agent.logs();
    assert!(logs.contains("refused the bootstrap token"), "{logs}");
    assert!(
        !logs.contains(&wrong),
        "the agent logged the bootstrap token"
    );
    assert!(!dirs.state_dir().join("agents/pi-intruder/token").exists());
    Ok(())
}

#[tokio::test]
async fn a_token_given_twice_is_a_configuration_error_on_both_sides() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "from-a-file\n")?;

    // The agent: FLEETLET_TOKEN and FLEETLET_TOKEN_FILE together.
    let dirs = AgentDirs::new()?;
    let mut options = AgentOptions::with_manager("pi-twice", "http://127.0.0.1:9", "inline");
    options.env.push((
        "FLEETLET_TOKEN_FILE".into(),
        token_file.display().to_string(),
    ));
    let output = options.run_once(&dirs)?;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("set only one of FLEETLET_TOKEN and FLEETLET_TOKEN_FILE"),
        "{stderr}"
    );

    // The manager: the same for its admin token.
    let mut options = ManagerOptions::new(None);
    options.dev = true;
    options.extra_env.insert(
        "FLEETLET_ADMIN_TOKEN_FILE".into(),
        token_file.display().to_string(),
    );
    let (status, output) = run_to_exit(&options, Duration::from_secs(20)).await?;
    assert!(!status.success());
    assert!(
        output.contains("set only one of FLEETLET_ADMIN_TOKEN and FLEETLET_ADMIN_TOKEN_FILE"),
        "{output}"
    );
    Ok(())
}
