//! How messages are framed and encoded: CBOR (cbor4ii) everywhere, and on raw streams a 4-byte big-endian length
//! before each header, checked against a limit before anything is read. Part of [`crate::protocol`].

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use serde::{Deserialize, Serialize};

use super::{JobOffer, MAX_BLOB_HEADER, MAX_OFFER};

/// Errors reading or writing the framed headers of a blob stream.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("a message of {size} bytes is over the {max}-byte limit")]
    TooLarge { size: u64, max: u64 },
    #[error("undecodable header: {0}")]
    Decode(String),
    #[error("unencodable header: {0}")]
    Encode(String),
}

/// Writes a header as a 4-byte big-endian length and CBOR.
pub async fn write_header<W, T>(io: &mut W, value: &T) -> Result<(), WireError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    write_header_max(io, value, MAX_BLOB_HEADER).await
}

/// [`write_header`] with another size limit (the update manifest is larger than a blob header).
pub async fn write_header_max<W, T>(io: &mut W, value: &T, max: u32) -> Result<(), WireError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let bytes = cbor4ii::serde::to_vec(Vec::new(), value).map_err(|e| WireError::Encode(e.to_string()))?;
    let too_large = WireError::TooLarge { size: bytes.len() as u64, max: u64::from(max) };
    let len = u32::try_from(bytes.len()).map_err(|_| too_large)?;
    if len > max {
        return Err(WireError::TooLarge { size: u64::from(len), max: u64::from(max) });
    }
    // One write: on a libp2p stream each write is a frame of its own on the wire.
    let mut framed = Vec::with_capacity(4 + bytes.len());
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(&bytes);
    io.write_all(&framed).await?;
    io.flush().await?;
    Ok(())
}

/// Reads a header written by [`write_header`], refusing anything over [`MAX_BLOB_HEADER`].
pub async fn read_header<R, T>(io: &mut R) -> Result<T, WireError>
where
    R: AsyncRead + Unpin,
    T: for<'de> Deserialize<'de>,
{
    read_header_max(io, MAX_BLOB_HEADER).await
}

/// [`read_header`] with another size limit.
pub async fn read_header_max<R, T>(io: &mut R, max: u32) -> Result<T, WireError>
where
    R: AsyncRead + Unpin,
    T: for<'de> Deserialize<'de>,
{
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len);
    if len > max {
        return Err(WireError::TooLarge { size: u64::from(len), max: u64::from(max) });
    }
    let mut buf = vec![0u8; len as usize];
    io.read_exact(&mut buf).await?;
    cbor4ii::serde::from_slice(&buf).map_err(|e| WireError::Decode(e.to_string()))
}

/// Encodes an offer for gossipsub.
pub fn encode_offer(offer: &JobOffer) -> Result<Vec<u8>, WireError> {
    cbor4ii::serde::to_vec(Vec::new(), offer).map_err(|e| WireError::Encode(e.to_string()))
}

/// Decodes an offer from gossipsub, refusing oversized ones.
pub fn decode_offer(bytes: &[u8]) -> Result<JobOffer, WireError> {
    if bytes.len() > MAX_OFFER {
        return Err(WireError::TooLarge { size: bytes.len() as u64, max: MAX_OFFER as u64 });
    }
    cbor4ii::serde::from_slice(bytes).map_err(|e| WireError::Decode(e.to_string()))
}

/// Encodes any wire value as CBOR.
pub fn to_cbor<T: Serialize>(value: &T) -> Result<Vec<u8>, WireError> {
    cbor4ii::serde::to_vec(Vec::new(), value).map_err(|e| WireError::Encode(e.to_string()))
}

/// Decodes a CBOR wire value, refusing more than `max` bytes.
pub fn from_cbor<T: for<'de> Deserialize<'de>>(bytes: &[u8], max: usize) -> Result<T, WireError> {
    if bytes.len() > max {
        return Err(WireError::TooLarge { size: bytes.len() as u64, max: max as u64 });
    }
    cbor4ii::serde::from_slice(bytes).map_err(|e| WireError::Decode(e.to_string()))
}
