//! The Lambda front door: API Gateway REST (v1), HTTP API and Function URL
//! (v2) events, as `lambda_http` parses them, become [`Incoming`] requests.
//! The Runtime API loop itself is in `runtime`.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use lambda_http::{Body, Request, RequestExt, Response};

use crate::app::App;
use crate::exchange::Incoming;

/// One event through the app, answered whole (as a buffered front door is).
pub async fn respond(app: &Arc<App>, event: Request) -> Response<Body> {
    let response = app.handle(incoming(event)).await;
    let (parts, body) = response.into_parts();
    // JSON goes out as text; only non-UTF-8 bodies (none today) would need base64.
    let body = match String::from_utf8(body) {
        Ok(text) if text.is_empty() => Body::Empty,
        Ok(text) => Body::Text(text),
        Err(e) => Body::Binary(e.into_bytes()),
    };
    Response::from_parts(parts, body)
}

/// The event as the front-door-neutral request.
pub fn incoming(event: Request) -> Incoming {
    let path = route_path(&event);
    let (request_id, deadline) = match event.lambda_context_ref() {
        Some(ctx) => (ctx.request_id.clone(), deadline(ctx.deadline)),
        None => (String::new(), None),
    };
    let (parts, body) = event.into_parts();
    let body = match body {
        Body::Empty => Bytes::new(),
        Body::Text(text) => Bytes::from(text),
        Body::Binary(bytes) => Bytes::from(bytes),
        _ => Bytes::new(),
    };
    Incoming {
        method: parts.method,
        path,
        headers: parts.headers,
        body,
        deadline,
        request_id,
        response_limit: None,
    }
}

/// The request path without the API Gateway stage: REST APIs name the stage
/// in the path (`/Prod/v1/...`), custom domains and `$default` stages do not.
fn route_path(event: &Request) -> String {
    let raw = event.raw_http_path();
    let path = if raw.is_empty() { event.uri().path() } else { raw };
    let stage = event.request_context_ref().and_then(|ctx| match ctx {
        lambda_http::request::RequestContext::ApiGatewayV1(c) => c.stage.clone(),
        lambda_http::request::RequestContext::ApiGatewayV2(c) => c.stage.clone(),
        _ => None,
    });
    if let Some(stage) = stage.filter(|s| !s.is_empty() && s != "$default")
        && let Some(rest) = path.strip_prefix('/').and_then(|p| p.strip_prefix(stage.as_str()))
        && rest.starts_with('/')
    {
        return rest.to_owned();
    }
    path.to_owned()
}

/// The invocation deadline (epoch milliseconds) as an `Instant`. A deadline
/// already past is treated as absent: `cargo lambda watch` sends a duration,
/// not an epoch time, and no real invocation starts after its own deadline.
pub(crate) fn deadline(epoch_ms: u64) -> Option<Instant> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
    let left = Duration::from_millis(epoch_ms).checked_sub(now)?;
    Some(Instant::now() + left)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_in_the_past_is_absent() {
        assert!(deadline(600_000).is_none());
        assert!(deadline(0).is_none());
    }

    #[test]
    fn a_future_deadline_is_kept() {
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_millis() as u64;
        let d = deadline(now_ms + 30_000).expect("future deadline");
        let left = d.saturating_duration_since(Instant::now());
        assert!(
            left > Duration::from_secs(28) && left <= Duration::from_secs(30),
            "{left:?}"
        );
    }
}
