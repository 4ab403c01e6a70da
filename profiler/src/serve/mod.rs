//! The read-only HTTP endpoints of a recording (`record --serve ADDR`):
//!
//! - `/metrics`: OpenMetrics text for Prometheus ([`metrics`]);
//! - `/debug/pprof/<kind>` (`heap`, `resident`, `sockets`, ...): the
//!   outstanding profile of one kind in pprof, as a Go program serves its
//!   heap profile, for `go tool pprof`, Parca and Grafana Alloy;
//! - `/report.json`, and `/` (`/index.html`): the report's page (see
//!   [`html`](crate::report::html)), flamegraphs included.
//!
//! The recording publishes a fresh report every `--interval` ([`Publisher`]);
//! each request reads the latest. No endpoint writes or changes anything.

pub mod metrics;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
};

use anyhow::{Context, Result};
use axum::{
    extract::{Path, Query, State},
    http::{header, StatusCode},
    response::{Html, IntoResponse, Response},
    routing::get,
    Router,
};
use tokio::sync::watch;

use crate::{kind::Kind, report::Report};

/// Where to listen: `PORT` (loopback) or `ADDR:PORT`.
pub fn parse_address(s: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    s.parse::<SocketAddr>()
        .map_err(|_| format!("{s:?} is neither a port nor an address:port (e.g. 127.0.0.1:9464)"))
}

/// Binds the listening socket. Done before anything is attached, so a bad
/// or busy address is a clear error, not a half-started session.
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Hands the latest report to the endpoints.
pub struct Publisher(watch::Sender<Option<Arc<Report>>>);

impl Publisher {
    pub fn publish(&self, report: Report) {
        self.0.send_replace(Some(Arc::new(report)));
    }
}

/// Starts serving on the current tokio runtime.
pub fn start(listener: std::net::TcpListener) -> Result<Publisher> {
    let (tx, rx) = watch::channel(None);
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let app = Router::new()
        .route("/", get(index))
        .route("/index.html", get(index))
        .route("/metrics", get(metrics))
        .route("/report.json", get(report_json))
        .route("/debug/pprof/", get(pprof_index))
        .route("/debug/pprof/{kind}", get(pprof))
        .with_state(rx);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("warning: the HTTP endpoints stopped: {e}");
        }
    });
    Ok(Publisher(tx))
}

type Latest = State<watch::Receiver<Option<Arc<Report>>>>;

fn latest(state: &Latest) -> Result<Arc<Report>, Response> {
    state.0.borrow().clone().ok_or_else(|| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "no report yet: the first one is published once the probes are attached\n",
        )
            .into_response()
    })
}

async fn index(state: Latest) -> Response {
    let report = match latest(&state) {
        Ok(r) => r,
        Err(e) => return e,
    };
    let flamegraphs = match crate::report::outputs::flamegraphs(&report, &Default::default()) {
        Ok(svgs) => svgs,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")).into_response(),
    };
    // The served files, linked from the page like the files beside a written report.
    let mut links = vec!["metrics".to_string(), "report.json".to_string()];
    links.extend(flamegraphs.iter().map(|(kind, _)| format!("debug/pprof/{kind}")));
    Html(crate::report::html::render(&report, &flamegraphs, &links, 10)).into_response()
}

async fn metrics(state: Latest) -> Response {
    let report = match latest(&state) {
        Ok(r) => r,
        Err(e) => return e,
    };
    let body = metrics::render(&report, metrics::OwnCost::now());
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body)
        .into_response()
}

async fn report_json(state: Latest) -> Response {
    match latest(&state) {
        Ok(report) => match serde_json::to_vec(&*report) {
            Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        },
        Err(e) => e,
    }
}

async fn pprof_index() -> Html<String> {
    let links: String = Kind::ALL
        .iter()
        .map(|k| format!("<li><a href=\"/debug/pprof/{0}\">{0}</a></li>", k.name()))
        .collect();
    Html(format!(
        "<!doctype html><title>/debug/pprof/</title><p>Outstanding profiles per kind:</p><ul>{links}</ul>"
    ))
}

#[derive(serde::Deserialize)]
struct PprofQuery {
    seconds: Option<String>,
}

async fn pprof(state: Latest, Path(kind): Path<String>, Query(query): Query<PprofQuery>) -> Response {
    let kind = match kind.parse::<Kind>() {
        Ok(kind) => kind,
        Err(_) => {
            let kinds: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
            return (StatusCode::NOT_FOUND, format!("no kind {kind:?}; kinds: {}\n", kinds.join(", ")))
                .into_response();
        }
    };
    if query.seconds.is_some() {
        return (
            StatusCode::BAD_REQUEST,
            "?seconds= (a delta over a window) is not offered: the profile is what is outstanding now\n",
        )
            .into_response();
    }
    let report = match latest(&state) {
        Ok(r) => r,
        Err(e) => return e,
    };
    match crate::report::pprof::encode(&report, kind) {
        Ok(body) => (
            [
                (header::CONTENT_TYPE, "application/octet-stream".to_string()),
                (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{kind}\"")),
            ],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_port_listens_on_loopback_only() {
        assert_eq!(parse_address("9464").unwrap(), "127.0.0.1:9464".parse().unwrap());
        assert_eq!(parse_address("[::1]:80").unwrap(), "[::1]:80".parse().unwrap());
        assert!(parse_address("localhost").unwrap_err().contains("address:port"));
    }
}
