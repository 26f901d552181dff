//! Prometheus series shared by both listeners: requests by route, method,
//! status and tier, and a latency histogram. Each listener owns one
//! [`HttpMetrics`] (its own registry), so two listeners in one process never
//! mix their series. Route labels are actix's route patterns (`/v1/assets/{id}`),
//! so cardinality is bounded by the route table, never by ids; methods are
//! the standard ones or `other`; statuses are three digits.

use std::sync::Arc;
use std::time::Instant;

use actix_web::HttpMessage;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::web;
use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder};

/// Latency buckets in seconds: 1 ms to 10 s.
const BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The tier a request was served for; the app's tenant extractor puts it in
/// the request's extensions so the metrics middleware can label by it.
#[derive(Clone, Copy)]
pub struct TierLabel(pub &'static str);

/// One listener's request series.
pub struct HttpMetrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
}

impl HttpMetrics {
    /// `prefix` names the listener: `tenantry_app` or `tenantry_admin`.
    pub fn new(prefix: &str) -> Arc<Self> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(format!("{prefix}_http_requests_total"), "HTTP requests by route, method, status and tier."),
            &["route", "method", "status", "tier"],
        )
        .expect("valid metric");
        let latency = HistogramVec::new(
            HistogramOpts::new(format!("{prefix}_http_request_duration_seconds"), "HTTP request latency.")
                .buckets(BUCKETS.to_vec()),
            &["route", "method", "tier"],
        )
        .expect("valid metric");
        registry.register(Box::new(requests.clone())).expect("unique metric");
        registry.register(Box::new(latency.clone())).expect("unique metric");
        Arc::new(Self { registry, requests, latency })
    }

    /// Prometheus text of this listener's request series.
    pub fn encode(&self) -> String {
        let mut buf = Vec::new();
        // Encoding gathered families into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }

    fn observe(&self, route: &str, method: &str, status: &str, tier: &str, seconds: f64) {
        self.requests.with_label_values(&[route, method, status, tier]).inc();
        self.latency.with_label_values(&[route, method, tier]).observe(seconds);
    }
}

/// Middleware: counts and times every request into the listener's
/// [`HttpMetrics`] (found in app data). Unmatched paths share one label.
pub async fn record(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let metrics = req.app_data::<web::Data<HttpMetrics>>().cloned();
    let method = method_label(req.method());
    let res = next.call(req).await?;
    if let Some(m) = metrics {
        let route = res.request().match_pattern().unwrap_or_else(|| "unmatched".to_string());
        let tier = res.request().extensions().get::<TierLabel>().map_or("none", |t| t.0);
        m.observe(&route, method, res.status().as_str(), tier, started.elapsed().as_secs_f64());
    }
    Ok(res)
}

/// The method label: one of the standard methods, or `other` for whatever
/// else a client sends, so the label set is bounded by construction (as the
/// route is by the route table and the status by its three digits).
pub fn method_label(method: &actix_web::http::Method) -> &'static str {
    use actix_web::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// Writes one gauge family with its HELP and TYPE lines.
pub fn gauge_family<'a>(
    out: &mut String,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (String, f64)> + 'a,
) {
    use std::fmt::Write;
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} gauge");
    for (labels, value) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

/// A label value with `\`, `"` and newlines escaped.
pub fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
