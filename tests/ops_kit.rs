//! The ops kit (README "Operate", "Monitoring"): the Prometheus alert rules `ops/prometheus/duet-alerts.yml` and the
//! Grafana dashboard `ops/grafana/duet-dashboard.json`.
//!
//! - `promtool check rules` accepts the rules and `promtool test rules` passes their unit tests
//!   (`duet-alerts.test.yml`), which must show every alert firing and at least one case where an alert must not fire
//!   (promtool is Debian's `prometheus` package; without it the test prints SKIPPED, under `CI` it fails).
//! - Every metric name in a rule or a dashboard query is one a real daemon exports: a daemon started here, driven
//!   through a booking, joins, a signaling socket, a refused upgrade, TURN TLS and a TURN allocation, and connection
//!   caps, is scraped; the few families that appear only on events this test does not cause are listed with the reason
//!   ([`NOT_SCRAPED`]) and must at least be registered in `src/metrics.rs`.
//! - The gauges the alerts need: `duet_tls_certificate_expiry_timestamp_seconds{listener}` is each served
//!   certificate's notAfter, follows a renewal on SIGHUP and keeps its value when a bad file is refused;
//!   `duet_turn_allocations_limit` is `[turn] max_allocations`.

mod common;

use std::collections::BTreeSet;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use yaml_rust2::{Yaml, YamlLoader};

use common::process::{run_bounded, tools_available};
use common::{
    Daemon, TurnUdpClient, join_as, metric, ready_addr, sighup, signal_first_frame, start_with_ready, turn_credentials,
    write_tls_pair,
};

fn ops(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("ops").join(path)
}

fn yaml(path: &Path) -> Yaml {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut docs = YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()));
    assert_eq!(docs.len(), 1, "{}: one YAML document", path.display());
    docs.remove(0)
}

/// Every rule of the rules file: (alert name, expression, labels, annotations).
fn rules() -> Vec<(String, String, Yaml, Yaml)> {
    let doc = yaml(&ops("prometheus/duet-alerts.yml"));
    let groups = doc["groups"].as_vec().expect("groups: a list");
    assert!(!groups.is_empty());
    groups
        .iter()
        .flat_map(|g| g["rules"].as_vec().expect("each group has rules").iter())
        .map(|r| {
            let alert = r["alert"].as_str().expect("only alerting rules (alert:)").to_string();
            let expr = r["expr"].as_str().unwrap_or_else(|| panic!("{alert}: expr")).to_string();
            (alert, expr, r["labels"].clone(), r["annotations"].clone())
        })
        .collect()
}

/// Every query of the dashboard (panels, nested row panels, template variables' definitions).
fn dashboard_exprs(dash: &Value) -> Vec<String> {
    fn panels<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for p in list.as_array().into_iter().flatten() {
            out.push(p);
            panels(&p["panels"], out);
        }
    }
    let mut all = Vec::new();
    panels(&dash["panels"], &mut all);
    all.iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .map(|t| t["expr"].as_str().expect("every target has a PromQL expr").to_string())
        .collect()
}

fn dashboard() -> Value {
    let text = std::fs::read_to_string(ops("grafana/duet-dashboard.json")).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("duet-dashboard.json is not JSON: {e}"))
}

/// PromQL aggregation operators (followed by `by`/`without` or a parenthesis, never metric names).
const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];

/// The metric names a PromQL expression selects: identifiers that are not functions, aggregations, keywords,
/// numbers or durations, outside label matchers `{…}`, ranges `[…]`, strings, Grafana variables (`$x`, `${x}`) and
/// the label lists of `by`, `without`, `on`, `ignoring`, `group_left` and `group_right`.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let s: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut label_list_next = false;
    let mut i = 0;
    // Index after the closing `close` of the group opened at `i`, strings inside skipped.
    let skip_group = |mut i: usize, close: char| -> usize {
        while i < s.len() && s[i] != close {
            if matches!(s[i], '"' | '\'' | '`') {
                let q = s[i];
                i += 1;
                while i < s.len() && s[i] != q {
                    i += if s[i] == '\\' { 2 } else { 1 };
                }
            }
            i += 1;
        }
        i + 1
    };
    while i < s.len() {
        let c = s[i];
        if matches!(c, '"' | '\'' | '`') {
            i += 1;
            while i < s.len() && s[i] != c {
                i += if s[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c == '{' {
            i = skip_group(i + 1, '}');
        } else if c == '[' {
            i = skip_group(i + 1, ']');
        } else if c == '(' && label_list_next {
            label_list_next = false;
            i = skip_group(i + 1, ')');
        } else if c == '$' {
            i += 1;
            if i < s.len() && s[i] == '{' {
                i = skip_group(i + 1, '}');
            } else {
                while i < s.len() && (s[i].is_ascii_alphanumeric() || s[i] == '_') {
                    i += 1;
                }
            }
        } else if c.is_ascii_digit() || (c == '.' && s.get(i + 1).is_some_and(char::is_ascii_digit)) {
            while i < s.len() && (s[i].is_ascii_alphanumeric() || s[i] == '.' || s[i] == '_') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < s.len() && (s[i].is_ascii_alphanumeric() || s[i] == '_' || s[i] == ':') {
                i += 1;
            }
            let word: String = s[start..i].iter().collect();
            let lower = word.to_ascii_lowercase();
            if ["by", "without", "on", "ignoring", "group_left", "group_right"].contains(&lower.as_str()) {
                label_list_next = true;
                continue;
            }
            let next = s[i..].iter().find(|c| !c.is_whitespace());
            let keyword = ["and", "or", "unless", "bool", "offset", "inf", "nan", "atan2"].contains(&lower.as_str());
            if keyword || AGGREGATIONS.contains(&lower.as_str()) || next == Some(&'(') {
                continue;
            }
            names.insert(word);
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn promql_metric_names_are_found() {
    let expr = r#"sum without (transport) (rate(duet_a_total{code=~"5..",x="}"}[$__rate_interval])) / on(job)
        group_left(listener) max by (instance) (duet_b{instance=~"$instance"}) > 0.8 * 1e3 unless ${v} or
        duet_c offset 5m and time() - duet_d:ratio"#;
    let want: BTreeSet<String> = ["duet_a_total", "duet_b", "duet_c", "duet_d:ratio"].map(String::from).into();
    assert_eq!(metric_names(expr), want);
}

#[test]
fn promtool_checks_and_tests_the_rules() {
    let test = "ops_kit::promtool_checks_and_tests_the_rules";
    if !tools_available(test, &["promtool"], "apt-get install prometheus") {
        return;
    }
    let dir = ops("prometheus");
    let check = run_bounded(
        Command::new("promtool").current_dir(&dir).args(["check", "rules", "duet-alerts.yml"]),
        Duration::from_secs(60),
    );
    check.assert_success("promtool check rules duet-alerts.yml");
    let n = rules().len();
    assert!(check.stdout.contains(&format!("SUCCESS: {n} rules found")), "{}", check.stdout);
    let unit = run_bounded(
        Command::new("promtool").current_dir(&dir).args(["test", "rules", "duet-alerts.test.yml"]),
        Duration::from_secs(120),
    );
    unit.assert_success("promtool test rules duet-alerts.test.yml");
    assert!(unit.stdout.contains("SUCCESS"), "{}", unit.stdout);
}

/// Each alert has a severity, a summary and a description, and the unit tests make each one fire; at least one case
/// expects no alert.
#[test]
fn every_alert_is_tested() {
    let rules = rules();
    let names: BTreeSet<&str> = rules.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(names.len(), rules.len(), "alert names are unique");
    for (alert, _, labels, annotations) in &rules {
        assert!(
            matches!(labels["severity"].as_str(), Some("critical" | "warning")),
            "{alert}: severity critical or warning"
        );
        for key in ["summary", "description"] {
            assert!(annotations[key].as_str().is_some_and(|s| !s.is_empty()), "{alert}: annotation {key}");
        }
    }
    let tests = yaml(&ops("prometheus/duet-alerts.test.yml"));
    assert_eq!(tests["rule_files"].as_vec().map(Vec::len), Some(1));
    assert_eq!(tests["rule_files"][0].as_str(), Some("duet-alerts.yml"));
    let cases: Vec<&Yaml> = tests["tests"]
        .as_vec()
        .expect("tests: a list")
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_vec().into_iter().flatten())
        .collect();
    let fired: BTreeSet<&str> = cases
        .iter()
        .filter(|c| c["exp_alerts"].as_vec().is_some_and(|a| !a.is_empty()))
        .filter_map(|c| c["alertname"].as_str())
        .collect();
    let untested: Vec<&&str> = names.difference(&fired).collect();
    assert!(untested.is_empty(), "alerts no unit test makes fire: {untested:?}");
    let unknown: Vec<&&str> = fired.difference(&names).collect();
    assert!(unknown.is_empty(), "unit tests of alerts that do not exist: {unknown:?}");
    assert!(
        cases.iter().any(|c| c["exp_alerts"].as_vec().is_some_and(Vec::is_empty)),
        "at least one case where an alert must not fire"
    );
}

/// The dashboard: a Prometheus data source variable used by every panel and query, a node variable, and a panel for
/// each part of the daemon an operator watches.
#[test]
fn dashboard_is_well_formed() {
    let dash = dashboard();
    assert!(dash["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(dash["uid"].as_str().is_some_and(|t| !t.is_empty()));
    let vars = dash["templating"]["list"].as_array().expect("templating.list");
    let ds = vars.iter().find(|v| v["type"] == "datasource").expect("a data source variable");
    assert_eq!(ds["query"], "prometheus");
    let ds_ref = format!("${{{}}}", ds["name"].as_str().unwrap());
    let node = vars.iter().find(|v| v["name"] == "instance").expect("an instance variable");
    assert_eq!(node["datasource"]["uid"], ds_ref.as_str());
    let mut ids = BTreeSet::new();
    for p in dash["panels"].as_array().expect("panels") {
        assert!(ids.insert(p["id"].as_i64().expect("panel id")), "panel ids are unique");
        let g = &p["gridPos"];
        let (x, w) = (g["x"].as_i64().unwrap(), g["w"].as_i64().unwrap());
        assert!(x >= 0 && w > 0 && x + w <= 24 && g["h"].as_i64().unwrap() > 0, "gridPos of {}", p["title"]);
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], ds_ref.as_str(), "data source of panel {}", p["title"]);
        let targets = p["targets"].as_array().unwrap_or_else(|| panic!("panel {} has targets", p["title"]));
        assert!(!targets.is_empty());
        for t in targets {
            assert_eq!(t["datasource"]["uid"], ds_ref.as_str(), "data source of a query of {}", p["title"]);
            let expr = t["expr"].as_str().unwrap();
            if !expr.contains("job=\"duet\"") {
                assert!(expr.contains("instance=~\"$instance\""), "query follows the node variable: {expr}");
            }
        }
    }
    let used: BTreeSet<String> = dashboard_exprs(&dash).iter().flat_map(|e| metric_names(e)).collect();
    for family in [
        "duet_rooms_active",
        "duet_call_events_total",
        "duet_turn_allocations_active",
        "duet_turn_allocations_limit",
        "duet_turn_relayed_bytes_total",
        "duet_turn_auth_failures_total",
        "duet_signal_connections",
        "duet_signal_messages_total",
        "duet_signal_closes_total",
        "duet_bookings_total",
        "duet_join_attempts_total",
        "duet_webhook_backlog",
        "duet_http_requests_total",
        "duet_cluster_redis_up",
        "duet_tls_certificate_expiry_timestamp_seconds",
    ] {
        assert!(used.contains(family), "the dashboard has a panel on {family}");
    }
}

/// Names in the rules or the dashboard that a scrape of the daemon in [`rules_and_dashboard_use_exported_metrics`]
/// does not show, and why.
const NOT_SCRAPED: &[(&str, &str)] = &[
    ("up", "Prometheus' own series for each scrape target"),
    ("duet_cluster_redis_up", "registered only in cluster mode ([cluster] redis_url)"),
    ("duet_cluster_bus_messages_total", "registered only in cluster mode ([cluster] redis_url)"),
    ("duet_webhook_deliveries_total", "first series on a webhook delivery attempt (tests/webhooks.rs)"),
    ("duet_email_sent_total", "first series on an outbox email ([email] set; tests/email.rs)"),
    ("duet_signal_drops_total", "first series on a dropped signaling message"),
];

/// Names not yet in `src/metrics.rs` because another module registers them (cluster mode).
const REGISTERED_ELSEWHERE: &[&str] = &["up", "duet_cluster_redis_up", "duet_cluster_bus_messages_total"];

/// A self-signed certificate for localhost valid until `not_after` (Unix seconds): (cert PEM, key PEM).
fn certificate(not_after: i64) -> (String, String) {
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("certificate parameters");
    params.not_after = time::OffsetDateTime::from_unix_timestamp(not_after).unwrap();
    let key = rcgen::KeyPair::generate().expect("generate key");
    let cert = params.self_signed(&key).expect("self-sign");
    (cert.pem(), key.serialize_pem())
}

/// Opens TCP connections to `addr` (kept in `held`) until one is closed by the server at once (a connection cap):
/// true when that happened within `max` connections.
fn until_refused(addr: SocketAddr, max: usize, held: &mut Vec<TcpStream>) -> bool {
    for _ in 0..max {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        let mut buf = [0u8; 1];
        match s.read(&mut buf) {
            Ok(0) => return true,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            _ => held.push(s),
        }
    }
    false
}

#[tokio::test]
async fn rules_and_dashboard_use_exported_metrics() {
    let tls_dir = tempfile::tempdir().unwrap();
    let pair = certificate(1_900_000_000);
    let (cert, key) = write_tls_pair(tls_dir.path(), &pair.0, &pair.1);
    let config = format!(
        "[http]\nmax_connections_per_ip = 24\n\n[turn]\nlisten_tcp = [\"127.0.0.1:0\"]\nlisten_tls = [\"127.0.0.1:0\"]\n\
         tls_cert = {:?}\ntls_key = {:?}\nstream_connections_per_ip = 2\n",
        cert.display().to_string(),
        key.display().to_string()
    );
    let (d, ready) = start_with_ready(&config);

    // A booking, both joins, the host's signaling socket, a forged token, a TURN allocation.
    let booking = d.booking_now(0, 600).await;
    let host = join_as(&d, &booking, "host").await;
    let guest = join_as(&d, &booking, "guest").await;
    assert!(signal_first_frame(&host).await.is_ok(), "the host's socket gets its welcome");
    let mut forged = guest.clone();
    forged["session_token"] = Value::from("not-a-token");
    // Refused after the upgrade with close 4001: counted in the refusals and the closes.
    assert_eq!(signal_first_frame(&forged).await, Err(4001), "a forged token is refused");
    let (_, username, password) = turn_credentials(&guest);
    let mut turn = TurnUdpClient::connect(d.turn_udp, &username, &password).await;
    turn.allocate().await.expect("TURN allocation");
    let (status, _) =
        d.create_booking_with("wrong-key-wrong-key-wrong-key-wrong-key", &common::booking_body(60, 600)).await;
    assert_eq!(status, 401);
    // The connection caps: HTTP per client IP, TURN TCP per client IP.
    let mut held = Vec::new();
    assert!(until_refused(d.http, 40, &mut held), "the HTTP per-IP cap closes a connection");
    let turn_tcp = ready_addr(&ready, "turn_tcp").expect("turn_tcp in the ready line");
    assert!(until_refused(turn_tcp, 10, &mut held), "the TURN TCP per-IP cap closes a connection");
    drop(held);

    // The recorder writes the call facts of the joins asynchronously: wait for its counters.
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = d.metrics().await;
        if text.contains("duet_call_events_total{") || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let exported: BTreeSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();

    let mut used = BTreeSet::new();
    for (alert, expr, _, _) in rules() {
        for name in metric_names(&expr) {
            used.insert((name, format!("alert {alert}")));
        }
    }
    for expr in dashboard_exprs(&dashboard()) {
        for name in metric_names(&expr) {
            used.insert((name, "the dashboard".to_string()));
        }
    }
    assert!(used.len() > 30, "the extractor found the names: {used:?}");
    let sources = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/metrics.rs")).unwrap();
    let mut unknown = Vec::new();
    for (name, from) in &used {
        if exported.contains(name.as_str()) {
            continue;
        }
        match NOT_SCRAPED.iter().find(|(n, _)| n == name) {
            Some(_) if REGISTERED_ELSEWHERE.contains(&name.as_str()) => {}
            Some(_) if sources.contains(&format!("\"{name}\"")) => {}
            Some(_) => unknown.push(format!("{name} (in {from}): listed as not scraped, but not in src/metrics.rs")),
            None => unknown.push(format!("{name} (in {from})")),
        }
    }
    assert!(
        unknown.is_empty(),
        "metric names the daemon does not export:\n{}\n\n/metrics:\n{text}",
        unknown.join("\n")
    );
    // Every exception is still used (no stale entries).
    let used_names: BTreeSet<&str> = used.iter().map(|(n, _)| n.as_str()).collect();
    for (name, why) in NOT_SCRAPED {
        assert!(used_names.contains(name), "NOT_SCRAPED lists {name} ({why}), which no rule or panel uses");
    }
}

/// `duet_tls_certificate_expiry_timestamp_seconds{listener}` for the http, vy and turn listeners is each
/// certificate's notAfter; after a renewal and SIGHUP it is the new one's; a bad file on SIGHUP is refused and the
/// value stays. `duet_turn_allocations_limit` is `[turn] max_allocations`.
#[tokio::test]
async fn certificate_expiry_and_allocation_limit_gauges() {
    let dir = tempfile::tempdir().unwrap();
    let pair = |name: &str, not_after: i64| {
        let sub = dir.path().join(name);
        std::fs::create_dir(&sub).unwrap();
        let (c, k) = certificate(not_after);
        write_tls_pair(&sub, &c, &k)
    };
    let (http_cert, http_key) = pair("http", 1_893_456_000);
    let (vy_cert, vy_key) = pair("vy", 1_956_528_000);
    let (turn_cert, turn_key) = pair("turn", 1_924_992_000);
    let config = format!(
        "[http]\ntls_cert = {:?}\ntls_key = {:?}\n\n[turn]\nmax_allocations = 1234\nlisten_tls = [\"127.0.0.1:0\"]\n\
         tls_cert = {:?}\ntls_key = {:?}\n\n[signaling.vy]\nenabled = true\nlisten = \"127.0.0.1:0\"\n\
         tls_cert = {:?}\ntls_key = {:?}\n",
        http_cert.display().to_string(),
        http_key.display().to_string(),
        turn_cert.display().to_string(),
        turn_key.display().to_string(),
        vy_cert.display().to_string(),
        vy_key.display().to_string(),
    );
    let d = Daemon::start(&config);
    let expiry = |text: &str, listener: &str| {
        metric(text, &format!("duet_tls_certificate_expiry_timestamp_seconds{{listener=\"{listener}\"}}"))
    };
    let text = d.metrics().await;
    assert_eq!(expiry(&text, "http"), Some(1_893_456_000.0), "{text}");
    assert_eq!(expiry(&text, "vy"), Some(1_956_528_000.0));
    assert_eq!(expiry(&text, "turn"), Some(1_924_992_000.0));
    assert_eq!(metric(&text, "duet_turn_allocations_limit"), Some(1234.0));

    // Renewed TURN certificate, SIGHUP: the gauge follows; the others stay.
    let (c, k) = certificate(1_988_064_000);
    write_tls_pair(turn_cert.parent().unwrap(), &c, &k);
    sighup(&d);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = d.metrics().await;
        if expiry(&text, "turn") == Some(1_988_064_000.0) {
            assert_eq!(expiry(&text, "http"), Some(1_893_456_000.0));
            break;
        }
        assert!(Instant::now() < deadline, "the turn expiry did not follow the renewal:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A broken certificate file: refused, the running certificate and its expiry stay.
    std::fs::write(&turn_cert, "not a certificate\n").unwrap();
    sighup(&d);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let text = d.metrics().await;
    assert_eq!(expiry(&text, "turn"), Some(1_988_064_000.0));
}
