//! Plain HTTP/1.1 client connections for the sinks that talk HTTP (OpenSearch, S3-compatible
//! stores), on the hyper already in the tree: no TLS, so `http://` endpoints only.

use std::time::Duration;

use hyper::body::Body;
use hyper::client::conn::http1::SendRequest;
use tokio::net::TcpStream;

/// Opens a keep-alive connection to `host` (`host:port`) within `timeout`; `what` names the
/// peer in the connection's closing log line.
pub(crate) async fn connect<B>(host: &str, timeout: Duration, what: &'static str) -> Result<SendRequest<B>, String>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = tokio::time::timeout(timeout, TcpStream::connect(host))
        .await
        .map_err(|_| format!("{host}: no connection within {timeout:?}"))?
        .map_err(|e| format!("{host}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(|e| format!("{host}: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, peer = what, "HTTP connection ended");
        }
    });
    Ok(send)
}
