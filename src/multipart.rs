//! `multipart/form-data` bodies (RFC 7578 over RFC 2046), the way OpenAI
//! clients upload images to edit: the form's fields and files, each file a
//! slice of the request body, never a copy (an edit carries up to 16 images).
//!
//! Strict on purpose. What the connector validates must be what Azure reads,
//! so where two parsers could disagree on the parts of a body (bare LF line
//! endings, folded headers, a repeated `name`, a boundary string followed by
//! junk, base64 transfer encodings) the body is refused with a 400 naming the
//! problem, not guessed at. Every mainstream client (browsers, curl, the
//! OpenAI SDKs through httpx or undici) sends CRLF and none of the rest.
//!
//! Bounded: at most [`MAX_PARTS`] parts, [`MAX_HEADER_BYTES`] of headers per
//! part, and each byte of the body is scanned for the boundary once.

use std::borrow::Cow;

use bytes::Bytes;
use memchr::memmem;

use crate::error::{self, ApiError, printable};

/// More parts than any edit needs (16 images, a mask and a dozen fields).
pub const MAX_PARTS: usize = 64;
/// The headers of one part, blank line included.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;
/// RFC 2046 §5.1.1.
const MAX_BOUNDARY_CHARS: usize = 70;

/// One form field or uploaded file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// The `name` of its `Content-Disposition`.
    pub name: String,
    /// The `filename` (or `filename*`) the client gave, if it sent a file.
    /// Informational: the format of an image is read from its bytes.
    pub filename: Option<String>,
    /// The part's own `Content-Type`, as sent. Informational too.
    pub content_type: Option<String>,
    /// The content, a slice of the request body.
    pub data: Bytes,
}

impl Part {
    /// A text field's value: the content as UTF-8.
    pub fn text(&self) -> Result<&str, ApiError> {
        std::str::from_utf8(&self.data).map_err(|_| {
            ApiError::param(
                error::INVALID_VALUE,
                self.name.clone(),
                format!("Invalid '{}': a form field must be UTF-8 text.", printable(&self.name)),
            )
        })
    }
}

/// The boundary of a `multipart/form-data` content type, quoted or not.
pub fn boundary_of(content_type: &str) -> Result<&str, ApiError> {
    let wrong = |why: &str| {
        invalid(format!(
            "The Content-Type must be multipart/form-data with a boundary ({why}; got `{}`).",
            printable(content_type)
        ))
    };
    let (media_type, rest) = content_type.split_once(';').unwrap_or((content_type, ""));
    if !media_type.trim().eq_ignore_ascii_case("multipart/form-data") {
        return Err(wrong("not multipart/form-data"));
    }
    let mut boundary = None;
    for (name, value) in parameters(rest).map_err(wrong)? {
        if name.eq_ignore_ascii_case("boundary") {
            if boundary.is_some() {
                return Err(wrong("more than one boundary"));
            }
            // Escapes would only stand for characters a boundary may not hold.
            boundary = Some(match value {
                Value::Token(v) => v,
                Value::Quoted(v) if !v.contains('\\') => v,
                Value::Quoted(_) => return Err(wrong("a boundary holds no backslash")),
            });
        }
    }
    let boundary = boundary.ok_or_else(|| wrong("no boundary parameter"))?;
    if boundary.is_empty() || boundary.len() > MAX_BOUNDARY_CHARS {
        return Err(wrong("a boundary has 1 to 70 characters"));
    }
    if !boundary.bytes().all(is_boundary_char) || boundary.ends_with(' ') {
        return Err(wrong(
            "a boundary holds letters, digits and '()+_,-./:=? only, and ends in none of spaces",
        ));
    }
    Ok(boundary)
}

/// Every part of a body, in the order sent; repeated names included (see [`only`]).
/// A body of no part at all is not an error here: the caller names the field it misses.
pub fn parse(body: &Bytes, boundary: &str) -> Result<Vec<Part>, ApiError> {
    if boundary.is_empty() || boundary.len() > MAX_BOUNDARY_CHARS {
        return Err(invalid("The multipart boundary must have 1 to 70 characters."));
    }
    let delimiter = [b"\r\n--", boundary.as_bytes()].concat();
    let delimiters = memmem::Finder::new(&delimiter);
    let bytes: &[u8] = body;
    // `at` is where `--boundary` starts: the body's start, or after the CRLF ending the preamble.
    let mut at = if bytes.starts_with(&delimiter[2..]) {
        0
    } else {
        match delimiters.find(bytes) {
            Some(found) => found + 2,
            None => return Err(invalid("The multipart body holds no boundary of its Content-Type.")),
        }
    };
    let mut parts = Vec::new();
    loop {
        let after = at + delimiter.len() - 2;
        let rest = &bytes[after..];
        if rest.starts_with(b"--") {
            return Ok(parts); // the close delimiter; an epilogue after it is ignored
        }
        let padding = rest.iter().take_while(|&&b| b == b' ' || b == b'\t').count();
        if !rest[padding..].starts_with(b"\r\n") {
            let what = if b"\r\n".starts_with(&rest[padding..]) || b"--".starts_with(rest) {
                "The multipart body ends without its closing boundary (truncated?).".to_owned()
            } else {
                format!(
                    "A multipart boundary is followed by `{}`, not a line break or `--`: the boundary appears inside the content.",
                    excerpt(&rest[padding..])
                )
            };
            return Err(invalid(what));
        }
        if parts.len() == MAX_PARTS {
            return Err(invalid(format!("The multipart body has more than {MAX_PARTS} parts.")));
        }
        let number = parts.len() + 1;
        let start = after + padding + 2;
        let end = delimiters.find(&bytes[start..]).map(|found| start + found);
        let (part, data_start) = part_head(bytes, start, end.unwrap_or(bytes.len()), number)?;
        let Some(end) = end else {
            return Err(invalid(format!(
                "The multipart body ends inside part {number} (`{}`), without its closing boundary (truncated?).",
                printable(&part.name)
            )));
        };
        parts.push(Part {
            data: body.slice(data_start..end),
            ..part
        });
        at = end + 2;
    }
}

/// The one part of a field that may come once: `None` when absent, a 400 on
/// that field when it came more than once.
pub fn only<'a>(parts: &'a [Part], name: &str) -> Result<Option<&'a Part>, ApiError> {
    let mut named = parts.iter().filter(|p| p.name == name);
    let first = named.next();
    if named.next().is_some() {
        return Err(ApiError::param(
            error::DUPLICATE_PARAMETER,
            name.to_owned(),
            format!("Duplicate parameter: '{}' was sent more than once.", printable(name)),
        ));
    }
    Ok(first)
}

/// Every part of one field, in the order sent (`image` and `image[]` are two names).
pub fn all<'a>(parts: &'a [Part], name: &'a str) -> impl Iterator<Item = &'a Part> + 'a {
    parts.iter().filter(move |p| p.name == name)
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(error::INVALID_MULTIPART, message)
}

/// A part's headers, between `start` and the next delimiter (`end`): the part
/// without its data, and where the data starts.
fn part_head(bytes: &[u8], start: usize, end: usize, number: usize) -> Result<(Part, usize), ApiError> {
    let fail = |why: String| invalid(format!("Part {number} of the multipart body: {why}."));
    let (headers, data_start) = if bytes[start..end].starts_with(b"\r\n") {
        (&bytes[start..start], start + 2)
    } else {
        let window = &bytes[start..end.min(start + MAX_HEADER_BYTES)];
        match memmem::find(window, b"\r\n\r\n") {
            Some(found) => (&window[..found], start + found + 4),
            None if end > start + MAX_HEADER_BYTES => {
                return Err(fail(format!("its headers exceed {MAX_HEADER_BYTES} bytes")));
            }
            None if end == bytes.len() => {
                return Err(fail("the body ends inside its headers (truncated?)".into()));
            }
            // The blank line's CRLF and the content's first bytes make a delimiter (RFC 2046 forbids it).
            None if bytes[start..end].ends_with(b"\r\n") => {
                return Err(fail("its content begins with the boundary".into()));
            }
            None => return Err(fail("its headers do not end with a blank line".into())),
        }
    };
    let headers = std::str::from_utf8(headers).map_err(|_| fail("its headers are not UTF-8".into()))?;
    let mut disposition = None;
    let mut content_type = None;
    for line in headers.split("\r\n").filter(|_| !headers.is_empty()) {
        if line.contains(['\r', '\n']) {
            return Err(fail("a header line ends in a bare CR or LF, not CRLF".into()));
        }
        if line.starts_with([' ', '\t']) {
            return Err(fail("folded header lines are not accepted".into()));
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(fail(format!("`{}` is not a header", printable(line))));
        };
        if name.is_empty() || !name.bytes().all(is_token_char) {
            return Err(fail(format!("`{}` is not a header name", printable(name))));
        }
        let value = value.trim_matches([' ', '\t']);
        let slot = if name.eq_ignore_ascii_case("content-disposition") {
            &mut disposition
        } else if name.eq_ignore_ascii_case("content-type") {
            &mut content_type
        } else if name.eq_ignore_ascii_case("content-transfer-encoding") {
            // RFC 7578 §4.7: deprecated; only the identity encodings mean the bytes are the content.
            if !["binary", "8bit", "7bit"].iter().any(|e| value.eq_ignore_ascii_case(e)) {
                return Err(fail(format!(
                    "Content-Transfer-Encoding `{}` is not supported; send the bytes as they are",
                    printable(value)
                )));
            }
            continue;
        } else {
            continue;
        };
        if slot.replace(value).is_some() {
            return Err(fail(format!("{name} appears twice")));
        }
    }
    let disposition = disposition.ok_or_else(|| fail("it has no Content-Disposition header".into()))?;
    let (name, filename) = form_data(disposition).map_err(|why| fail(why.into_owned()))?;
    let part = Part {
        name,
        filename,
        content_type: content_type.map(str::to_owned),
        data: Bytes::new(),
    };
    Ok((part, data_start))
}

/// `form-data; name="..."; filename="..."` → the name and the file name
/// (`filename*` over `filename`, RFC 6266 §4.3).
fn form_data(value: &str) -> Result<(String, Option<String>), Cow<'static, str>> {
    let (kind, rest) = value.split_once(';').unwrap_or((value, ""));
    if !kind.trim_matches([' ', '\t']).eq_ignore_ascii_case("form-data") {
        return Err(format!("its Content-Disposition is `{}`, not form-data", printable(kind)).into());
    }
    let (mut name, mut filename, mut filename_ext) = (None, None, None);
    for (key, value) in parameters(rest).map_err(|why| format!("its Content-Disposition is malformed ({why})"))? {
        let slot = if key.eq_ignore_ascii_case("name") {
            &mut name
        } else if key.eq_ignore_ascii_case("filename") {
            &mut filename
        } else if key.eq_ignore_ascii_case("filename*") {
            &mut filename_ext
        } else {
            continue;
        };
        if slot.replace(value).is_some() {
            return Err(format!("its Content-Disposition has `{}` twice", printable(key)).into());
        }
    }
    let name = match name {
        None => return Err("its Content-Disposition has no name".into()),
        Some(name) => name.unescaped(),
    };
    if name.is_empty() {
        return Err("its Content-Disposition has an empty name".into());
    }
    let filename = match filename_ext {
        Some(Value::Token(ext)) => Some(ext_value(ext)?),
        Some(Value::Quoted(_)) => return Err("its filename* is quoted; RFC 5987 values are not".into()),
        None => filename.map(|f| f.unescaped().into_owned()),
    };
    Ok((name.into_owned(), filename))
}

/// An RFC 5987 `charset'language'percent-encoded` value, in UTF-8 or ISO-8859-1.
fn ext_value(ext: &str) -> Result<String, Cow<'static, str>> {
    let mut pieces = ext.splitn(3, '\'');
    let (Some(charset), Some(_language), Some(encoded)) = (pieces.next(), pieces.next(), pieces.next()) else {
        return Err("its filename* is not charset'language'value".into());
    };
    let mut raw = Vec::with_capacity(encoded.len());
    let mut bytes = encoded.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next(), bytes.next()];
            let digit = |d: Option<u8>| d.and_then(|d| (d as char).to_digit(16));
            match (digit(hex[0]), digit(hex[1])) {
                (Some(high), Some(low)) => raw.push((high * 16 + low) as u8),
                _ => return Err("its filename* has a malformed %-escape".into()),
            }
        } else {
            raw.push(b);
        }
    }
    if charset.eq_ignore_ascii_case("utf-8") {
        String::from_utf8(raw).map_err(|_| "its filename* is not UTF-8".into())
    } else if charset.eq_ignore_ascii_case("iso-8859-1") {
        Ok(raw.into_iter().map(char::from).collect())
    } else {
        Err(format!(
            "its filename* charset `{}` is not UTF-8 or ISO-8859-1",
            printable(charset)
        )
        .into())
    }
}

/// A header parameter's value: a token, or the inside of a quoted string, escapes still in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Value<'a> {
    Token(&'a str),
    Quoted(&'a str),
}

impl<'a> Value<'a> {
    fn unescaped(self) -> Cow<'a, str> {
        match self {
            Value::Token(v) => Cow::Borrowed(v),
            Value::Quoted(v) if !v.contains('\\') => Cow::Borrowed(v),
            Value::Quoted(v) => {
                let mut out = String::with_capacity(v.len());
                let mut chars = v.chars();
                while let Some(c) = chars.next() {
                    // A trailing backslash cannot reach here: `parameters` refuses it.
                    out.push(if c == '\\' { chars.next().unwrap_or('\\') } else { c });
                }
                Cow::Owned(out)
            }
        }
    }
}

/// `*( OWS ";" OWS token "=" ( token / quoted-string ) )`, a trailing `;` allowed.
fn parameters(mut s: &str) -> Result<Vec<(&str, Value<'_>)>, &'static str> {
    const OWS: [char; 2] = [' ', '\t'];
    let mut out = Vec::new();
    loop {
        s = s.trim_start_matches(OWS);
        if s.is_empty() {
            return Ok(out);
        }
        let Some((name, rest)) = s.split_once('=') else {
            return Err("a parameter without `=`");
        };
        let name = name.trim_matches(OWS);
        if name.is_empty() || !name.bytes().all(is_token_char) {
            return Err("a parameter name that is not a token");
        }
        let rest = rest.trim_start_matches(OWS);
        let (value, rest) = if let Some(quoted) = rest.strip_prefix('"') {
            let bytes = quoted.as_bytes();
            let mut i = 0;
            loop {
                match bytes.get(i) {
                    None => return Err("an unterminated quoted string"),
                    Some(b'"') => break,
                    Some(b'\\') if i + 1 < bytes.len() => i += 2,
                    Some(b'\\') => return Err("an unterminated quoted string"),
                    Some(&b) if b.is_ascii_control() && b != b'\t' => return Err("a control character"),
                    Some(_) => i += 1,
                }
            }
            (Value::Quoted(&quoted[..i]), &quoted[i + 1..])
        } else {
            let len = rest.bytes().take_while(|&b| is_token_char(b)).count();
            if len == 0 {
                return Err("a parameter without a value");
            }
            (Value::Token(&rest[..len]), &rest[len..])
        };
        out.push((name, value));
        let rest = rest.trim_start_matches(OWS);
        s = match rest.strip_prefix(';') {
            Some(next) => next,
            None if rest.is_empty() => rest,
            None => return Err("parameters not separated by `;`"),
        };
    }
}

/// RFC 7230 tchar; `*` too, for RFC 5987 names like `filename*`.
fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// RFC 2046 bchars.
fn is_boundary_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"'()+_,-./:=? ".contains(&b)
}

/// A few bytes of client data, safe to echo.
fn excerpt(bytes: &[u8]) -> String {
    printable(&String::from_utf8_lossy(&bytes[..bytes.len().min(16)]))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::error::INVALID_REQUEST;
    use http::StatusCode;

    const BOUNDARY: &str = "----formdata-x7Yz";

    /// A body as clients write it: `--boundary CRLF headers CRLF CRLF data CRLF` per part, then the close.
    fn body(parts: &[(&str, &[u8])]) -> Bytes {
        let mut out = Vec::new();
        for (headers, data) in parts {
            out.extend_from_slice(format!("--{BOUNDARY}\r\n{headers}\r\n\r\n").as_bytes());
            out.extend_from_slice(data);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
        Bytes::from(out)
    }

    fn field(name: &str) -> String {
        format!("Content-Disposition: form-data; name=\"{name}\"")
    }

    fn parse_raw(raw: &[u8]) -> Result<Vec<Part>, ApiError> {
        parse(&Bytes::copy_from_slice(raw), BOUNDARY)
    }

    fn message_of(result: Result<impl std::fmt::Debug, ApiError>) -> String {
        let err = result.expect_err("expected a 400");
        assert_eq!(err.status, StatusCode::BAD_REQUEST, "{err:?}");
        assert_eq!(err.kind, INVALID_REQUEST);
        err.message
    }

    fn assert_within(part: &Part, body: &Bytes) {
        let (start, end) = (body.as_ptr() as usize, body.as_ptr() as usize + body.len());
        let at = part.data.as_ptr() as usize;
        assert!(
            part.data.is_empty() || (at >= start && at + part.data.len() <= end),
            "{part:?} is a copy"
        );
    }

    #[test]
    fn boundary_comes_quoted_or_not_in_any_case() {
        assert_eq!(boundary_of("multipart/form-data; boundary=abc").ok(), Some("abc"));
        assert_eq!(
            boundary_of("Multipart/Form-Data;BOUNDARY=\"a b:c\"").ok(),
            Some("a b:c")
        );
        assert_eq!(
            boundary_of("multipart/form-data; charset=utf-8; boundary=x;").ok(),
            Some("x")
        );
        let curl = "multipart/form-data; boundary=------------------------d74496d66958873e";
        assert_eq!(boundary_of(curl).ok(), Some("------------------------d74496d66958873e"));
        assert_eq!(
            boundary_of(&format!("multipart/form-data; boundary={}", "b".repeat(70)))
                .map(str::len)
                .ok(),
            Some(70)
        );
    }

    #[test]
    fn content_types_without_a_usable_boundary_are_refused() {
        for content_type in [
            "application/json",
            "multipart/mixed; boundary=abc",
            "multipart/form-data",
            "multipart/form-data; boundary=",
            "multipart/form-data; boundary=\"\"",
            "multipart/form-data; boundary=\"abc \"",
            "multipart/form-data; boundary=\"a\\bc\"",
            "multipart/form-data; boundary=\"abc",
            "multipart/form-data; boundary=a; boundary=b",
            "multipart/form-data; boundary=ab<c>",
            "multipart/form-data; boundary=\"a\u{7}b\"",
            "multipart/form-data; boundary abc",
        ] {
            let err = boundary_of(content_type).expect_err(content_type);
            assert_eq!(err.code.as_deref(), Some("invalid_multipart"), "{content_type}");
        }
        let long = format!("multipart/form-data; boundary={}", "b".repeat(71));
        assert!(message_of(boundary_of(&long)).contains("1 to 70"));
    }

    #[test]
    fn fields_and_files_come_back_in_order_as_slices_of_the_body() {
        let png = b"\x89PNG\r\n\x1a\nnot really";
        let body = body(&[
            (&field("prompt"), b"a cat in a hat"),
            (
                "Content-Disposition: form-data; name=\"image\"; filename=\"cat.png\"\r\nContent-Type: image/png",
                png,
            ),
            (&field("n"), b"2"),
        ]);
        let parts = parse(&body, BOUNDARY).expect("valid body");
        assert_eq!(parts.len(), 3);
        assert_eq!(
            (parts[0].name.as_str(), parts[0].text().ok()),
            ("prompt", Some("a cat in a hat"))
        );
        assert_eq!(parts[0].filename, None);
        assert_eq!(parts[1].name, "image");
        assert_eq!(parts[1].filename.as_deref(), Some("cat.png"));
        assert_eq!(parts[1].content_type.as_deref(), Some("image/png"));
        assert_eq!(&parts[1].data[..], png);
        assert_eq!(parts[2].text().ok(), Some("2"));
        for part in &parts {
            assert_within(part, &body);
        }
    }

    #[test]
    fn header_names_are_case_insensitive_and_unknown_headers_ignored() {
        let parts = parse(
            &body(&[(
                "content-disposition: FORM-DATA; NAME=mask; FileName=m.png\r\nCONTENT-TYPE:image/png\r\nX-Extra: 1\r\nContent-Transfer-Encoding: binary",
                b"m",
            )]),
            BOUNDARY,
        )
        .expect("valid");
        assert_eq!(parts[0].name, "mask");
        assert_eq!(parts[0].filename.as_deref(), Some("m.png"));
        assert_eq!(parts[0].content_type.as_deref(), Some("image/png"));
    }

    #[test]
    fn quoted_strings_unescape_and_filename_star_wins() {
        let parts = parse(
            &body(&[
                (r#"Content-Disposition: form-data; name="a\"b"; filename="x\\y \"z\".png""#, b""),
                (
                    "Content-Disposition: form-data; name=image; filename=\"euro.png\"; filename*=UTF-8''%E2%82%AC%20rate.png",
                    b"",
                ),
                ("Content-Disposition: form-data; name=image; filename*=iso-8859-1'en'caf%E9.png", b""),
                ("Content-Disposition: form-data; name=\"\u{e9}t\u{e9}\"; filename=\"\u{732b}.png\"", b""),
            ]),
            BOUNDARY,
        )
        .expect("valid");
        assert_eq!(parts[0].name, "a\"b");
        assert_eq!(parts[0].filename.as_deref(), Some("x\\y \"z\".png"));
        assert_eq!(parts[1].filename.as_deref(), Some("\u{20ac} rate.png"));
        assert_eq!(parts[2].filename.as_deref(), Some("caf\u{e9}.png"));
        assert_eq!(
            (parts[3].name.as_str(), parts[3].filename.as_deref()),
            ("\u{e9}t\u{e9}", Some("\u{732b}.png"))
        );
    }

    #[test]
    fn malformed_filename_star_is_refused() {
        for value in [
            "UTF-8''%E2%82",
            "UTF-8''%zz",
            "UTF-8%41",
            "\"UTF-8''a\"",
            "koi8-r''a",
            "UTF-8''%FF",
        ] {
            let headers = format!("Content-Disposition: form-data; name=image; filename*={value}");
            assert!(
                message_of(parse(&body(&[(&headers, b"")]), BOUNDARY)).contains("filename*"),
                "{value}"
            );
        }
    }

    #[test]
    fn preamble_epilogue_and_transport_padding_are_ignored() {
        let raw = format!(
            "This is a preamble.\r\n--{BOUNDARY} \t\r\n{}\r\n\r\nv\r\n--{BOUNDARY}--  and an epilogue\r\n--{BOUNDARY}\r\njunk",
            field("f")
        );
        let parts = parse_raw(raw.as_bytes()).expect("valid");
        assert_eq!(parts.len(), 1);
        assert_eq!(&parts[0].data[..], b"v");
    }

    #[test]
    fn empty_values_and_a_body_of_no_parts_parse() {
        let parts = parse(&body(&[(&field("user"), b"")]), BOUNDARY).expect("valid");
        assert_eq!(parts[0].data.len(), 0);
        assert_eq!(parse(&body(&[]), BOUNDARY).expect("valid"), Vec::new());
    }

    #[test]
    fn the_boundary_counts_only_after_crlf_dashes() {
        let almost = &BOUNDARY[..BOUNDARY.len() - 1];
        let data = format!("x--{BOUNDARY}\r\n \n--{BOUNDARY}\r--{BOUNDARY}--{BOUNDARY}\r\n--{almost}Z\r\n-{BOUNDARY}");
        let parts = parse(&body(&[(&field("prompt"), data.as_bytes())]), BOUNDARY).expect("valid");
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].data, data.as_bytes());
    }

    #[test]
    fn megabytes_of_near_misses_parse_in_one_pass() {
        let almost = format!("\r\n--{}", &BOUNDARY[..BOUNDARY.len() - 1]);
        let data = almost.repeat((4 << 20) / almost.len());
        let parts = parse(&body(&[(&field("image"), data.as_bytes())]), BOUNDARY).expect("valid");
        assert_eq!(parts[0].data.len(), data.len());
    }

    #[test]
    fn content_that_begins_with_the_boundary_is_refused() {
        // The blank line's CRLF and the content make `CRLF--boundary`: the part would end in its own headers.
        let data = format!("--{BOUNDARY}-- is not the end");
        let message = message_of(parse(&body(&[(&field("prompt"), data.as_bytes())]), BOUNDARY));
        assert!(message.contains("begins with the boundary"), "{message}");
    }

    #[test]
    fn a_boundary_followed_by_anything_but_a_line_break_or_dashes_is_refused() {
        let data = format!("a\r\n--{BOUNDARY}X\r\nb");
        let message = message_of(parse(&body(&[(&field("prompt"), data.as_bytes())]), BOUNDARY));
        assert!(message.contains("inside the content"), "{message}");
    }

    #[test]
    fn truncated_bodies_are_refused() {
        let whole = body(&[(&field("prompt"), b"a cat"), (&field("n"), b"1")]);
        let close = whole.len() - format!("--{BOUNDARY}--\r\n").len();
        // Cut anywhere before the close delimiter's dashes: always an error, never a shorter form.
        for cut in 0..close + 2 + BOUNDARY.len() + 2 {
            let truncated = whole.slice(..cut);
            assert!(parse(&truncated, BOUNDARY).is_err(), "cut at {cut} parsed");
        }
        for cut in [close - 4, close + 2 + BOUNDARY.len(), close + 3 + BOUNDARY.len()] {
            assert!(
                message_of(parse(&whole.slice(..cut), BOUNDARY)).contains("truncated"),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn a_body_without_its_boundary_is_refused() {
        assert!(message_of(parse_raw(b"prompt=a+cat")).contains("no boundary"));
        assert!(message_of(parse(&body(&[(&field("p"), b"v")]), "other")).contains("no boundary"));
    }

    #[test]
    fn bare_lf_and_folded_headers_are_refused() {
        let bare_lf = format!("--{BOUNDARY}\nContent-Disposition: form-data; name=p\n\nv\r\n--{BOUNDARY}--");
        assert!(parse_raw(bare_lf.as_bytes()).is_err());
        let lf_between = format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=p\nContent-Type: text/plain\r\n\r\nv\r\n--{BOUNDARY}--"
        );
        assert!(message_of(parse_raw(lf_between.as_bytes())).contains("bare CR or LF"));
        let folded = body(&[("Content-Disposition: form-data;\r\n name=p", b"v")]);
        assert!(message_of(parse(&folded, BOUNDARY)).contains("folded"));
    }

    #[test]
    fn part_headers_are_bounded() {
        let huge = format!("{}\r\nX-Padding: {}", field("image"), "a".repeat(MAX_HEADER_BYTES));
        let message = message_of(parse(&body(&[(&huge, b"v")]), BOUNDARY));
        assert!(
            message.contains("exceed 8192 bytes") && message.contains("Part 1"),
            "{message}"
        );
        let fits = format!(
            "{}\r\nX-Padding: {}",
            field("image"),
            "a".repeat(MAX_HEADER_BYTES - 200)
        );
        assert!(parse(&body(&[(&fits, b"v")]), BOUNDARY).is_ok());
    }

    #[test]
    fn parts_are_bounded() {
        let name = field("image[]");
        let many: Vec<(&str, &[u8])> = (0..MAX_PARTS).map(|_| (name.as_str(), &b"x"[..])).collect();
        assert_eq!(parse(&body(&many), BOUNDARY).map(|p| p.len()).ok(), Some(MAX_PARTS));
        let too_many: Vec<(&str, &[u8])> = (0..=MAX_PARTS).map(|_| (name.as_str(), &b"x"[..])).collect();
        assert!(message_of(parse(&body(&too_many), BOUNDARY)).contains("more than 64 parts"));
    }

    #[test]
    fn part_headers_must_name_a_form_field_once() {
        for (headers, says) in [
            ("Content-Type: text/plain", "no Content-Disposition"),
            ("Content-Disposition: attachment; name=p", "not form-data"),
            ("Content-Disposition: form-data; filename=a.png", "no name"),
            ("Content-Disposition: form-data; name=\"\"", "empty name"),
            ("Content-Disposition: form-data; name=a; name=b", "`name` twice"),
            (
                "Content-Disposition: form-data; name=a\r\nContent-Disposition: form-data; name=b",
                "twice",
            ),
            (
                "Content-Disposition: form-data; name=a\r\nContent-Type: a/b\r\ncontent-type: c/d",
                "twice",
            ),
            ("Content-Disposition: form-data; name=\"a", "unterminated"),
            ("Content-Disposition: form-data; name=a b", "not separated"),
            ("Content-Disposition: form-data; name", "without `=`"),
            (
                "Content-Disposition: form-data; name=a\r\nno colon here",
                "not a header",
            ),
            (
                "Content-Disposition: form-data; name=a\r\nBad Name: x",
                "not a header name",
            ),
            (
                "Content-Disposition: form-data; name=a\r\nContent-Transfer-Encoding: base64",
                "not supported",
            ),
        ] {
            let message = message_of(parse(&body(&[(headers, b"v")]), BOUNDARY));
            assert!(message.contains(says), "{headers:?}: {message}");
        }
        let no_headers = format!("--{BOUNDARY}\r\n\r\nv\r\n--{BOUNDARY}--");
        assert!(message_of(parse_raw(no_headers.as_bytes())).contains("no Content-Disposition"));
        let latin1 = [
            b"--",
            BOUNDARY.as_bytes(),
            b"\r\nContent-Disposition: form-data; name=\"\xe9\"\r\n\r\nv\r\n--",
            BOUNDARY.as_bytes(),
            b"--",
        ]
        .concat();
        assert!(message_of(parse_raw(&latin1)).contains("not UTF-8"));
    }

    #[test]
    fn errors_echo_only_a_short_printable_excerpt() {
        let junk = format!("Content-Disposition: {}\u{1b}[31m", "x".repeat(5000));
        let message = message_of(parse(&body(&[(&junk, b"v")]), BOUNDARY));
        assert!(message.len() < 300 && !message.contains('\u{1b}'), "{message}");
        let data = format!("a\r\n--{BOUNDARY}{}", "\u{7}".repeat(1000));
        let message = message_of(parse(&body(&[(&field("p"), data.as_bytes())]), BOUNDARY));
        assert!(message.len() < 300 && !message.contains('\u{7}'), "{message}");
    }

    #[test]
    fn duplicates_are_all_returned_and_only_refuses_them() {
        let parts = parse(
            &body(&[
                (&field("prompt"), b"one"),
                (&field("image[]"), b"1"),
                (&field("prompt"), b"two"),
                (&field("image[]"), b"2"),
            ]),
            BOUNDARY,
        )
        .expect("valid");
        let err = only(&parts, "prompt").expect_err("two prompts");
        assert_eq!(err.param.as_deref(), Some("prompt"));
        assert_eq!(err.code.as_deref(), Some("duplicate_parameter"));
        assert_eq!(only(&parts, "mask").ok(), Some(None));
        let images: Vec<&[u8]> = all(&parts, "image[]").map(|p| &p.data[..]).collect();
        assert_eq!(images, [b"1", b"2"]);
        let single = parse(&body(&[(&field("prompt"), b"one")]), BOUNDARY).expect("valid");
        assert_eq!(
            only(&single, "prompt").ok().flatten().map(|p| &p.data[..]),
            Some(&b"one"[..])
        );
    }

    #[test]
    fn text_fields_must_be_utf8_and_the_error_names_them() {
        let parts = parse(&body(&[(&field("prompt"), b"\xff\xfe")]), BOUNDARY).expect("valid");
        let err = parts[0].text().expect_err("not UTF-8");
        assert_eq!(err.param.as_deref(), Some("prompt"));
    }

    /// A part as the round trip generates it.
    #[derive(Debug, Clone)]
    struct Generated {
        name: String,
        filename: Option<String>,
        content_type: Option<String>,
        data: Vec<u8>,
    }

    fn generated() -> impl Strategy<Value = Generated> {
        (
            "[a-zA-Z0-9_\\[\\]é ]{1,12}",
            proptest::option::of("[a-zA-Z0-9_. é\"\\\\-]{0,12}"),
            proptest::option::of("(image|text)/[a-z]{1,8}"),
            proptest::collection::vec(prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'-'), any::<u8>()], 0..200),
        )
            .prop_map(|(name, filename, content_type, data)| Generated {
                name,
                filename,
                content_type,
                data,
            })
    }

    fn quote(s: &str) -> String {
        s.replace('\\', "\\\\").replace('"', "\\\"")
    }

    fn encode(boundary: &str, preamble: &str, parts: &[Generated]) -> Bytes {
        let mut out = preamble.as_bytes().to_vec();
        if !preamble.is_empty() {
            out.extend_from_slice(b"\r\n");
        }
        for part in parts {
            out.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
            let mut disposition = format!("Content-Disposition: form-data; name=\"{}\"", quote(&part.name));
            if let Some(filename) = &part.filename {
                disposition += &format!("; filename=\"{}\"", quote(filename));
            }
            out.extend_from_slice(disposition.as_bytes());
            if let Some(content_type) = &part.content_type {
                out.extend_from_slice(format!("\r\nContent-Type: {content_type}").as_bytes());
            }
            out.extend_from_slice(b"\r\n\r\n");
            out.extend_from_slice(&part.data);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        Bytes::from(out)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

        #[test]
        fn any_form_encoded_with_any_boundary_parses_back_to_the_same_parts_at_zero_copy(
            boundary in "[a-zA-Z0-9'()+_,./:=?-][a-zA-Z0-9'()+_,./:=? -]{0,68}[a-zA-Z0-9'()+_,./:=?-]",
            preamble in "[a-z ]{0,20}",
            parts in proptest::collection::vec(generated(), 0..6),
        ) {
            let delimiter = format!("\r\n--{boundary}");
            // RFC 2046: no delimiter in a part, the CRLF of the blank line before the content included.
            prop_assume!(!parts.iter().any(|p| memmem::find(&[b"\r\n", &p.data[..]].concat(), delimiter.as_bytes()).is_some()));
            prop_assume!(!preamble.contains(&boundary));
            let header = format!("multipart/form-data; boundary=\"{boundary}\"");
            let boundary = boundary_of(&header).expect("generated boundaries are valid");
            let body = encode(boundary, &preamble, &parts);
            let parsed = parse(&body, boundary).expect("an encoded form parses");
            prop_assert_eq!(parsed.len(), parts.len());
            for (got, sent) in parsed.iter().zip(&parts) {
                prop_assert_eq!(&got.name, &sent.name);
                prop_assert_eq!(&got.filename, &sent.filename);
                prop_assert_eq!(&got.content_type, &sent.content_type);
                prop_assert_eq!(&got.data[..], &sent.data[..]);
                assert_within(got, &body);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = parse(&Bytes::from(raw), "b");
        }

        #[test]
        fn damaged_forms_never_panic_and_what_parses_is_a_slice(
            parts in proptest::collection::vec(generated(), 1..4),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut raw = encode(BOUNDARY, "", &parts).to_vec();
            for (at, byte) in edits {
                let at = at.index(raw.len());
                raw[at] = byte;
            }
            raw.truncate(cut.index(raw.len() + 1));
            let body = Bytes::from(raw);
            if let Ok(parsed) = parse(&body, BOUNDARY) {
                for part in &parsed {
                    assert_within(part, &body);
                }
            }
        }

        #[test]
        fn arbitrary_content_types_never_panic(content_type in ".{0,120}") {
            if let Ok(boundary) = boundary_of(&content_type) {
                prop_assert!((1..=70).contains(&boundary.len()));
            }
        }
    }
}
