//! Parsing fal's status stream (`text/event-stream`): `data:` lines carry a status JSON,
//! `: ping` comments keep the connection alive, the stream closes after `COMPLETED`.

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};

use crate::error::{FalError, TransportStage};
use crate::status::{QueueStatus, StatusStream};

struct State {
    body: futures_util::stream::BoxStream<'static, reqwest::Result<Bytes>>,
    buffer: BytesMut,
    data: String,
    done: bool,
}

pub(crate) fn status_events(response: reqwest::Response) -> StatusStream {
    parse_events(response.bytes_stream())
}

/// Parses an event stream of status events from raw body chunks (split anywhere).
fn parse_events<S>(body: S) -> StatusStream
where
    S: Stream<Item = reqwest::Result<Bytes>> + Send + 'static,
{
    let state = State {
        body: body.boxed(),
        buffer: BytesMut::new(),
        data: String::new(),
        done: false,
    };
    Box::pin(futures_util::stream::unfold(
        state,
        |mut state| async move {
            if state.done {
                return None;
            }
            loop {
                // Dispatch every complete line in the buffer first.
                while let Some(pos) = state.buffer.iter().position(|&b| b == b'\n') {
                    let line = state.buffer.split_to(pos + 1);
                    let line = String::from_utf8_lossy(&line);
                    let line = line.trim_end_matches(['\n', '\r']);
                    if line.is_empty() {
                        if state.data.is_empty() {
                            continue;
                        }
                        let data = std::mem::take(&mut state.data);
                        let event = serde_json::from_str::<QueueStatus>(&data).map_err(|source| {
                            FalError::Decode {
                                context: "status stream event",
                                source,
                            }
                        });
                        if matches!(&event, Ok(s) if s.is_completed()) {
                            state.done = true;
                        }
                        return Some((event, state));
                    } else if line.starts_with(':') {
                        continue;
                    } else if let Some(value) = line.strip_prefix("data:") {
                        if !state.data.is_empty() {
                            state.data.push('\n');
                        }
                        state
                            .data
                            .push_str(value.strip_prefix(' ').unwrap_or(value));
                    }
                    // Other fields (event:, id:, retry:) carry nothing fal uses.
                }
                match state.body.next().await {
                    Some(Ok(chunk)) => state.buffer.extend_from_slice(chunk.chunk()),
                    Some(Err(e)) => {
                        state.done = true;
                        return Some((
                            Err(FalError::transport(TransportStage::AfterSend, e)),
                            state,
                        ));
                    }
                    None => return None,
                }
            }
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn events_split_across_chunks_with_pings_and_crlf() {
        let text = ": ping\r\n\r\ndata: {\"status\":\"IN_QUEUE\",\"queue_position\":2}\r\n\r\n: ping\n\ndata: {\"status\":\"IN_PROGRESS\",\n\ndata: \"logs\":null}\n\ndata: {\"status\":\"COMPLETED\",\"logs\":null}\n\ndata: {\"status\":\"IN_QUEUE\"}\n\n";
        // The third event is split over two `data:` lines of *different* events on purpose:
        // a blank line ends an event, so it is a decode error, not silently merged.
        let chunks: Vec<reqwest::Result<Bytes>> = text
            .as_bytes()
            .chunks(7)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let events: Vec<_> = parse_events(futures_util::stream::iter(chunks))
            .collect()
            .await;
        assert_eq!(events.len(), 4, "stops after COMPLETED");
        assert_eq!(
            *events[0].as_ref().unwrap(),
            QueueStatus::InQueue {
                queue_position: Some(2)
            }
        );
        assert!(events[1].is_err());
        assert!(events[2].is_err());
        assert!(events[3].as_ref().unwrap().is_completed());
    }

    #[tokio::test]
    async fn multi_line_data_is_joined() {
        let text = "data: {\"status\":\ndata: \"COMPLETED\"}\n\n";
        let chunks = vec![Ok(Bytes::from(text))];
        let events: Vec<_> = parse_events(futures_util::stream::iter(chunks))
            .collect()
            .await;
        assert!(events[0].as_ref().unwrap().is_completed());
    }
}
