//! Azure's images response turned into OpenAI's while it arrives.
//!
//! The two bodies differ by one thing: OpenAI's images carry an `index`, which
//! Azure's may lack. So the [`Reshaper`] passes Azure's bytes on as slices of
//! the chunks they came in (base64 images are never copied, parsed or
//! re-encoded) and inserts `,"index":N` before each image's closing brace.
//!
//! It is also a strict JSON validator, one byte at a time except inside
//! strings, where a word-at-a-time scan skips over image data. It checks what
//! the connector promises of a success body: a JSON object with an integer
//! `created` and a `data` list of image objects. On the way it counts the
//! images and keeps `usage` for the logs.
//!
//! Chunk boundaries may fall anywhere, even inside a UTF-8 character or an
//! escape: the output is the same bytes for any split of the same input.
//!
//! A reshaper made by [`Reshaper::taking_images`] (for `response_format:
//! "url"`) takes each image's `b64_json` text out of the output instead, as
//! [`ImagePiece`]s, and leaves `"b64_json":""` in its place.

use bytes::Bytes;
use serde_json::value::RawValue;

use crate::json_text::{Utf8Tail, plain_len};

/// Token usage as gpt-image models report it (`ImagesUsage`); dall-e-3 reports none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub input_tokens: u64,
    #[serde(default)]
    pub output_tokens: u64,
    #[serde(default)]
    pub total_tokens: u64,
    #[serde(default)]
    pub input_tokens_details: UsageDetails,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
pub struct UsageDetails {
    #[serde(default)]
    pub text_tokens: u64,
    #[serde(default)]
    pub image_tokens: u64,
}

/// A whole body reshaped at once: the output waits in the reshaper.
pub fn whole(body: Bytes) -> Result<Reshaper, Malformed> {
    let mut reshaper = Reshaper::new();
    reshaper.feed(body)?;
    reshaper.finish()?;
    Ok(reshaper)
}

/// Why Azure's 200 body is not an images response: what the body "…".
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("is not a JSON object")]
    NotJson,
    #[error("has no integer `created`")]
    Created,
    #[error("has no `data`")]
    NoData,
    #[error("has a `data` that is not a list of images")]
    Data,
    #[error("nests deeper than {MAX_DEPTH} levels")]
    TooDeep,
}

/// The deepest nesting an images response may have: its own shape needs four
/// levels (body, `data`, an image, its content filter results); a hostile
/// body of nothing but `[` would otherwise grow the stack by a frame a byte.
pub const MAX_DEPTH: usize = 32;

/// The most of `usage` kept for the logs; a longer one is not an `ImagesUsage`.
const MAX_USAGE_TEXT: usize = 64 * 1024;

/// What the next token may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Any value: the whole body, or after `:` or `,` in a list.
    Value,
    /// A value or `]`: just after `[`.
    ValueOrEnd,
    /// A key or `}`: just after `{`.
    KeyOrEnd,
    /// A key: after `,` in an object.
    Key,
    Colon,
    CommaOrEnd,
    /// Only whitespace: the body's object is closed.
    Eof,
}

/// What a value is to the reshaper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// The body: must be an object.
    Body,
    /// `created`: must be a u64.
    Created,
    /// `data`: must be a list.
    Data,
    /// An item of `data`: must be an object; gets its `index`.
    Image,
    /// `usage`: kept for the logs.
    Usage,
    /// The `b64_json` of an image, taken out of the output.
    ImageData,
    /// Anything else: only validated.
    Other,
}

/// A piece of an image's base64 text, taken out of the output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImagePiece {
    /// The text of the `b64_json` string so far, as Azure wrote it (escapes included).
    Data(Bytes),
    /// The string has ended: the image at this position of `data` is whole.
    End { index: usize },
}

#[derive(Debug)]
struct Frame {
    object: bool,
    role: Role,
    /// Members so far (objects).
    members: usize,
    /// An image that brought its own `index`.
    has_index: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Escape {
    None,
    /// Just after `\`.
    Backslash,
    /// Inside `\uXXXX`, with this many hex digits read.
    Hex(u8),
}

#[derive(Debug)]
struct Str {
    /// `Some(capture)` for a key (`capture`: its text is needed), `None` for a value.
    key: Option<bool>,
    role: Role,
    escape: Escape,
}

/// Reshapes one Azure images response fed to it in chunks.
#[derive(Debug)]
pub struct Reshaper {
    expect: Expect,
    stack: Vec<Frame>,
    /// The role of the value about to start.
    next_role: Role,
    string: Option<Str>,
    /// The number or literal being read, and its role.
    scalar: Option<Role>,
    scalar_text: Vec<u8>,
    /// The raw text of the key being read, when its text matters.
    key: Vec<u8>,
    /// Inside `usage`: its raw text so far.
    usage_text: Option<Vec<u8>>,
    /// `usage` was longer than [`MAX_USAGE_TEXT`].
    usage_dropped: bool,
    utf8: Utf8Tail,
    created: Option<u64>,
    data_seen: bool,
    images: usize,
    usage: Option<Usage>,
    /// Output ready to send.
    out: Vec<Bytes>,
    out_len: usize,
    /// `Some` when images are taken out of the output: what was taken so far.
    taken: Option<Vec<ImagePiece>>,
}

impl Default for Reshaper {
    fn default() -> Self {
        Self::new()
    }
}

impl Reshaper {
    pub fn new() -> Self {
        Self {
            expect: Expect::Value,
            stack: Vec::with_capacity(8),
            next_role: Role::Body,
            string: None,
            scalar: None,
            scalar_text: Vec::new(),
            key: Vec::new(),
            usage_text: None,
            usage_dropped: false,
            utf8: Utf8Tail::default(),
            created: None,
            data_seen: false,
            images: 0,
            usage: None,
            out: Vec::new(),
            out_len: 0,
            taken: None,
        }
    }

    /// A reshaper that takes each image's `b64_json` text out of the output
    /// (see [`Reshaper::take_images`]): the output stays small whatever the images.
    pub fn taking_images() -> Self {
        Self {
            taken: Some(Vec::new()),
            ..Self::new()
        }
    }

    /// The image text taken out since the last call, in order.
    pub fn take_images(&mut self) -> Vec<ImagePiece> {
        self.taken.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Inside an image's text that is taken out of the output.
    fn in_image_data(&self) -> bool {
        self.string.as_ref().is_some_and(|s| s.role == Role::ImageData)
    }

    fn take_piece(&mut self, data: Bytes) {
        if let (Some(taken), false) = (self.taken.as_mut(), data.is_empty()) {
            taken.push(ImagePiece::Data(data));
        }
    }

    /// Azure's `created`, once read: the body so far is an images response's start.
    pub fn created(&self) -> Option<u64> {
        self.created
    }

    /// Images closed so far.
    pub fn images(&self) -> usize {
        self.images
    }

    /// `usage`, once read, when it has the `ImagesUsage` shape.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// Bytes of output waiting in [`Reshaper::take_output`].
    pub fn pending_len(&self) -> usize {
        self.out_len
    }

    /// The output produced since the last call, in order.
    pub fn take_output(&mut self) -> Vec<Bytes> {
        self.out_len = 0;
        std::mem::take(&mut self.out)
    }

    /// Reads the next chunk of Azure's body. After an error the reshaper is
    /// spent: the body is not an images response, whatever follows.
    pub fn feed(&mut self, chunk: Bytes) -> Result<(), Malformed> {
        self.utf8.check(&chunk).map_err(|_| Malformed::NotJson)?;
        let bytes: &[u8] = &chunk;
        // Where the input not yet passed on starts.
        let mut run = 0;
        // Where `usage` text starts in this chunk, while inside it.
        let mut usage_from = self.usage_text.is_some().then_some(0);
        let mut i = 0;
        while i < bytes.len() {
            if let Some(string) = self.string.as_mut() {
                let capture = string.key == Some(true);
                match string.escape {
                    Escape::None => {
                        let end = i + plain_len(&bytes[i..]);
                        if capture {
                            self.key.extend_from_slice(&bytes[i..end]);
                        }
                        i = end;
                        let Some(&b) = bytes.get(i) else { break };
                        i += 1;
                        match b {
                            b'"' => {
                                if let Some(done) = self.string.take() {
                                    if done.role == Role::ImageData {
                                        // The closing quote stays in the output.
                                        self.take_piece(chunk.slice(run..i - 1));
                                        run = i - 1;
                                        if let Some(taken) = self.taken.as_mut() {
                                            taken.push(ImagePiece::End { index: self.images });
                                        }
                                    }
                                    self.string_done(done, i, bytes, &mut usage_from)?;
                                }
                            }
                            b'\\' => string.escape = Escape::Backslash,
                            _ => return Err(Malformed::NotJson),
                        }
                        if capture && b == b'\\' {
                            self.key.push(b);
                        }
                    }
                    Escape::Backslash => {
                        let b = bytes[i];
                        string.escape = match b {
                            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Escape::None,
                            b'u' => Escape::Hex(0),
                            _ => return Err(Malformed::NotJson),
                        };
                        if capture {
                            self.key.push(b);
                        }
                        i += 1;
                    }
                    Escape::Hex(read) => {
                        let b = bytes[i];
                        if !b.is_ascii_hexdigit() {
                            return Err(Malformed::NotJson);
                        }
                        string.escape = if read == 3 { Escape::None } else { Escape::Hex(read + 1) };
                        if capture {
                            self.key.push(b);
                        }
                        i += 1;
                    }
                }
                continue;
            }
            let b = bytes[i];
            if let Some(role) = self.scalar {
                if matches!(b, b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z' | b'+' | b'-' | b'.') {
                    self.scalar_text.push(b);
                    i += 1;
                    continue;
                }
                self.scalar = None;
                self.scalar_done(role)?;
                self.value_done(role, i, bytes, &mut usage_from);
            }
            if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
                i += 1;
                continue;
            }
            match (self.expect, b) {
                (Expect::ValueOrEnd, b']') | (Expect::KeyOrEnd, b'}') | (Expect::CommaOrEnd, b']' | b'}') => {
                    let Some(frame) = self.stack.pop() else {
                        return Err(Malformed::NotJson);
                    };
                    if frame.object != (b == b'}') {
                        return Err(Malformed::NotJson);
                    }
                    if frame.role == Role::Image && !frame.has_index {
                        self.push(chunk.slice(run..i));
                        run = i;
                        let comma = if frame.members > 0 { "," } else { "" };
                        self.push(Bytes::from(format!("{comma}\"index\":{}", self.images)));
                    }
                    i += 1;
                    self.value_done(frame.role, i, bytes, &mut usage_from);
                }
                (Expect::Value | Expect::ValueOrEnd, _) => {
                    let role = self.element_role();
                    self.start_value(role, b, i, &mut usage_from)?;
                    i += 1;
                    if role == Role::ImageData {
                        // The opening quote stays in the output; the text is taken from here.
                        self.push(chunk.slice(run..i));
                        run = i;
                    }
                }
                (Expect::KeyOrEnd | Expect::Key, b'"') => {
                    let capture = matches!(self.stack.last().map(|f| f.role), Some(Role::Body | Role::Image));
                    self.key.clear();
                    self.string = Some(Str {
                        key: Some(capture),
                        role: Role::Other,
                        escape: Escape::None,
                    });
                    i += 1;
                }
                (Expect::Colon, b':') => {
                    self.expect = Expect::Value;
                    i += 1;
                }
                (Expect::CommaOrEnd, b',') => {
                    let object = self.stack.last().is_some_and(|f| f.object);
                    self.expect = if object { Expect::Key } else { Expect::Value };
                    i += 1;
                }
                _ => {
                    return Err(match self.stack.last().map(|f| f.role) {
                        Some(Role::Data) => Malformed::Data,
                        _ => Malformed::NotJson,
                    });
                }
            }
        }
        if let (Some(text), Some(from)) = (self.usage_text.as_mut(), usage_from) {
            if text.len() + (bytes.len() - from) > MAX_USAGE_TEXT {
                // Not kept: `usage` stays unknown, the body is still passed on.
                text.clear();
                self.usage_dropped = true;
            } else {
                text.extend_from_slice(&bytes[from..]);
            }
        }
        if run < bytes.len() {
            if self.in_image_data() {
                self.take_piece(chunk.slice(run..));
            } else {
                self.push(chunk.slice(run..));
            }
        }
        Ok(())
    }

    /// The body has ended: was it a whole images response?
    pub fn finish(&mut self) -> Result<(), Malformed> {
        if self.expect != Expect::Eof || self.string.is_some() || self.scalar.is_some() || !self.utf8.is_empty() {
            return Err(
                if self.stack.first().is_some_and(|f| f.role == Role::Body) && !self.data_seen {
                    Malformed::NoData
                } else {
                    Malformed::NotJson
                },
            );
        }
        if self.created.is_none() {
            return Err(Malformed::Created);
        }
        if !self.data_seen {
            return Err(Malformed::NoData);
        }
        Ok(())
    }

    fn push(&mut self, bytes: Bytes) {
        if !bytes.is_empty() {
            self.out_len += bytes.len();
            self.out.push(bytes);
        }
    }

    /// The role of a value that starts now: an item of `data` is an image;
    /// an object member's role was set by its key.
    fn element_role(&self) -> Role {
        match self.stack.last() {
            Some(frame) if !frame.object => {
                if frame.role == Role::Data {
                    Role::Image
                } else {
                    Role::Other
                }
            }
            _ => self.next_role,
        }
    }

    fn start_value(&mut self, role: Role, b: u8, at: usize, usage_from: &mut Option<usize>) -> Result<(), Malformed> {
        let wrong = match role {
            Role::Body => (b != b'{').then_some(Malformed::NotJson),
            Role::Created => (!matches!(b, b'0'..=b'9' | b'-')).then_some(Malformed::Created),
            Role::Data => (b != b'[').then_some(Malformed::Data),
            Role::Image => (b != b'{').then_some(Malformed::Data),
            Role::ImageData => (b != b'"').then_some(Malformed::Data),
            Role::Usage | Role::Other => None,
        };
        if let Some(err) = wrong {
            return Err(err);
        }
        if role == Role::Data {
            self.data_seen = true;
        }
        if role == Role::Usage {
            self.usage_text = Some(Vec::new());
            *usage_from = Some(at);
        }
        match b {
            b'{' | b'[' => {
                if self.stack.len() >= MAX_DEPTH {
                    return Err(Malformed::TooDeep);
                }
                let object = b == b'{';
                self.stack.push(Frame {
                    object,
                    role,
                    members: 0,
                    has_index: false,
                });
                self.expect = if object { Expect::KeyOrEnd } else { Expect::ValueOrEnd };
            }
            b'"' => {
                self.string = Some(Str {
                    key: None,
                    role,
                    escape: Escape::None,
                })
            }
            b'0'..=b'9' | b'-' | b't' | b'f' | b'n' => {
                self.scalar_text.clear();
                self.scalar_text.push(b);
                self.scalar = Some(role);
            }
            _ => return Err(Malformed::NotJson),
        }
        Ok(())
    }

    fn string_done(
        &mut self,
        string: Str,
        end: usize,
        bytes: &[u8],
        usage_from: &mut Option<usize>,
    ) -> Result<(), Malformed> {
        let Some(capture) = string.key else {
            self.value_done(string.role, end, bytes, usage_from);
            return Ok(());
        };
        self.expect = Expect::Colon;
        let Some(frame) = self.stack.last_mut() else {
            return Err(Malformed::NotJson);
        };
        frame.members += 1;
        self.next_role = Role::Other;
        if !capture {
            return Ok(());
        }
        let key = key_text(&self.key);
        match (frame.role, key.as_deref()) {
            (Role::Body, Some("created")) if self.created.is_some() => return Err(Malformed::Created),
            (Role::Body, Some("created")) => self.next_role = Role::Created,
            (Role::Body, Some("data")) if self.data_seen => return Err(Malformed::Data),
            (Role::Body, Some("data")) => self.next_role = Role::Data,
            (Role::Body, Some("usage")) => self.next_role = Role::Usage,
            (Role::Image, Some("index")) => frame.has_index = true,
            (Role::Image, Some("b64_json")) if self.taken.is_some() => self.next_role = Role::ImageData,
            _ => {}
        }
        Ok(())
    }

    /// A number or a literal has ended: valid JSON, and a u64 for `created`.
    fn scalar_done(&mut self, role: Role) -> Result<(), Malformed> {
        if serde_json::from_slice::<&RawValue>(&self.scalar_text).is_err() {
            return Err(if role == Role::Created {
                Malformed::Created
            } else {
                Malformed::NotJson
            });
        }
        if role == Role::Created {
            let created = std::str::from_utf8(&self.scalar_text)
                .ok()
                .and_then(|text| text.parse::<u64>().ok())
                .ok_or(Malformed::Created)?;
            self.created = Some(created);
        }
        Ok(())
    }

    /// A value of `role` ended just before `end`.
    fn value_done(&mut self, role: Role, end: usize, bytes: &[u8], usage_from: &mut Option<usize>) {
        self.expect = if self.stack.is_empty() {
            Expect::Eof
        } else {
            Expect::CommaOrEnd
        };
        match role {
            Role::Image => self.images += 1,
            Role::Usage => {
                if let Some(mut text) = self.usage_text.take() {
                    text.extend_from_slice(&bytes[usage_from.take().unwrap_or(0)..end]);
                    if !std::mem::take(&mut self.usage_dropped) && text.len() <= MAX_USAGE_TEXT {
                        self.usage = serde_json::from_slice(&text).ok();
                    }
                }
            }
            _ => {}
        }
    }
}

/// A key's text, unescaped; `None` when it is not a string at all.
fn key_text(raw: &[u8]) -> Option<std::borrow::Cow<'_, str>> {
    if !raw.contains(&b'\\') {
        return std::str::from_utf8(raw).ok().map(std::borrow::Cow::Borrowed);
    }
    let mut quoted = Vec::with_capacity(raw.len() + 2);
    quoted.push(b'"');
    quoted.extend_from_slice(raw);
    quoted.push(b'"');
    serde_json::from_slice::<String>(&quoted)
        .ok()
        .map(std::borrow::Cow::Owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reshapes `body` cut at `cuts`, and the output as one string.
    fn reshape(body: &[u8], cuts: &[usize]) -> Result<(String, Reshaper), Malformed> {
        let mut reshaper = Reshaper::new();
        let mut out = Vec::new();
        let mut start = 0;
        for &cut in cuts.iter().chain(std::iter::once(&body.len())) {
            reshaper.feed(Bytes::copy_from_slice(&body[start..cut]))?;
            for piece in reshaper.take_output() {
                out.extend_from_slice(&piece);
            }
            start = cut;
        }
        reshaper.finish()?;
        Ok((String::from_utf8(out).expect("utf8"), reshaper))
    }

    #[test]
    fn images_get_their_index_and_everything_else_passes_as_is() {
        let body = r#"{"created":1698342300, "data":[{"b64_json":"aGVs\/bG8=","revised_prompt":"r\u00e9"},{},{"url":"u","index":7}], "usage":{"total_tokens":3,"input_tokens":1,"output_tokens":2}}"#;
        let (out, reshaper) = reshape(body.as_bytes(), &[]).expect("valid");
        assert_eq!(
            out,
            r#"{"created":1698342300, "data":[{"b64_json":"aGVs\/bG8=","revised_prompt":"r\u00e9","index":0},{"index":1},{"url":"u","index":7}], "usage":{"total_tokens":3,"input_tokens":1,"output_tokens":2}}"#
        );
        assert_eq!(reshaper.created(), Some(1698342300));
        assert_eq!(reshaper.images(), 3);
        assert_eq!(reshaper.usage().map(|u| u.total_tokens), Some(3));
    }

    #[test]
    fn every_split_gives_the_same_output() {
        let body = "{ \"data\" : [ { \"b64_json\" : \"QUJD\\\"\\u00e9\" , \"revised_prompt\":\"日本語\" } ] ,\"created\":17,\"usage\":{\"total_tokens\":5,\"input_tokens_details\":{\"text_tokens\":1}},\"n\":[1.5e3,true,null,false] }\n";
        let (whole, _) = reshape(body.as_bytes(), &[]).expect("valid");
        for a in 0..=body.len() {
            for b in a..=body.len() {
                let (out, reshaper) = reshape(body.as_bytes(), &[a, b]).expect("valid at any split");
                assert_eq!(out, whole, "split at {a}, {b}");
                assert_eq!(reshaper.usage().map(|u| u.input_tokens_details.text_tokens), Some(1));
                assert_eq!(reshaper.created(), Some(17));
            }
        }
    }

    #[test]
    fn malformed_bodies_say_what_is_wrong() {
        let cases: &[(&str, Malformed)] = &[
            ("", Malformed::NotJson),
            ("not json", Malformed::NotJson),
            ("[]", Malformed::NotJson),
            ("{}", Malformed::Created),
            (r#"{"created":1}"#, Malformed::NoData),
            (r#"{"data":[]}"#, Malformed::Created),
            (r#"{"created":"x","data":[]}"#, Malformed::Created),
            (
                r#"{"created":155555555555555555555555555555,"data":[]}"#,
                Malformed::Created,
            ),
            (r#"{"created":-1,"data":[]}"#, Malformed::Created),
            (r#"{"created":1.5,"data":[]}"#, Malformed::Created),
            (r#"{"created":1,"created":2,"data":[]}"#, Malformed::Created),
            (r#"{"created":1,"data":{}}"#, Malformed::Data),
            (r#"{"created":1,"data":[1]}"#, Malformed::Data),
            (r#"{"created":1,"data":[[]]}"#, Malformed::Data),
            (r#"{"created":1,"data":[],"data":[]}"#, Malformed::Data),
            (r#"{"created":1,"data":[{"b64_json":"tru"#, Malformed::NotJson),
            (r#"{"created":1,"data":[{"b64_json":tru}]}"#, Malformed::NotJson),
            (r#"{"created":1,"data":[{"b64_json":"a\qb"}]}"#, Malformed::NotJson),
            (r#"{"created":1,"data":[{"b64_json":"a\u12g4"}]}"#, Malformed::NotJson),
            ("{\"created\":1,\"data\":[{\"b64_json\":\"a\tb\"}]}", Malformed::NotJson),
            (r#"{"created":1,"data":[]} {}"#, Malformed::NotJson),
            (r#"{"created":1,"data":[],}"#, Malformed::NotJson),
            (r#"{"created":1,"data":[{},]}"#, Malformed::Data),
            (r#"{"created":1,"data":[}"#, Malformed::Data),
            (r#"{"created":1,"data":[]]"#, Malformed::NotJson),
            (r#"{"created":1,"data":[],"x":01}"#, Malformed::NotJson),
            (r#"{"created":1,"data":[],"x":[1 2]}"#, Malformed::NotJson),
            (r#"{"created":1,"data":[],"x":{"a" 1}}"#, Malformed::NotJson),
            (r#"{"created":1,"data":[],"x":{1:1}}"#, Malformed::NotJson),
        ];
        for (body, expected) in cases {
            assert_eq!(reshape(body.as_bytes(), &[]).err(), Some(*expected), "{body}");
        }
    }

    #[test]
    fn invalid_utf8_is_refused_wherever_it_is_cut() {
        let mut body = br#"{"created":1,"data":[{"revised_prompt":"a"#.to_vec();
        body.extend_from_slice(&[0xE6, 0x97]); // a three-byte character without its last byte
        body.extend_from_slice(br#""}]}"#);
        for cut in 0..=body.len() {
            assert_eq!(reshape(&body, &[cut]).err(), Some(Malformed::NotJson), "cut at {cut}");
        }
        let valid = "{\"created\":1,\"data\":[{\"revised_prompt\":\"\u{65e5}\u{1F600}\"}]}";
        for cut in 0..=valid.len() {
            assert!(reshape(valid.as_bytes(), &[cut]).is_ok(), "cut at {cut}");
        }
    }

    #[test]
    fn agrees_with_serde_json_on_what_is_json() {
        // Bodies that are images responses in shape: valid exactly when serde_json says so.
        let values = [
            "1",
            "-0",
            "0.5",
            "1e5",
            "1E+5",
            "-1.5e-3",
            "01",
            "1.",
            ".5",
            "+1",
            "1e",
            "--1",
            "true",
            "tru",
            "nul",
            "null",
            "falsey",
            "\"\\ud800\"",
            "\"\\/\"",
            "\"\\x\"",
            "[]",
            "[1,]",
            "{}",
            "{\"a\":}",
            "1e999",
        ];
        for value in values {
            let body = format!(r#"{{"created":1,"data":[{{"x":{value}}}],"y":{value}}}"#);
            let serde_ok = serde_json::from_str::<&RawValue>(&body).is_ok();
            assert_eq!(reshape(body.as_bytes(), &[]).is_ok(), serde_ok, "{body}");
        }
    }

    #[test]
    fn success_adds_indexes_and_keeps_every_field_in_place() {
        let azure = r#"{"created":1698342300,"data":[{"b64_json":"aGVsbG8=","revised_prompt":"r","content_filter_results":{"hate":{"filtered":false}}},{"b64_json":"d29ybGQ="}],"background":"opaque","output_format":"png","quality":"high","size":"1024x1024","usage":{"total_tokens":100,"input_tokens":50,"output_tokens":50,"input_tokens_details":{"text_tokens":10,"image_tokens":40}}}"#;
        let mut shaped = whole(Bytes::from_static(azure.as_bytes())).expect("shaped");
        assert_eq!(shaped.images(), 2);
        let v: serde_json::Value =
            serde_json::from_slice(&crate::json_text::concat(&shaped.take_output())).expect("valid JSON");
        assert_eq!(v["created"], 1698342300);
        assert_eq!(v["data"][0]["b64_json"], "aGVsbG8=");
        assert_eq!(v["data"][0]["index"], 0);
        assert_eq!(v["data"][0]["revised_prompt"], "r");
        assert_eq!(v["data"][0]["content_filter_results"]["hate"]["filtered"], false);
        assert_eq!(v["data"][1]["index"], 1);
        assert_eq!(v["usage"]["input_tokens_details"]["image_tokens"], 40);
        let usage = shaped.usage().expect("usage");
        assert_eq!(
            (usage.input_tokens, usage.output_tokens, usage.total_tokens),
            (50, 50, 100)
        );
        assert_eq!(usage.input_tokens_details.image_tokens, 40);
        assert_eq!(v["size"], "1024x1024");
    }

    #[test]
    fn base64_bytes_are_copied_verbatim() {
        // Escaped slashes stay as Azure wrote them: no re-encoding on the way through.
        let azure = r#"{"created":1,"data":[{"b64_json":"ab\/cd+=="}]}"#;
        let mut shaped = whole(Bytes::from_static(azure.as_bytes())).expect("shaped");
        assert_eq!(
            String::from_utf8(crate::json_text::concat(&shaped.take_output())).expect("utf8"),
            r#"{"created":1,"data":[{"b64_json":"ab\/cd+==","index":0}]}"#
        );
    }

    #[test]
    fn bodies_that_are_not_images_responses_are_malformed() {
        for body in [
            "",
            "not json",
            "[]",
            r#"{"data":[]}"#,
            r#"{"created":"x","data":[]}"#,
            r#"{"created":155555555555555555555555555555,"data":[]}"#,
            r#"{"created":-1,"data":[]}"#,
            r#"{"created":1,"data":{}}"#,
            r#"{"created":1,"data":[{"b64_json":"tru"#,
        ] {
            assert!(whole(Bytes::from_static(body.as_bytes())).is_err(), "{body}");
        }
    }

    #[test]
    fn nesting_past_the_limit_is_malformed_and_costs_no_memory() {
        let mut reshaper = Reshaper::new();
        let deep = Bytes::from(format!(
            r#"{{"created":1,"data":[],"x":{}"#,
            "[".repeat(8 * 1024 * 1024)
        ));
        assert_eq!(reshaper.feed(deep), Err(Malformed::TooDeep));
        assert!(
            reshaper.stack.capacity() <= 2 * MAX_DEPTH,
            "{}",
            reshaper.stack.capacity()
        );
        let ok = format!(
            r#"{{"created":1,"data":[],"x":{}{}}}"#,
            "[".repeat(MAX_DEPTH - 1),
            "]".repeat(MAX_DEPTH - 1)
        );
        assert!(whole(Bytes::from(ok)).is_ok(), "up to the limit is fine");
    }

    /// Reshapes `body` cut at `cuts` taking images out: the output, and each image's text.
    fn reshape_taking_images(body: &[u8], cuts: &[usize]) -> Result<(String, Vec<(usize, String)>), Malformed> {
        let mut reshaper = Reshaper::taking_images();
        let mut out = Vec::new();
        let mut images = Vec::new();
        let mut text = Vec::new();
        let mut start = 0;
        for &cut in cuts.iter().chain(std::iter::once(&body.len())) {
            reshaper.feed(Bytes::copy_from_slice(&body[start..cut]))?;
            for piece in reshaper.take_output() {
                out.extend_from_slice(&piece);
            }
            for piece in reshaper.take_images() {
                match piece {
                    ImagePiece::Data(data) => text.extend_from_slice(&data),
                    ImagePiece::End { index } => {
                        images.push((index, String::from_utf8(std::mem::take(&mut text)).expect("utf8")))
                    }
                }
            }
            start = cut;
        }
        reshaper.finish()?;
        assert!(text.is_empty(), "text after the last image");
        Ok((String::from_utf8(out).expect("utf8"), images))
    }

    #[test]
    fn images_taken_out_leave_an_empty_string_at_every_split() {
        let body = r#"{"created":1,"data":[{"b64_json":"QU\/D","revised_prompt":"{\"b64_json\":\"x\"}"},{"url":"u"},{"revised_prompt":"r", "b64_json" : "RUZH"}],"b64_json":"top","usage":{"total_tokens":1}}"#;
        let expected_out = r#"{"created":1,"data":[{"b64_json":"","revised_prompt":"{\"b64_json\":\"x\"}","index":0},{"url":"u","index":1},{"revised_prompt":"r", "b64_json" : "","index":2}],"b64_json":"top","usage":{"total_tokens":1}}"#;
        let expected_images = vec![(0, r"QU\/D".to_owned()), (2, "RUZH".to_owned())];
        let whole_result = reshape_taking_images(body.as_bytes(), &[]);
        assert!(whole_result.is_ok(), "{whole_result:?}");
        for a in 0..=body.len() {
            for b in a..=body.len() {
                let (out, images) = reshape_taking_images(body.as_bytes(), &[a, b]).expect("valid");
                assert_eq!(out, expected_out, "split at {a}, {b}");
                assert_eq!(images, expected_images, "split at {a}, {b}");
            }
        }
    }

    #[test]
    fn image_data_that_is_not_a_string_is_malformed_when_taken() {
        for body in [
            r#"{"created":1,"data":[{"b64_json":null}]}"#,
            r#"{"created":1,"data":[{"b64_json":["QUJD"]}]}"#,
        ] {
            assert_eq!(
                reshape_taking_images(body.as_bytes(), &[]).err(),
                Some(Malformed::Data),
                "{body}"
            );
            assert!(
                whole(Bytes::from_static(body.as_bytes())).is_ok(),
                "passed on as is otherwise: {body}"
            );
        }
    }

    #[test]
    fn a_huge_usage_is_passed_on_but_not_kept() {
        let body = format!(
            r#"{{"created":1,"data":[],"usage":{{"total_tokens":1,"pad":"{}"}}}}"#,
            "p".repeat(MAX_USAGE_TEXT)
        );
        let reshaper = whole(Bytes::from(body)).expect("valid");
        assert_eq!(reshaper.usage(), None);
    }
}
