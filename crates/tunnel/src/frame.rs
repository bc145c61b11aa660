//! Frames on a tunnel stream: a 4-byte big-endian length, then that many bytes. A header
//! frame holds JSON; a channel frame holds a channel byte and its data.

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest frame read: a header or a channel frame's data.
pub const MAX_HEADER: usize = 1 << 20;

fn invalid(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message)
}

async fn read_len(r: &mut (impl AsyncRead + Unpin)) -> std::io::Result<Option<usize>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_HEADER {
        return Err(invalid(format!(
            "a frame of {len} bytes (at most {MAX_HEADER})"
        )));
    }
    Ok(Some(len))
}

/// Writes `value` as a header frame.
pub async fn write_header<T: Serialize>(
    w: &mut (impl AsyncWrite + Unpin),
    value: &T,
) -> std::io::Result<()> {
    let json = serde_json::to_vec(value).map_err(|e| invalid(e.to_string()))?;
    let mut frame = Vec::with_capacity(4 + json.len());
    frame.extend_from_slice(&(json.len() as u32).to_be_bytes());
    frame.extend_from_slice(&json);
    w.write_all(&frame).await?;
    w.flush().await
}

/// Reads a header frame.
pub async fn read_header<T: DeserializeOwned>(
    r: &mut (impl AsyncRead + Unpin),
) -> std::io::Result<T> {
    let len = read_len(r)
        .await?
        .ok_or_else(|| invalid("the stream ended before its header".into()))?;
    let mut json = vec![0u8; len];
    r.read_exact(&mut json).await?;
    serde_json::from_slice(&json).map_err(|e| invalid(format!("a header: {e}")))
}

/// Writes a channel frame.
pub async fn write_frame(
    w: &mut (impl AsyncWrite + Unpin),
    channel: u8,
    data: &[u8],
) -> std::io::Result<()> {
    let mut frame = Vec::with_capacity(5 + data.len());
    frame.extend_from_slice(&(data.len() as u32 + 1).to_be_bytes());
    frame.push(channel);
    frame.extend_from_slice(data);
    w.write_all(&frame).await?;
    w.flush().await
}

/// Reads a channel frame: its channel and data, or `None` where the stream ends.
pub async fn read_frame(
    r: &mut (impl AsyncRead + Unpin),
) -> std::io::Result<Option<(u8, Vec<u8>)>> {
    let Some(len) = read_len(r).await? else {
        return Ok(None);
    };
    if len == 0 {
        return Err(invalid("an empty channel frame".into()));
    }
    let mut frame = vec![0u8; len];
    r.read_exact(&mut frame).await?;
    let channel = frame.remove(0);
    Ok(Some((channel, frame)))
}
