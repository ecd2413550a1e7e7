//! `GET /v1/openapi.json`: the OpenAPI 3.1 document lists exactly the `/v1/` operations the router serves, with the
//! security scheme, scopes, headers and error bodies; real answers validate against its schemas; and schemathesis
//! (PyPI) finds no 5xx and no answer outside the document on a live daemon (both backends).

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use common::process::{find_tool, run_bounded_blocking, skip_or_fail, tail};
use common::{Backend, Daemon, participant};

/// Every operation of the API, `METHOD path`: the document must list exactly these.
const OPERATIONS: &[&str] = &[
    "POST /v1/bookings",
    "GET /v1/bookings",
    "GET /v1/bookings/{id}",
    "PATCH /v1/bookings/{id}",
    "POST /v1/bookings/{id}/confirm",
    "POST /v1/bookings/{id}/reject",
    "POST /v1/bookings/{id}/cancel",
    "POST /v1/bookings/{id}/participants/{pid}/link/rotate",
    "POST /v1/bookings/{id}/participants/{pid}/link/revoke",
    "POST /v1/join/{link_token}",
    "GET /v1/bookings/{id}/participants/{pid}/invite.ics",
    "GET /v1/join/{link_token}/invite.ics",
    "POST /v1/join/{link_token}/extend",
    "POST /v1/join/{link_token}/report",
    "GET /v1/bookings/{id}/report",
    "POST /v1/hosts",
    "GET /v1/hosts",
    "GET /v1/hosts/{ref}",
    "PATCH /v1/hosts/{ref}",
    "DELETE /v1/hosts/{ref}",
    "POST /v1/hosts/{ref}/secret/rotate",
    "POST /v1/hosts/{ref}/schedules",
    "GET /v1/hosts/{ref}/schedules",
    "GET /v1/hosts/{ref}/schedules/{id}",
    "PATCH /v1/hosts/{ref}/schedules/{id}",
    "DELETE /v1/hosts/{ref}/schedules/{id}",
    "POST /v1/event-types",
    "GET /v1/event-types",
    "GET /v1/event-types/{id}",
    "PATCH /v1/event-types/{id}",
    "DELETE /v1/event-types/{id}",
    "POST /v1/event-types/{id}/bookings",
    "GET /v1/slots",
    "POST /v1/admin/tenants",
    "GET /v1/admin/tenants",
    "POST /v1/admin/api-keys",
    "GET /v1/admin/api-keys",
    "POST /v1/admin/api-keys/{id}/revoke",
    "GET /v1/admin/tenants/{id}/retention",
    "PUT /v1/admin/tenants/{id}/retention",
    "POST /v1/data-subjects/erase",
    "POST /v1/data-subjects/export",
    "POST /v1/webhook-endpoints",
    "GET /v1/webhook-endpoints",
    "GET /v1/webhook-endpoints/{id}",
    "PATCH /v1/webhook-endpoints/{id}",
    "DELETE /v1/webhook-endpoints/{id}",
    "POST /v1/webhook-endpoints/{id}/rotate-secret",
    "POST /v1/webhook-endpoints/{id}/test",
    "GET /v1/webhook-endpoints/{id}/deliveries",
    "POST /v1/webhook-deliveries/{id}/redeliver",
    "GET /v1/signal",
    "GET /v1/openapi.json",
];

/// The document, fetched without an API key.
async fn fetch_document(d: &Daemon) -> Value {
    let r = d.client().get(d.url("/v1/openapi.json")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let ct = r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    assert!(ct.starts_with("application/json"), "content-type {ct}");
    r.json().await.unwrap()
}

/// The `(METHOD path, operation)` pairs of a document.
fn operations(doc: &Value) -> Vec<(String, Value)> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().unwrap() {
            if ["get", "post", "put", "patch", "delete", "head", "options"].contains(&method.as_str()) {
                ops.push((format!("{} {path}", method.to_uppercase()), op.clone()));
            }
        }
    }
    ops
}

/// Every `$ref` in `v`.
fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("$ref", Value::String(r)) => out.push(r.clone()),
                    _ => collect_refs(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect_refs(x, out)),
        _ => {}
    }
}

/// A validator of `#/components/schemas/<name>` of `doc` (JSON Schema 2020-12, as OpenAPI 3.1).
fn validator(doc: &Value, name: &str) -> jsonschema::Validator {
    assert!(doc["components"]["schemas"][name].is_object(), "schema {name} missing");
    let schema = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$ref": format!("#/components/schemas/{name}"),
        "components": doc["components"],
    });
    jsonschema::validator_for(&schema).unwrap_or_else(|e| panic!("schema {name}: {e}"))
}

fn assert_valid(doc: &Value, name: &str, instance: &Value) {
    let v = validator(doc, name);
    let errors: Vec<String> = v.iter_errors(instance).map(|e| format!("{e} at {}", e.instance_path())).collect();
    assert!(errors.is_empty(), "{name} does not validate {instance}: {errors:?}");
}

async fn openapi_document(backend: Backend) {
    let Some(d) = Daemon::start_on(backend, "") else { return };
    let doc = fetch_document(&d).await;
    assert!(doc["openapi"].as_str().unwrap_or("").starts_with("3.1."), "openapi: {}", doc["openapi"]);
    assert_eq!(doc["info"]["title"], "Duet");

    // Every reference resolves.
    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    assert!(!refs.is_empty());
    for r in &refs {
        let pointer = r.strip_prefix('#').unwrap_or_else(|| panic!("external $ref {r}"));
        assert!(doc.pointer(pointer).is_some(), "unresolvable $ref {r}");
    }

    // Exactly the operations the router serves under /v1/.
    let ops = operations(&doc);
    let listed: BTreeSet<&str> = ops.iter().map(|(k, _)| k.as_str()).collect();
    let expected: BTreeSet<&str> = OPERATIONS.iter().copied().collect();
    assert_eq!(listed, expected, "documented operations");

    // Each documented operation is served: never the router's fallback (404 `not_found`) nor 405.
    let client = d.client();
    for (key, _) in &ops {
        let (method, path) = key.split_once(' ').unwrap();
        let url = d.url(&path.replace("{id}", "bkg_nope").replace("{pid}", "par_nope").replace("{link_token}", "nope"));
        let req = match method {
            "GET" => client.get(&url),
            _ => client.request(method.parse().expect("an HTTP method"), &url).json(&json!({})),
        };
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert_ne!(status, 405, "{key} answered 405");
        assert!(!(status == 404 && body["error"] == "not_found"), "{key} is not served: {status} {body}");
    }
    // The probe can tell: an unknown path answers the fallback.
    let r = client.get(d.url("/v1/nope")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "not_found");

    // The bearer scheme, the scopes per operation, the error body with the WWW-Authenticate header.
    assert_eq!(doc["components"]["securitySchemes"]["bearerAuth"]["scheme"], "bearer");
    let scope_of = |op: &Value| -> Option<String> {
        let sec = op["security"].as_array()?;
        sec.iter().find_map(|s| s["bearerAuth"].as_array().map(|a| a[0].as_str().unwrap_or("").to_string()))
    };
    for (key, op) in &ops {
        let booking_api = ["/v1/bookings", "/v1/hosts", "/v1/event-types", "/v1/slots"].iter().any(|p| key.contains(p));
        let want = if key.contains("/admin/") {
            Some("admin")
        } else if booking_api && key.starts_with("GET ") {
            Some("bookings:read")
        } else if booking_api || key.contains("/v1/webhook-") || key.contains("/v1/data-subjects/") {
            Some("bookings:write")
        } else {
            None
        };
        assert_eq!(scope_of(op).as_deref(), want, "scope of {key}");
        if want.is_some() {
            for code in ["401", "403"] {
                let resp = &op["responses"][code];
                assert_eq!(
                    resp["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/Error",
                    "{key} {code}"
                );
                assert!(resp["headers"]["WWW-Authenticate"].is_object(), "{key} {code}: WWW-Authenticate");
            }
        } else {
            // Open operations say so: an empty requirement.
            assert_eq!(op["security"], json!([{}]), "security of {key}");
        }
        // Every error status documents the error body (the WebSocket's 400 is text/plain).
        for (code, resp) in op["responses"].as_object().unwrap() {
            if code.starts_with('4') && !(key == "GET /v1/signal" && code == "400") || code.starts_with('5') {
                assert_eq!(
                    resp["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/Error",
                    "{key} {code}"
                );
            }
        }
        assert!(op["description"].is_string() || op["summary"].is_string(), "{key}: no description");
    }
    let create = &doc["paths"]["/v1/bookings"]["post"];
    let params = create["parameters"].as_array().unwrap();
    assert!(params.iter().any(|p| p["name"] == "Idempotency-Key" && p["in"] == "header"));
    assert!(create["responses"]["201"]["headers"]["Idempotent-Replayed"].is_object());
    assert!(doc["paths"]["/v1/join/{link_token}"]["post"]["responses"]["403"]["headers"]["Retry-After"].is_object());
    let links = &create["responses"]["201"]["links"];
    assert_eq!(links["GetBooking"]["operationId"], "get_booking");
    assert_eq!(links["Join"]["parameters"]["link_token"], "$response.body#/participants/0/link_token");
    let signal = &doc["paths"]["/v1/signal"]["get"];
    assert!(signal["responses"]["101"].is_object());
    assert!(signal["parameters"].as_array().unwrap().iter().any(|p| p["name"] == "token" && p["in"] == "query"));

    // Real answers validate against their schemas.
    let (status, booking) = d.create_booking(&common::booking_body(0, 600)).await;
    assert_eq!(status, 201, "{booking}");
    assert_valid(&doc, "Booking", &booking);
    // ... and the validation can fail.
    let mut broken = booking.clone();
    broken.as_object_mut().unwrap().remove("status");
    assert!(!validator(&doc, "Booking").is_valid(&broken), "a booking without status validates");
    broken = booking.clone();
    broken["status"] = json!("postponed");
    assert!(!validator(&doc, "Booking").is_valid(&broken), "an unknown status validates");

    let id = booking["id"].as_str().unwrap();
    let got: Value = client
        .get(d.url(&format!("/v1/bookings/{id}")))
        .bearer_auth(&d.api_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_valid(&doc, "Booking", &got);
    let page: Value =
        client.get(d.url("/v1/bookings")).bearer_auth(&d.api_key).send().await.unwrap().json().await.unwrap();
    assert_valid(&doc, "BookingPage", &page);
    let token = participant(&booking, "host")["link_token"].as_str().unwrap();
    let (status, _, joined) = d.join(token).await;
    assert_eq!(status, 200, "{joined}");
    assert_valid(&doc, "JoinAnswer", &joined);
    assert_valid(&doc, "JoinResult", &joined);
    // An external-link booking and its join answer match the document too, and the hosted answer is not taken for
    // the external one.
    let mut external = common::booking_body(0, 600);
    external["kind"] = json!("external_link");
    external["external_url"] = json!("https://meet.example.com/x");
    external["metadata"] = json!({"visit": "V-1"});
    let (status, external) = d.create_booking(&external).await;
    assert_eq!(status, 201, "{external}");
    assert_valid(&doc, "Booking", &external);
    let (status, _, ext_joined) = d.join(participant(&external, "guest")["link_token"].as_str().unwrap()).await;
    assert_eq!(status, 200, "{ext_joined}");
    assert_valid(&doc, "ExternalJoinAnswer", &ext_joined);
    assert_valid(&doc, "JoinResult", &ext_joined);
    assert!(!validator(&doc, "ExternalJoinAnswer").is_valid(&joined), "a hosted answer validates as external");
    let r = client.get(d.url("/v1/bookings/bkg_nope")).bearer_auth(&d.api_key).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404);
    assert_valid(&doc, "Error", &r.json().await.unwrap());
    let tenants: Value =
        client.get(d.url("/v1/admin/tenants")).bearer_auth(&d.api_key).send().await.unwrap().json().await.unwrap();
    assert_valid(&doc, "TenantList", &tenants);
    let keys: Value =
        client.get(d.url("/v1/admin/api-keys")).bearer_auth(&d.api_key).send().await.unwrap().json().await.unwrap();
    assert_valid(&doc, "ApiKeyList", &keys);
    // Webhook endpoints and the delivery log (a public address: this daemon has no `allow_private`).
    let created: Value = client
        .post(d.url("/v1/webhook-endpoints"))
        .bearer_auth(&d.api_key)
        .json(&json!({"url": "https://93.184.215.14/hook", "event_types": ["booking.created"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_valid(&doc, "CreatedEndpoint", &created);
    let ep = created["id"].as_str().unwrap();
    let list: Value =
        client.get(d.url("/v1/webhook-endpoints")).bearer_auth(&d.api_key).send().await.unwrap().json().await.unwrap();
    assert_valid(&doc, "EndpointList", &list);
    let ping: Value = client
        .post(d.url(&format!("/v1/webhook-endpoints/{ep}/test")))
        .bearer_auth(&d.api_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_valid(&doc, "WebhookDelivery", &ping);
    let log: Value = client
        .get(d.url(&format!("/v1/webhook-endpoints/{ep}/deliveries")))
        .bearer_auth(&d.api_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_valid(&doc, "DeliveryPage", &log);
    assert_eq!(log["deliveries"].as_array().map(Vec::len), Some(1), "{log}");

    // Hosts, schedules, event types, slots and a booking from a slot match the document too.
    let post = |path: &str, body: Value| client.post(d.url(path)).bearer_auth(&d.api_key).json(&body).send();
    let host: Value = post("/v1/hosts", json!({"ref": "doc:1", "display_name": "Doc", "time_zone": "Europe/Berlin"}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_valid(&doc, "HostView", &host);
    let weekly: Vec<Value> = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
        .iter()
        .map(|d| json!({"day": d, "intervals": [{"start": "00:00", "end": "24:00"}]}))
        .collect();
    let schedule: Value = post("/v1/hosts/doc:1/schedules", json!({"name": "all", "weekly": weekly}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_valid(&doc, "ScheduleView", &schedule);
    let et: Value = post(
        "/v1/event-types",
        json!({"host_ref": "doc:1", "schedule_id": schedule["id"], "slug": "s", "title": "t", "duration_minutes": 30,
               "minimum_notice_minutes": 0}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_valid(&doc, "EventTypeView", &et);
    let slots: Value = client
        .get(d.url("/v1/slots?host_ref=doc:1&event_type=s&time_zone=Asia/Kolkata"))
        .bearer_auth(&d.api_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_valid(&doc, "SlotsAnswer", &slots);
    let start = slots["days"][0]["slots"][0]["start_at"].clone();
    let path = format!("/v1/event-types/{}/bookings", et["id"].as_str().unwrap());
    let r = post(&path, json!({"start_at": start, "guest": {"display_name": "G"}})).await.unwrap();
    assert_eq!(r.status().as_u16(), 201);
    assert_valid(&doc, "Booking", &r.json().await.unwrap());
}

/// schemathesis against a live daemon, bounded: every operation but the WebSocket (`/v1/signal`: a 101 upgrade that
/// an HTTP fuzzer cannot follow), a few examples each, with the daemon's admin key. Checks: no 5xx, every answer
/// matches its documented schema and status code.
async fn schemathesis(backend: Backend) {
    const TEST: &str = "openapi::schemathesis";
    if find_tool("schemathesis").is_none() {
        // `.ci/run` installs it: `python3 -m pip install 'schemathesis==3.39.16'`.
        skip_or_fail(TEST, "schemathesis not installed");
        return;
    }
    // Any date-time is in range, so that generated creates can succeed (and exercise 201 and the booking schema).
    let config = "[booking]\nstart_leeway = \"3650000d\"\nhorizon = \"3650000d\"\nmax_duration = \"3650000d\"\n";
    let Some(d) = Daemon::start_on(backend, config) else { return };
    let mut cmd = Command::new("schemathesis");
    cmd.args(["run", &d.url("/v1/openapi.json")])
        .args(["--checks", "not_a_server_error,response_schema_conformance,status_code_conformance"])
        .args(["--header", &format!("Authorization: Bearer {}", d.api_key)])
        .args(["--exclude-path", "/v1/signal"])
        .args(["--hypothesis-max-examples", "50", "--hypothesis-deadline", "5000", "--hypothesis-derandomize"])
        .args(["--stateful", "links"])
        .args(["--experimental", "openapi-3.1", "--request-timeout", "5000", "--no-color", "--show-trace"])
        // Derandomized: no example database; hypothesis still writes caches into `.hypothesis/` of its working
        // directory, which must not be the checkout.
        .current_dir(std::env::temp_dir())
        .env("SCHEMATHESIS_TELEMETRY", "false");
    let out = run_bounded_blocking(cmd, Duration::from_secs(150), "schemathesis").await;
    let text = format!("{}\n{}", out.stdout, out.stderr);
    if !out.status.success() {
        if text.contains("No module named") {
            skip_or_fail(TEST, &format!("schemathesis is broken: {}", tail(&text, 5)));
            return;
        }
        panic!("schemathesis failed ({}):\n{}", out.status, tail(&text, 120));
    }
    eprintln!("schemathesis ({backend:?}):\n{}", tail(&text, 40));
    // It ran every operation but the WebSocket (13 of 14), plus the tests that follow the links of the creates, with
    // the three checks.
    let passed = text
        .lines()
        .filter_map(|l| l.trim_matches(|c| c == '=' || c == ' ').split_once(" passed"))
        .filter_map(|(n, _)| n.rsplit(' ').next()?.parse::<u32>().ok())
        .next_back()
        .unwrap_or(0);
    assert!(passed >= 13, "schemathesis ran {passed} tests, not every operation:\n{}", tail(&text, 40));
    for check in ["not_a_server_error", "status_code_conformance", "response_schema_conformance"] {
        assert!(text.contains(check), "schemathesis did not run {check}:\n{}", tail(&text, 40));
    }
}

/// Sends `req` with the API key `key`; returns (status, JSON body).
async fn send(key: &str, req: reqwest::RequestBuilder) -> (u16, Value) {
    let r = req.bearer_auth(key).send().await.unwrap();
    (r.status().as_u16(), r.json::<Value>().await.unwrap_or(Value::Null))
}

/// Input that PostgreSQL refuses in text (NUL) never reaches the store: ids answer 404, list filters 422
/// `invalid_field`, an API key's `tenant_id` 422 `unknown_tenant` (the class of 5xx a fuzzer finds first).
async fn control_characters(backend: Backend) {
    let Some(d) = Daemon::start_on(backend, "") else { return };
    let client = d.client();
    let key = d.api_key.as_str();
    for (method, path) in [
        ("GET", "/v1/bookings/bkg_%00"),
        ("POST", "/v1/bookings/bkg_%00/cancel"),
        ("POST", "/v1/admin/api-keys/key_%00/revoke"),
    ] {
        let req = if method == "GET" { client.get(d.url(path)) } else { client.post(d.url(path)) };
        let (status, body) = send(key, req).await;
        assert_eq!((status, body["error"].as_str()), (404, Some("not_found")), "{path}: {body}");
    }
    for q in ["participant_ref=a%00b", "external_id=%00"] {
        let (status, body) = send(key, client.get(d.url(&format!("/v1/bookings?{q}")))).await;
        assert_eq!((status, body["error"].as_str()), (422, Some("invalid_field")), "{q}: {body}");
        assert_eq!(body["field"], q.split('=').next().unwrap());
    }
    let (status, body) = send(key, client.get(d.url("/v1/admin/api-keys?tenant_id=ten_%00"))).await;
    assert_eq!((status, &body["api_keys"]), (200, &json!([])), "{body}");
    let body_json = json!({"tenant_id": "ten_\u{0}", "scopes": ["bookings:read"]});
    let (status, body) = send(key, client.post(d.url("/v1/admin/api-keys")).json(&body_json)).await;
    assert_eq!((status, body["error"].as_str()), (422, Some("unknown_tenant")), "{body}");
    // The daemon still answers.
    d.booking_now(60, 600).await;
}

on_both_backends!(openapi_document, schemathesis, control_characters);
