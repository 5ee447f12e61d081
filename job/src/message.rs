//! The job protocol's messages. They are plain data, independent of the inference engine
//! (this crate knows nothing of candle); the node converts them to engine requests.

use serde::{Deserialize, Serialize};

/// Identifies a job; chosen by the client, echoed in every message of that job.
pub type JobId = u64;

/// One message of the job protocol.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Message {
    /// Client → worker, first and only request on a stream.
    Request(JobRequest),
    /// Worker → client: the next piece of generated text.
    Token(TokenChunk),
    /// Worker → client: generation finished; last message of a successful job.
    Done(JobDone),
    /// Either side: the job failed; last message on the stream.
    Error(JobFailure),
    /// Worker → client, on a paid job, before the first token: the prompt's size, the price
    /// this job is billed at and the worker's view of the channel.
    Quote(JobQuote),
    /// Client → worker, on a paid job, any time after the quote: a signed cumulative voucher.
    Voucher(Payment),
}

impl Message {
    /// The job this message belongs to.
    pub fn job_id(&self) -> JobId {
        match self {
            Message::Request(m) => m.id,
            Message::Token(m) => m.id,
            Message::Done(m) => m.id,
            Message::Error(m) => m.id,
            Message::Quote(m) => m.id,
            Message::Voucher(m) => m.id,
        }
    }
}

/// A chat message with a role (`system`, `user`, `assistant`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// The speaker.
    pub role: String,
    /// The text.
    pub content: String,
}

/// What the model should continue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobInput {
    /// A conversation, rendered with the model's chat template.
    Chat(#[serde(deserialize_with = "crate::bounded::seq")] Vec<ChatMessage>),
    /// Raw text completion, no template.
    Prompt(String),
}

/// Sampling settings. `temperature == 0` means greedy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sampling {
    /// Seed for the sampler's RNG.
    pub seed: u64,
    /// Softmax temperature; 0 = greedy.
    pub temperature: f64,
    /// Nucleus sampling threshold.
    pub top_p: Option<f64>,
    /// Keep only the k most likely tokens.
    pub top_k: Option<u32>,
    /// Most tokens to generate.
    pub max_tokens: u32,
    /// Generation stops before any of these strings.
    #[serde(deserialize_with = "crate::bounded::seq")]
    pub stop: Vec<String>,
}

impl Default for Sampling {
    fn default() -> Self {
        Self {
            seed: 0,
            temperature: 0.0,
            top_p: None,
            top_k: None,
            max_tokens: 256,
            stop: Vec::new(),
        }
    }
}

/// A job request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobRequest {
    /// The job id.
    pub id: JobId,
    /// Model id as announced in the DHT.
    pub model: String,
    /// Prompt or conversation.
    pub input: JobInput,
    /// Sampling settings.
    pub sampling: Sampling,
    /// Failover: the answer so far, produced by another worker that failed. The worker
    /// continues it (as the start of the assistant's reply) instead of starting afresh, and
    /// streams only the new text; `sampling.max_tokens` counts the new tokens.
    pub continuation: Option<String>,
    /// How the job is paid; `None` asks for a free job, which a worker with a price refuses.
    pub payment: Option<Box<PaymentTerms>>,
}

/// Prices in nanoTON per million tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobPrice {
    /// Per million prompt tokens.
    pub prompt_per_mtok: u64,
    /// Per million completion tokens.
    pub completion_per_mtok: u64,
}

/// The payment channel a job is paid through (the TON channel contract's parameters, see
/// `ton/contract/README.md`) and the client's price ceiling. The worker adds its own key
/// and payout address, recomputes the channel's address and refuses a mismatch, so a client
/// cannot point it at a channel that pays someone else.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentTerms {
    /// The channel contract's account id (basechain address hash).
    pub channel: [u8; 32],
    /// The contract's `channel_id` (unique per client and worker).
    pub channel_id: u64,
    /// The client's ed25519 key that signs vouchers.
    pub client_key: [u8; 32],
    /// The client's wallet (basechain account id): open, top-up and refunds.
    pub client_address: [u8; 32],
    /// Seconds the worker has to answer a unilateral close.
    pub challenge_period: u32,
    /// Seconds after which the client may take back an unclaimed deposit.
    pub worker_timeout: u32,
    /// What the client says the channel holds, nanoTON; a worker with a chain reads the real
    /// deposit instead.
    pub deposit: u64,
    /// The highest price the client accepts for this job.
    pub max_price: JobPrice,
}

/// The worker's answer to a paid request, before any token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobQuote {
    /// The job id.
    pub id: JobId,
    /// Tokens in the rendered prompt (billed at the prompt price).
    pub prompt_tokens: u32,
    /// The price this job is billed at (at most the client's ceiling).
    pub price: JobPrice,
    /// The best voucher the worker holds on the channel: its cumulative amount...
    pub channel_paid: u64,
    /// ...and its seq.
    pub channel_seq: u64,
    /// What the worker has delivered on the channel so far, nanoTON (jobs before this one).
    pub channel_delivered: u64,
    /// Unpaid value the worker streams ahead of vouchers, nanoTON: pay before half of it
    /// is used, or the stream waits.
    pub credit_limit: u64,
}

/// A voucher on the wire: the channel is the job's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    /// The job id.
    pub id: JobId,
    /// Total owed to the worker on the channel, nanoTON.
    pub cumulative: u64,
    /// The voucher's seq.
    pub seq: u64,
    /// The client's ed25519 signature over the voucher cell's hash (64 bytes).
    pub signature: Vec<u8>,
}

/// A chunk of generated text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenChunk {
    /// The job id.
    pub id: JobId,
    /// 0-based index of this chunk within the job: a gap or repeat is a protocol error.
    pub index: u32,
    /// Generated text (valid UTF-8, possibly several tokens).
    pub text: String,
    /// Completion tokens this chunk accounts for (what a paid job is billed by; text held
    /// back for a stop string is billed with the chunk that releases it).
    pub tokens: u32,
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FinishReason {
    /// End of sequence or a stop string.
    Stop,
    /// `max_tokens` or the context length was reached.
    Length,
}

/// Token counts of a finished job.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens in the rendered prompt.
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub completion_tokens: u32,
}

/// Worker-side timings of a finished job, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// From the request's arrival to the first generated token (prompt processing included).
    pub ttft_ms: f64,
    /// From the request's arrival to the last token.
    pub total_ms: f64,
}

/// End of a successful job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobDone {
    /// The job id.
    pub id: JobId,
    /// Token counts.
    pub usage: Usage,
    /// Worker-side timings.
    pub timings: Timings,
    /// Why generation ended.
    pub finish_reason: FinishReason,
}

/// Machine-readable failure class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The worker is at its concurrency limit; try another worker.
    Busy,
    /// The worker does not serve the requested model.
    UnknownModel,
    /// The request was malformed or out of bounds.
    BadRequest,
    /// The peer speaks another protocol version.
    UnsupportedVersion,
    /// Nothing arrived in time.
    Timeout,
    /// The worker failed while generating.
    Internal,
    /// The job is not paid for: no or a bad channel, the deposit or the credit ran out, or
    /// no voucher came in time.
    PaymentRequired,
    /// The worker's price is above the client's ceiling.
    PriceTooHigh,
    /// The prompt (with its template and continuation) does not fit the model's context:
    /// the caller must shorten it (a gateway answers 400 `context_length_exceeded`).
    ContextLengthExceeded,
}

/// A failed job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobFailure {
    /// The job id (0 when the request could not be decoded).
    pub id: JobId,
    /// Failure class.
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: String,
}
