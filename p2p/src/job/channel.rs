//! Moves one job's messages over a [`FrameTransport`], with timeouts; nothing more.
//!
//! The exchange's rules (order, ids, billing, payments, every error code) live in the
//! sans-IO sessions of `cocoon-job` ([`crate::job::session`]); a [`JobChannel`] only encodes,
//! sends, receives and decodes. The worker's [`JobChannel::recv_request`] answers a
//! garbage, oversize or other-version first frame with an `Error` before giving up.

use std::time::Duration;

use super::codec::{self, CodecError};
use super::message::*;
use crate::frame::{FrameError, FrameTransport, DEFAULT_MAX_FRAME};

/// Limits and timeouts of the job protocol.
#[derive(Clone, Debug)]
pub struct JobConfig {
    /// Largest frame sent or accepted. Default: [`DEFAULT_MAX_FRAME`] (1 MiB).
    pub max_frame: usize,
    /// How long a worker waits for the request after the stream opens. Default: 10 s.
    pub request_timeout: Duration,
    /// How long a client waits for the next message (the first token includes prompt
    /// processing). A dead worker whose connection is not yet known to be closed is noticed
    /// after this. Default: 60 s.
    pub idle_timeout: Duration,
}

impl Default for JobConfig {
    fn default() -> Self {
        Self {
            max_frame: DEFAULT_MAX_FRAME,
            request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Why moving a job's messages failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JobError {
    /// Framing failed: oversize or truncated frame, or the stream broke.
    #[error("job stream: {0}")]
    Frame(#[from] FrameError),
    /// A frame did not hold a valid message.
    #[error("job stream: {0}")]
    Codec(#[from] CodecError),
    /// Nothing arrived in time.
    #[error("no {waiting_for} from the peer within {after:?}")]
    Timeout {
        /// What we waited for.
        waiting_for: &'static str,
        /// The timeout that expired.
        after: Duration,
    },
    /// The peer closed the stream before the job started.
    #[error("the peer closed the job stream before the job finished")]
    Closed,
    /// The peer broke the protocol's rules.
    #[error("protocol violation: {0}")]
    Protocol(String),
}

/// A job's messages over a frame transport.
#[derive(Debug)]
pub struct JobChannel<T> {
    transport: T,
    config: JobConfig,
}

impl<T: FrameTransport> JobChannel<T> {
    /// Wraps a transport.
    pub fn new(transport: T, config: JobConfig) -> Self {
        Self { transport, config }
    }

    /// The limits and timeouts.
    pub fn config(&self) -> &JobConfig {
        &self.config
    }

    /// Sends one message.
    pub async fn send(&mut self, message: &Message) -> Result<(), JobError> {
        let bytes = codec::encode(message)?;
        self.transport.send_frame(&bytes).await?;
        Ok(())
    }

    /// Closes our sending side.
    pub async fn close(&mut self) -> Result<(), JobError> {
        self.transport.close().await?;
        Ok(())
    }

    /// The next message, waiting at most `within`; `Ok(None)` when the peer closed its
    /// side. Cancel-safe (see [`FrameTransport::recv_frame`]): it can race other work in a
    /// `select!`.
    pub async fn recv(&mut self, within: Duration) -> Result<Option<Message>, JobError> {
        self.recv_for("job message", within).await
    }

    async fn recv_for(
        &mut self,
        waiting_for: &'static str,
        after: Duration,
    ) -> Result<Option<Message>, JobError> {
        match tokio::time::timeout(after, self.transport.recv_frame()).await {
            Err(_) => Err(JobError::Timeout { waiting_for, after }),
            Ok(frame) => match frame? {
                None => Ok(None),
                Some(bytes) => Ok(Some(codec::decode(&bytes)?)),
            },
        }
    }

    /// Worker: receives the request that opens the job. A request in another protocol
    /// version or a garbage frame is answered with an `Error` before the error is returned.
    pub async fn recv_request(&mut self) -> Result<JobRequest, JobError> {
        let timeout = self.config.request_timeout;
        let result = self.recv_for("job request", timeout).await;
        let (code, err) = match result {
            Ok(Some(Message::Request(request))) => return Ok(request),
            Ok(Some(other)) => (
                ErrorCode::BadRequest,
                JobError::Protocol(format!("expected a request, got {other:?}")),
            ),
            Ok(None) => return Err(JobError::Closed),
            Err(JobError::Codec(CodecError::UnsupportedVersion(v))) => (
                ErrorCode::UnsupportedVersion,
                JobError::Codec(CodecError::UnsupportedVersion(v)),
            ),
            Err(e @ JobError::Timeout { .. }) => (ErrorCode::Timeout, e),
            Err(e @ JobError::Codec(_)) => (ErrorCode::BadRequest, e),
            Err(e @ JobError::Frame(FrameError::Oversize { .. })) => (ErrorCode::BadRequest, e),
            Err(e) => return Err(e),
        };
        // Best effort: the peer may already be gone.
        let _ = self
            .send(&Message::Error(JobFailure {
                id: 0,
                code,
                message: err.to_string(),
            }))
            .await;
        Err(err)
    }

    /// The transport underneath.
    pub fn into_inner(self) -> T {
        self.transport
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::FramedStream;
    use crate::testing::pipe;

    fn request(id: JobId) -> JobRequest {
        JobRequest {
            id,
            model: "m".into(),
            input: JobInput::Prompt("hi".into()),
            sampling: Sampling::default(),
            continuation: None,
            payment: None,
        }
    }

    fn pair(
        config: JobConfig,
    ) -> (
        JobChannel<FramedStream<crate::testing::Pipe>>,
        JobChannel<FramedStream<crate::testing::Pipe>>,
    ) {
        let (a, b) = pipe();
        (
            JobChannel::new(FramedStream::new(a, config.max_frame), config.clone()),
            JobChannel::new(FramedStream::new(b, config.max_frame), config),
        )
    }

    #[tokio::test]
    async fn messages_cross_and_a_close_is_seen() {
        let (mut client, mut worker) = pair(JobConfig::default());
        client.send(&Message::Request(request(9))).await.unwrap();
        assert_eq!(worker.recv_request().await.unwrap(), request(9));
        let chunk = Message::Token(TokenChunk {
            id: 9,
            index: 0,
            text: "Hel".into(),
            tokens: 1,
        });
        worker.send(&chunk).await.unwrap();
        drop(worker);
        let second = Duration::from_secs(1);
        assert_eq!(client.recv(second).await.unwrap(), Some(chunk));
        assert_eq!(client.recv(second).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_silent_peer_times_out() {
        let (mut client, _worker) = pair(JobConfig::default());
        assert!(matches!(
            client.recv(Duration::from_millis(50)).await,
            Err(JobError::Timeout { .. })
        ));
    }

    #[tokio::test]
    async fn garbage_request_is_answered_with_an_error() {
        let (a, b) = pipe();
        let mut raw = FramedStream::new(a, 1024);
        let mut worker = JobChannel::new(FramedStream::new(b, 1024), JobConfig::default());
        raw.send_frame(b"\xff\xff\xff garbage").await.unwrap();
        assert!(matches!(
            worker.recv_request().await,
            Err(JobError::Codec(_))
        ));
        let reply = codec::decode(&raw.recv_frame().await.unwrap().unwrap()).unwrap();
        assert!(matches!(
            reply,
            Message::Error(JobFailure {
                code: ErrorCode::BadRequest,
                ..
            })
        ));
    }

    #[tokio::test]
    async fn oversize_frame_is_refused() {
        let (a, b) = pipe();
        let mut raw = FramedStream::new(a, 1 << 20);
        let mut worker = JobChannel::new(
            FramedStream::new(b, 1024),
            JobConfig {
                max_frame: 1024,
                ..Default::default()
            },
        );
        raw.send_frame(&vec![0u8; 4096]).await.unwrap();
        assert!(matches!(
            worker.recv_request().await,
            Err(JobError::Frame(FrameError::Oversize { .. }))
        ));
    }

    #[tokio::test]
    async fn a_request_that_is_not_a_request_is_refused() {
        let (mut client, mut worker) = pair(JobConfig::default());
        client
            .send(&Message::Voucher(Payment {
                id: 1,
                cumulative: 1,
                seq: 1,
                signature: vec![0; 64],
            }))
            .await
            .unwrap();
        assert!(matches!(
            worker.recv_request().await,
            Err(JobError::Protocol(_))
        ));
        assert!(matches!(
            client.recv(Duration::from_secs(1)).await.unwrap(),
            Some(Message::Error(JobFailure {
                code: ErrorCode::BadRequest,
                ..
            }))
        ));
    }
}
