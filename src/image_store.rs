//! The image bucket of `response_format: "url"`: each gpt-image output stored
//! as its decoded bytes (S3 PutObject), and a presigned GET that links to it.
//!
//! Two S3 operations do not need the SDK's S3 crate: they are signed with
//! `aws-sigv4` (the signer the SDK itself uses, already in the tree), with the
//! credentials of the SDK's chain (the function's role on Lambda), and sent
//! over the connector's one reqwest client. README "Images as URLs" says what
//! the choice cost in package size.
//!
//! A link signed with temporary credentials stops working when their session
//! ends, whatever its own expiry says: a link never claims more than the
//! credentials it was signed with have left, when they say how long that is.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use aws_credential_types::Credentials;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sigv4::http_request::{
    PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SignatureLocation, SigningSettings,
    UriPathNormalizationMode, sign,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use base64::Engine;
use bytes::Bytes;
use http::header::CONTENT_TYPE;
use url::Url;

use crate::config::ImageBucket;

/// Every object the connector writes is under this prefix: the role may
/// write and read there, and nowhere else in the bucket (template.yaml).
pub const KEY_PREFIX: &str = "images/";

/// Cached credentials are fetched again this long before they expire.
const REFRESH_BEFORE: Duration = Duration::from_secs(300);

/// Why an image could not be stored or linked. Says nothing of the bucket,
/// the key or the credentials: it reaches the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("no AWS credentials to sign with")]
    Credentials,
    #[error("S3 could not be reached")]
    Unreachable,
    #[error("S3 did not answer in time")]
    Timeout,
    #[error("S3 refused the upload with status {0}")]
    Refused(u16),
    #[error("the upload could not be signed")]
    Signing,
}

/// The bucket, where it is, and how requests to it are signed.
pub struct ImageStore {
    /// Where objects are, without the trailing `/`: `https://{bucket}.s3.{region}.amazonaws.com`,
    /// or `{endpoint}/{bucket}` on an S3 that is not AWS's.
    base: String,
    region: String,
    url_ttl: Duration,
    provider: SharedCredentialsProvider,
    cached: Mutex<Option<Credentials>>,
    http: reqwest::Client,
}

impl std::fmt::Debug for ImageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageStore")
            .field("region", &self.region)
            .field("url_ttl", &self.url_ttl)
            .finish_non_exhaustive()
    }
}

impl ImageStore {
    /// The store of `bucket` in `region`, signing with what `provider` gives.
    pub fn new(bucket: &ImageBucket, region: &str, provider: SharedCredentialsProvider, http: reqwest::Client) -> Self {
        let base = match &bucket.endpoint {
            Some(endpoint) => format!("{}/{}", endpoint.as_str().trim_end_matches('/'), bucket.name),
            None => {
                let domain = if region.starts_with("cn-") {
                    "amazonaws.com.cn"
                } else {
                    "amazonaws.com"
                };
                // A dotted name does not match S3's wildcard certificate as a host: path-style.
                if bucket.name.contains('.') {
                    format!("https://s3.{region}.{domain}/{}", bucket.name)
                } else {
                    format!("https://{}.s3.{region}.{domain}", bucket.name)
                }
            }
        };
        Self {
            base,
            region: region.to_owned(),
            url_ttl: bucket.url_ttl,
            provider,
            cached: Mutex::new(None),
            http,
        }
    }

    fn object_url(&self, key: &str) -> String {
        format!("{}/{key}", self.base)
    }

    /// PutObject of `body` under `key`, by `until`.
    pub async fn put(
        &self,
        key: &str,
        content_type: &'static str,
        body: Bytes,
        until: Instant,
    ) -> Result<(), StoreError> {
        let credentials = self.credentials().await?;
        let url = self.object_url(key);
        let headers = sign_upload(&url, content_type, &self.region, &credentials, SystemTime::now())?;
        let mut request = self.http.put(&url).header(CONTENT_TYPE, content_type).body(body);
        for (name, value) in &headers {
            request = request.header(*name, value);
        }
        let response = tokio::time::timeout_at(until.into(), request.send())
            .await
            .map_err(|_| StoreError::Timeout)?
            .map_err(|e| {
                if e.is_timeout() {
                    StoreError::Timeout
                } else {
                    StoreError::Unreachable
                }
            })?;
        if !response.status().is_success() {
            return Err(StoreError::Refused(response.status().as_u16()));
        }
        Ok(())
    }

    /// A presigned GET of `key`.
    pub async fn link(&self, key: &str) -> Result<String, StoreError> {
        let credentials = self.credentials().await?;
        presign(
            &self.object_url(key),
            &self.region,
            &credentials,
            SystemTime::now(),
            self.url_ttl,
        )
    }

    /// The chain's credentials, cached until shortly before they expire
    /// (those from the environment, Lambda's, say no expiry: cached for good).
    async fn credentials(&self) -> Result<Credentials, StoreError> {
        let fresh_enough = |c: &Credentials| {
            c.expiry()
                .is_none_or(|expiry| expiry > SystemTime::now() + REFRESH_BEFORE)
        };
        if let Some(cached) = self
            .cached
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .filter(|c| fresh_enough(c))
        {
            return Ok(cached.clone());
        }
        let credentials = self.provider.provide_credentials().await.map_err(|e| {
            tracing::error!(error = %e, "no AWS credentials for the image bucket");
            StoreError::Credentials
        })?;
        *self.cached.lock().unwrap_or_else(|p| p.into_inner()) = Some(credentials.clone());
        Ok(credentials)
    }
}

/// What S3 requires of any request: the path as it is (no double encoding,
/// no normalization).
fn s3_settings() -> SigningSettings {
    let mut settings = SigningSettings::default();
    settings.percent_encoding_mode = PercentEncodingMode::Single;
    settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
    settings
}

/// S3's SigV4 parameters for `identity` in `region` at `now`.
fn s3_params<'a>(
    identity: &'a Identity,
    region: &'a str,
    now: SystemTime,
    settings: SigningSettings,
) -> Result<aws_sigv4::http_request::SigningParams<'a>, StoreError> {
    let params = v4::SigningParams::builder()
        .identity(identity)
        .region(region)
        .name("s3")
        .time(now)
        .settings(settings)
        .build()
        .map_err(|_| StoreError::Signing)?;
    Ok(params.into())
}

/// The headers that sign a PutObject. The payload is not hashed
/// (`UNSIGNED-PAYLOAD`): hashing megabytes costs a share of a vCPU that a
/// 128 MB function has little of, and TLS already protects the bytes.
fn sign_upload(
    url: &str,
    content_type: &str,
    region: &str,
    credentials: &Credentials,
    now: SystemTime,
) -> Result<Vec<(&'static str, String)>, StoreError> {
    let mut settings = s3_settings();
    settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    let identity: Identity = credentials.clone().into();
    let params = s3_params(&identity, region, now, settings)?;
    let request = SignableRequest::new(
        "PUT",
        url,
        [("content-type", content_type)].into_iter(),
        SignableBody::UnsignedPayload,
    )
    .map_err(|_| StoreError::Signing)?;
    let (instructions, _) = sign(request, &params).map_err(|_| StoreError::Signing)?.into_parts();
    let (headers, _) = instructions.into_parts();
    Ok(headers
        .into_iter()
        .map(|header| (header.name(), header.value().to_owned()))
        .collect())
}

/// `url` with a SigV4 query signature for a GET valid `ttl` from `now`, or
/// less: no longer than the credentials say they last.
fn presign(
    url: &str,
    region: &str,
    credentials: &Credentials,
    now: SystemTime,
    ttl: Duration,
) -> Result<String, StoreError> {
    let left = credentials
        .expiry()
        .map(|expiry| expiry.duration_since(now).unwrap_or(Duration::ZERO));
    let ttl = left.map_or(ttl, |left| ttl.min(left)).max(Duration::from_secs(1));
    let mut settings = s3_settings();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(ttl);
    let identity: Identity = credentials.clone().into();
    let params = s3_params(&identity, region, now, settings)?;
    let request = SignableRequest::new("GET", url, std::iter::empty(), SignableBody::UnsignedPayload)
        .map_err(|_| StoreError::Signing)?;
    let (instructions, _) = sign(request, &params).map_err(|_| StoreError::Signing)?.into_parts();
    let mut signed = Url::parse(url).map_err(|_| StoreError::Signing)?;
    {
        let mut query = signed.query_pairs_mut();
        for (name, value) in instructions.params() {
            query.append_pair(name, value);
        }
    }
    Ok(signed.into())
}

/// The object key of image `index` of a request: its id and the index, never
/// anything the client wrote. Characters outside `[A-Za-z0-9_-]` are dropped
/// from the id (it comes from the front door).
pub fn object_key(request_id: &str, index: usize, extension: &str) -> String {
    let id: String = request_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        .take(128)
        .collect();
    let id = if id.is_empty() {
        format!("{:016x}", fastrand::u64(..))
    } else {
        id
    };
    format!("{KEY_PREFIX}{id}/{index}.{extension}")
}

/// The content type and file extension of an `output_format` (png by default).
pub fn media_of(output_format: Option<&str>) -> (&'static str, &'static str) {
    match output_format {
        Some("jpeg" | "jpg") => ("image/jpeg", "jpg"),
        Some("webp") => ("image/webp", "webp"),
        _ => ("image/png", "png"),
    }
}

/// One image's base64, decoded as its pieces arrive: the text of a JSON
/// string, cut anywhere, where `/` may come escaped as `\/`. Holds the
/// decoded bytes and at most three characters of an unfinished quantum.
#[derive(Debug, Default)]
pub struct Base64Image {
    decoded: Vec<u8>,
    quantum: [u8; 4],
    filled: usize,
    /// The previous piece ended with a `\`.
    escaped: bool,
    /// A quantum with `=` was decoded: nothing may follow.
    ended: bool,
}

/// The text is not one base64 image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("has image data that is not base64")]
pub struct NotBase64;

impl Base64Image {
    /// Decodes the next piece of the string's text.
    pub fn push(&mut self, mut text: &[u8]) -> Result<(), NotBase64> {
        loop {
            if self.escaped {
                match text.first() {
                    None => return Ok(()),
                    Some(b'/') => {
                        self.plain(b"/")?;
                        text = &text[1..];
                        self.escaped = false;
                    }
                    Some(_) => return Err(NotBase64),
                }
            }
            let Some(at) = memchr::memchr(b'\\', text) else {
                return self.plain(text);
            };
            self.plain(&text[..at])?;
            self.escaped = true;
            text = &text[at + 1..];
        }
    }

    /// The image, once its string has ended.
    pub fn finish(self) -> Result<Vec<u8>, NotBase64> {
        if self.filled != 0 || self.escaped || (self.decoded.is_empty() && !self.ended) {
            return Err(NotBase64);
        }
        Ok(self.decoded)
    }

    fn plain(&mut self, mut text: &[u8]) -> Result<(), NotBase64> {
        if text.is_empty() {
            return Ok(());
        }
        if self.ended {
            return Err(NotBase64);
        }
        if self.filled > 0 {
            let take = (4 - self.filled).min(text.len());
            self.quantum[self.filled..self.filled + take].copy_from_slice(&text[..take]);
            self.filled += take;
            text = &text[take..];
            if self.filled < 4 {
                return Ok(());
            }
            let quantum = self.quantum;
            self.filled = 0;
            self.decode(&quantum)?;
        }
        let whole = text.len() / 4 * 4;
        self.decode(&text[..whole])?;
        let rest = &text[whole..];
        self.quantum[..rest.len()].copy_from_slice(rest);
        self.filled = rest.len();
        if self.ended && self.filled > 0 {
            return Err(NotBase64);
        }
        Ok(())
    }

    fn decode(&mut self, quanta: &[u8]) -> Result<(), NotBase64> {
        if quanta.is_empty() {
            return Ok(());
        }
        if self.ended {
            return Err(NotBase64);
        }
        base64::engine::general_purpose::STANDARD
            .decode_vec(quanta, &mut self.decoded)
            .map_err(|_| NotBase64)?;
        self.ended = quanta.last() == Some(&b'=');
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example_credentials(expiry: Option<SystemTime>) -> Credentials {
        Credentials::new(
            "AKIAIOSFODNN7EXAMPLE",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            None,
            expiry,
            "test",
        )
    }

    fn may_24_2013() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_369_353_600)
    }

    #[test]
    fn a_presigned_get_matches_the_example_of_the_s3_signature_documentation() {
        // "Authenticating Requests: Using Query Parameters (AWS Signature Version 4)", Amazon S3 API Reference.
        let url = presign(
            "https://examplebucket.s3.amazonaws.com/test.txt",
            "us-east-1",
            &example_credentials(None),
            may_24_2013(),
            Duration::from_secs(86_400),
        )
        .expect("signed");
        let url = Url::parse(&url).expect("a URL");
        let query: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
        assert_eq!(
            query["X-Amz-Signature"],
            "aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
        );
        assert_eq!(
            query["X-Amz-Credential"],
            "AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request"
        );
        assert_eq!(query["X-Amz-Expires"], "86400");
        assert_eq!(query["X-Amz-SignedHeaders"], "host");
        assert_eq!(url.path(), "/test.txt");
    }

    #[test]
    fn a_link_never_outlives_the_credentials_it_is_signed_with() {
        let expiry = may_24_2013() + Duration::from_secs(600);
        let url = presign(
            "https://examplebucket.s3.amazonaws.com/test.txt",
            "us-east-1",
            &example_credentials(Some(expiry)),
            may_24_2013(),
            Duration::from_secs(3600),
        )
        .expect("signed");
        assert!(url.contains("X-Amz-Expires=600&"), "{url}");
    }

    #[test]
    fn session_credentials_sign_with_their_token() {
        let credentials = Credentials::new("ASIAEXAMPLE", "secret", Some("the/token+=".into()), None, "test");
        let url = presign(
            "http://127.0.0.1:5000/images-bucket/images/r/0.png",
            "eu-west-1",
            &credentials,
            may_24_2013(),
            Duration::from_secs(60),
        )
        .expect("signed");
        let url = Url::parse(&url).expect("a URL");
        assert_eq!(url.path(), "/images-bucket/images/r/0.png");
        let token = url
            .query_pairs()
            .find(|(k, _)| k == "X-Amz-Security-Token")
            .map(|(_, v)| v.into_owned());
        assert_eq!(token.as_deref(), Some("the/token+="));
        let headers = sign_upload(
            "http://127.0.0.1:5000/images-bucket/images/r/0.png",
            "image/png",
            "eu-west-1",
            &credentials,
            may_24_2013(),
        )
        .expect("signed");
        let header = |name: &str| headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str());
        assert_eq!(header("x-amz-content-sha256"), Some("UNSIGNED-PAYLOAD"));
        assert_eq!(header("x-amz-security-token"), Some("the/token+="));
        let authorization = header("authorization").expect("signed");
        assert!(
            authorization.starts_with("AWS4-HMAC-SHA256 Credential=ASIAEXAMPLE/20130524/eu-west-1/s3/aws4_request"),
            "{authorization}"
        );
        assert!(
            authorization.contains("SignedHeaders=content-type;host;"),
            "{authorization}"
        );
    }

    #[test]
    fn keys_hold_the_request_id_and_the_index_only() {
        assert_eq!(
            object_key("8f2c1a3e-6d4b-4c1f-9e7a-0b5d2c3a4f61", 2, "png"),
            "images/8f2c1a3e-6d4b-4c1f-9e7a-0b5d2c3a4f61/2.png"
        );
        assert_eq!(object_key("../a b/c", 0, "jpg"), "images/abc/0.jpg");
        let random = object_key("/..", 1, "png");
        assert!(
            random.starts_with("images/") && random.ends_with("/1.png") && random.len() > 20,
            "{random}"
        );
        assert_eq!(media_of(None), ("image/png", "png"));
        assert_eq!(media_of(Some("jpeg")), ("image/jpeg", "jpg"));
        assert_eq!(media_of(Some("webp")), ("image/webp", "webp"));
    }

    #[test]
    fn addresses_follow_the_endpoint_and_the_bucket_name() {
        let provider = SharedCredentialsProvider::new(example_credentials(None));
        let bucket = |name: &str, endpoint: Option<&str>| ImageBucket {
            name: name.into(),
            url_ttl: Duration::from_secs(60),
            endpoint: endpoint.map(|e| Url::parse(e).expect("url")),
        };
        let http = reqwest::Client::new();
        let aws = ImageStore::new(&bucket("imgs", None), "eu-west-1", provider.clone(), http.clone());
        assert_eq!(
            aws.object_url("images/a/0.png"),
            "https://imgs.s3.eu-west-1.amazonaws.com/images/a/0.png"
        );
        let dotted = ImageStore::new(&bucket("my.imgs", None), "cn-north-1", provider.clone(), http.clone());
        assert_eq!(
            dotted.object_url("k"),
            "https://s3.cn-north-1.amazonaws.com.cn/my.imgs/k"
        );
        let local = ImageStore::new(
            &bucket("imgs", Some("http://127.0.0.1:5000/")),
            "us-east-1",
            provider,
            http,
        );
        assert_eq!(local.object_url("k"), "http://127.0.0.1:5000/imgs/k");
    }

    fn decode_in_pieces(text: &[u8], cuts: &[usize]) -> Result<Vec<u8>, NotBase64> {
        let mut image = Base64Image::default();
        let mut start = 0;
        for &cut in cuts.iter().chain(std::iter::once(&text.len())) {
            image.push(&text[start..cut])?;
            start = cut;
        }
        image.finish()
    }

    #[test]
    fn base64_decodes_the_same_wherever_it_is_cut() {
        let bytes: Vec<u8> = (0..=255u8).chain(0..7).collect();
        let encoded = base64::engine::general_purpose::STANDARD.encode(&bytes);
        // As Azure may write it: `/` escaped.
        let json_text = encoded.replace('/', "\\/");
        let text = json_text.as_bytes();
        for a in 0..=text.len() {
            for b in (a..=text.len()).step_by(7) {
                assert_eq!(
                    decode_in_pieces(text, &[a, b]).as_deref(),
                    Ok(&bytes[..]),
                    "cut at {a}, {b}"
                );
            }
        }
    }

    #[test]
    fn text_that_is_not_one_base64_image_is_refused() {
        for bad in [
            "",
            "QUJ",
            "QU=D",
            "QQ==QUJD",
            "QUJD\\n",
            "QUJD\\",
            "QU\\u0041JD",
            "QUJ!",
            "QQ==Q",
        ] {
            assert_eq!(decode_in_pieces(bad.as_bytes(), &[]), Err(NotBase64), "{bad}");
            for cut in 0..=bad.len() {
                assert_eq!(
                    decode_in_pieces(bad.as_bytes(), &[cut]),
                    Err(NotBase64),
                    "{bad} cut at {cut}"
                );
            }
        }
        assert_eq!(decode_in_pieces(b"QQ==", &[2]), Ok(b"A".to_vec()));
    }
}
