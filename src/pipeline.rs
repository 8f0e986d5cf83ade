//! One image operation, in the order the data takes it: the caller, the body,
//! the model and its checks, then Azure (the model asked for, then its
//! fallbacks), then the answer: whole, relayed while Azure's body arrives,
//! or as events. Every operation takes this path; what differs between them
//! is in `operation`.

use crate::app::App;
use crate::auth::Caller;
use crate::azure::{Budget, Call, Delivery, MAX_WHOLE_BODY, Success, Want};
use crate::config::ModelEntry;
use crate::error::{self, ApiError, printable};
use crate::exchange::{Answer, Incoming, ResponseBody, ok_json};
use crate::models::ModelSpec;
use crate::observe::RequestLog;
use crate::operation::{Operation, OperationRequest};
use crate::relay::COMMIT_AFTER;
use crate::spend::SpendLimits;
use crate::usage::Tab;

/// A request that passed every check, and the models to try for it.
pub(crate) struct Plan<'a> {
    pub operation: Operation,
    pub request: Box<dyn OperationRequest>,
    /// The model asked for, then its fallbacks: the request's own, then the configured ones.
    pub chain: Vec<&'a ModelEntry>,
    /// Configured fallbacks that cannot take this request, and why.
    pub skipped: Vec<String>,
    /// The caller's budget and rate limits; `None` for an unlimited key.
    pub limits: Option<SpendLimits>,
}

impl Plan<'_> {
    /// Azure's part of the request, bounded by `budget` and the front door's `limit`.
    pub fn call(&self, budget: Budget, want: Want, limit: Option<usize>) -> Call<'_> {
        Call {
            operation: self.operation,
            request: self.request.as_ref(),
            chain: self.chain.clone(),
            skipped: self.skipped.clone(),
            budget,
            want,
            limit: limit.unwrap_or(MAX_WHOLE_BODY),
        }
    }
}

/// Answers one image request, or says why not. A limited key's request is
/// counted in `tab` before Azure is called (`routes.rs` settles it).
pub(crate) async fn serve(
    app: &App,
    req: &Incoming,
    operation: Operation,
    deployment: Option<&str>,
    log: &mut RequestLog,
    tab: &mut Tab,
) -> Result<Answer, ApiError> {
    let plan = prepare(app, req, operation, deployment, log).await?;
    // Unlimited keys never touch the usage store.
    if let Some(limits) = &plan.limits {
        let images = u64::from(plan.request.n().max(1));
        match app
            .spend()
            .reserve_by(req.deadline, limits, worst_case(&plan), images)
            .await
        {
            Ok(reserved) => *tab = reserved,
            Err(refused) => {
                tab.headers = refused.headers;
                return Err(refused.error);
            }
        }
    }
    let budget = Budget {
        deadline: req.deadline,
        retry: app.config().retry,
    };
    if plan.request.stream() {
        // A buffered front door gets everything at once anyway: partial images would only add bytes.
        let want = if req.response_limit.is_none() {
            Want::Events
        } else {
            Want::Images { commit_after: None }
        };
        return crate::stream::answer(app, plan.call(budget, want, req.response_limit), log).await;
    }
    if crate::operation::wants_stored_urls(plan.request.as_ref(), &plan.chain) {
        return stored_urls(app, req, &plan, budget, log).await;
    }
    // A front door that buffers needs the whole answer anyway; one that
    // streams gets it while Azure's arrives.
    let commit_after = req.response_limit.is_none().then_some(COMMIT_AFTER);
    let call = plan.call(budget, Want::Images { commit_after }, req.response_limit);
    let (delivery, served, target) = app.azure().call(app.learnt(), call, &mut log.attempts).await?;
    log.served_by(served, target);
    match delivery {
        Delivery::Images(Success {
            reshaper,
            rest: Some(rest),
        }) => Ok(crate::relay::answer(reshaper, rest)),
        Delivery::Images(Success {
            mut reshaper,
            rest: None,
        }) => {
            log.images = Some(reshaper.images());
            log.usage = reshaper.usage();
            Ok(ok_json(ResponseBody::from(reshaper.take_output())))
        }
        // Events come only when asked for: the stream module asks.
        Delivery::Events(_) => Err(ApiError::internal(
            "Azure answered with events where an images response was asked for.",
        )),
    }
}

/// `response_format: "url"` for the gpt-image family: Azure's images stored
/// in the image bucket as they arrive, and links to them. The answer is small
/// and whole, so any front door takes it.
async fn stored_urls(
    app: &App,
    req: &Incoming,
    plan: &Plan<'_>,
    budget: Budget,
    log: &mut RequestLog,
) -> Result<Answer, ApiError> {
    // `chain` refused `url` for the gpt-image family without a store.
    let Some(store) = app.image_store() else {
        return Err(ApiError::internal("The image bucket is not configured."));
    };
    let call = plan.call(budget, Want::Stored, req.response_limit);
    let (delivery, served, target) = app.azure().call(app.learnt(), call, &mut log.attempts).await?;
    log.served_by(served, target);
    match delivery {
        Delivery::Images(Success {
            reshaper,
            rest: Some(rest),
        }) => {
            let format = plan.request.option("output_format");
            crate::relay::stored(store.clone(), reshaper, rest, &req.request_id, format, log).await
        }
        // Azure answered 2xx: billed, whatever went wrong here.
        Delivery::Images(Success { rest: None, .. }) | Delivery::Events(_) => {
            Err(ApiError::internal("Azure's answer came whole where it was to be stored as it arrived.").billed())
        }
    }
}

/// Everything decided before Azure is called.
async fn prepare<'a>(
    app: &'a App,
    req: &Incoming,
    operation: Operation,
    deployment: Option<&str>,
    log: &mut RequestLog,
) -> Result<Plan<'a>, ApiError> {
    let limit = operation.body_limit();
    log.model_requested = deployment.map(printable);
    // Every error names the model asked for. A body that parses names it itself; only on the way
    // to an error before that is the body read for its `model` alone.
    let name_from_body = |log: &mut RequestLog| {
        if log.model_requested.is_none() && req.body.len() <= limit {
            log.model_requested = operation.model_named(&req.headers, &req.body).map(|m| printable(&m));
        }
    };
    let caller = match app.authenticate(&req.headers, req.deadline).await {
        Ok(caller) => caller,
        Err(err) => {
            name_from_body(log);
            return Err(err);
        }
    };
    log.client = caller.name.clone();
    if req.body.len() > limit {
        return Err(ApiError::request_too_large(limit));
    }
    let request = match operation.parse(&req.headers, &req.body) {
        Ok(request) => request,
        Err(err) => {
            name_from_body(log);
            return Err(err);
        }
    };
    if log.model_requested.is_none() {
        log.model_requested = request.model().map(printable);
    }
    log.n = Some(request.n());
    log.stream = Some(request.stream());
    log.prompt_chars = Some(request.prompt_chars());
    // Client text in a log line: bounded, whatever the client sent.
    log.size = request.option("size").map(printable);
    log.quality = request.option("quality").map(printable);

    let config = app.config();
    let (entry, model_param) = match deployment {
        Some(id) => {
            let entry = config.model_by_deployment(id);
            (
                entry.ok_or_else(|| ApiError::model_not_found(id, "deployment-id"))?,
                "deployment-id",
            )
        }
        None => {
            let name = request.model();
            let entry = config.model_by_name(name);
            if log.model_requested.is_none() {
                log.model_requested = entry.map(|e| e.name.clone());
            }
            let missing = || ApiError::model_not_found(name.unwrap_or_default(), "model");
            (entry.ok_or_else(missing)?, "model")
        }
    };
    log.selected(entry);
    let (chain, skipped) = chain(app, request.as_ref(), entry, &caller, model_param)?;
    Ok(Plan {
        operation,
        request,
        chain,
        skipped,
        limits: caller.spend,
    })
}

/// The most the request can cost on any model it may be served by; `None`
/// when one of them cannot be bounded (no price, or a size or quality its
/// prices do not know). A prompt's character is at most four UTF-8 bytes.
fn worst_case(plan: &Plan<'_>) -> Option<f64> {
    let request = plan.request.as_ref();
    plan.chain.iter().try_fold(0.0f64, |most, entry| {
        let bound = crate::pricing::worst_case(
            entry.prices.as_ref()?,
            request.n(),
            request.option("size"),
            request.option("quality"),
            request.input_images(),
            request.prompt_chars().saturating_mul(4),
        )?;
        Some(most.max(bound))
    })
}

/// The caller may use the model, the request fits it, and the request's own
/// fallbacks are configured models the caller may use and that can take the
/// request. Returns the models to try, the one asked for first, then the
/// request's fallbacks, then the model's configured ones; configured
/// fallbacks that cannot take the request are left out and reported.
fn chain<'a>(
    app: &'a App,
    request: &dyn OperationRequest,
    entry: &'a ModelEntry,
    caller: &Caller,
    model_param: &'static str,
) -> Result<(Vec<&'a ModelEntry>, Vec<String>), ApiError> {
    let bucket = app.image_store().is_some();
    let fits = |spec: &ModelSpec| -> Result<(), ApiError> {
        request.validate_for(spec)?;
        crate::operation::check_url_storage(request, spec, bucket)
    };
    caller.check(&entry.name, model_param)?;
    fits(entry.spec)?;
    let config = app.config();
    let mut chain: Vec<&ModelEntry> = vec![entry];
    for name in request.fallbacks() {
        let fallback = config.model_by_name(Some(name)).ok_or_else(|| {
            ApiError::param(
                error::FALLBACK_NOT_FOUND,
                "fallbacks",
                format!(
                    "Invalid 'fallbacks': the model `{}` is not configured.",
                    printable(name)
                ),
            )
        })?;
        caller.check(&fallback.name, "fallbacks")?;
        fits(fallback.spec).map_err(|mut err| {
            err.message = format!("For fallback model `{}`: {}", fallback.name, err.message);
            err
        })?;
        if !chain.iter().any(|m| m.name == fallback.name) {
            chain.push(fallback);
        }
    }
    let mut skipped = Vec::new();
    for name in &entry.fallbacks {
        let Some(fallback) = config.model_by_name(Some(name)) else {
            continue;
        };
        if chain.iter().any(|m| m.name == fallback.name) {
            continue;
        }
        // A model's configured fallbacks were not asked for: report, never drop, what they cannot take.
        if !caller.may_use(&fallback.name) {
            skipped.push(format!("{}: not allowed for this key", fallback.name));
        } else if let Err(err) = fits(fallback.spec) {
            skipped.push(format!("{}: {}", fallback.name, err.message));
        } else {
            chain.push(fallback);
        }
    }
    Ok((chain, skipped))
}
