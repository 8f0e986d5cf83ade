//! One image generation, in the order the data takes it: the caller, the body,
//! the model and its checks, then Azure: the model asked for, and its
//! fallbacks when it fails in a way another model could help with.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{Response, StatusCode};

use crate::auth::Caller;
use crate::azure::{AttemptRecord, Budget, Success};
use crate::config::ModelEntry;
use crate::error::{ApiError, INVALID_REQUEST, printable};
use crate::handler::{App, Incoming, MAX_BODY_BYTES, Outcome, ResponseBody, check_content_type, ok_json};
use crate::relay::COMMIT_AFTER;
use crate::request::ImageRequest;
use crate::response::UpstreamError;
use crate::stream::Defaults;

/// A request that passed every check, and the models to try for it.
pub(crate) struct Plan<'a> {
    pub request: ImageRequest,
    pub entry: &'a ModelEntry,
    pub fallbacks: Vec<&'a ModelEntry>,
    pub caller: Caller,
}

impl Plan<'_> {
    /// What a completed event says when the images response does not.
    pub fn defaults(&self) -> Defaults {
        let field = |name: &str, default: &str| self.request.get_str(name).unwrap_or(default).to_owned();
        let gpt = self.entry.spec.always_b64;
        Defaults {
            size: field("size", "1024x1024"),
            quality: field("quality", if gpt { "auto" } else { "standard" }),
            background: field("background", "opaque"),
            output_format: field("output_format", "png"),
        }
    }
}

/// `POST /v1/images/generations` (`deployment: None`) and the Azure deployments route.
pub(crate) async fn generate(
    app: &Arc<App>,
    req: &Incoming,
    deployment: Option<&str>,
    mut outcome: Outcome,
) -> Response<ResponseBody> {
    let plan = match prepare(app, req, deployment, &mut outcome).await {
        Ok(plan) => plan,
        Err(err) => return app.finish(app.error_response(&err, &outcome), &outcome, req.response_limit),
    };
    if plan.request.stream {
        return crate::stream::respond(app, plan, req, outcome).await;
    }
    // A front door that buffers needs the whole answer anyway; one that
    // streams gets it while Azure's arrives.
    let commit_after = req.response_limit.is_none().then_some(COMMIT_AFTER);
    let result = run(app, &plan, req.deadline, commit_after, &mut outcome).await;
    match result {
        Ok((Success { mut reshaper, rest }, served)) => {
            outcome.served = Some(served.name.clone());
            if let Some(rest) = rest {
                return crate::relay::respond(app, reshaper, rest, outcome);
            }
            outcome.images = Some(reshaper.images());
            outcome.usage = reshaper.usage();
            app.finish(ok_json(reshaper.take_output()), &outcome, req.response_limit)
        }
        Err(err) => app.finish(app.error_response(&err, &outcome), &outcome, req.response_limit),
    }
}

/// Everything decided before Azure is called.
async fn prepare<'a>(
    app: &'a App,
    req: &Incoming,
    deployment: Option<&str>,
    outcome: &mut Outcome,
) -> Result<Plan<'a>, ApiError> {
    let caller = app.authenticate(req).await?;
    outcome.client = caller.name.clone();
    if req.body.len() > MAX_BODY_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            INVALID_REQUEST,
            "request_too_large",
            format!("The request body is larger than {MAX_BODY_BYTES} bytes."),
        ));
    }
    check_content_type(&req.headers)?;
    let request = ImageRequest::parse(&req.body)?;
    outcome.n = Some(request.n);
    outcome.size = request.get_str("size").map(str::to_owned);
    outcome.quality = request.get_str("quality").map(str::to_owned);
    outcome.stream = Some(request.stream);
    outcome.prompt_chars = Some(request.prompt_chars);

    let (entry, model_param) = match deployment {
        Some(id) => {
            outcome.model_requested = Some(id.to_owned());
            let entry = app.config.model_by_deployment(id);
            (
                entry.ok_or_else(|| ApiError::model_not_found(id, "deployment-id"))?,
                "deployment-id",
            )
        }
        None => {
            let name = request.model.as_deref();
            let entry = app.config.model_by_name(name);
            outcome.model_requested = name.or(entry.map(|e| e.name.as_str())).map(str::to_owned);
            let missing = || ApiError::model_not_found(name.unwrap_or_default(), "model");
            (entry.ok_or_else(missing)?, "model")
        }
    };
    outcome.entry = Some(entry.name.clone());
    let fallbacks = check(app, &request, entry, &caller, model_param)?;
    Ok(Plan {
        request,
        entry,
        fallbacks,
        caller,
    })
}

/// The caller may use the model, the request fits it, and the request's own
/// fallbacks are configured models the caller may use and that can take the
/// request. Returns the fallbacks to try: the request's first, then the
/// model's configured ones.
fn check<'a>(
    app: &'a App,
    request: &ImageRequest,
    entry: &'a ModelEntry,
    caller: &Caller,
    model_param: &'static str,
) -> Result<Vec<&'a ModelEntry>, ApiError> {
    caller.check(&entry.name, model_param)?;
    request.validate_for(entry.spec)?;
    let mut chain: Vec<&ModelEntry> = Vec::new();
    for name in &request.fallbacks {
        let fallback = app.config.model_by_name(Some(name)).ok_or_else(|| {
            ApiError::invalid_param(
                "fallbacks",
                "model_not_found",
                format!(
                    "Invalid 'fallbacks': the model `{}` is not configured.",
                    printable(name)
                ),
            )
        })?;
        caller.check(&fallback.name, "fallbacks")?;
        request.validate_for(fallback.spec).map_err(|mut err| {
            err.message = format!("For fallback model `{}`: {}", fallback.name, err.message);
            err
        })?;
        chain.push(fallback);
    }
    for name in &entry.fallbacks {
        if let Some(fallback) = app.config.model_by_name(Some(name)) {
            chain.push(fallback);
        }
    }
    let mut seen = vec![entry.name.as_str()];
    chain.retain(|m| {
        let first = !seen.contains(&m.name.as_str());
        seen.push(&m.name);
        first
    });
    Ok(chain)
}

/// The model asked for, then each fallback while the last failure was one a
/// fallback can help with (retryable after its retries, or a missing
/// deployment). When all fail, the primary's error, listing the attempts.
/// `commit_after`: see [`crate::azure::AzureClient::generate_with_retries`].
pub(crate) async fn run<'a>(
    app: &'a App,
    plan: &Plan<'a>,
    deadline: Option<Instant>,
    commit_after: Option<usize>,
    outcome: &mut Outcome,
) -> Result<(Success, &'a ModelEntry), ApiError> {
    let Plan {
        request,
        entry: primary,
        fallbacks,
        caller,
    } = plan;
    let budget = Budget {
        deadline,
        retry: app.config.retry,
    };
    let mut primary_error: Option<ApiError> = None;
    let mut skipped: Vec<String> = Vec::new();
    for (i, entry) in std::iter::once(*primary).chain(fallbacks.iter().copied()).enumerate() {
        if i > 0 {
            // A model's configured fallbacks were not checked up front: report, never drop, what they cannot take.
            if !caller.may_use(&entry.name) {
                skipped.push(format!("{}: not allowed for this key", entry.name));
                continue;
            }
            if let Err(err) = request.validate_for(entry.spec) {
                skipped.push(format!("{}: {}", entry.name, err.message));
                continue;
            }
            if budget.attempt(false).is_none() {
                skipped.push(format!("{}: no time left before the deadline", entry.name));
                break;
            }
            tracing::warn!(model = %primary.name, fallback = %entry.name, "trying a fallback model");
        }
        let body = Bytes::from(request.upstream_body(entry));
        let result = app
            .azure
            .generate_with_retries(
                entry,
                &app.azure_keys,
                body,
                budget,
                commit_after,
                &mut outcome.attempts,
            )
            .await;
        match result {
            Ok(shaped) => return Ok((shaped, entry)),
            Err(failure) => {
                let go_on = failure.fallback;
                primary_error.get_or_insert(failure.error);
                if !go_on {
                    break;
                }
            }
        }
    }
    let mut err = primary_error.unwrap_or_else(|| crate::response::upstream_unavailable(UpstreamError::Timeout));
    if outcome.attempts.len() > 1 || !skipped.is_empty() {
        err.message = format!("{} Attempts: {}.", err.message, describe(&outcome.attempts, &skipped));
    }
    Err(err)
}

/// `azure-image: 503 upstream_error; azure-image: 503 upstream_error; skipped dall-e-3: …`.
fn describe(attempts: &[AttemptRecord], skipped: &[String]) -> String {
    attempts
        .iter()
        .map(|a| match a.status {
            Some(status) => format!("{}: {} {}", a.model, status, a.outcome),
            None => format!("{}: no answer ({})", a.model, a.outcome),
        })
        .chain(skipped.iter().map(|s| format!("skipped {s}")))
        .collect::<Vec<_>>()
        .join("; ")
}
