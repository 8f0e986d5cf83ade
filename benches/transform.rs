//! The connector's own work on a request and on Azure's answer, per body size:
//! request parsing and validation, the reshaping of an images response (whole,
//! and in the pieces a socket brings), and the completed events of a stream.
//!
//!     cargo bench --bench transform

use std::hint::black_box;

use azure_openai_image::Config;
use azure_openai_image::operation::Defaults;
use azure_openai_image::operation::{EditRequest, GenerationRequest, OperationRequest};
use azure_openai_image::reshape;
use azure_openai_image::reshape::Reshaper;
use azure_openai_image::sse::EventParser;
use azure_openai_image::stream::completed_events;
use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

/// An Azure gpt-image answer of about `size` bytes: four images of base64.
fn azure_body(size: usize) -> Vec<u8> {
    let per_image = size / 4;
    let image = "QUJD".repeat(per_image / 4 + 1)[..per_image].to_owned();
    let data: Vec<String> = (0..4).map(|_| format!(r#"{{"b64_json":"{image}"}}"#)).collect();
    format!(
        r#"{{"created":1700000000,"data":[{}],"background":"opaque","output_format":"png","quality":"high","size":"1024x1024","usage":{{"total_tokens":100,"input_tokens":50,"output_tokens":50,"input_tokens_details":{{"text_tokens":10,"image_tokens":40}}}}}}"#,
        data.join(",")
    )
    .into_bytes()
}

const SIZES: [(&str, usize); 4] = [
    ("10KB", 10_000),
    ("4MB", 4_000_000),
    ("16MB", 16_000_000),
    ("40MB", 40_000_000),
];

fn response(c: &mut Criterion) {
    let mut group = c.benchmark_group("reshape_whole");
    group.sample_size(20);
    for (name, size) in SIZES {
        let body = Bytes::from(azure_body(size));
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(name), &body, |b, body| {
            b.iter(|| reshape::whole(black_box(body.clone())).map(|mut r| r.take_output().len()))
        });
    }
    group.finish();

    // As the relay sees it: Azure's body in the 64 KiB pieces a socket read brings.
    let mut group = c.benchmark_group("reshape_64k_chunks");
    group.sample_size(20);
    for (name, size) in SIZES {
        let body = Bytes::from(azure_body(size));
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(name), &body, |b, body| {
            b.iter(|| {
                let mut reshaper = Reshaper::new();
                let mut out = 0;
                for start in (0..body.len()).step_by(64 * 1024) {
                    let end = (start + 64 * 1024).min(body.len());
                    reshaper.feed(black_box(body.slice(start..end))).expect("valid");
                    out += reshaper.take_output().len();
                }
                reshaper.finish().expect("whole");
                out
            })
        });
    }
    group.finish();

    let defaults = Defaults {
        size: "1024x1024".into(),
        quality: "high".into(),
        background: "opaque".into(),
        output_format: "png".into(),
    };
    let mut group = c.benchmark_group("completed_events");
    group.sample_size(20);
    for (name, size) in SIZES {
        let body = Bytes::from(azure_body(size));
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(name), &body, |b, body| {
            b.iter(|| {
                completed_events(black_box(body), &defaults, "image_generation.completed")
                    .map(|(events, _)| events.len())
            })
        });
    }
    group.finish();
}

fn request(c: &mut Criterion) {
    let config = Config::from_lookup(|k| match k {
        "IMAGE_MODELS" => Some(r#"[{"name":"azure-image","model":"gpt-image-1","baseURL":"https://r.openai.azure.com/openai/deployments/d","apiVersion":"2025-04-01-preview"}]"#.into()),
        "AZURE_API_KEY_SECRET_ID" => Some("k".into()),
        _ => None,
    })
    .expect("valid configuration");
    let entry = &config.models[0];
    let body = br#"{"model":"azure-image","prompt":"A watercolor lighthouse at dawn, seen from the sea","n":2,"size":"1536x1024","quality":"high","background":"opaque","output_format":"png","user":"u-42"}"#;
    let mut group = c.benchmark_group("request");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("parse_validate_upstream_body", |b| {
        b.iter(|| {
            let request = GenerationRequest::parse(black_box(body)).expect("valid");
            request.validate_for(entry.spec).expect("valid");
            request.upstream_body(entry, entry.primary()).len()
        })
    });
    group.finish();

    // An edit as the SDKs upload it: a 4 MB PNG, a mask and the text fields,
    // parsed, checked and turned into Azure's multipart body.
    let image = png_of(4_000_000, 1024, 1024, false);
    let mask = png_of(2_000, 1024, 1024, true);
    let boundary = "----bench-boundary-7MA4YWxkTrZu0gW";
    let mut form = Vec::new();
    for (name, filename, data) in [
        ("image", Some("photo.png"), &image[..]),
        ("mask", Some("mask.png"), &mask[..]),
    ]
    .into_iter()
    .chain([
        ("prompt", None, &b"Add a red scarf"[..]),
        ("model", None, &b"azure-image"[..]),
        ("size", None, &b"1024x1024"[..]),
    ]) {
        form.extend(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"").as_bytes());
        if let Some(filename) = filename {
            form.extend(format!("; filename=\"{filename}\"\r\nContent-Type: application/octet-stream").as_bytes());
        }
        form.extend(b"\r\n\r\n");
        form.extend(data);
        form.extend(b"\r\n");
    }
    form.extend(format!("--{boundary}--\r\n").as_bytes());
    let form = Bytes::from(form);
    let mut headers = http::HeaderMap::new();
    headers.insert(
        "content-type",
        format!("multipart/form-data; boundary={boundary}")
            .parse()
            .expect("header"),
    );
    let mut group = c.benchmark_group("edit");
    group.throughput(Throughput::Bytes(form.len() as u64));
    group.bench_function("parse_validate_upstream_form_4mb", |b| {
        b.iter(|| {
            let request = EditRequest::parse(&headers, black_box(&form)).expect("valid");
            request.validate_for(entry.spec).expect("valid");
            request.upstream(entry, entry.primary(), false).len()
        })
    });
    group.finish();
}

/// A PNG of `len` bytes: a `width`x`height` header, then filler image data.
fn png_of(len: usize, width: u32, height: u32, alpha: bool) -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
    png.extend(width.to_be_bytes());
    png.extend(height.to_be_bytes());
    png.extend([8, if alpha { 6 } else { 2 }, 0, 0, 0, 0, 0, 0, 0]);
    let data = len.saturating_sub(png.len() + 24);
    png.extend((data as u32).to_be_bytes());
    png.extend(b"IDAT");
    png.extend(std::iter::repeat_n(0x5a, data));
    png.extend([0, 0, 0, 0, 0, 0, 0, 0]);
    png.extend(b"IEND");
    png.extend([0, 0, 0, 0]);
    png
}

/// Azure's event stream as a socket brings it: one 5 MB `completed` event
/// (a large image) in 16 KiB and 64 KiB pieces. The parser's cost must not
/// grow with the number of pieces.
fn events(c: &mut Criterion) {
    let b64 = "QUJD".repeat(5_000_000 / 4);
    let stream = format!(
        "event: image_generation.completed\ndata: {{\"type\":\"image_generation.completed\",\"b64_json\":\"{b64}\"}}\n\n"
    )
    .into_bytes();
    let mut group = c.benchmark_group("sse_5mb_event");
    group.sample_size(20);
    group.throughput(Throughput::Bytes(stream.len() as u64));
    for piece in [16 * 1024, 64 * 1024, stream.len()] {
        let label = if piece == stream.len() {
            "whole".to_owned()
        } else {
            format!("{}k", piece / 1024)
        };
        group.bench_with_input(BenchmarkId::from_parameter(label), &piece, |b, &piece| {
            b.iter(|| {
                let mut parser = EventParser::default();
                let mut events = 0;
                for chunk in stream.chunks(piece) {
                    events += parser.push(black_box(chunk)).expect("under the limit").len();
                }
                events
            })
        });
    }
    group.finish();
}

criterion_group!(benches, request, response, events);
criterion_main!(benches);
