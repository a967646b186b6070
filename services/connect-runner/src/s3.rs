//! The object stores a sink writes files to: a local directory, or a bucket of an
//! S3-compatible store (SeaweedFS, Ceph, Garage, AWS behind a plain-HTTP endpoint...).
//!
//! S3 is `object_store`'s own client (SigV4 signing, ListObjectsV2, retries) with its
//! `aws-base` feature: the HTTP and the crypto are ours, on the hyper, `sha2` and `hmac`
//! already in the tree, instead of the `aws` feature's reqwest, rustls and aws-lc C build.
//! No TLS, so the endpoint is `http://`.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use http_body_util::BodyExt;
use hyper::client::conn::http1::SendRequest;
use object_store::aws::AmazonS3Builder;
use object_store::client::{
    ClientOptions, CryptoProvider, DigestAlgorithm, DigestContext, HmacContext, HttpClient, HttpConnector, HttpError,
    HttpErrorKind, HttpRequest, HttpRequestBody, HttpResponse, HttpResponseBody, HttpService, Signer, SigningAlgorithm,
};
use object_store::local::LocalFileSystem;
use object_store::prefix::PrefixStore;
use object_store::{BackoffConfig, ObjectStore, RetryConfig};
use sha2::{Digest, Sha256};
use sluice_connect::config::ConnectorConfig;
use sluice_connect::plugins::http_host;

/// The store `store.url` names, with the `s3.*` and `aws.*` keys for an `s3://` one.
pub(crate) fn open(cfg: &ConnectorConfig) -> Result<Arc<dyn ObjectStore>, String> {
    let url = cfg.get("store.url").unwrap_or_default();
    let Some(rest) = url.strip_prefix("s3://") else {
        let dir = url.strip_prefix("file://").unwrap_or(url);
        std::fs::create_dir_all(dir).map_err(|e| format!("store.url '{url}': {e}"))?;
        // fsync: a file is committed past once written, so it must survive a power cut.
        let local = LocalFileSystem::new_with_prefix(dir).map_err(|e| format!("store.url '{url}': {e}"))?;
        return Ok(Arc::new(local.with_fsync(true)));
    };
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let endpoint = cfg.get("s3.endpoint").unwrap_or_default();
    let host = http_host(endpoint, 80).map_err(|why| format!("s3.endpoint {why}"))?;
    // Virtual-hosted style: object_store sends requests to the endpoint as given, so the
    // bucket goes in its host name.
    let virtual_hosted = cfg.get("s3.path.style.access.enabled") == Some("false");
    let endpoint = if virtual_hosted { format!("http://{bucket}.{host}") } else { format!("http://{host}") };
    // Only what this connector is given (and the two standard keys), not the whole AWS_*
    // environment: AWS_ENDPOINT_URL_S3 or a stray session token would override or spoil it.
    let from_config = |k: &str| cfg.get(k).filter(|v| !v.is_empty()).map(str::to_string);
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let key_id = from_config("aws.access.key.id").or_else(|| env("AWS_ACCESS_KEY_ID"));
    let secret = from_config("aws.secret.access.key").or_else(|| env("AWS_SECRET_ACCESS_KEY"));
    let mut b = AmazonS3Builder::new()
        .with_bucket_name(bucket)
        .with_endpoint(endpoint)
        .with_allow_http(true)
        .with_region(cfg.get("s3.region").unwrap_or("us-east-1"))
        .with_virtual_hosted_style_request(virtual_hosted)
        .with_http_connector(Connector)
        .with_crypto_provider(Arc::new(Crypto))
        .with_retry(RetryConfig {
            backoff: BackoffConfig::default(),
            max_retries: 5,
            retry_timeout: Duration::from_secs(60),
        });
    match (key_id, secret) {
        (Some(k), Some(s)) => b = b.with_access_key_id(k).with_secret_access_key(s),
        _ => return Err("s3: no credentials: set aws.access.key.id and aws.secret.access.key (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)".into()),
    }
    if from_config("aws.access.key.id").is_none()
        && let Some(token) = env("AWS_SESSION_TOKEN")
    {
        b = b.with_token(token);
    }
    let s3 = b.build().map_err(|e| format!("store.url '{url}': {e}"))?;
    Ok(match prefix.trim_matches('/') {
        "" => Arc::new(s3),
        p => Arc::new(PrefixStore::new(s3, p)),
    })
}

/// How long one request may take, answer included, besides its body's upload time.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The time a request may take: [`REQUEST_TIMEOUT`] plus a second per MiB it sends (a
/// large file on a slow link is not cut off half-way and sent again for ever).
fn request_timeout(body_bytes: usize) -> Duration {
    REQUEST_TIMEOUT + Duration::from_secs((body_bytes >> 20) as u64)
}

#[derive(Debug)]
struct Connector;

impl HttpConnector for Connector {
    fn connect(&self, _options: &ClientOptions) -> object_store::Result<HttpClient> {
        Ok(HttpClient::new(Pool::default()))
    }
}

/// Idle keep-alive connections by `host:port`, taken by one request at a time.
#[derive(Default)]
struct Pool {
    idle: Mutex<Vec<(String, SendRequest<HttpRequestBody>)>>,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pool")
    }
}

impl Pool {
    fn take(&self, host: &str) -> Option<SendRequest<HttpRequestBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|(_, s)| !s.is_closed());
        let i = idle.iter().position(|(h, _)| h == host)?;
        Some(idle.swap_remove(i).1)
    }

    fn give_back(&self, host: String, send: SendRequest<HttpRequestBody>) {
        if !send.is_closed() {
            self.idle.lock().unwrap_or_else(|p| p.into_inner()).push((host, send));
        }
    }
}

fn http_error(kind: HttpErrorKind, e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> HttpError {
    HttpError::new_boxed(kind, e.into())
}

#[async_trait]
impl HttpService for Pool {
    async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let (mut parts, body) = req.into_parts();
        let host =
            parts.uri.authority().map(|a| a.to_string()).ok_or_else(|| {
                http_error(HttpErrorKind::Request, format!("'{}': no host in the address", parts.uri))
            })?;
        // object_store writes addresses as the url crate normalises them: port 80 is left out
        // (the signature covers the host as written, so Host stays so).
        let addr = if parts.uri.port().is_some() { host.clone() } else { format!("{host}:80") };
        // An HTTP/1.1 connection is asked for the path; the signature covered the host.
        parts.uri = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .parse()
            .map_err(|e| http_error(HttpErrorKind::Request, format!("{e}")))?;
        parts
            .headers
            .insert(hyper::header::HOST, host.parse().map_err(|e| http_error(HttpErrorKind::Request, format!("{e}")))?);
        let mut send = match self.take(&host) {
            Some(s) => s,
            None => crate::http::connect(&addr, REQUEST_TIMEOUT, "S3")
                .await
                .map_err(|why| http_error(HttpErrorKind::Connect, why))?,
        };
        let timeout = request_timeout(body.content_length());
        let exchange = async {
            send.ready().await.map_err(|e| http_error(HttpErrorKind::Connect, e))?;
            let resp = send
                .send_request(hyper::Request::from_parts(parts, body))
                .await
                .map_err(|e| http_error(HttpErrorKind::Request, e))?;
            let (head, incoming) = resp.into_parts();
            // Answers are read whole (listings, small objects): the connection is free after.
            let bytes: Bytes =
                incoming.collect().await.map_err(|e| http_error(HttpErrorKind::Interrupted, e))?.to_bytes();
            Ok::<_, HttpError>(HttpResponse::from_parts(head, HttpResponseBody::from(bytes)))
        };
        let answer = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| http_error(HttpErrorKind::Timeout, format!("{host}: no answer within {timeout:?}")))??;
        self.give_back(host, send);
        Ok(answer)
    }
}

/// SHA-256 and HMAC-SHA256 for SigV4 from the `sha2` and `hmac` crates.
#[derive(Debug)]
struct Crypto;

struct Sha256Context {
    hasher: Sha256,
    out: [u8; 32],
}

impl DigestContext for Sha256Context {
    fn update(&mut self, data: &[u8]) {
        self.hasher.update(data);
    }

    fn finish(&mut self) -> object_store::Result<&[u8]> {
        self.out.copy_from_slice(&std::mem::take(&mut self.hasher).finalize());
        Ok(&self.out)
    }
}

struct HmacSha256Context {
    mac: Hmac<Sha256>,
    out: [u8; 32],
}

impl HmacContext for HmacSha256Context {
    fn update(&mut self, data: &[u8]) {
        self.mac.update(data);
    }

    fn finish(&mut self) -> object_store::Result<&[u8]> {
        self.out.copy_from_slice(&self.mac.clone().finalize().into_bytes());
        Ok(&self.out)
    }
}

fn unsupported(what: &str) -> object_store::Error {
    object_store::Error::NotSupported { source: format!("{what} is not available in this build").into() }
}

impl CryptoProvider for Crypto {
    fn digest(&self, algorithm: DigestAlgorithm) -> object_store::Result<Box<dyn DigestContext>> {
        match algorithm {
            DigestAlgorithm::Sha256 => Ok(Box::new(Sha256Context { hasher: Sha256::new(), out: [0; 32] })),
            _ => Err(unsupported("this digest")),
        }
    }

    fn hmac(&self, algorithm: DigestAlgorithm, secret: &[u8]) -> object_store::Result<Box<dyn HmacContext>> {
        match algorithm {
            DigestAlgorithm::Sha256 => {
                // HMAC takes keys of any length: this cannot fail.
                let mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).map_err(|_| unsupported("this key"))?;
                Ok(Box::new(HmacSha256Context { mac, out: [0; 32] }))
            }
            _ => Err(unsupported("this HMAC")),
        }
    }

    fn sign(&self, _algorithm: SigningAlgorithm, _pem: &[u8]) -> object_store::Result<Box<dyn Signer>> {
        // Only Google Cloud's service-account tokens sign with a private key.
        Err(unsupported("signing with a private key"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn digests_match_the_published_vectors() {
        let mut d = Crypto.digest(DigestAlgorithm::Sha256).unwrap();
        d.update(b"a");
        d.update(b"bc");
        assert_eq!(hex(d.finish().unwrap()), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        // RFC 4231 test case 2.
        let mut m = Crypto.hmac(DigestAlgorithm::Sha256, b"Jefe").unwrap();
        m.update(b"what do ya want for nothing?");
        assert_eq!(hex(m.finish().unwrap()), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }
}
