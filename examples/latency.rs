//! The latency client and the steady upstream of `tools/bench.py`.
//!
//! `latency time …` times POSTs, each from its first byte out to the last
//! byte of the answer in, on one kept-alive HTTP/1.1 connection per target.
//! The targets take turns, request by request, so that drift falls on all of
//! them alike. A client in Rust, so that the client's own reading (chunked or
//! not) does not weigh on one side.
//!
//!     latency time COUNT WARMUP BODY_FILE URL[|HEADER:VALUE…] …
//!
//! prints one JSON object: `{"ms": [[…] per target], "bytes": [… per target]}`.
//!
//! `latency serve PORT` is an Azure image deployment that answers every POST
//! at once with a ready-made gpt-image body: `n` images of about 4 MB of
//! base64 each for a prompt with `[large]`, one of 20 KB otherwise. The
//! Python stand-in makes each image anew, with tens of milliseconds of jitter
//! that would drown what the connector adds.

use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

struct Target {
    uri: http::Uri,
    headers: Vec<(String, String)>,
    sender: http1::SendRequest<Full<Bytes>>,
}

async fn connect(spec: &str) -> Result<Target, String> {
    let mut parts = spec.split('|');
    let uri: http::Uri = parts
        .next()
        .unwrap_or_default()
        .parse()
        .map_err(|e| format!("{spec}: {e}"))?;
    let headers = parts
        .map(|h| {
            let (name, value) = h.split_once(':').ok_or_else(|| format!("{h}: not NAME:VALUE"))?;
            Ok((name.to_owned(), value.to_owned()))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let authority = uri.authority().ok_or_else(|| format!("{spec}: no host"))?.to_string();
    let stream = TcpStream::connect(&authority).await.map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    Ok(Target { uri, headers, sender })
}

/// One request: milliseconds to the last byte, and the body's size.
async fn time_one(target: &mut Target, body: &Bytes) -> Result<(f64, usize), String> {
    let mut request = http::Request::post(target.uri.clone()).header(
        http::header::HOST,
        target.uri.authority().map(|a| a.as_str()).unwrap_or_default(),
    );
    for (name, value) in &target.headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let request = request.body(Full::new(body.clone())).map_err(|e| e.to_string())?;
    target.sender.ready().await.map_err(|e| e.to_string())?;
    let started = Instant::now();
    let response = target.sender.send_request(request).await.map_err(|e| e.to_string())?;
    let status = response.status();
    let mut body = response.into_body();
    let mut size = 0;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.map_err(|e| e.to_string())?.into_data() {
            size += data.len();
        }
    }
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    if !status.is_success() {
        return Err(format!("{}: {status}", target.uri));
    }
    Ok((ms, size))
}

const USAGE: &str = "usage: latency time COUNT WARMUP BODY_FILE URL[|HEADER:VALUE…] … | latency serve PORT";

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.split_first() {
        Some((mode, rest)) if mode == "time" => time(rest).await,
        Some((mode, [port])) if mode == "serve" => serve(port.parse().map_err(|_| "PORT: a number")?).await,
        _ => Err(USAGE.into()),
    }
}

/// An Azure gpt-image answer with `n` images of `len` base64 characters.
fn answer(n: usize, len: usize) -> Bytes {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut rng = fastrand::Rng::with_seed(7);
    let image: String = (0..len).map(|_| ALPHABET[rng.usize(..64)] as char).collect();
    let data: Vec<String> = (0..n).map(|_| format!(r#"{{"b64_json":"{image}"}}"#)).collect();
    Bytes::from(format!(
        r#"{{"created":1700000000,"data":[{}],"background":"opaque","output_format":"png","quality":"high","size":"1024x1024","usage":{{"total_tokens":150,"input_tokens":100,"output_tokens":50,"input_tokens_details":{{"text_tokens":100,"image_tokens":0}}}}}}"#,
        data.join(",")
    ))
}

async fn serve(port: u16) -> Result<(), String> {
    let small = answer(1, 20_000);
    // n = 1 to 4, and 10 (the stream whole path's memory figure): 10 answers of n = 1..10 would hold 230 MB.
    let large: Vec<Bytes> = (1..=4).chain([10]).map(|n| answer(n, 4_196_000)).collect();
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    loop {
        let (stream, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);
        let (small, large) = (small.clone(), large.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let (small, large) = (small.clone(), large.clone());
                async move {
                    let body = req
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    // A JSON generation or a multipart edit: `n` from JSON, `[large]` anywhere in the body.
                    let request: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    let n = request["n"].as_u64().unwrap_or(1) as usize;
                    let big = body.windows(7).any(|w| w == b"[large]");
                    let answer = match n {
                        _ if !big => small,
                        10.. => large[4].clone(),
                        n => large[n.clamp(1, 4) - 1].clone(),
                    };
                    http::Response::builder()
                        .header(http::header::CONTENT_TYPE, "application/json")
                        .header("apim-request-id", "steady")
                        .body(Full::new(answer))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn time(args: &[String]) -> Result<(), String> {
    let [count, warmup, body_file, specs @ ..] = args else {
        return Err(USAGE.into());
    };
    let count: usize = count.parse().map_err(|_| "COUNT: a number")?;
    let warmup: usize = warmup.parse().map_err(|_| "WARMUP: a number")?;
    let bodies: Vec<Bytes> = std::fs::read_to_string(body_file)
        .map_err(|e| format!("{body_file}: {e}"))?
        .lines()
        .map(|line| match line.strip_prefix("b64:") {
            // A binary body (a multipart upload), base64 on its line.
            Some(encoded) => base64::Engine::decode(&base64::engine::general_purpose::STANDARD, encoded)
                .map(Bytes::from)
                .unwrap_or_default(),
            None => Bytes::from(line.to_owned()),
        })
        .collect();
    if bodies.len() != specs.len() {
        return Err("BODY_FILE: one line, one request body, per target".into());
    }
    let mut targets = Vec::new();
    for spec in specs {
        targets.push(connect(spec).await?);
    }
    let mut ms = vec![Vec::with_capacity(count); targets.len()];
    let mut bytes = vec![0; targets.len()];
    for round in 0..warmup + count {
        for (k, target) in targets.iter_mut().enumerate() {
            let (took, size) = time_one(target, &bodies[k]).await?;
            bytes[k] = size;
            if round >= warmup {
                ms[k].push(took);
            }
        }
    }
    println!("{}", serde_json::json!({"ms": ms, "bytes": bytes}));
    Ok(())
}
