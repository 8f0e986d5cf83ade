//! Gzip for large answers relayed on the streaming front doors.
//!
//! A streamed Lambda answer goes out at most at 2 MB/s after its first 6 MB,
//! so every megabyte past 6 MB costs half a second. An images answer is
//! almost all base64, 6 bits of information a byte: Huffman coding alone
//! takes it to 75% of its size, with no search for repeats (a PNG's bytes,
//! already deflated, hold none worth finding). Each relayed chunk is
//! compressed and sync-flushed as it comes, so the answer still streams.
//!
//! Measured (`cargo bench --bench compress`, BENCHMARKS.md): zlib-rs's
//! Huffman-only strategy is the fastest encoder that reaches 75% (200 MB/s on
//! one core, 13 MB/s under a 1/14 quota); its level 1 (`deflate_quick`, fixed
//! Huffman codes) leaves base64 at 99.9%, and miniz_oxide's level 1 reaches
//! 75.5% at five-sixths of the speed.

use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::HeaderMap;
use http::header::ACCEPT_ENCODING;
use zlib_rs::{Deflate, DeflateConfig, DeflateFlush, Status, Strategy};

use crate::error;
use crate::exchange::{Aborted, StreamingBody};
use crate::observe::RequestLog;

/// The smallest relayed answer worth compressing. The first 6 MB of a
/// streamed answer are not slowed, so below that compressing only adds its
/// CPU time; above it, it saves a quarter of the capped megabytes. At 128 MB
/// (1/14 of a core) the encoder takes 13 MB/s: an answer of S MB costs about
/// S/13 s compressed against (S - 6)/2 s plain, even from S = 7.1. The margin
/// covers a slower core (Graviton) and the relay's own work on the same share.
pub const COMPRESS_FROM: usize = 8 * 1024 * 1024;

/// zlib's window bits for a gzip wrapper (header, CRC-32 and length trailer)
/// around a 32 KiB window.
const GZIP_WINDOW_BITS: i32 = 15 + 16;

/// Whether the client takes a gzip body: `gzip` (or `x-gzip`, or `*`) in
/// `Accept-Encoding` with a quality above 0. A named coding's quality wins
/// over `*`'s.
pub fn accepts_gzip(headers: &HeaderMap) -> bool {
    let mut gzip = None;
    let mut any = None;
    for value in headers.get_all(ACCEPT_ENCODING) {
        let Ok(value) = value.to_str() else {
            continue;
        };
        for item in value.split(',') {
            let mut params = item.split(';');
            let coding = params.next().unwrap_or_default().trim();
            let accepted = params.all(|param| {
                let Some((name, q)) = param.split_once('=') else {
                    return true;
                };
                !name.trim().eq_ignore_ascii_case("q") || quality_above_zero(q.trim())
            });
            if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
                gzip = Some(gzip.unwrap_or(false) || accepted);
            } else if coding == "*" {
                any = Some(any.unwrap_or(false) || accepted);
            }
        }
    }
    gzip.or(any).unwrap_or(false)
}

/// A qvalue (RFC 9110, 12.4.2): `0`, `0.000` are zero; anything that does not
/// parse is taken as zero too, so a garbled header never turns gzip on.
fn quality_above_zero(q: &str) -> bool {
    q.parse::<f32>().is_ok_and(|q| q > 0.0 && q <= 1.0)
}

/// A gzip stream written one chunk at a time, each flushed whole.
pub struct Encoder {
    deflate: Deflate,
}

/// The encoder refused its input: a bug, never the data.
#[derive(Debug, thiserror::Error)]
#[error("gzip failed: {0}")]
pub struct EncodeError(&'static str);

impl Default for Encoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Encoder {
    pub fn new() -> Self {
        Self {
            deflate: Deflate::new_with_config(DeflateConfig {
                level: 1,
                window_bits: GZIP_WINDOW_BITS,
                strategy: Strategy::HuffmanOnly,
                ..DeflateConfig::default()
            }),
        }
    }

    /// `chunk` compressed and sync-flushed: with what came before, the
    /// client can decode all of it now. The first carries the gzip header.
    pub fn chunk(&mut self, chunk: &[u8]) -> Result<Bytes, EncodeError> {
        self.run(chunk, DeflateFlush::SyncFlush)
    }

    /// The end of the stream: the last block, the CRC-32 and the length.
    pub fn finish(&mut self) -> Result<Bytes, EncodeError> {
        self.run(&[], DeflateFlush::Finish)
    }

    fn run(&mut self, mut input: &[u8], flush: DeflateFlush) -> Result<Bytes, EncodeError> {
        // Huffman-only output rarely exceeds its input; stored blocks add 5 bytes per 64 KiB.
        let mut out = vec![0; input.len() + input.len() / 16 + 64];
        let mut written = 0;
        loop {
            if written == out.len() {
                out.resize(out.len() * 2, 0);
            }
            let (read_before, written_before) = (self.deflate.total_in(), self.deflate.total_out());
            let status = self
                .deflate
                .compress(input, &mut out[written..], flush)
                .map_err(|err| EncodeError(err.as_str()))?;
            let (read, wrote) = (
                (self.deflate.total_in() - read_before) as usize,
                (self.deflate.total_out() - written_before) as usize,
            );
            input = &input[read..];
            written += wrote;
            // Room left over means zlib had no more to write for this flush.
            let done = match flush {
                DeflateFlush::Finish => status == Status::StreamEnd,
                _ => input.is_empty() && written < out.len(),
            };
            if done {
                out.truncate(written);
                return Ok(Bytes::from(out));
            }
            if read == 0 && wrote == 0 {
                return Err(EncodeError("no progress"));
            }
        }
    }
}

/// A relayed body, gzip-compressed as its chunks come. A body that breaks
/// off stays broken: its break passes through and the gzip stream is never
/// ended, so no client takes a cut answer for a whole one.
pub struct Gzip {
    inner: Box<dyn StreamingBody>,
    /// `None` once the gzip stream has ended or the body broke off.
    encoder: Option<Encoder>,
}

impl Gzip {
    pub fn new(inner: Box<dyn StreamingBody>) -> Self {
        Self {
            inner,
            encoder: Some(Encoder::new()),
        }
    }
}

impl StreamingBody for Gzip {
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Aborted>>> {
        loop {
            let Some(encoder) = self.encoder.as_mut() else {
                return Poll::Ready(None);
            };
            let encoded = match ready!(self.inner.poll_chunk(cx)) {
                Some(Ok(chunk)) if chunk.is_empty() => continue,
                Some(Ok(chunk)) => encoder.chunk(&chunk),
                Some(Err(aborted)) => {
                    self.encoder = None;
                    return Poll::Ready(Some(Err(aborted)));
                }
                None => {
                    let end = encoder.finish();
                    self.encoder = None;
                    end
                }
            };
            return Poll::Ready(Some(encoded.map_err(|err| {
                tracing::error!(error = %err, "compressing the answer failed");
                self.encoder = None;
                Aborted {
                    code: error::INTERNAL_ERROR.code,
                }
            })));
        }
    }

    fn fill_log(&mut self, log: &mut RequestLog) {
        self.inner.fill_log(log);
    }

    fn remaining_hint(&self) -> Option<usize> {
        // Not known compressed; the uncompressed size is an upper bound.
        self.inner.remaining_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::io::Read;

    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(ACCEPT_ENCODING, value.parse().expect("header"));
        }
        headers
    }

    #[test]
    fn gzip_is_accepted_when_named_or_covered_by_a_star() {
        for value in [
            "gzip",
            "gzip, deflate",
            "deflate, gzip",
            "GZIP",
            "x-gzip",
            "br;q=1.0, gzip;q=0.8, *;q=0.1",
            "gzip;q=0.001",
            "gzip; q=1",
            "gzip;Q=0.5",
            "*",
            "identity, *;q=0.5",
            "  gzip  ",
        ] {
            assert!(accepts_gzip(&headers(&[value])), "{value}");
        }
        assert!(accepts_gzip(&headers(&["deflate", "gzip"])), "headers sent twice");
    }

    #[test]
    fn gzip_is_refused_when_absent_given_q_zero_or_garbled() {
        for value in [
            "",
            "deflate",
            "br, deflate",
            "identity",
            "gzip;q=0",
            "gzip;q=0.000",
            "gzip;q=0, *",
            "*;q=0",
            "*, gzip;q=0",
            "gzip;q=abc",
            "gzip;q=2",
            "gzipped",
            "not-gzip",
        ] {
            assert!(!accepts_gzip(&headers(&[value])), "{value}");
        }
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    /// A body of ready chunks, then its end or a break.
    struct Chunks {
        chunks: VecDeque<Bytes>,
        then: Option<Aborted>,
    }

    impl StreamingBody for Chunks {
        fn poll_chunk(&mut self, _: &mut Context<'_>) -> Poll<Option<Result<Bytes, Aborted>>> {
            Poll::Ready(match self.chunks.pop_front() {
                Some(chunk) => Some(Ok(chunk)),
                None => self.then.take().map(Err),
            })
        }

        fn fill_log(&mut self, _: &mut RequestLog) {}
    }

    /// Everything the wrapper gives, and the break if it broke off.
    fn drain(mut body: Gzip) -> (Vec<u8>, Option<Aborted>) {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut out = Vec::new();
        loop {
            match body.poll_chunk(&mut cx) {
                Poll::Ready(Some(Ok(chunk))) => out.extend_from_slice(&chunk),
                Poll::Ready(Some(Err(aborted))) => return (out, Some(aborted)),
                Poll::Ready(None) => return (out, None),
                Poll::Pending => unreachable!("every chunk is ready"),
            }
        }
    }

    fn gunzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(data).read_to_end(&mut out)?;
        Ok(out)
    }

    /// An images answer whose image is base64 of noise, as a PNG's is.
    fn answer(len: usize) -> Vec<u8> {
        use base64::Engine;
        let mut rng = fastrand::Rng::with_seed(18);
        let noise: Vec<u8> = (0..len * 3 / 4).map(|_| rng.u8(..)).collect();
        let b64 = base64::engine::general_purpose::STANDARD.encode(noise);
        format!(r#"{{"created":1700000000,"data":[{{"b64_json":"{b64}","index":0}}]}}"#).into_bytes()
    }

    fn split(body: &[u8], sizes: impl Iterator<Item = usize>) -> VecDeque<Bytes> {
        let mut chunks = VecDeque::new();
        let mut rest = body;
        for size in sizes {
            if rest.is_empty() {
                break;
            }
            let (chunk, tail) = rest.split_at(size.min(rest.len()));
            chunks.push_back(Bytes::copy_from_slice(chunk));
            rest = tail;
        }
        chunks
    }

    #[test]
    fn the_compressed_stream_decodes_to_the_relayed_bytes_for_any_chunking() {
        let body = answer(300_000);
        let mut rng = fastrand::Rng::with_seed(7);
        let chunkings: Vec<Vec<usize>> = vec![
            vec![body.len()],
            std::iter::repeat_n(1, 3_000).collect(),
            vec![64 * 1024; body.len() / 1024],
            vec![0, 1, 0, 70_000, 0, 3, 200_000, 1_000_000],
            (0..2_000).map(|_| rng.usize(0..2_000)).collect(),
        ];
        for sizes in chunkings {
            let chunks = split(&body, sizes.into_iter().chain(std::iter::repeat(usize::MAX)));
            let (gz, broke) = drain(Gzip::new(Box::new(Chunks { chunks, then: None })));
            assert!(broke.is_none());
            assert_eq!(gunzip(&gz).expect("a whole gzip stream"), body);
        }
    }

    #[test]
    fn base64_comes_out_at_three_quarters() {
        let body = answer(1_000_000);
        let chunks = split(&body, std::iter::repeat(64 * 1024));
        let (gz, _) = drain(Gzip::new(Box::new(Chunks { chunks, then: None })));
        let ratio = gz.len() as f64 / body.len() as f64;
        assert!((0.74..0.77).contains(&ratio), "{ratio}");
    }

    #[test]
    fn each_chunk_decodes_as_soon_as_it_is_out() {
        let body = answer(200_000);
        let mut encoder = Encoder::new();
        let mut sent = Vec::new();
        for (i, chunk) in body.chunks(50_000).enumerate() {
            sent.extend_from_slice(&encoder.chunk(chunk).expect("compressed"));
            let mut decoded = Vec::new();
            // Not ended yet: the decoder gives all it has, then reports the missing end.
            let _ = flate2::read::GzDecoder::new(&sent[..]).read_to_end(&mut decoded);
            assert_eq!(decoded, body[..(i * 50_000 + chunk.len())], "after chunk {i}");
        }
    }

    #[test]
    fn an_empty_body_is_a_valid_empty_gzip_stream() {
        let (gz, broke) = drain(Gzip::new(Box::new(Chunks {
            chunks: VecDeque::new(),
            then: None,
        })));
        assert!(broke.is_none());
        assert_eq!(gunzip(&gz).expect("whole"), b"");
    }

    #[test]
    fn a_body_that_breaks_off_stays_broken_without_a_gzip_end() {
        let body = answer(200_000);
        let aborted = Aborted {
            code: "upstream_unreachable",
        };
        let chunks = split(&body, std::iter::repeat(64 * 1024));
        let (gz, broke) = drain(Gzip::new(Box::new(Chunks {
            chunks,
            then: Some(aborted.clone()),
        })));
        assert_eq!(broke, Some(aborted), "the break passes through");
        let err = gunzip(&gz).expect_err("a gzip stream without its end");
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn nothing_comes_after_a_break() {
        let mut body = Gzip::new(Box::new(Chunks {
            chunks: VecDeque::from([Bytes::from_static(b"{}")]),
            then: Some(Aborted { code: "x" }),
        }));
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(matches!(body.poll_chunk(&mut cx), Poll::Ready(Some(Ok(_)))));
        assert!(matches!(body.poll_chunk(&mut cx), Poll::Ready(Some(Err(_)))));
        assert!(matches!(body.poll_chunk(&mut cx), Poll::Ready(None)));
    }
}
