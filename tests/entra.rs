//! Reaching Azure with Microsoft Entra ID inside the process: a client
//! secret or an AWS web identity as the credential, tokens cached and
//! fetched once, a revoked token fetched again once, Entra down or refusing,
//! and the v1 surface. A stand-in token endpoint (the same recording HTTP
//! stand-in as Azure's) speaks Entra's v2.0 token wire format.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use azure_openai_image::App;
use azure_openai_image::azure::AzureClient;
use azure_openai_image::credentials::{CredentialError, WebIdentity};
use azure_openai_image::observe::MetricsSink;
use azure_openai_image::secrets::ScriptedSource;
use common::*;

const GEN: &str = "/v1/images/generations";
const CLIENT_SECRET: &str = "entra-client-secret-9f2b";
const AWS_JWT: &str = "eyJhbGciOiJSUzI1NiJ9.aws-web-identity.sig";

fn token_answer(token: &str, expires_in: u64) -> Canned {
    Canned::json(
        200,
        &format!(
            r#"{{"token_type":"Bearer","expires_in":{expires_in},"ext_expires_in":{expires_in},"access_token":"{token}"}}"#
        ),
    )
}

/// The token endpoint's form fields of one request.
fn form_of(recorded: &Recorded) -> Vec<(String, String)> {
    url::form_urlencoded::parse(&recorded.raw).into_owned().collect()
}

fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// An AWS web identity source that counts its calls.
#[derive(Default)]
struct CountingSts(AtomicUsize);

impl WebIdentity for CountingSts {
    fn token<'a>(
        &'a self,
        audience: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, CredentialError>> + Send + 'a>> {
        self.0.fetch_add(1, Ordering::SeqCst);
        let answer = if audience == "api://AzureADTokenExchange" {
            Ok(AWS_JWT.to_owned())
        } else {
            Err(CredentialError::Refused {
                service: "AWS STS",
                code: "AccessDenied".into(),
            })
        };
        Box::pin(async move { answer })
    }
}

/// Azure, answering only the bearer token it was told to expect.
async fn azure_expecting(token: &'static str) -> FakeAzure {
    FakeAzure::start(move |req, _| {
        let expected = format!("Bearer {token}");
        if req.headers.get("api-key").is_some() {
            panic!("an api-key went to an Entra ID deployment");
        }
        match req.headers.get("authorization").and_then(|v| v.to_str().ok()) {
            Some(value) if value == expected => success_for(req),
            _ => Canned::json(
                401,
                r#"{"error":{"code":"401","message":"Access denied due to invalid token."}}"#,
            ),
        }
    })
    .await
}

fn app(azure: &FakeAzure, entra: &FakeAzure, auth: &str, sts: Option<Arc<CountingSts>>) -> Arc<App> {
    let models = format!(
        r#"[{{"name":"azure-image","model":"gpt-image-1","baseURL":"{}","apiVersion":"2025-04-01-preview","auth":{auth}}}]"#,
        azure.base_url(GPT_DEPLOYMENT)
    );
    let authority = format!("http://{}", entra.addr);
    let config = config_from(
        &models,
        &[
            ("AUTH_MODE", "none"),
            ("MAX_RETRIES", "0"),
            ("AZURE_AUTHORITY_HOST", &authority),
        ],
    );
    let secrets = ScriptedSource::new(vec![Ok(AZURE_KEY.into())]).with("entra-secret", vec![Ok(CLIENT_SECRET.into())]);
    let mut app = App::new(config, Arc::new(secrets), AzureClient::new().expect("client"))
        .with_metrics(MetricsSink::new("AzureOpenAIImage", |_| {}));
    if let Some(sts) = sts {
        app = app.with_web_identity(sts);
    }
    Arc::new(app)
}

const WITH_SECRET: &str =
    r#"{"type":"entra","tenantId":"tenant-1","clientId":"client-1","clientSecretSecretId":"entra-secret"}"#;
const FEDERATED: &str = r#"{"type":"entra","tenantId":"tenant-1","clientId":"client-1","federation":"aws"}"#;

#[tokio::test]
async fn a_client_secret_gets_a_token_once_and_azure_gets_it_as_a_bearer() {
    let entra = FakeAzure::start(|_, _| token_answer("T1", 3599)).await;
    let azure = azure_expecting("T1").await;
    let app = app(&azure, &entra, WITH_SECRET, None);
    for _ in 0..3 {
        let response = app.handle(post(GEN, r#"{"prompt":"x"}"#)).await;
        assert_eq!(response.status(), 200, "{}", String::from_utf8_lossy(response.body()));
    }
    let fetched = entra.requests();
    assert_eq!(fetched.len(), 1, "one token for three requests");
    assert_eq!(fetched[0].path, "/tenant-1/oauth2/v2.0/token");
    assert_eq!(fetched[0].headers["content-type"], "application/x-www-form-urlencoded");
    let form = form_of(&fetched[0]);
    assert_eq!(field(&form, "grant_type"), Some("client_credentials"));
    assert_eq!(field(&form, "client_id"), Some("client-1"));
    assert_eq!(
        field(&form, "scope"),
        Some("https://cognitiveservices.azure.com/.default")
    );
    assert_eq!(field(&form, "client_secret"), Some(CLIENT_SECRET));
}

#[tokio::test]
async fn concurrent_requests_share_one_token_fetch() {
    let entra = FakeAzure::start(|_, _| token_answer("T1", 3599).delayed(Duration::from_millis(200))).await;
    let azure = azure_expecting("T1").await;
    let app = app(&azure, &entra, WITH_SECRET, None);
    let requests = (0..8).map(|_| app.handle(post(GEN, r#"{"prompt":"x"}"#)));
    for response in futures_join(requests).await {
        assert_eq!(response.status(), 200);
    }
    assert_eq!(entra.requests().len(), 1);
}

/// The futures polled together on this task: a join without another dependency.
async fn futures_join<F: std::future::Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut pending: Vec<_> = futures.map(|f| Some(Box::pin(f))).collect();
    let mut results: Vec<Option<F::Output>> = (0..pending.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut all = true;
        for (i, slot) in pending.iter_mut().enumerate() {
            if let Some(future) = slot {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => {
                        results[i] = Some(value);
                        *slot = None;
                    }
                    std::task::Poll::Pending => all = false,
                }
            }
        }
        if all {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    results.into_iter().flatten().collect()
}

#[tokio::test]
async fn a_token_within_five_minutes_of_its_end_is_fetched_again() {
    let entra = FakeAzure::start(|_, _| token_answer("T1", 300)).await;
    let azure = azure_expecting("T1").await;
    let app = app(&azure, &entra, WITH_SECRET, None);
    for _ in 0..2 {
        assert_eq!(app.handle(post(GEN, r#"{"prompt":"x"}"#)).await.status(), 200);
    }
    assert_eq!(entra.requests().len(), 2, "a token with 300 s left is not reused");
}

#[tokio::test]
async fn a_revoked_token_is_fetched_again_once() {
    let entra = FakeAzure::start(|_, n| token_answer(if n == 0 { "REVOKED" } else { "T2" }, 3599)).await;
    let azure = azure_expecting("T2").await;
    let app = app(&azure, &entra, WITH_SECRET, None);
    let response = app.handle(post(GEN, r#"{"prompt":"x"}"#)).await;
    assert_eq!(response.status(), 200, "{}", String::from_utf8_lossy(response.body()));
    assert_eq!(entra.requests().len(), 2);
    assert_eq!(azure.requests().len(), 2);
}

#[tokio::test]
async fn federation_presents_the_aws_web_identity_as_the_client_assertion() {
    let entra = FakeAzure::start(|_, _| token_answer("T1", 3599)).await;
    let azure = azure_expecting("T1").await;
    let sts = Arc::new(CountingSts::default());
    let app = app(&azure, &entra, FEDERATED, Some(sts.clone()));
    for _ in 0..2 {
        assert_eq!(app.handle(post(GEN, r#"{"prompt":"x"}"#)).await.status(), 200);
    }
    assert_eq!(
        sts.0.load(Ordering::SeqCst),
        1,
        "STS only when an Entra token is needed"
    );
    let form = form_of(&entra.requests()[0]);
    assert_eq!(
        field(&form, "client_assertion_type"),
        Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
    );
    assert_eq!(field(&form, "client_assertion"), Some(AWS_JWT));
    assert_eq!(field(&form, "client_secret"), None, "no secret exists");
}

#[tokio::test]
async fn entra_down_is_503_with_retry_after_and_not_cached() {
    let entra = FakeAzure::start(|_, _| Canned::json(503, r#"{"error":"temporarily_unavailable"}"#)).await;
    let azure = azure_expecting("T1").await;
    let app = app(&azure, &entra, WITH_SECRET, None);
    for _ in 0..2 {
        let response = app.handle(post(GEN, r#"{"prompt":"x"}"#)).await;
        assert_eq!(openai_error(&response, 503)["code"], "credentials_unavailable");
        assert!(response.headers().contains_key("retry-after"));
    }
    assert_eq!(entra.requests().len(), 2, "a failure is not cached");
    assert!(azure.requests().is_empty());
}

#[tokio::test]
async fn entra_refusing_is_500_naming_the_aadsts_code_never_the_secret() {
    let entra = FakeAzure::start(|_, _| {
        Canned::json(
            401,
            &format!(
                r#"{{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID: {CLIENT_SECRET}","error_codes":[7000215]}}"#
            ),
        )
    })
    .await;
    let azure = azure_expecting("T1").await;
    let app = app(&azure, &entra, WITH_SECRET, None);
    let (response, log) = handle_logged(&app, post(GEN, r#"{"prompt":"x"}"#)).await;
    assert_eq!(openai_error(&response, 500)["code"], "upstream_auth_misconfigured");
    let answer = String::from_utf8_lossy(response.body()).into_owned();
    assert!(!answer.contains(CLIENT_SECRET), "{answer}");
    assert!(!log.to_string().contains(CLIENT_SECRET));
    assert!(azure.requests().is_empty());
}

#[tokio::test]
async fn sts_refusing_is_500_upstream_auth_misconfigured() {
    let entra = FakeAzure::start(|_, _| token_answer("T1", 3599)).await;
    let azure = azure_expecting("T1").await;
    let auth = r#"{"type":"entra","tenantId":"tenant-1","clientId":"client-1","federation":"aws","audience":"api://not-trusted"}"#;
    let app = app(&azure, &entra, auth, Some(Arc::new(CountingSts::default())));
    let response = app.handle(post(GEN, r#"{"prompt":"x"}"#)).await;
    assert_eq!(openai_error(&response, 500)["code"], "upstream_auth_misconfigured");
    assert!(entra.requests().is_empty(), "no assertion, no Entra call");
}

#[tokio::test]
async fn the_v1_surface_names_the_deployment_in_the_body() {
    let entra = FakeAzure::start(|_, _| token_answer("T1", 3599)).await;
    let azure = azure_expecting("T1").await;
    let models = format!(
        r#"[{{"name":"azure-image","model":"gpt-image-1","baseURL":"http://{}/openai/v1","deployment":"img-prod","auth":{WITH_SECRET}}}]"#,
        azure.addr
    );
    let config = config_from(
        &models,
        &[
            ("AUTH_MODE", "none"),
            ("AZURE_AUTHORITY_HOST", &format!("http://{}", entra.addr)),
        ],
    );
    let secrets = ScriptedSource::new(vec![Ok(AZURE_KEY.into())]).with("entra-secret", vec![Ok(CLIENT_SECRET.into())]);
    let app = Arc::new(
        App::new(config, Arc::new(secrets), AzureClient::new().expect("client"))
            .with_metrics(MetricsSink::new("AzureOpenAIImage", |_| {})),
    );
    let response = app
        .handle(post(GEN, r#"{"model":"azure-image","prompt":"x","n":2}"#))
        .await;
    assert_eq!(response.status(), 200, "{}", String::from_utf8_lossy(response.body()));
    let sent = &azure.requests()[0];
    assert_eq!(sent.path, "/openai/v1/images/generations");
    assert_eq!(sent.query, "", "no api-version unless the entry sets one");
    assert_eq!(
        sent.body["model"], "img-prod",
        "the deployment, as the v1 surface takes it"
    );
}
