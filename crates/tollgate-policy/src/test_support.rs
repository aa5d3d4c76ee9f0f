//! Test helpers: build a policy from JSON and requests from short descriptions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde_json::Value;
use tollgate_config::Config;

use crate::{Evaluation, Outcome, PathError, Policy, RequestInfo, Scheme, Switches, TrafficKind};

pub(crate) fn config(v: Value) -> Config {
    serde_json::from_value(v).expect("test config parses")
}

pub(crate) fn policy(v: Value) -> Policy {
    match Policy::compile(Arc::new(config(v)), 1) {
        Ok(p) => p,
        Err(errs) => panic!("test config does not compile: {errs:?}"),
    }
}

pub(crate) fn compile_errors(v: Value) -> Vec<PathError> {
    match Policy::compile(Arc::new(config(v)), 1) {
        Ok(_) => panic!("config should not compile"),
        Err(errs) => errs,
    }
}

/// An owned request the tests can borrow a [`RequestInfo`] from.
#[derive(Debug, Clone)]
pub(crate) struct Req {
    kind: TrafficKind,
    method: Method,
    scheme: Scheme,
    host: String,
    port: u16,
    path: String,
    query: Option<String>,
    headers: HeaderMap,
    peer: IpAddr,
    client_cert: Option<crate::request::ClientCert>,
}

impl Req {
    /// `http://host[:port]/path?query` through the forward proxy.
    pub(crate) fn forward(url: &str) -> Self {
        let uri: http::Uri = url.parse().unwrap();
        let scheme = if uri.scheme_str() == Some("https") {
            Scheme::Https
        } else {
            Scheme::Http
        };
        let authority = uri.authority().unwrap();
        Self {
            kind: TrafficKind::Forward,
            method: Method::GET,
            scheme,
            host: authority.host().to_owned(),
            port: authority.port_u16().unwrap_or(scheme.default_port()),
            path: uri.path().to_owned(),
            query: uri.query().map(str::to_owned),
            headers: HeaderMap::new(),
            peer: "192.0.2.10".parse().unwrap(),
            client_cert: None,
        }
    }

    /// `GET /path?query` to the gateway itself (a route). Splits on the first `?`
    /// only, and does not parse, so odd paths reach the pipeline as written.
    pub(crate) fn route(path_and_query: &str) -> Self {
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q.to_owned())),
            None => (path_and_query, None),
        };
        Self {
            kind: TrafficKind::Route,
            scheme: Scheme::Http,
            host: "tollgate.local".to_owned(),
            port: 8080,
            path: path.to_owned(),
            query,
            ..Self::forward("http://unused/")
        }
    }

    pub(crate) fn connect(host: &str, port: u16) -> Self {
        Self {
            kind: TrafficKind::Connect,
            method: Method::CONNECT,
            scheme: Scheme::Https,
            host: host.to_owned(),
            port,
            path: String::new(),
            query: None,
            ..Self::forward("http://unused/")
        }
    }

    /// Raw path, bypassing URI parsing (for normalisation tests).
    pub(crate) fn path(mut self, path: &str) -> Self {
        self.path = path.to_owned();
        self
    }

    /// Raw host, bypassing URI parsing (for IDN and invalid hosts).
    pub(crate) fn host(mut self, host: &str) -> Self {
        self.host = host.to_owned();
        self
    }

    pub(crate) fn method(mut self, m: &str) -> Self {
        self.method = Method::from_bytes(m.as_bytes()).unwrap();
        self
    }

    pub(crate) fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
        self
    }

    /// A verified client certificate (as the TLS listener passes it).
    pub(crate) fn client_cert(mut self, cert: crate::request::ClientCert) -> Self {
        self.client_cert = Some(cert);
        self
    }

    pub(crate) fn peer(mut self, ip: &str) -> Self {
        self.peer = ip.parse().unwrap();
        self
    }

    pub(crate) fn info(&self) -> RequestInfo<'_> {
        RequestInfo {
            kind: self.kind,
            method: &self.method,
            scheme: self.scheme,
            host: &self.host,
            port: self.port,
            path: &self.path,
            query: self.query.as_deref(),
            headers: &self.headers,
            peer: self.peer,
            client_cert: self.client_cert.as_ref(),
        }
    }

    /// Evaluates with tracing on and no switches engaged.
    pub(crate) fn eval(&self, p: &Policy) -> Evaluation {
        p.evaluate(&self.info(), &Switches::default(), true)
    }
}

/// The error code of a denial, or `None` when allowed.
pub(crate) fn denied(e: &Evaluation) -> Option<&'static str> {
    match &e.outcome {
        Outcome::Allow => None,
        Outcome::Deny(err) => Some(err.code.as_str()),
    }
}

pub(crate) fn reported(e: &Evaluation) -> Vec<&'static str> {
    e.reported.iter().map(|r| r.code.as_str()).collect()
}

pub(crate) fn consumer(e: &Evaluation) -> Option<&str> {
    e.consumer.as_deref()
}
