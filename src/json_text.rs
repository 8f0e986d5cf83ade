//! Small helpers over JSON text in pieces, shared by the reshaper and the
//! Runtime API client: the word-at-a-time scan for a JSON string's special
//! bytes, escaping into a JSON string, UTF-8 checks across chunk cuts, and
//! objects whose values stay unparsed slices.

use std::fmt;

use bytes::Bytes;
use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// Bytes that are not UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotUtf8;

/// The length of the prefix of `s` a JSON string passes over as is: up to the
/// first `"`, `\\` or control character. 32 bytes a step while none is in
/// sight (image data), then eight at a time to find it.
pub fn plain_len(s: &[u8]) -> usize {
    let (blocks, _) = s.as_chunks::<32>();
    let mut start = 0;
    for block in blocks {
        let (words, _) = block.as_chunks::<8>();
        if words
            .iter()
            .fold(0, |any, word| any | special(u64::from_le_bytes(*word)))
            != 0
        {
            break;
        }
        start += 32;
    }
    let (words, _) = s[start..].as_chunks::<8>();
    for word in words {
        let hits = special(u64::from_le_bytes(*word));
        if hits != 0 {
            return start + (hits.trailing_zeros() / 8) as usize;
        }
        start += 8;
    }
    s[start..]
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
        .map_or(s.len(), |p| start + p)
}

/// The high bit of each byte of `w` that is `"`, `\\` or below 0x20. The
/// lowest flagged byte is exact; borrows may flag bytes above it.
fn special(w: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let quote = w ^ (ONES * u64::from(b'"'));
    let backslash = w ^ (ONES * u64::from(b'\\'));
    (quote.wrapping_sub(ONES) & !quote | backslash.wrapping_sub(ONES) & !backslash | w.wrapping_sub(ONES * 0x20) & !w)
        & HIGH
}

/// Writes `s` as the contents of a JSON string: `"`, `\\` and control
/// characters escaped, everything else (UTF-8 included) as is.
pub fn escape_into(out: &mut Vec<u8>, mut s: &[u8]) {
    loop {
        let plain = plain_len(s);
        out.extend_from_slice(&s[..plain]);
        let Some(&b) = s.get(plain) else { return };
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            _ => out.extend_from_slice(format!("\\u{b:04x}").as_bytes()),
        }
        s = &s[plain + 1..];
    }
}

/// Whether `chunks` together are UTF-8, wherever a character is cut.
pub fn is_utf8(chunks: &[Bytes]) -> bool {
    let mut tail = Utf8Tail::default();
    chunks.iter().all(|chunk| tail.check(chunk).is_ok()) && tail.is_empty()
}

/// UTF-8 validation across chunk boundaries: a character cut by one is
/// checked once its last byte arrives.
#[derive(Debug, Default)]
pub struct Utf8Tail {
    bytes: [u8; 4],
    len: usize,
}

impl Utf8Tail {
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn check(&mut self, chunk: &[u8]) -> Result<(), NotUtf8> {
        let mut rest = chunk;
        if self.len > 0 {
            let width = match self.bytes[0] {
                0xC0..=0xDF => 2,
                0xE0..=0xEF => 3,
                _ => 4,
            };
            let take = (width - self.len).min(rest.len());
            self.bytes[self.len..self.len + take].copy_from_slice(&rest[..take]);
            self.len += take;
            rest = &rest[take..];
            match std::str::from_utf8(&self.bytes[..self.len]) {
                Ok(_) => self.len = 0,
                Err(e) if e.error_len().is_none() && self.len < width => return Ok(()),
                Err(_) => return Err(NotUtf8),
            }
        }
        match std::str::from_utf8(rest) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_none() => {
                let tail = &rest[e.valid_up_to()..];
                self.bytes[..tail.len()].copy_from_slice(tail);
                self.len = tail.len();
                Ok(())
            }
            Err(_) => Err(NotUtf8),
        }
    }
}

/// Chunks in one buffer.
pub fn concat(chunks: &[Bytes]) -> Vec<u8> {
    let mut all = Vec::with_capacity(chunks.iter().map(Bytes::len).sum());
    for chunk in chunks {
        all.extend_from_slice(chunk);
    }
    all
}

/// Chunks in one buffer, each chunk let go as soon as it is copied: the
/// memory held peaks at about one body, not two.
pub fn join(chunks: Vec<Bytes>) -> Vec<u8> {
    let mut all = Vec::with_capacity(chunks.iter().map(Bytes::len).sum());
    for chunk in chunks {
        all.extend_from_slice(&chunk);
    }
    all
}

/// A JSON object whose values stay unparsed slices of the input: the way
/// megabytes of base64 cross the connector without a copy into a value tree.
pub struct RawObject<'a>(Vec<(String, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for RawObject<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for ObjectVisitor<'a> {
            type Value = RawObject<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some((key, value)) = map.next_entry::<String, &'de RawValue>()? {
                    fields.push((key, value));
                }
                Ok(RawObject(fields))
            }
        }
        deserializer.deserialize_map(ObjectVisitor(std::marker::PhantomData))
    }
}

impl<'a> RawObject<'a> {
    pub fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    /// Every member, in the order written.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &'a RawValue)> {
        self.0.iter().map(|(k, v)| (k.as_str(), *v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_word_scan_stops_at_the_first_special_byte() {
        let mut text = vec![b'A'; 40];
        assert_eq!(plain_len(&text), 40);
        for at in 0..40 {
            for special in [b'"', b'\\', 0x00, 0x1f, b'\n'] {
                let mut t = text.clone();
                t[at] = special;
                if at + 1 < t.len() {
                    t[at + 1] = b'"';
                }
                assert_eq!(plain_len(&t), at, "{special} at {at}");
            }
        }
        text.extend_from_slice("é日\u{7f}".as_bytes());
        assert_eq!(plain_len(&text), text.len(), "bytes from 0x7f up pass");
    }

    #[test]
    fn escaped_text_reads_back_as_itself() {
        let text = "{\"a\":\"q\\\"b\\\\/é\u{1}\n\"}";
        let mut out = b"\"".to_vec();
        escape_into(&mut out, text.as_bytes());
        out.push(b'"');
        assert_eq!(serde_json::from_slice::<String>(&out).expect("a JSON string"), text);
        let cut = "é".as_bytes();
        assert!(is_utf8(&[Bytes::from_static(&cut[..1]), Bytes::from_static(&cut[1..])]));
        assert!(!is_utf8(&[Bytes::from_static(&cut[..1])]));
    }
}
