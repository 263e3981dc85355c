//! Issue 8, acceptance 5: HTTPS end to end. The test makes a CA and a server certificate (rcgen),
//! the real manager serves HTTPS with them, and the real agent, trusting only that CA,
//! converges a File manifest; the CLI works with `--ca-file`. Against a certificate from a CA it
//! was not given, the agent reports nothing and writes nothing, and the CLI fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use fleetlet_tests::agent::{
    AgentDirs, AgentOptions, AgentProcess, binary, file_resource, manifest, wait_for,
};
use fleetlet_tests::manager::{ManagerOptions, ManagerProcess};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use reqwest::Method;
use serde_json::{Value, json};

/// A CA and a server certificate it signed for 127.0.0.1 and localhost, as PEM files.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn create(name: &str) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("fleetlet-pki-").tempdir()?;
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let server_key = KeyPair::generate()?;
        let mut server_params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?;
        server_params
            .distinguished_name
            .push(DnType::CommonName, "fleetlet-manager");
        let server_cert = server_params.signed_by(&server_key, &issuer)?;

        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem())?;
        std::fs::write(dir.path().join("server.pem"), server_cert.pem())?;
        std::fs::write(dir.path().join("server.key"), server_key.serialize_pem())?;
        Ok(Self { dir })
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn cert(&self) -> PathBuf {
        self.dir.path().join("server.pem")
    }

    fn key(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }
}

async fn start_https_manager(pki: &Pki) -> anyhow::Result<ManagerProcess> {
    let mut options = ManagerOptions::new(None);
    options.dev = true;
    options
        .extra_env
        .insert("FLEETLET_TLS_CERT".into(), pki.cert().display().to_string());
    options
        .extra_env
        .insert("FLEETLET_TLS_KEY".into(), pki.key().display().to_string());
    let manager = ManagerProcess::start_with(options).await?;
    assert!(manager.url.starts_with("https://"), "{}", manager.url);
    Ok(manager)
}

fn client_trusting(ca: &Path) -> anyhow::Result<reqwest::Client> {
    let pem = std::fs::read(ca)?;
    Ok(reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&pem)?)
        .timeout(Duration::from_secs(10))
        .build()?)
}

fn cli(manager: &ManagerProcess, ca: Option<&Path>, args: &[&str]) -> std::process::Output {
    let mut command = Command::new(binary("fleetlet"));
    command
        .env_clear()
        .env("FLEETLET_URL", &manager.url)
        .env("FLEETLET_TOKEN", &manager.admin_token)
        // No config file of the machine's user may leak in.
        .env("XDG_CONFIG_HOME", "/nonexistent");
    if let Some(ca) = ca {
        command.arg("--ca-file").arg(ca);
    }
    command.args(args).output().expect("runs the CLI")
}

#[tokio::test]
async fn over_https_an_agent_trusting_the_ca_converges_and_the_cli_works() -> anyhow::Result<()> {
    let pki = Pki::create("fleet")?;
    let manager = start_https_manager(&pki).await?;
    let client = client_trusting(&pki.ca())?;
    assert_eq!(
        client
            .get(format!("{}/healthz", manager.url))
            .send()
            .await?
            .status(),
        200
    );

    // The CLI registers the agent over HTTPS.
    let added = cli(&manager, Some(&pki.ca()), &["agent", "add", "pi-tls"]);
    assert!(added.status.success(), "{added:?}");
    let token = String::from_utf8(added.stdout)?.trim().to_owned();

    let dirs = AgentDirs::new()?;
    let target = dirs.root().join("motd");
    let desired = manifest(
        "pi-tls",
        vec![file_resource("motd", &target, "over tls\n", "0644")],
    );
    manager
        .put_manifest(&client, "pi-tls", &desired)
        .await?
        .error_for_status()?;

    let mut options = AgentOptions::with_manager("pi-tls", &manager.url, &token);
    options
        .env
        .push(("FLEETLET_CA_FILE".into(), pki.ca().display().to_string()));
    let agent = AgentProcess::start(&dirs, &options)?;
    wait_for(
        "the agent to converge over HTTPS",
        Duration::from_secs(30),
        || async {
            let view = manager.status_json(&client, "pi-tls").await?;
            (view["summary"]["converged"] == json!(true)).then_some(())
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\nagent log:\n{}", agent.logs()))?;
    assert_eq!(std::fs::read_to_string(&target)?, "over tls\n");
    Ok(())
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_by_the_agent_and_the_cli() -> anyhow::Result<()> {
    let pki = Pki::create("fleet")?;
    let stranger = Pki::create("stranger")?;
    let manager = start_https_manager(&pki).await?;
    let client = client_trusting(&pki.ca())?;
    let token = manager
        .register(&client, json!({"agentId": "pi-wary"}))
        .await?;
    let dirs = AgentDirs::new()?;
    let target = dirs.root().join("motd");
    manager
        .put_manifest(
            &client,
            "pi-wary",
            &manifest(
                "pi-wary",
                vec![file_resource("motd", &target, "must not arrive\n", "0644")],
            ),
        )
        .await?
        .error_for_status()?;

    // The agent trusts only the stranger CA: the handshake fails, it says so, and it neither
    // receives the manifest nor reports.
    let mut options = AgentOptions::with_manager("pi-wary", &manager.url, &token);
    options.env.push((
        "FLEETLET_CA_FILE".into(),
        stranger.ca().display().to_string(),
    ));
    let agent = AgentProcess::start(&dirs, &options)?;
    agent
        .wait_for_log(&["certificate"], Duration::from_secs(20))
        .await?;
    let view: Value = manager
        .admin(&client, Method::GET, "/api/v1/agents/pi-wary/status")
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(view["status"], Value::Null, "the agent reported: {view}");
    assert!(!target.exists(), "the manifest reached the agent");
    assert!(!agent.logs().contains(&token), "the agent logged its token");

    // The CLI: with the stranger CA, with none (system roots), and over plain HTTP, it fails.
    for ca in [Some(stranger.ca()), None] {
        let output = cli(&manager, ca.as_deref(), &["get", "agents"]);
        assert!(!output.status.success(), "{output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("certificate"), "{stderr}");
    }
    let plain = manager.url.replacen("https://", "http://", 1);
    let answer = reqwest::Client::new()
        .get(format!("{plain}/healthz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(answer.is_err(), "plain HTTP was answered: {answer:?}");
    Ok(())
}
