//! `tollgate explain`: runs the pipeline over a described request and prints
//! every stage's decision. Nothing is sent anywhere.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use tollgate_policy::{Evaluation, Outcome, Policy, RequestInfo, Scheme, Switches, TrafficKind};
use tollgate_proxy::reload::{ConfigSource, load_policy};

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The configuration file or directory.
    file: PathBuf,
    /// Evaluate as this consumer (skips identification). Without it, the
    /// request is identified from --header and --source like a real one.
    #[arg(long)]
    consumer: Option<String>,
    /// A request header `Name: value` (repeatable), e.g. an identity header.
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,
    /// The caller's source address.
    #[arg(long, default_value = "127.0.0.1")]
    source: IpAddr,
    /// A URI SAN of a verified client certificate (repeatable), e.g. a SPIFFE ID,
    /// as the TLS listener would pass it to `identify: { client_cert }`.
    #[arg(long = "cert-uri")]
    cert_uri: Vec<String>,
    /// A DNS SAN of a verified client certificate (repeatable).
    #[arg(long = "cert-dns")]
    cert_dns: Vec<String>,
    /// The subject CN of a verified client certificate.
    #[arg(long = "cert-cn")]
    cert_cn: Option<String>,
    /// Print the evaluation as JSON.
    #[arg(long)]
    json: bool,
    /// The request: "METHOD URL" (forward proxy / HTTPS), "METHOD /path" (a
    /// route), or "CONNECT host:port".
    request: String,
}

pub fn main(args: ExplainArgs) -> ExitCode {
    let policy = match load_policy(&ConfigSource::Path(args.file.clone()), 1) {
        Ok(p) => p,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::FAILURE;
        }
    };
    let mut headers = http::HeaderMap::new();
    for h in &args.headers {
        let Some((name, value)) = h.split_once(':') else {
            eprintln!("error: --header must look like 'Name: value', got {h:?}");
            return ExitCode::FAILURE;
        };
        match (
            http::HeaderName::from_bytes(name.trim().as_bytes()),
            http::HeaderValue::from_str(value.trim()),
        ) {
            (Ok(n), Ok(v)) => {
                headers.append(n, v);
            }
            _ => {
                eprintln!("error: invalid header {h:?}");
                return ExitCode::FAILURE;
            }
        }
    }
    let parsed = match parse_request(&args.request) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let switches = Switches::default();
    let client_cert = (!args.cert_uri.is_empty()
        || !args.cert_dns.is_empty()
        || args.cert_cn.is_some())
    .then(|| tollgate_policy::ClientCert {
        subject_cn: args.cert_cn.iter().cloned().collect(),
        dns: args.cert_dns.clone(),
        uri: args.cert_uri.clone(),
    });
    let info = RequestInfo {
        kind: parsed.kind,
        method: &parsed.method,
        scheme: parsed.scheme,
        host: &parsed.host,
        port: parsed.port,
        path: &parsed.path,
        query: parsed.query.as_deref(),
        headers: &headers,
        peer: if args.source.is_unspecified() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            args.source
        },
        client_cert: client_cert.as_ref(),
    };
    let mut eval = match evaluate(&policy, &info, &switches, args.consumer.as_deref()) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Header rules and credentials of an allowed request (values `<redacted>`).
    let outbound = policy.describe_outbound(&eval, parsed.kind);
    eval.trace.extend(outbound);
    if args.json {
        println!("{}", to_json(&eval, &parsed));
    } else {
        print!("{}", render(&eval, &parsed));
    }
    ExitCode::SUCCESS
}

fn evaluate(
    policy: &Policy,
    info: &RequestInfo<'_>,
    switches: &Switches,
    consumer: Option<&str>,
) -> Result<Evaluation, String> {
    match consumer {
        Some(name) => policy
            .evaluate_as(info, name, switches, true)
            .ok_or_else(|| {
                format!(
                    "no consumer named {name:?}; known: {}",
                    policy.consumer_names().collect::<Vec<_>>().join(", ")
                )
            }),
        None => Ok(policy.evaluate(info, switches, true)),
    }
    .map(|e| peek_limits(policy, e))
}

/// Adds the limits decision to an explanation without spending quota: local limits are peeked
/// in counters loaded from `state.dir` (fresh counters when it is not set); global limits live
/// in Redis, which explain does not contact, so they are listed as not consulted.
fn peek_limits(policy: &Policy, mut eval: Evaluation) -> Evaluation {
    use std::fmt::Write as _;
    use tollgate_config::LimitScope;
    use tollgate_policy::{LimitVerdict, LocalStore, Outcome, TraceStep, Verdict};

    let Some(plan) = eval.limit_plan.take() else {
        return eval;
    };
    let store = LocalStore::new();
    let mut source = "fresh counters";
    if let Some(dir) = policy.config().state.dir.as_deref() {
        let path = tollgate_proxy::persist::file_in(std::path::Path::new(dir));
        if store.load(&path).is_ok() {
            source = "counters saved under state.dir";
        }
    }
    let mut local = plan.clone();
    local.limits.retain(|l| l.scope == LimitScope::Local);
    let outcome = local.decide_local(&store, false);
    // This line replaces the policy's "has limits" line with what the counters say.
    if eval.trace.last().is_some_and(|t| t.stage == "limits") {
        eval.trace.pop();
    }
    let mut reason = format!("API {:?} (peeked in {source}, nothing charged):", plan.api);
    for l in &plan.limits {
        match outcome.results.iter().find(|r| r.name == l.name) {
            Some(r) if r.limited => {
                let _ = write!(reason, " {} (local) would refuse;", l.name);
            }
            Some(r) => {
                let _ = write!(
                    reason,
                    " {} (local, cost {}) {} of {} left after this request;",
                    l.name, l.request.cost, r.decision.remaining, r.quota
                );
            }
            None => {
                let _ = write!(
                    reason,
                    " {} (global, in Redis) not consulted, cost {};",
                    l.name, l.request.cost
                );
            }
        }
    }
    let verdict = match local.verdict(&outcome) {
        LimitVerdict::Admitted => Verdict::Continue,
        LimitVerdict::Reported(e) => {
            eval.reported.push(e);
            Verdict::Report
        }
        LimitVerdict::Refused(e) => {
            eval.outcome = Outcome::Deny(e);
            Verdict::Deny
        }
    };
    eval.trace.push(TraceStep {
        stage: "limits",
        verdict,
        reason: reason.trim_end_matches(';').to_owned(),
    });
    eval
}

struct Parsed {
    kind: TrafficKind,
    method: http::Method,
    scheme: Scheme,
    host: String,
    port: u16,
    path: String,
    query: Option<String>,
}

fn parse_request(s: &str) -> Result<Parsed, String> {
    let (method, target) = s
        .trim()
        .split_once(char::is_whitespace)
        .ok_or_else(|| format!("expected \"METHOD URL\", got {s:?}"))?;
    let method = http::Method::from_bytes(method.as_bytes())
        .map_err(|_| format!("invalid method {method:?}"))?;
    let target = target.trim();
    if method == http::Method::CONNECT {
        let uri: http::Uri = target
            .parse()
            .map_err(|_| format!("invalid CONNECT target {target:?}"))?;
        let host = uri.host().ok_or("CONNECT needs host:port")?.to_owned();
        let port = uri.port_u16().ok_or("CONNECT needs host:port")?;
        return Ok(Parsed {
            kind: TrafficKind::Connect,
            method,
            scheme: Scheme::Https,
            host,
            port,
            path: String::new(),
            query: None,
        });
    }
    let uri: http::Uri = target
        .parse()
        .map_err(|_| format!("invalid URL {target:?}"))?;
    let path = uri.path().to_owned();
    let query = uri.query().map(str::to_owned);
    match uri.scheme_str() {
        None => Ok(Parsed {
            kind: TrafficKind::Route,
            method,
            scheme: Scheme::Http,
            host: String::new(),
            port: 80,
            path,
            query,
        }),
        Some(scheme) => {
            let scheme = match scheme {
                "http" => Scheme::Http,
                "https" => Scheme::Https,
                other => return Err(format!("unsupported scheme {other:?}")),
            };
            let host = uri.host().ok_or("URL has no host")?.to_owned();
            let port = uri.port_u16().unwrap_or(scheme.default_port());
            Ok(Parsed {
                kind: TrafficKind::Forward,
                method,
                scheme,
                host,
                port,
                path,
                query,
            })
        }
    }
}

fn outcome_line(eval: &Evaluation, kind: TrafficKind) -> String {
    match &eval.outcome {
        Outcome::Allow if eval.reported.is_empty() => "ALLOW".to_owned(),
        Outcome::Allow => format!(
            "ALLOW (report mode; would deny: {})",
            eval.reported
                .iter()
                .map(|e| e.code.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Outcome::Deny(e) => format!(
            "DENY {} {} — {}",
            e.code.status(kind),
            e.code.as_str(),
            e.detail
        ),
    }
}

fn render(eval: &Evaluation, req: &Parsed) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "request:  {} ({})", req.method, req.kind.as_str());
    let _ = writeln!(
        out,
        "consumer: {}",
        eval.consumer.as_deref().unwrap_or("(none)")
    );
    let _ = writeln!(
        out,
        "api:      {}",
        eval.api.as_deref().unwrap_or("(no API matched)")
    );
    if let Some(t) = &eval.target {
        let _ = writeln!(
            out,
            "target:   {}://{}:{}{}",
            t.scheme.as_str(),
            t.host,
            t.port,
            t.path_and_query
        );
    }
    let _ = writeln!(out, "stages:");
    for step in &eval.trace {
        let _ = writeln!(
            out,
            "  {:<10} {:<8} {}",
            step.stage,
            step.verdict.as_str(),
            step.reason
        );
    }
    let _ = writeln!(out, "outcome:  {}", outcome_line(eval, req.kind));
    out
}

fn to_json(eval: &Evaluation, req: &Parsed) -> serde_json::Value {
    serde_json::json!({
        "kind": req.kind.as_str(),
        "method": req.method.as_str(),
        "consumer": eval.consumer.as_deref(),
        "api": eval.api.as_deref(),
        "target": eval.target.as_ref().map(|t| format!("{}://{}:{}{}", t.scheme.as_str(), t.host, t.port, t.path_and_query)),
        "decision": eval.decision(),
        "error": match &eval.outcome { Outcome::Deny(e) => Some(e.code.as_str()), Outcome::Allow => None },
        "reported": eval.reported.iter().map(|e| e.code.as_str()).collect::<Vec<_>>(),
        "trace": eval.trace.iter().map(|s| serde_json::json!({"stage": s.stage, "verdict": s.verdict.as_str(), "reason": s.reason})).collect::<Vec<_>>(),
    })
}
