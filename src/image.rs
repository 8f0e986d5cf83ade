//! What an uploaded image is, read from its own first bytes: the format, the
//! size and whether it has an alpha channel.
//!
//! Never from the declared content type or file name: clients label files by
//! extension, and a mislabelled upload should get a 400 that says so from the
//! connector, not an opaque failure from Azure. Only the header is read (no
//! decoding), with every walk over segments or chunks bounded.

use std::borrow::Cow;

use crate::error::ApiError;

/// The image formats an edit accepts (OpenAI: png, webp, jpg).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Png,
    Jpeg,
    Webp,
}

impl Format {
    pub fn mime(self) -> &'static str {
        match self {
            Format::Png => "image/png",
            Format::Jpeg => "image/jpeg",
            Format::Webp => "image/webp",
        }
    }

    /// For the file name of a re-encoded upload.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Png => "png",
            Format::Jpeg => "jpg",
            Format::Webp => "webp",
        }
    }
}

/// What the header of an image says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageInfo {
    pub format: Format,
    pub width: u32,
    pub height: u32,
    /// A mask needs one: its transparent pixels are where the edit goes.
    pub has_alpha: bool,
}

/// The format and header of a PNG, JPEG or WEBP image; `None` for anything
/// else, a truncated header or a zero size.
pub fn identify(bytes: &[u8]) -> Option<ImageInfo> {
    png(bytes).or_else(|| jpeg(bytes)).or_else(|| webp(bytes))
}

/// [`identify`], or a 400 on `param` (`image`, `image[2]`, `mask`) saying the
/// bytes are not an image the edit takes.
pub fn check(bytes: &[u8], param: impl Into<Cow<'static, str>>) -> Result<ImageInfo, ApiError> {
    identify(bytes).ok_or_else(|| {
        let param = param.into();
        let message = format!(
            "Invalid file '{}': the content is not a PNG, JPEG or WEBP image (its format is read from its bytes, not its name or content type).",
            crate::error::printable(&param)
        );
        ApiError::param(crate::error::INVALID_IMAGE_FORMAT, param, message)
    })
}

/// More chunks before the image data than any encoder writes.
const MAX_PNG_CHUNKS: usize = 1024;
/// More segments before the frame header than any encoder writes (ICC profiles take up to 255).
const MAX_JPEG_SEGMENTS: usize = 1024;

/// PNG: IHDR first; alpha from the color type (4 grey + alpha, 6 RGBA) or a tRNS chunk before IDAT.
fn png(bytes: &[u8]) -> Option<ImageInfo> {
    let chunks = bytes.strip_prefix(b"\x89PNG\r\n\x1a\n")?;
    if chunks.get(..8)? != b"\0\0\0\x0dIHDR" {
        return None;
    }
    let ihdr = chunks.get(8..21)?;
    let (width, height) = (be32(&ihdr[0..4]), be32(&ihdr[4..8]));
    let color_type = ihdr[9];
    if width == 0 || height == 0 || width > i32::MAX as u32 || height > i32::MAX as u32 {
        return None;
    }
    let mut has_alpha = match color_type {
        4 | 6 => true,
        0 | 2 | 3 => false,
        _ => return None,
    };
    // After IHDR's length, type, 13 bytes of data and CRC.
    let mut at = 25usize;
    for _ in 0..MAX_PNG_CHUNKS {
        let length = be32(chunks.get(at..at + 4)?) as usize;
        match chunks.get(at + 4..at + 8)? {
            b"IDAT" => {
                return Some(ImageInfo {
                    format: Format::Png,
                    width,
                    height,
                    has_alpha,
                });
            }
            b"tRNS" => has_alpha = true,
            b"IEND" => return None,
            _ => {}
        }
        at = at.checked_add(12)?.checked_add(length)?;
    }
    None
}

/// JPEG: markers walked segment by segment to the first SOFn frame header. Never alpha.
fn jpeg(bytes: &[u8]) -> Option<ImageInfo> {
    if !bytes.starts_with(&[0xFF, 0xD8]) {
        return None;
    }
    let mut at = 2usize;
    for _ in 0..MAX_JPEG_SEGMENTS {
        if *bytes.get(at)? != 0xFF {
            return None;
        }
        // Any number of 0xFF fill bytes may precede a marker's code.
        while *bytes.get(at)? == 0xFF {
            at += 1;
        }
        let code = bytes[at];
        at += 1;
        match code {
            // Standalone markers: no length.
            0x01 | 0xD0..=0xD7 => continue,
            // A stuffed zero, a second SOI, EOI, or scan data before any frame header.
            0x00 | 0xD8 | 0xD9 | 0xDA => return None,
            _ => {}
        }
        let length = usize::from(be16(bytes.get(at..at + 2)?));
        if length < 2 {
            return None;
        }
        // SOF0..SOF15 but DHT (C4), JPG (C8) and DAC (CC).
        if matches!(code, 0xC0..=0xCF) && !matches!(code, 0xC4 | 0xC8 | 0xCC) {
            // Precision, height, width.
            let frame = bytes.get(at + 2..at + length)?.get(..5)?;
            let (height, width) = (u32::from(be16(&frame[1..3])), u32::from(be16(&frame[3..5])));
            // A zero height is defined later by a DNL marker: not in the header, so not accepted.
            if width == 0 || height == 0 {
                return None;
            }
            return Some(ImageInfo {
                format: Format::Jpeg,
                width,
                height,
                has_alpha: false,
            });
        }
        at += length;
    }
    None
}

/// WEBP: a RIFF file whose first chunk is lossy `VP8 `, lossless `VP8L` or extended `VP8X`.
fn webp(bytes: &[u8]) -> Option<ImageInfo> {
    if bytes.get(..4)? != b"RIFF" || bytes.get(8..12)? != b"WEBP" {
        return None;
    }
    let (width, height, has_alpha) = match bytes.get(12..16)? {
        b"VP8 " => {
            // Frame tag (3 bytes, bit 0 clear on a key frame), start code, 14-bit sizes.
            let frame = bytes.get(20..30)?;
            if frame[0] & 1 != 0 || frame[3..6] != [0x9D, 0x01, 0x2A] {
                return None;
            }
            (
                u32::from(le16(&frame[6..8]) & 0x3FFF),
                u32::from(le16(&frame[8..10]) & 0x3FFF),
                false,
            )
        }
        b"VP8L" => {
            // Signature, then width-1 (14 bits), height-1 (14), alpha (1), version (3, zero).
            let header = bytes.get(20..25)?;
            let bits = u32::from_le_bytes([header[1], header[2], header[3], header[4]]);
            if header[0] != 0x2F || bits >> 29 != 0 {
                return None;
            }
            ((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1, bits >> 28 & 1 == 1)
        }
        b"VP8X" => {
            // Flags (alpha is 0x10), 3 reserved bytes, canvas width-1 and height-1 (24 bits each).
            let header = bytes.get(20..30)?;
            (le24(&header[4..7]) + 1, le24(&header[7..10]) + 1, header[0] & 0x10 != 0)
        }
        _ => return None,
    };
    if width == 0 || height == 0 {
        return None;
    }
    Some(ImageInfo {
        format: Format::Webp,
        width,
        height,
        has_alpha,
    })
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn le16(b: &[u8]) -> u16 {
    u16::from_le_bytes([b[0], b[1]])
}

fn le24(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], 0])
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
        // CRCs are not read, so they are left zero.
        [&(data.len() as u32).to_be_bytes()[..], kind, data, &[0; 4]].concat()
    }

    /// Signature, IHDR (8-bit, the given color type), the chunks given, then IDAT and IEND.
    fn png(width: u32, height: u32, color_type: u8, before_idat: &[Vec<u8>]) -> Vec<u8> {
        let ihdr = [
            &width.to_be_bytes()[..],
            &height.to_be_bytes(),
            &[8, color_type, 0, 0, 0],
        ]
        .concat();
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        out.extend(chunk(b"IHDR", &ihdr));
        for c in before_idat {
            out.extend_from_slice(c);
        }
        out.extend(chunk(b"IDAT", &[0x78, 0x9C, 0, 0]));
        out.extend(chunk(b"IEND", &[]));
        out
    }

    fn segment(code: u8, data: &[u8]) -> Vec<u8> {
        [&[0xFF, code][..], &((data.len() + 2) as u16).to_be_bytes(), data].concat()
    }

    /// SOI, a JFIF APP0, a DQT and a DHT, the frame header `sof`, then a scan.
    fn jpeg(sof: u8, width: u16, height: u16) -> Vec<u8> {
        let frame = [
            &[8][..],
            &height.to_be_bytes(),
            &width.to_be_bytes(),
            &[3, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1],
        ]
        .concat();
        [
            vec![0xFF, 0xD8],
            segment(0xE0, b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0"),
            segment(0xDB, &[0; 65]),
            segment(0xC4, &[0; 20]),
            segment(sof, &frame),
            segment(0xDA, &[1, 1, 0, 0, 63, 0]),
            vec![0x12, 0x34, 0xFF, 0xD9],
        ]
        .concat()
    }

    fn riff(fourcc: &[u8; 4], data: &[u8]) -> Vec<u8> {
        let size = (4 + 8 + data.len()) as u32;
        [
            b"RIFF",
            &size.to_le_bytes()[..],
            b"WEBP",
            fourcc,
            &(data.len() as u32).to_le_bytes(),
            data,
        ]
        .concat()
    }

    fn webp_lossy(width: u16, height: u16) -> Vec<u8> {
        riff(
            b"VP8 ",
            &[
                &[0x50, 0x01, 0x00, 0x9D, 0x01, 0x2A][..],
                &width.to_le_bytes(),
                &height.to_le_bytes(),
                &[0; 8],
            ]
            .concat(),
        )
    }

    fn webp_lossless(width: u32, height: u32, alpha: bool) -> Vec<u8> {
        let bits = (width - 1) | (height - 1) << 14 | u32::from(alpha) << 28;
        riff(b"VP8L", &[&[0x2F][..], &bits.to_le_bytes(), &[0; 4]].concat())
    }

    fn webp_extended(width: u32, height: u32, flags: u8) -> Vec<u8> {
        let size = |v: u32| (v - 1).to_le_bytes()[..3].to_vec();
        let mut out = riff(b"VP8X", &[&[flags, 0, 0, 0][..], &size(width), &size(height)].concat());
        out.extend(b"ALPH\x02\0\0\0\0\0");
        out
    }

    fn info(format: Format, width: u32, height: u32, has_alpha: bool) -> Option<ImageInfo> {
        Some(ImageInfo {
            format,
            width,
            height,
            has_alpha,
        })
    }

    #[test]
    fn png_alpha_comes_from_the_color_type() {
        assert_eq!(identify(&png(1024, 768, 6, &[])), info(Format::Png, 1024, 768, true));
        assert_eq!(identify(&png(1, 2, 4, &[])), info(Format::Png, 1, 2, true));
        for opaque in [0, 2, 3] {
            assert_eq!(
                identify(&png(640, 480, opaque, &[])),
                info(Format::Png, 640, 480, false),
                "{opaque}"
            );
        }
    }

    #[test]
    fn png_alpha_comes_from_a_trns_chunk_before_the_image_data() {
        let palette = chunk(b"PLTE", &[0, 0, 0, 255, 255, 255]);
        let text = chunk(b"tEXt", b"Software\0hand");
        let trns = chunk(b"tRNS", &[0]);
        assert_eq!(
            identify(&png(16, 16, 3, &[palette.clone(), text.clone(), trns])),
            info(Format::Png, 16, 16, true)
        );
        assert_eq!(
            identify(&png(16, 16, 3, &[palette, text])),
            info(Format::Png, 16, 16, false)
        );
        // After IDAT it does not count (and is not valid PNG): only the header is read.
        let mut late = png(16, 16, 2, &[]);
        late.extend(chunk(b"tRNS", &[0, 0, 0, 0, 0, 0]));
        assert_eq!(identify(&late), info(Format::Png, 16, 16, false));
    }

    #[test]
    fn pngs_without_a_sound_header_are_not_images() {
        let good = png(8, 8, 6, &[]);
        assert_eq!(identify(&png(0, 8, 6, &[])), None, "zero width");
        assert_eq!(identify(&png(8, 1 << 31, 6, &[])), None, "height above 2^31-1");
        assert_eq!(identify(&png(8, 8, 5, &[])), None, "no color type 5");
        // IHDR not first.
        let mut swapped = b"\x89PNG\r\n\x1a\n".to_vec();
        swapped.extend(chunk(b"tEXt", b"a\0b"));
        swapped.extend_from_slice(&good[8..]);
        assert_eq!(identify(&swapped), None);
        // IEND before any IDAT.
        let mut empty = good[..33].to_vec();
        empty.extend(chunk(b"IEND", &[]));
        assert_eq!(identify(&empty), None);
        // A chunk length that points past the end.
        let mut overlong = good[..33].to_vec();
        overlong.extend_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF, b't', b'E', b'X', b't']);
        assert_eq!(identify(&overlong), None);
    }

    #[test]
    fn png_chunk_walk_is_bounded() {
        let many: Vec<Vec<u8>> = (0..MAX_PNG_CHUNKS).map(|_| chunk(b"tEXt", b"")).collect();
        assert_eq!(identify(&png(4, 4, 2, &many)), None);
        assert!(identify(&png(4, 4, 2, &many[..MAX_PNG_CHUNKS - 1])).is_some());
    }

    #[test]
    fn jpeg_dimensions_come_from_the_frame_header() {
        assert_eq!(identify(&jpeg(0xC0, 1024, 768)), info(Format::Jpeg, 1024, 768, false));
        assert_eq!(
            identify(&jpeg(0xC2, 3, 65535)),
            info(Format::Jpeg, 3, 65535, false),
            "progressive"
        );
        assert_eq!(identify(&jpeg(0xC1, 7, 9)), info(Format::Jpeg, 7, 9, false));
    }

    #[test]
    fn jpeg_fill_bytes_and_standalone_markers_are_skipped() {
        let plain = jpeg(0xC0, 20, 10);
        let mut padded = vec![0xFF, 0xD8, 0xFF, 0xFF, 0xFF, 0x01];
        padded.extend_from_slice(&[0xFF, 0xFF]);
        padded.extend_from_slice(&plain[3..]);
        assert_eq!(identify(&padded), info(Format::Jpeg, 20, 10, false));
    }

    #[test]
    fn jpegs_without_a_frame_header_are_not_images() {
        assert_eq!(identify(&jpeg(0xC0, 0, 10)), None, "zero width");
        assert_eq!(identify(&jpeg(0xC0, 10, 0)), None, "height from a DNL marker");
        let scan_first = [
            vec![0xFF, 0xD8],
            segment(0xDA, &[0; 6]),
            segment(0xC0, &[8, 0, 1, 0, 1, 1]),
        ]
        .concat();
        assert_eq!(identify(&scan_first), None);
        assert_eq!(identify(&[0xFF, 0xD8, 0xFF, 0xD9]), None, "EOI");
        assert_eq!(identify(&[0xFF, 0xD8, 0x00, 0xFF, 0xC0]), None, "no marker");
        let short_length = [vec![0xFF, 0xD8], vec![0xFF, 0xE0, 0x00, 0x01]].concat();
        assert_eq!(identify(&short_length), None);
        let short_frame = [vec![0xFF, 0xD8], segment(0xC0, &[8, 0, 1])].concat();
        assert_eq!(identify(&short_frame), None);
        let full = jpeg(0xC0, 20, 10);
        for cut in 0..full.len() {
            let shown = identify(&full[..cut]);
            assert!(
                shown.is_none() || shown == info(Format::Jpeg, 20, 10, false),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn jpeg_segment_walk_is_bounded() {
        let mut many = vec![0xFF, 0xD8];
        for _ in 0..MAX_JPEG_SEGMENTS {
            many.extend(segment(0xE1, b""));
        }
        many.extend(segment(0xC0, &[8, 0, 1, 0, 1, 1, 1, 0x11, 0]));
        assert_eq!(identify(&many), None);
    }

    #[test]
    fn webp_comes_lossy_lossless_or_extended() {
        assert_eq!(identify(&webp_lossy(1024, 1536)), info(Format::Webp, 1024, 1536, false));
        // The top two bits of each 16-bit size are a scale, not the size.
        assert_eq!(
            identify(&webp_lossy(0xC000 | 300, 200)),
            info(Format::Webp, 300, 200, false)
        );
        assert_eq!(
            identify(&webp_lossless(16384, 1, true)),
            info(Format::Webp, 16384, 1, true)
        );
        assert_eq!(identify(&webp_lossless(5, 7, false)), info(Format::Webp, 5, 7, false));
        assert_eq!(
            identify(&webp_extended(1 << 24, 3, 0x10)),
            info(Format::Webp, 1 << 24, 3, true)
        );
        assert_eq!(
            identify(&webp_extended(9, 3, 0x08)),
            info(Format::Webp, 9, 3, false),
            "animation only"
        );
    }

    #[test]
    fn webps_without_a_sound_header_are_not_images() {
        let mut interframe = webp_lossy(10, 10);
        interframe[20] |= 1;
        assert_eq!(identify(&interframe), None);
        let mut bad_start_code = webp_lossy(10, 10);
        bad_start_code[24] = 0;
        assert_eq!(identify(&bad_start_code), None);
        assert_eq!(identify(&webp_lossy(0, 10)), None);
        let mut version = webp_lossless(10, 10, false);
        version[24] |= 0x20;
        assert_eq!(identify(&version), None);
        let mut signature = webp_lossless(10, 10, false);
        signature[20] = 0;
        assert_eq!(identify(&signature), None);
        assert_eq!(identify(&riff(b"VP9 ", &[0; 10])), None);
        let mut wave = webp_lossy(10, 10);
        wave[8..12].copy_from_slice(b"WAVE");
        assert_eq!(identify(&wave), None);
        for (image, header) in [
            (webp_lossy(10, 10), 30),
            (webp_lossless(10, 10, true), 25),
            (webp_extended(10, 10, 0x10), 30),
        ] {
            assert!(identify(&image[..header]).is_some());
            assert_eq!(identify(&image[..header - 1]), None, "truncated header");
        }
    }

    #[test]
    fn formats_name_their_mime_type_and_extension() {
        assert_eq!((Format::Png.mime(), Format::Png.extension()), ("image/png", "png"));
        assert_eq!((Format::Jpeg.mime(), Format::Jpeg.extension()), ("image/jpeg", "jpg"));
        assert_eq!((Format::Webp.mime(), Format::Webp.extension()), ("image/webp", "webp"));
    }

    #[test]
    fn a_text_file_named_png_is_refused_on_its_field() {
        let body = bytes::Bytes::from_static(
            b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"cat.png\"\r\nContent-Type: image/png\r\n\r\nnot a picture\r\n--b--\r\n",
        );
        let parts = crate::multipart::parse(&body, "b").expect("valid form");
        let err = check(&parts[0].data, "image").expect_err("text is not an image");
        assert_eq!(err.status, http::StatusCode::BAD_REQUEST);
        assert_eq!(err.param.as_deref(), Some("image"));
        assert_eq!(err.code.as_deref(), Some("invalid_image_format"));
        for other in [
            &b""[..],
            b"GIF89a\x01\0\x01\0",
            b"BM\0\0",
            b"\x89PNG\r\n\x1a\n",
            b"\xFF\xD8",
            b"RIFF\0\0\0\0WEBP",
        ] {
            assert!(check(other, "mask").is_err(), "{other:?}");
        }
        assert_eq!(check(&png(2, 2, 6, &[]), "mask").ok(), info(Format::Png, 2, 2, true));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = identify(&bytes);
        }

        #[test]
        fn damaged_images_never_panic_and_keep_their_format(
            which in 0..5usize,
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
            cut in any::<prop::sample::Index>(),
        ) {
            let (mut bytes, format) = match which {
                0 => (png(300, 200, 3, &[chunk(b"tRNS", &[0])]), Format::Png),
                1 => (jpeg(0xC0, 300, 200), Format::Jpeg),
                2 => (webp_lossy(300, 200), Format::Webp),
                3 => (webp_lossless(300, 200, true), Format::Webp),
                _ => (webp_extended(300, 200, 0x10), Format::Webp),
            };
            // Damage past the magic numbers (the first 4 bytes): still no other format.
            for (at, byte) in edits {
                let at = 4 + at.index(bytes.len() - 4);
                bytes[at] = byte;
            }
            bytes.truncate(cut.index(bytes.len() + 1));
            if let Some(found) = identify(&bytes) {
                prop_assert_eq!(found.format, format);
                prop_assert!(found.width > 0 && found.height > 0);
            }
        }
    }
}
