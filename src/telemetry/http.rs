//! HTTP endpoints: `/metrics` (Prometheus text format), `/healthz`, and the
//! big screen: the page at `/`, its view pushed at `/events` (server-sent
//! events) and current at `/api/summary` (`screen/`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use anyhow::Context;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;

/// What the server reads, never the processing loop's own state: a request
/// must not make the loop wait.
#[derive(Clone)]
pub struct Shared {
    /// The metrics' registry: its counters and gauges are atomics.
    pub registry: prometheus::Registry,
    /// The big screen's view, from its own reader of the output topics
    /// (`None`: `metrics.screen` is off here, and its routes say so).
    pub screen: Option<crate::screen::reader::Feed>,
    /// Wall ms of the last processing-loop iteration.
    pub heartbeat_ms: Arc<AtomicI64>,
}

/// The loop is considered stuck after this long without an iteration.
const STUCK_AFTER_MS: i64 = 30_000;

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// How long the loop has been silent (its last heartbeat at `heartbeat_ms`),
/// if longer than `limit_ms`: for `/healthz` and the watchdog.
pub fn silent_past(now_ms: i64, heartbeat_ms: i64, limit_ms: i64) -> Option<i64> {
    let silent = now_ms.saturating_sub(heartbeat_ms);
    (silent > limit_ms).then_some(silent)
}

/// Binds now (so a taken port fails at start), serves until the runtime stops, and returns the bound address.
pub async fn serve(addr: SocketAddr, shared: Shared) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics server to {addr}"))?;
    let registry = shared.registry.clone();
    let app = Router::new();
    let app = match shared.screen.clone() {
        Some(feed) => {
            let (summary, events) = (feed.clone(), feed);
            app.route(
                "/",
                get(|| async { axum::response::Html(include_str!("../screen/page.html")) }),
            )
            .route(
                "/api/summary",
                get(move || {
                    let body = summary.borrow().to_string();
                    async move { ([("content-type", "application/json")], body) }
                }),
            )
            .route(
                "/events",
                get(move || {
                    // Every view the reader publishes (at most once per emit
                    // interval, at least once a second), the current one first.
                    let views = tokio_stream::wrappers::WatchStream::new(events.clone());
                    async move {
                        use tokio_stream::StreamExt as _;
                        let stream = views.map(|v| {
                            Ok::<_, std::convert::Infallible>(
                                axum::response::sse::Event::default().data(v.as_str()),
                            )
                        });
                        axum::response::sse::Sse::new(stream)
                    }
                }),
            )
        }
        None => app.route(
            "/",
            get(|| async {
                (
                    StatusCode::NOT_FOUND,
                    "the big screen is off on this instance (metrics.screen = false): see another instance, or `gmv screen`\n",
                )
            }),
        ),
    };
    let app = app
        .route(
            "/metrics",
            get(move || {
                let text = super::metrics::encode(&registry);
                async move { ([("content-type", "text/plain; version=0.0.4")], text) }
            }),
        )
        .route(
            "/healthz",
            get(move || {
                let hb = shared.heartbeat_ms.clone();
                async move {
                    match silent_past(now_ms(), hb.load(Ordering::Relaxed), STUCK_AFTER_MS) {
                        None => (StatusCode::OK, "ok\n".to_string()),
                        Some(age) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("processing loop silent for {age} ms\n"),
                        ),
                    }
                }
            }),
        );
    let bound = listener
        .local_addr()
        .context("reading the metrics server's address")?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("metrics server stopped: {e}");
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn only_a_silence_past_the_limit_counts() {
        let limit = crate::app::watchdog::EXIT_AFTER_SILENT_MS;
        assert_eq!(silent_past(1_000_000, 1_000_000, limit), None);
        assert_eq!(silent_past(1_000_000 + limit, 1_000_000, limit), None);
        assert_eq!(
            silent_past(1_000_001 + limit, 1_000_000, limit),
            Some(limit + 1)
        );
        // A heartbeat newer than the clock (another thread stored it after the read).
        assert_eq!(silent_past(1_000_000, 1_000_005, limit), None);
    }

    fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn serves_metrics_health_and_the_live_page() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let heartbeat_ms = Arc::new(AtomicI64::new(now_ms()));
        let m = crate::telemetry::Metrics::new();
        let mut screen = crate::screen::Screen::default();
        let view = serde_json::to_string(&screen.view(now_ms())).unwrap();
        let (tx, feed) = tokio::sync::watch::channel(Arc::new(view));
        let shared = Shared {
            registry: m.registry(),
            screen: Some(feed),
            heartbeat_ms: heartbeat_ms.clone(),
        };
        let addr = rt
            .block_on(serve("127.0.0.1:0".parse().unwrap(), shared))
            .unwrap();
        assert!(get(addr, "/metrics").contains("gmv_events_read_total{topic=\"orders\"} 0"));
        assert!(get(addr, "/healthz").starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/").contains("<html"));
        let summary = get(addr, "/api/summary");
        let body = summary.split("\r\n\r\n").nth(1).unwrap();
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(
            (v["gmv_fen"].as_str(), v["stalled"].as_bool()),
            (Some("0"), Some(true))
        );
        // /events: the current view first, then each one published.
        let mut events = std::net::TcpStream::connect(addr).unwrap();
        write!(events, "GET /events HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut seen = String::new();
        let mut buf = [0u8; 4096];
        tx.send_replace(Arc::new(r#"{"gmv_fen":"42"}"#.to_string()));
        while !seen.contains(r#"data: {"gmv_fen":"42"}"#) {
            let n = events.read(&mut buf).unwrap();
            assert!(n > 0, "the stream ended: {seen}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        assert!(seen.contains("text/event-stream"), "{seen}");
        heartbeat_ms.store(now_ms() - STUCK_AFTER_MS - 1, Ordering::Relaxed);
        assert!(
            get(addr, "/healthz").starts_with("HTTP/1.1 503"),
            "a silent loop is unhealthy"
        );
    }
}
