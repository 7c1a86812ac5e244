//! HTTP endpoints: `/metrics` (Prometheus text format) and `/healthz`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;

use super::Metrics;

/// What the server reads: the metrics, and a heartbeat of the processing loop.
#[derive(Clone)]
pub struct Shared {
    pub metrics: Arc<Mutex<Metrics>>,
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

/// Binds now (so a taken port fails at start) and serves until the runtime stops.
pub async fn serve(
    addr: SocketAddr,
    shared: Shared,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics server to {addr}"))?;
    let metrics = shared.clone();
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = metrics.metrics.clone();
                async move {
                    let text = m.lock().map(|m| m.encode()).unwrap_or_default();
                    ([("content-type", "text/plain; version=0.0.4")], text)
                }
            }),
        )
        .route(
            "/healthz",
            get(move || {
                let hb = shared.heartbeat_ms.clone();
                async move {
                    let age = now_ms() - hb.load(Ordering::Relaxed);
                    if age <= STUCK_AFTER_MS {
                        (StatusCode::OK, "ok\n".to_string())
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("processing loop silent for {age} ms\n"),
                        )
                    }
                }
            }),
        );
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("metrics server stopped: {e}");
        }
    }))
}
