//! Any bytes as a client's request body: parsing and validation for every model
//! family answer a 400 naming what is wrong, or produce an upstream body that is
//! JSON for each deployment of the entry, names the Azure model (or the v1
//! deployment) and carries none of the connector's own fields.
#![no_main]

use std::sync::OnceLock;

use azure_openai_image::Config;
use azure_openai_image::error::{ApiError, ErrorContext};
use azure_openai_image::operation::GenerationRequest;
use libfuzzer_sys::fuzz_target;

fn config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let models = r#"[
            {"name":"dalle","model":"dall-e-3","baseURL":"https://r.openai.azure.com/openai/deployments/d3","apiVersion":"2024-10-21"},
            {"name":"gpt","model":"gpt-image-1","baseURL":"https://r.openai.azure.com/openai/deployments/g1","apiVersion":"2025-04-01-preview"},
            {"name":"next","model":"gpt-image-2","baseURL":"https://r.openai.azure.com/openai/deployments/g2","apiVersion":"2025-04-01-preview"},
            {"name":"pool","model":"gpt-image-1","deployments":[
                {"baseURL":"https://a.openai.azure.com/openai/deployments/g1","apiVersion":"2025-04-01-preview"},
                {"baseURL":"https://b.openai.azure.com/openai/v1","deployment":"image-b","weight":3}
            ]}
        ]"#;
        Config::from_lookup(|k| match k {
            "IMAGE_MODELS" => Some(models.to_owned()),
            "AZURE_API_KEY_SECRET_ID" => Some("s".to_owned()),
            _ => None,
        })
        .expect("valid fuzz configuration")
    })
}

fn assert_client_error(err: &ApiError) {
    assert_eq!(err.status.as_u16(), 400, "{err:?}");
    let body: serde_json::Value =
        serde_json::from_slice(&err.body(&ErrorContext::default())).expect("error body is JSON");
    assert!(body["error"]["message"].is_string());
}

fuzz_target!(|data: &[u8]| {
    let request = match GenerationRequest::parse(data) {
        Ok(request) => request,
        Err(err) => return assert_client_error(&err),
    };
    for entry in &config().models {
        match request.validate_for(entry.spec) {
            Err(err) => {
                assert_client_error(&err);
                assert!(err.param.is_some(), "a validation error names its field: {err:?}");
            }
            Ok(()) => {
                // Each deployment of the entry gets the body its surface names the model in.
                for target in entry.targets() {
                    let body: serde_json::Value = serde_json::from_slice(&request.upstream_body(entry, target))
                        .expect("upstream body is JSON");
                    assert_eq!(body["model"], entry.upstream_model(target));
                    assert!(body.get("stream").is_none() && body.get("fallbacks").is_none());
                    assert!(body["prompt"].as_str().is_some_and(|p| !p.is_empty()));
                }
            }
        }
    }
});
