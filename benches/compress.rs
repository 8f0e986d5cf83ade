//! Gzip of a relayed images answer (compress.rs): how small and how fast,
//! for the encoders that could do it. The body is a gpt-image answer whose
//! image is the base64 of 4 MB of noise (a PNG is deflated already: to a
//! compressor it is noise), fed in 64 KiB chunks with a sync flush after
//! each, as the relay sends them.
//!
//!     cargo bench --bench compress
//!
//! BENCHMARKS.md has the figures, on one core and under a 1/14 CPU quota
//! (Lambda's share at 128 MB).

use std::hint::black_box;
use std::io::Write;

use azure_openai_image::compress::Encoder;
use base64::Engine;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const CHUNK: usize = 64 * 1024;

fn answer() -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(18);
    let png: Vec<u8> = (0..4_000_000).map(|_| rng.u8(..)).collect();
    let b64 = base64::engine::general_purpose::STANDARD.encode(png);
    format!(
        r#"{{"created":1700000000,"data":[{{"b64_json":"{b64}","index":0}}],"background":"opaque","output_format":"png","quality":"high","size":"1024x1024","usage":{{"total_tokens":100,"input_tokens":50,"output_tokens":50,"input_tokens_details":{{"text_tokens":10,"image_tokens":40}}}}}}"#
    )
    .into_bytes()
}

/// What the connector runs: zlib-rs, Huffman-only.
fn huffman_only(body: &[u8]) -> usize {
    let mut encoder = Encoder::new();
    let sent: usize = body
        .chunks(CHUNK)
        .map(|chunk| encoder.chunk(chunk).expect("compressed").len())
        .sum();
    sent + encoder.finish().expect("ended").len()
}

/// zlib-rs at `level`, default strategy (level 1 is zlib-ng's `deflate_quick`).
fn zlib_rs_level(body: &[u8], level: i32) -> usize {
    use zlib_rs::{Deflate, DeflateConfig, DeflateFlush};
    let mut deflate = Deflate::new_with_config(DeflateConfig {
        level,
        window_bits: 31,
        ..DeflateConfig::default()
    });
    let mut out = vec![0; CHUNK * 2];
    for chunk in body.chunks(CHUNK) {
        let before = deflate.total_in();
        deflate
            .compress(chunk, &mut out, DeflateFlush::SyncFlush)
            .expect("compressed");
        assert_eq!(
            deflate.total_in() - before,
            chunk.len() as u64,
            "one call takes a chunk"
        );
    }
    deflate.compress(&[], &mut out, DeflateFlush::Finish).expect("ended");
    deflate.total_out() as usize
}

/// flate2 on miniz_oxide at `level` (default strategy), through `GzEncoder`.
fn miniz_level(body: &[u8], level: u32) -> usize {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
    let mut sent = 0;
    for chunk in body.chunks(CHUNK) {
        encoder.write_all(chunk).expect("compressed");
        encoder.flush().expect("flushed");
        sent += std::mem::take(encoder.get_mut()).len();
    }
    sent + encoder.finish().expect("ended").len()
}

/// miniz_oxide's Huffman-only strategy (raw deflate; the gzip frame adds 18 bytes).
fn miniz_huffman_only(body: &[u8]) -> usize {
    use miniz_oxide::MZFlush;
    use miniz_oxide::deflate::core::{CompressionStrategy, CompressorOxide, create_comp_flags_from_zip_params};
    use miniz_oxide::deflate::stream::deflate;
    let huffman_only = CompressionStrategy::HuffmanOnly as i32;
    let mut compressor = CompressorOxide::new(create_comp_flags_from_zip_params(1, -15, huffman_only));
    let mut crc = flate2::Crc::new();
    let mut out = vec![0; CHUNK * 2];
    let mut sent = 18;
    for chunk in body.chunks(CHUNK) {
        crc.update(chunk);
        let result = deflate(&mut compressor, chunk, &mut out, MZFlush::Sync);
        assert_eq!(result.bytes_consumed, chunk.len(), "one call takes a chunk");
        sent += result.bytes_written;
    }
    sent + deflate(&mut compressor, &[], &mut out, MZFlush::Finish).bytes_written
}

/// An encoder run over the whole answer: the bytes it sent.
type Encode = fn(&[u8]) -> usize;

fn compress(c: &mut Criterion) {
    let body = answer();
    let encoders: [(&str, Encode); 6] = [
        ("zlib_rs_huffman_only", huffman_only),
        ("zlib_rs_level_1", |b| zlib_rs_level(b, 1)),
        ("zlib_rs_level_2", |b| zlib_rs_level(b, 2)),
        ("miniz_level_1", |b| miniz_level(b, 1)),
        ("miniz_level_6", |b| miniz_level(b, 6)),
        ("miniz_huffman_only", miniz_huffman_only),
    ];
    let only: Option<String> = std::env::var("COMPRESS_ONLY").ok();
    let mut group = c.benchmark_group("gzip_4MB_png_answer_64k_chunks");
    group.sample_size(10);
    // Decimal, as Lambda's 2 MB/s is.
    group.throughput(Throughput::BytesDecimal(body.len() as u64));
    for (name, encode) in encoders {
        if only.as_deref().is_some_and(|only| !only.split(',').any(|o| o == name)) {
            continue;
        }
        let out = encode(&body);
        eprintln!(
            "{name}: {} bytes in, {out} out, ratio {:.4}",
            body.len(),
            out as f64 / body.len() as f64
        );
        group.bench_function(name, |b| b.iter(|| encode(black_box(&body))));
    }
    group.finish();
}

criterion_group!(benches, compress);
criterion_main!(benches);
