//! `/metrics` of the real manager binary parses as Prometheus text (checked by a strict parser
//! written here and by `promtool check metrics`, whose path deploy/dev/validators.sh prints as
//! FLEETLET_PROMTOOL) and its counters move when the API is used.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use fleetlet_tests::manager::ManagerProcess;
use fleetlet_tests::postgres::fresh_database;
use fleetlet_tests::tools::promtool_check;
use reqwest::Method;
use serde_json::json;

/// One sample: metric name, sorted labels, value.
type Samples = BTreeMap<(String, BTreeMap<String, String>), f64>;

fn is_name(text: &str) -> bool {
    let mut chars = text.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Parses `{a="x",b="y"}`, with the text format's escapes, returning the labels and the rest.
fn parse_labels(text: &str) -> anyhow::Result<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    let mut rest = text.strip_prefix('{').context("labels start with {")?;
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let (name, after) = rest.split_once("=\"").context("label name=\"")?;
        if !is_name(name) || name.starts_with("__") {
            bail!("bad label name {name:?}");
        }
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    other => bail!("bad escape {other:?}"),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => bail!("unterminated label value"),
            }
        };
        if labels.insert(name.to_owned(), value).is_some() {
            bail!("label {name} twice");
        }
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

fn parse_value(text: &str) -> anyhow::Result<f64> {
    match text {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => text.parse().with_context(|| format!("bad value {text:?}")),
    }
}

/// A strict reading of the text exposition format 0.0.4: every sample belongs to a family
/// declared by `# TYPE` before it, families are not interleaved, names and labels are valid,
/// no sample appears twice, histograms have `_bucket` (with `le`, cumulative, ending in +Inf),
/// `_sum` and `_count` equal to the +Inf bucket.
fn parse_exposition(text: &str) -> anyhow::Result<Samples> {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut finished: Vec<String> = Vec::new();
    let mut current: Option<String> = None;
    let mut samples = Samples::new();
    for (number, line) in text.lines().enumerate() {
        let context = || format!("line {}: {line}", number + 1);
        if line.is_empty() {
            bail!("{}: empty line", context());
        }
        if let Some(comment) = line.strip_prefix("# ") {
            let mut words = comment.splitn(3, ' ');
            match (words.next(), words.next(), words.next()) {
                (Some("TYPE"), Some(name), Some(kind)) => {
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                        bail!("{}: unknown type", context());
                    }
                    if types.insert(name.to_owned(), kind.to_owned()).is_some() {
                        bail!("{}: family declared twice", context());
                    }
                    if let Some(previous) = current.replace(name.to_owned()) {
                        finished.push(previous);
                    }
                }
                (Some("HELP"), Some(name), Some(_)) if is_name(name) => {}
                _ => bail!("{}: bad comment", context()),
            }
            continue;
        }
        let name_end = line.find(['{', ' ']).with_context(context)?;
        let name = &line[..name_end];
        if !is_name(name) {
            bail!("{}: bad metric name", context());
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..]).with_context(context)?
        } else {
            (BTreeMap::new(), &line[name_end..])
        };
        let value = rest.strip_prefix(' ').with_context(context)?;
        let value = parse_value(value.split(' ').next().unwrap_or(value)).with_context(context)?;
        let family = types
            .iter()
            .filter(|(family, kind)| {
                name == family.as_str()
                    || (kind.as_str() == "histogram"
                        && ["_bucket", "_sum", "_count"]
                            .iter()
                            .any(|suffix| name == format!("{family}{suffix}")))
            })
            .map(|(family, _)| family.clone())
            .next()
            .with_context(|| format!("{}: no # TYPE before this sample", context()))?;
        if current.as_deref() != Some(family.as_str()) || finished.contains(&family) {
            bail!("{}: sample outside its family's block", context());
        }
        if types[&family] == "counter" && value < 0.0 {
            bail!("{}: negative counter", context());
        }
        if samples.insert((name.to_owned(), labels), value).is_some() {
            bail!("{}: duplicate sample", context());
        }
    }
    check_histograms(&types, &samples)?;
    Ok(samples)
}

fn check_histograms(types: &BTreeMap<String, String>, samples: &Samples) -> anyhow::Result<()> {
    for (family, _) in types.iter().filter(|(_, kind)| *kind == "histogram") {
        let mut series: BTreeMap<BTreeMap<String, String>, Vec<(f64, f64)>> = BTreeMap::new();
        for ((name, labels), value) in samples {
            if *name == format!("{family}_bucket") {
                let mut base = labels.clone();
                let le = base.remove("le").context("a bucket without le")?;
                series
                    .entry(base)
                    .or_default()
                    .push((parse_value(&le)?, *value));
            }
        }
        for (labels, mut buckets) in series {
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            if buckets.windows(2).any(|w| w[1].1 < w[0].1) {
                bail!("{family} {labels:?}: buckets are not cumulative");
            }
            let (last_le, last) = *buckets.last().context("no buckets")?;
            if last_le != f64::INFINITY {
                bail!("{family} {labels:?}: no +Inf bucket");
            }
            let count = samples
                .get(&(format!("{family}_count"), labels.clone()))
                .context("no _count")?;
            if *count != last {
                bail!("{family} {labels:?}: _count differs from the +Inf bucket");
            }
            samples
                .get(&(format!("{family}_sum"), labels.clone()))
                .context("no _sum")?;
        }
    }
    Ok(())
}

fn sample(samples: &Samples, name: &str, labels: &[(&str, &str)]) -> f64 {
    let labels: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    samples
        .get(&(name.to_owned(), labels))
        .copied()
        .unwrap_or(0.0)
}

async fn scrape(client: &reqwest::Client, manager: &ManagerProcess) -> anyhow::Result<Samples> {
    let text = scrape_text(client, manager).await?;
    parse_exposition(&text).with_context(|| format!("not Prometheus text:\n{text}"))
}

async fn scrape_text(client: &reqwest::Client, manager: &ManagerProcess) -> anyhow::Result<String> {
    let response = client
        .get(format!("{}/metrics", manager.url))
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    Ok(response.text().await?)
}

#[test]
fn the_parser_rejects_what_prometheus_rejects() {
    assert!(parse_exposition("# TYPE a counter\na 1\n").is_ok());
    assert!(parse_exposition("a 1\n").is_err(), "no TYPE");
    assert!(parse_exposition("# TYPE a counter\na{x=\"1\"} 1\na{x=\"1\"} 2\n").is_err());
    assert!(parse_exposition("# TYPE a counter\na{x=1} 1\n").is_err());
    assert!(parse_exposition("# TYPE a counter\na one\n").is_err());
    assert!(
        parse_exposition("# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n")
            .is_err(),
        "not cumulative"
    );
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_move_with_api_use() -> anyhow::Result<()> {
    let database = fresh_database().await?;
    let manager = ManagerProcess::start(&database.url).await?;
    let client = reqwest::Client::new();
    let route = "/api/v1/agents/{agent_id}/status";

    let before = scrape(&client, &manager).await?;
    assert_eq!(
        sample(&before, "fleetlet_agents", &[("state", "unknown")]),
        0.0
    );
    assert_eq!(sample(&before, "fleetlet_store_up", &[]), 1.0);

    let token = manager
        .register(&client, json!({"agentId": "pi-metrics", "labels": {}}))
        .await?;
    for _ in 0..3 {
        manager
            .admin(&client, Method::GET, "/api/v1/agents/pi-metrics/status")
            .send()
            .await?
            .error_for_status()?;
    }
    let missing = manager
        .admin(&client, Method::GET, "/api/v1/agents/nobody-here/status")
        .send()
        .await?;
    assert_eq!(missing.status(), 404);
    let report = json!({
        "apiVersion": "fleetlet.dev/v1", "kind": "AgentStatus", "agentId": "pi-metrics",
        "reportSeq": 5, "manifestGeneration": 0, "observedGeneration": 0,
        "observedAt": "2026-11-22T10:00:00Z",
        "agent": {"version": "0.1.0", "hostname": "pi", "arch": "aarch64", "os": "linux",
                  "startedAt": "2026-11-22T09:00:00Z"},
        "resources": {}
    });
    for _ in 0..2 {
        // The second is a replay of the same reportSeq: answered, but not accepted.
        client
            .put(format!("{}/api/v1/agents/pi-metrics/status", manager.url))
            .bearer_auth(&token)
            .json(&report)
            .send()
            .await?
            .error_for_status()?;
    }

    let after = scrape(&client, &manager).await?;
    let get_ok = [("method", "GET"), ("route", route), ("status", "200")];
    assert_eq!(
        sample(&after, "fleetlet_http_requests_total", &get_ok)
            - sample(&before, "fleetlet_http_requests_total", &get_ok),
        3.0
    );
    let not_found = [("method", "GET"), ("route", route), ("status", "404")];
    assert_eq!(
        sample(&after, "fleetlet_http_requests_total", &not_found),
        1.0
    );
    let created = [
        ("method", "POST"),
        ("route", "/api/v1/agents"),
        ("status", "201"),
    ];
    assert_eq!(
        sample(&after, "fleetlet_http_requests_total", &created),
        1.0
    );
    assert_eq!(
        sample(
            &after,
            "fleetlet_http_request_duration_seconds_count",
            &[("method", "GET"), ("route", route)]
        ),
        4.0
    );
    assert_eq!(
        sample(
            &after,
            "fleetlet_status_reports_total",
            &[("outcome", "accepted")]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &after,
            "fleetlet_status_reports_total",
            &[("outcome", "duplicate")]
        ),
        1.0
    );
    // The agent has reported now, and its id never appears as a label value.
    let agents: f64 = [
        "converged",
        "progressing",
        "degraded",
        "rolledBack",
        "stale",
        "unknown",
    ]
    .iter()
    .map(|state| sample(&after, "fleetlet_agents", &[("state", state)]))
    .sum();
    assert_eq!(agents, 1.0);
    assert_eq!(
        sample(&after, "fleetlet_agents", &[("state", "unknown")]),
        0.0
    );
    assert!(
        after
            .keys()
            .all(|(_, labels)| labels.values().all(|v| !v.contains("pi-metrics"))),
        "a raw path leaked into a label"
    );

    // An open long-poll shows up while it waits; a new generation answers it (200).
    let put_manifest = |text: &str| {
        manager
            .admin(&client, Method::PUT, "/api/v1/agents/pi-metrics/manifest")
            .json(
                &json!({"apiVersion": "fleetlet.dev/v1", "kind": "AgentManifest",
                          "agentId": "pi-metrics", "resources": [{"id": "motd",
                          "kind": "File", "spec": {"path": "/etc/motd",
                          "content": {"text": text}}}]}),
            )
            .send()
    };
    put_manifest("one\n").await?.error_for_status()?;
    let poll = tokio::spawn({
        let request = manager.admin(
            &client,
            Method::GET,
            "/api/v1/agents/pi-metrics/manifest?afterGeneration=1&waitSeconds=30",
        );
        async move { request.send().await }
    });
    fleetlet_tests::manager::wait_for(
        "a long-poll counted as open",
        std::time::Duration::from_secs(4),
        || {
            let client = client.clone();
            let manager = &manager;
            async move {
                let samples = scrape(&client, manager).await.ok()?;
                (sample(&samples, "fleetlet_long_polls_open", &[]) == 1.0).then_some(())
            }
        },
    )
    .await?;
    put_manifest("two\n").await?.error_for_status()?;
    let woken = poll.await??;
    assert_eq!(woken.status(), 200);
    // A poll whose wait runs out (304), and one refused before it waits (400).
    let timed_out = manager
        .admin(
            &client,
            Method::GET,
            "/api/v1/agents/pi-metrics/manifest?afterGeneration=2&waitSeconds=1",
        )
        .send()
        .await?;
    assert_eq!(timed_out.status(), 304);
    let refused = manager
        .admin(
            &client,
            Method::GET,
            "/api/v1/agents/pi-metrics/manifest?waitSeconds=1",
        )
        .send()
        .await?;
    assert_eq!(refused.status(), 400);

    let text = scrape_text(&client, &manager).await?;
    promtool_check(&text);
    let samples = parse_exposition(&text)?;
    let long_poll = "fleetlet_http_long_poll_duration_seconds";
    for status in ["200", "304"] {
        assert_eq!(
            sample(
                &samples,
                &format!("{long_poll}_count"),
                &[("status", status)]
            ),
            1.0,
            "{status}"
        );
    }
    // The buckets reach the deadline, so a default 300 s poll is not only in +Inf.
    let bucket = |le: &str| {
        sample(
            &samples,
            &format!("{long_poll}_bucket"),
            &[("status", "304"), ("le", le)],
        )
    };
    assert_eq!(
        (bucket("0.1"), bucket("300"), bucket("315")),
        (0.0, 1.0, 1.0)
    );
    let request_bucket = |le: &str| {
        samples.contains_key(&(
            "fleetlet_http_request_duration_seconds_bucket".to_owned(),
            [("method", "GET"), ("route", route), ("le", le)]
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        ))
    };
    assert!(request_bucket("120") && request_bucket("315"));
    // Only the refused poll counts as an ordinary request of the manifest route.
    assert_eq!(
        sample(
            &samples,
            "fleetlet_http_request_duration_seconds_count",
            &[
                ("method", "GET"),
                ("route", "/api/v1/agents/{agent_id}/manifest")
            ]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &samples,
            "fleetlet_http_requests_total",
            &[
                ("method", "GET"),
                ("route", "/api/v1/agents/{agent_id}/manifest"),
                ("status", "304")
            ]
        ),
        1.0
    );
    Ok(())
}
