//! The encoding of NATS payloads between services: a format byte, then postcard.
//!
//! Why postcard rather than JSON: the location path carries every driver's report (100,000/s
//! and more) through gateway encode and matcher decode; `cargo bench -p protocol --bench codec`
//! measures postcard encoding and decoding a position several times faster than serde_json,
//! and its payloads are less than half the size (figures in BENCHMARKS.md). The cost is that
//! payloads are not human-readable on the bus; `Debug` output in logs covers that.
//! The leading byte names the format so it can change without ambiguity.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The first byte of every payload in this format.
pub const FORMAT_V1: u8 = 1;

/// Why a payload could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("empty payload")]
    Empty,
    #[error("unknown payload format {0}")]
    UnknownFormat(u8),
    #[error("malformed payload: {0}")]
    Malformed(#[from] postcard::Error),
}

/// Encodes a payload.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![FORMAT_V1];
    postcard::to_io(value, &mut out).expect("writing to a Vec cannot fail");
    out
}

/// Decodes a payload produced by [`encode`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    match bytes.split_first() {
        None => Err(CodecError::Empty),
        Some((&FORMAT_V1, rest)) => Ok(postcard::from_bytes(rest)?),
        Some((&other, _)) => Err(CodecError::UnknownFormat(other)),
    }
}
