//! One job's exchange over a [`FrameTransport`], with timeouts and checks of message order.
//!
//! Client: [`JobChannel::send_request`], then [`JobChannel::next_event`] until `Done` or an
//! error. Worker: [`JobChannel::recv_request`], then [`JobChannel::send`] of `Token`s and a
//! final `Done` or `Error`. A peer that stalls past the idle timeout, closes early, sends a
//! garbage or oversize frame, or breaks the order (wrong job id, skipped chunk) ends the job
//! with a [`JobError`] that says which.

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

/// Why a job failed.
#[derive(Debug, thiserror::Error)]
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
    /// The peer closed the stream before the job ended.
    #[error("the peer closed the job stream before the job finished")]
    Closed,
    /// The peer answered with an error.
    #[error("worker refused the job ({:?}): {}", .0.code, .0.message)]
    Remote(JobFailure),
    /// The peer broke the protocol's rules.
    #[error("protocol violation: {0}")]
    Protocol(String),
}

/// What a client receives while a job runs.
#[derive(Clone, Debug, PartialEq)]
pub enum ClientEvent {
    /// A paid job's quote (once, before any text).
    Quote(JobQuote),
    /// More text, accounting for `tokens` completion tokens.
    Token {
        /// The text.
        text: String,
        /// Completion tokens billed with it.
        tokens: u32,
    },
    /// The job finished.
    Done(JobDone),
}

/// A job's exchange over a frame transport.
#[derive(Debug)]
pub struct JobChannel<T> {
    transport: T,
    config: JobConfig,
    job: Option<JobId>,
    next_index: u32,
    quoted: bool,
}

impl<T: FrameTransport> JobChannel<T> {
    /// Wraps a transport.
    pub fn new(transport: T, config: JobConfig) -> Self {
        Self {
            transport,
            config,
            job: None,
            next_index: 0,
            quoted: false,
        }
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

    async fn recv(
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

    /// Client: sends the request that opens the job.
    pub async fn send_request(&mut self, request: JobRequest) -> Result<(), JobError> {
        self.job = Some(request.id);
        self.next_index = 0;
        self.quoted = false;
        self.send(&Message::Request(request)).await
    }

    /// Client: the next event of the job started by [`Self::send_request`].
    pub async fn next_event(&mut self) -> Result<ClientEvent, JobError> {
        let id = self
            .job
            .ok_or_else(|| JobError::Protocol("next_event before send_request".into()))?;
        let idle = self.config.idle_timeout;
        let message = self
            .recv("job message", idle)
            .await?
            .ok_or(JobError::Closed)?;
        if message.job_id() != id && !matches!(&message, Message::Error(f) if f.id == 0) {
            return Err(JobError::Protocol(format!(
                "message for job {} on the stream of job {id}",
                message.job_id()
            )));
        }
        match message {
            Message::Quote(quote) if self.next_index == 0 && !self.quoted => {
                self.quoted = true;
                Ok(ClientEvent::Quote(quote))
            }
            Message::Quote(_) => Err(JobError::Protocol(
                "a quote after the first token or a second quote".into(),
            )),
            Message::Token(chunk) => {
                if chunk.index != self.next_index {
                    return Err(JobError::Protocol(format!(
                        "token chunk {} where {} was expected",
                        chunk.index, self.next_index
                    )));
                }
                self.next_index += 1;
                Ok(ClientEvent::Token {
                    text: chunk.text,
                    tokens: chunk.tokens,
                })
            }
            Message::Done(done) => Ok(ClientEvent::Done(done)),
            Message::Error(failure) => Err(JobError::Remote(failure)),
            Message::Request(_) | Message::Voucher(_) => {
                Err(JobError::Protocol("worker sent a client's message".into()))
            }
        }
    }

    /// Worker: the next voucher of the current job, waiting at most `within`. `Ok(None)` when
    /// the client closed its side. Cancel-safe (see [`FrameTransport::recv_frame`]), so it can
    /// race the token stream in a `select!`.
    pub async fn recv_voucher(&mut self, within: Duration) -> Result<Option<Payment>, JobError> {
        let id = self.job.unwrap_or_default();
        match self.recv("voucher", within).await? {
            None => Ok(None),
            Some(Message::Voucher(p)) if p.id == id => Ok(Some(p)),
            Some(Message::Error(failure)) => Err(JobError::Remote(failure)),
            Some(other) => Err(JobError::Protocol(format!(
                "expected a voucher for job {id}, got {other:?}"
            ))),
        }
    }

    /// Worker: receives the request that opens the job. A request in another protocol
    /// version or a garbage frame is answered with an `Error` before the error is returned.
    pub async fn recv_request(&mut self) -> Result<JobRequest, JobError> {
        let timeout = self.config.request_timeout;
        let result = self.recv("job request", timeout).await;
        let (code, err) = match result {
            Ok(Some(Message::Request(request))) => {
                self.job = Some(request.id);
                return Ok(request);
            }
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

    /// Worker: sends the next chunk of text of the current job, billed as `tokens`.
    pub async fn send_token(&mut self, text: String, tokens: u32) -> Result<(), JobError> {
        let id = self.job.unwrap_or_default();
        let index = self.next_index;
        self.next_index += 1;
        self.send(&Message::Token(TokenChunk {
            id,
            index,
            text,
            tokens,
        }))
        .await
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
    async fn a_whole_job() {
        let (mut client, mut worker) = pair(JobConfig::default());
        client.send_request(request(9)).await.unwrap();
        let req = worker.recv_request().await.unwrap();
        assert_eq!(req, request(9));
        worker.send_token("Hel".into(), 1).await.unwrap();
        worker.send_token("lo".into(), 1).await.unwrap();
        let done = JobDone {
            id: 9,
            usage: Usage {
                prompt_tokens: 3,
                completion_tokens: 2,
            },
            timings: Timings::default(),
            finish_reason: FinishReason::Stop,
        };
        worker.send(&Message::Done(done.clone())).await.unwrap();
        assert_eq!(
            client.next_event().await.unwrap(),
            ClientEvent::Token {
                text: "Hel".into(),
                tokens: 1
            }
        );
        assert_eq!(
            client.next_event().await.unwrap(),
            ClientEvent::Token {
                text: "lo".into(),
                tokens: 1
            }
        );
        assert_eq!(client.next_event().await.unwrap(), ClientEvent::Done(done));
    }

    #[tokio::test]
    async fn worker_gone_mid_stream_is_closed_not_a_hang() {
        let (mut client, mut worker) = pair(JobConfig::default());
        client.send_request(request(1)).await.unwrap();
        worker.recv_request().await.unwrap();
        worker.send_token("a".into(), 1).await.unwrap();
        drop(worker);
        assert_eq!(
            client.next_event().await.unwrap(),
            ClientEvent::Token {
                text: "a".into(),
                tokens: 1
            }
        );
        assert!(matches!(client.next_event().await, Err(JobError::Closed)));
    }

    #[tokio::test]
    async fn silent_worker_times_out() {
        let config = JobConfig {
            idle_timeout: Duration::from_millis(50),
            ..Default::default()
        };
        let (mut client, _worker) = pair(config);
        client.send_request(request(1)).await.unwrap();
        assert!(matches!(
            client.next_event().await,
            Err(JobError::Timeout { .. })
        ));
    }

    #[tokio::test]
    async fn skipped_chunk_and_foreign_job_are_violations() {
        let (mut client, mut worker) = pair(JobConfig::default());
        client.send_request(request(1)).await.unwrap();
        worker.recv_request().await.unwrap();
        worker
            .send(&Message::Token(TokenChunk {
                id: 1,
                index: 1,
                text: "x".into(),
                tokens: 1,
            }))
            .await
            .unwrap();
        assert!(matches!(
            client.next_event().await,
            Err(JobError::Protocol(_))
        ));

        let (mut client, mut worker) = pair(JobConfig::default());
        client.send_request(request(1)).await.unwrap();
        worker.recv_request().await.unwrap();
        worker
            .send(&Message::Token(TokenChunk {
                id: 2,
                index: 0,
                text: "x".into(),
                tokens: 1,
            }))
            .await
            .unwrap();
        assert!(matches!(
            client.next_event().await,
            Err(JobError::Protocol(_))
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
    async fn remote_error_reaches_the_client() {
        let (mut client, mut worker) = pair(JobConfig::default());
        client.send_request(request(5)).await.unwrap();
        worker.recv_request().await.unwrap();
        worker
            .send(&Message::Error(JobFailure {
                id: 5,
                code: ErrorCode::Busy,
                message: "full".into(),
            }))
            .await
            .unwrap();
        match client.next_event().await {
            Err(JobError::Remote(f)) => assert_eq!(f.code, ErrorCode::Busy),
            other => panic!("{other:?}"),
        }
    }
}
