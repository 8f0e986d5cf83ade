//! The same app on a plain HTTP listener: the run command's server and the
//! baseline for measuring what the Lambda path adds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming as HyperBody;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::app::App;
use crate::config::ResponseMode;
use crate::exchange::{Incoming, MAX_BODY_BYTES, ResponseBody};

/// Serves until the process is stopped.
pub async fn serve(listener: TcpListener, app: Arc<App>) -> std::io::Result<()> {
    let counter = Arc::new(AtomicU64::new(0));
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let counter = counter.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let app = app.clone();
                let id = format!(
                    "local-{}-{}",
                    std::process::id(),
                    counter.fetch_add(1, Ordering::Relaxed)
                );
                async move { Ok::<_, std::convert::Infallible>(respond(&app, req, id).await) }
            });
            if let Err(err) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %err, "connection closed with an error");
            }
        });
    }
}

/// Binds `addr`; the caller logs where it listens.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

async fn respond(app: &Arc<App>, req: hyper::Request<HyperBody>, request_id: String) -> hyper::Response<ResponseBody> {
    let (parts, body) = req.into_parts();
    // One byte over the limit is enough to know the body is too large.
    let body = match Limited::new(body, MAX_BODY_BYTES + 1).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::from(vec![0u8; MAX_BODY_BYTES + 1]),
    };
    let incoming = Incoming {
        method: parts.method,
        path: parts.uri.path().to_owned(),
        headers: parts.headers,
        body,
        deadline: None,
        request_id,
        // `RESPONSE_MODE=buffered` answers whole, as a buffered front door
        // would, without Lambda's 6 MB limit; otherwise answers stream.
        response_limit: (app.config().response_mode == ResponseMode::Buffered).then_some(usize::MAX),
    };
    app.respond(incoming).await
}
