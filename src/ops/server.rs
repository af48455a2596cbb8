//! The operations endpoints: `/metrics` (Prometheus text format),
//! `/healthz` (liveness) and `/readyz` (readiness), over plain HTTP/1.
//!
//! They run on the process's runtime beside the work, answer from memory
//! and never block on a broker or store, so a busy worker still answers
//! its probes.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::{health, metrics};
use crate::error::{KilnError, Result};

/// The default address of a long-running command's endpoints.
pub const DEFAULT_ADDR: &str = "0.0.0.0:9464";

/// Where the endpoints listen: `HOST:PORT` (port 0: any free port), or
/// `none` for nowhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenAddr(pub Option<SocketAddr>);

impl ListenAddr {
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        if text.trim().eq_ignore_ascii_case("none") {
            return Ok(Self(None));
        }
        text.trim().parse::<SocketAddr>().map(|a| Self(Some(a))).map_err(|_| {
            format!("'{text}' is not an address to listen on: write it like 0.0.0.0:9464 or 127.0.0.1:9464, or none")
        })
    }

    /// Serve the endpoints there, unless `none`.
    pub async fn serve(self) -> Result<Option<Endpoints>> {
        match self.0 {
            Some(addr) => serve(addr).await.map(Some),
            None => Ok(None),
        }
    }
}

/// Listening endpoints; they stop when this is dropped.
pub struct Endpoints {
    /// The address bound (the port the system chose, for port 0).
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Endpoints {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Listen on `addr` and serve the endpoints until the returned handle is
/// dropped.
pub async fn serve(addr: SocketAddr) -> Result<Endpoints> {
    let listener = TcpListener::bind(addr).await.map_err(|e| {
        KilnError::Usage(format!(
            "--metrics-addr {addr}: cannot listen there ({e}); give another HOST:PORT, or none"
        ))
    })?;
    let addr = listener
        .local_addr()
        .map_err(|e| KilnError::Io(format!("the metrics listener's address: {e}")))?;
    tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    let task = tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, say: wait rather than spin.
                    tracing::warn!(error = %e, "accepting a metrics connection");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            tokio::spawn(async move {
                let served = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), hyper::service::service_fn(answer))
                    .await;
                if let Err(e) = served {
                    tracing::debug!(error = %e, "a metrics connection ended with an error");
                }
            });
        }
    });
    Ok(Endpoints { addr, task })
}

async fn answer(request: Request<Incoming>) -> std::result::Result<Response<Full<Bytes>>, Infallible> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return Ok(reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        ));
    }
    let response = match request.uri().path() {
        "/metrics" => reply(StatusCode::OK, metrics::CONTENT_TYPE, metrics::encode()),
        "/healthz" => probe(health::liveness()),
        "/readyz" => probe(health::readiness()),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics, /healthz or /readyz\n".into(),
        ),
    };
    Ok(response)
}

fn probe(outcome: std::result::Result<(), String>) -> Response<Full<Bytes>> {
    match outcome {
        Ok(()) => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        Err(why) => reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("{why}\n")),
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::{DEFAULT_ADDR, ListenAddr};

    #[test]
    fn addresses() {
        assert_eq!(ListenAddr::parse("none").unwrap(), ListenAddr(None));
        assert_eq!(ListenAddr::parse(DEFAULT_ADDR).unwrap().0.unwrap().port(), 9464);
        assert!(ListenAddr::parse("[::]:9464").unwrap().0.is_some());
        assert!(
            ListenAddr::parse("localhost")
                .unwrap_err()
                .contains("0.0.0.0:9464")
        );
    }
}
