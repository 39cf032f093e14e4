//! Logs and metrics: the `tracing` subscriber (human or JSON lines) and the
//! process-wide Prometheus recorder that `/metrics` renders.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::config::{Config, LogFormat};

/// Installs the global `tracing` subscriber for `config` (once per process; later
/// calls are ignored). Logs go to standard error.
pub fn init_tracing(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match config.log_format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
        LogFormat::Human => builder.compact().try_init(),
    };
}

static METRICS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Buckets of the request latency histogram, in seconds.
pub const LATENCY_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The process-wide Prometheus handle, installing the recorder on first use.
pub fn metrics_handle() -> PrometheusHandle {
    METRICS
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full("http_request_duration_seconds".into()), LATENCY_BUCKETS)
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first; ours still renders.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

type Handles = Vec<(http::Method, u16, metrics::Counter, metrics::Histogram)>;

static HTTP_HANDLES: OnceLock<std::sync::RwLock<std::collections::HashMap<String, Handles>>> = OnceLock::new();

/// Records one HTTP request: `http_requests_total{method,route,status}` and
/// `http_request_duration_seconds{method,route}`. Metric handles are registered once
/// per (method, route, status) and cached, so the hot path does no label building.
pub fn record_http(method: &http::Method, route: &str, status: u16, seconds: f64) {
    let map = HTTP_HANDLES.get_or_init(Default::default);
    if let Ok(g) = map.read()
        && let Some(v) = g.get(route)
        && let Some((_, _, c, h)) = v.iter().find(|(m, s, _, _)| m == method && *s == status)
    {
        c.increment(1);
        h.record(seconds);
        return;
    }
    let labels = [("method", method.as_str().to_owned()), ("route", route.to_owned()), ("status", status.to_string())];
    let counter = metrics::counter!("http_requests_total", &labels);
    let histogram = metrics::histogram!("http_request_duration_seconds", "method" => method.as_str().to_owned(), "route" => route.to_owned());
    counter.increment(1);
    histogram.record(seconds);
    if let Ok(mut g) = map.write() {
        g.entry(route.to_owned()).or_default().push((method.clone(), status, counter, histogram));
    }
}
