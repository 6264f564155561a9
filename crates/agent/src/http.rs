//! `/metrics`, `/healthz` and `/readyz`, as the DaemonSet's probes and Prometheus ask.
use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use http_body_util::Full;
use hyper::{body::Bytes, server::conn::http1, service::service_fn, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::metrics::Metrics;

/// What the endpoints report, updated by the agent's loop.
pub struct Health {
    pub metrics: Metrics,
    /// When the capture loop last completed a round.
    last_round: Mutex<Instant>,
    /// A round late by more than this means the loop is stuck.
    stuck_after: Duration,
    /// Why the agent is not ready yet (`None`: ready).
    not_ready: Mutex<Option<String>>,
}

impl Health {
    pub fn new(metrics: Metrics, round: Duration) -> Self {
        Self {
            metrics,
            last_round: Mutex::new(Instant::now()),
            stuck_after: round * 3 + Duration::from_secs(5),
            not_ready: Mutex::new(Some("starting".into())),
        }
    }

    pub fn round_done(&self) {
        *lock(&self.last_round) = Instant::now();
    }

    pub fn set_ready(&self, why_not: Option<String>) {
        *lock(&self.not_ready) = why_not;
    }

    fn respond(&self, path: &str) -> (StatusCode, &'static str, String) {
        const TEXT: &str = "text/plain; charset=utf-8";
        match path {
            "/metrics" => (
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                self.metrics.encode(),
            ),
            "/healthz" => {
                let late = lock(&self.last_round).elapsed();
                if late > self.stuck_after {
                    let why = format!("capture loop stuck for {:.0} s\n", late.as_secs_f64());
                    (StatusCode::SERVICE_UNAVAILABLE, TEXT, why)
                } else {
                    (StatusCode::OK, TEXT, "ok\n".into())
                }
            }
            "/readyz" => match &*lock(&self.not_ready) {
                None => (StatusCode::OK, TEXT, "ready\n".into()),
                Some(why) => (StatusCode::SERVICE_UNAVAILABLE, TEXT, format!("{why}\n")),
            },
            _ => (StatusCode::NOT_FOUND, TEXT, "not found\n".into()),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Serves until the task is dropped.
pub async fn serve(listener: TcpListener, health: Arc<Health>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let health = health.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let (status, content_type, body) = health.respond(req.uri().path());
                let response = Response::builder()
                    .status(status)
                    .header("content-type", content_type)
                    .body(Full::new(Bytes::from(body)))
                    .expect("a valid response");
                async move { Ok::<_, Infallible>(response) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!("metrics connection: {e}");
            }
        });
    }
}
