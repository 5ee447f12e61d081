//! cocoon-gateway: the OpenAI HTTP API in front of the network (`cocoon gateway`), for the
//! code developers already have. It runs on the light client (`cocoon_client::LightClient`) as
//! any embedding application would.
//!
//! `GET /v1/models` lists the models on offer in the market (with their cheapest price and
//! worker count); `POST /v1/chat/completions` and `POST /v1/completions` run a job through
//! the [`LightClient`] (attested, encrypted, paid, with failover), either as one JSON
//! response or, with `"stream": true`, as server-sent events in OpenAI's chunk format ending
//! with `data: [DONE]`. Every answer names the worker that produced it, its attestation and
//! what was paid: in `x-cocoon-*` headers and a `cocoon` field (the last chunk's, when
//! streaming). Errors are OpenAI's error JSON with the status a client expects, every one
//! of them (a middleware turns any other error answer, such as a 405, into it; [`http`]
//! does the same for the ones hyper writes itself): 400 bad request (checked before a
//! worker is chosen: sampling, stop strings, an empty prompt; or refused by two workers,
//! `context_length_exceeded` for a prompt longer than the model's context), 401 bad API
//! key, 402 payment channel out of funds, 404 unknown model or endpoint, 405 wrong method,
//! 408 a body that does not arrive in time, 413 a body over `max_body` or a request that
//! does not fit one job frame, 503 no worker available. A streamed answer starts (200 and
//! the first chunk) only once the job has: a job that fails first is answered with its
//! status like a plain one.

pub mod http;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cocoon_p2p::job::{ChatMessage, JobInput, Sampling};
use futures::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};

use cocoon_client::infer::{InferError, InferOutcome, InferRequest};
use cocoon_client::light::{Event, LightClient};
use cocoon_client::market::{ModelRow, WorkerRow};

/// Gateway settings.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// Bearer token the local API requires; `None` serves anyone who can reach the port.
    /// Default: none.
    pub api_key: Option<String>,
    /// Largest request body, bytes. Default: 1 MiB.
    pub max_body: usize,
    /// `max_tokens` when a request gives none. Default: 256.
    pub default_max_tokens: u32,
    /// Largest `max_tokens` accepted. Default: 4,096.
    pub max_tokens_cap: u32,
    /// How long a request body may take to arrive once its head has. Default: 30 s.
    pub body_timeout: Duration,
    /// Where requests, failovers and payments are counted (`cocoon gateway --metrics`).
    /// Default: none.
    pub metrics: Option<cocoon_metrics::GatewayMetrics>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            api_key: None,
            max_body: 1 << 20,
            default_max_tokens: 256,
            max_tokens_cap: 4096,
            body_timeout: Duration::from_secs(30),
            metrics: None,
        }
    }
}

struct App {
    client: Arc<LightClient>,
    config: GatewayConfig,
}

/// The gateway's routes over `client`.
pub fn router(client: Arc<LightClient>, config: GatewayConfig) -> Router {
    let metrics = config.metrics.clone();
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint", "not_found") })
        .layer(axum::middleware::map_response(json_errors))
        .layer(axum::middleware::from_fn(move |request, next| {
            record(metrics.clone(), request, next)
        }))
        .with_state(Arc::new(App { client, config }))
}

/// Counts each request by endpoint (one of ours, else `other`) and status, with the time to
/// its response's head (a streamed answer's tokens follow it).
async fn record(
    metrics: Option<cocoon_metrics::GatewayMetrics>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(metrics) = metrics else {
        return next.run(request).await;
    };
    let endpoint = match request.uri().path() {
        "/v1/models" => "/v1/models",
        "/v1/chat/completions" => "/v1/chat/completions",
        "/v1/completions" => "/v1/completions",
        _ => "other",
    };
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    metrics.request(
        endpoint,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

/// Counts a finished job's failovers and payment.
fn count_job(app: &App, o: &InferOutcome) {
    if let Some(m) = &app.config.metrics {
        m.job(o.failed_attempts.len() as u64, o.paid_nanoton);
    }
}

/// Any error answer that is not JSON yet (axum's own, such as 405 for a wrong method)
/// becomes OpenAI's error JSON with the same status and headers.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (message, code) = match status {
        StatusCode::METHOD_NOT_ALLOWED => (
            "method not allowed: GET /v1/models, POST /v1/chat/completions, POST /v1/completions",
            "method_not_allowed",
        ),
        StatusCode::PAYLOAD_TOO_LARGE => ("the request body is too large", "request_too_large"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ("the body must be JSON", "unsupported_media_type"),
        _ => (status.canonical_reason().unwrap_or("error"), "error"),
    };
    let (mut parts, _) = response.into_parts();
    let mut fresh = error(status, message, code);
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove(header::CONTENT_TYPE);
    for (name, value) in parts.headers.iter() {
        fresh.headers_mut().insert(name.clone(), value.clone());
    }
    fresh
}

/// The body, at most `max_body` bytes, within `body_timeout`: 413 past the limit (at once
/// when `content-length` says so), 408 when it stalls.
async fn read_body(app: &App, headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    let max = app.config.max_body;
    let too_large = || {
        ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than {max} bytes"),
            "request_too_large",
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    match tokio::time::timeout(app.config.body_timeout, axum::body::to_bytes(body, max)).await {
        Err(_) => Err(ApiError(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within {:?}",
                app.config.body_timeout
            ),
            "request_timeout",
        )),
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => {
            let length_limit = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if length_limit {
                Err(too_large())
            } else {
                Err(bad_request(format!("cannot read the request body: {e}")))
            }
        }
    }
}

/// A refused request: its status, message and OpenAI error code.
struct ApiError(StatusCode, String, &'static str);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error(self.0, self.1, self.2)
    }
}

fn bad_request(message: String) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, message, "invalid_request")
}

/// OpenAI's error JSON.
fn error(status: StatusCode, message: impl Into<String>, code: &str) -> Response {
    let kind = match status {
        StatusCode::UNAUTHORIZED => "authentication_error",
        StatusCode::PAYMENT_REQUIRED => "insufficient_quota",
        StatusCode::NOT_FOUND => "invalid_request_error",
        s if s.is_client_error() => "invalid_request_error",
        _ => "service_unavailable",
    };
    let body =
        json!({"error": {"message": message.into(), "type": kind, "param": null, "code": code}});
    (status, Json(body)).into_response()
}

fn authorised(app: &App, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &app.config.api_key else {
        return Ok(());
    };
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given.is_some_and(|g| same_secret(g, key)) {
        Ok(())
    } else {
        Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "missing or wrong API key (Authorization: Bearer ...)".into(),
            "invalid_api_key",
        ))
    }
}

/// Whether `given` is the secret `key`, in time that depends on neither (both are hashed
/// first, so not even their lengths leak, and the digests are compared in constant time).
fn same_secret(given: &str, key: &str) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    let (a, b) = (
        Sha256::digest(given.as_bytes()),
        Sha256::digest(key.as_bytes()),
    );
    a.as_slice().ct_eq(b.as_slice()).into()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn models(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Err(e) = authorised(&app, &headers) {
        return e.into_response();
    }
    let workers = WorkerRow::all(&app.client.adverts(), cocoon_client::clock::unix_now());
    let data: Vec<Value> = ModelRow::all(&workers)
        .into_iter()
        .map(|m| {
            json!({"id": m.id, "object": "model", "created": 0, "owned_by": "cocoon",
                   "price": {"prompt_per_mtok_nanoton": m.cheapest_prompt_per_mtok,
                             "completion_per_mtok_nanoton": m.cheapest_completion_per_mtok},
                   "workers": m.workers})
        })
        .collect();
    Json(json!({"object": "list", "data": data})).into_response()
}

/// `stop`: a string or a list of strings.
#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

/// The fields both endpoints share.
#[derive(Deserialize)]
struct Common {
    model: String,
    #[serde(default)]
    stream: bool,
    temperature: Option<f64>,
    top_p: Option<f64>,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    stop: Option<Stop>,
    seed: Option<u64>,
    n: Option<u32>,
}

#[derive(Deserialize)]
struct ChatBody {
    #[serde(flatten)]
    common: Common,
    messages: Vec<ChatMessage>,
}

#[derive(Deserialize)]
struct CompletionBody {
    #[serde(flatten)]
    common: Common,
    prompt: String,
}

/// What kind of answer the client asked for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Completion,
}

/// The fields whose type a request most often gets wrong, checked by name first so the
/// error names the field (serde's message for a flattened struct does not).
const TYPED_FIELDS: &[(&str, &str)] = &[
    ("model", "a string"),
    ("stream", "a boolean"),
    ("temperature", "a number"),
    ("top_p", "a number"),
    ("max_tokens", "a non-negative integer"),
    ("max_completion_tokens", "a non-negative integer"),
    ("seed", "a non-negative integer"),
    ("n", "a non-negative integer"),
    ("messages", "an array of {role, content} objects"),
    ("prompt", "a string"),
];

fn parse<T: for<'de> Deserialize<'de>>(body: &Bytes) -> Result<T, ApiError> {
    let bad = bad_request;
    let value: Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("the body is not JSON: {e}")))?;
    let Some(fields) = value.as_object() else {
        return Err(bad("the body must be a JSON object".into()));
    };
    for (name, want) in TYPED_FIELDS {
        let ok = match (fields.get(*name), *name) {
            (None | Some(Value::Null), _) => true,
            (Some(v), "model" | "prompt") => v.is_string(),
            (Some(v), "stream") => v.is_boolean(),
            (Some(v), "temperature" | "top_p") => v.is_number(),
            (Some(v), "messages") => v.is_array(),
            (Some(v), _) => v.is_u64(),
        };
        if !ok {
            return Err(bad(format!("`{name}` must be {want}")));
        }
    }
    serde_json::from_value(value).map_err(|e| bad(format!("invalid request: {e}")))
}

fn sampling(config: &GatewayConfig, c: &Common) -> Result<Sampling, ApiError> {
    let bad = |m: String| Err(bad_request(m));
    if c.n.is_some_and(|n| n != 1) {
        return bad("only n = 1 is supported".into());
    }
    let max_tokens = c
        .max_completion_tokens
        .or(c.max_tokens)
        .unwrap_or(config.default_max_tokens);
    if max_tokens == 0 || max_tokens > config.max_tokens_cap {
        return bad(format!(
            "max_tokens must be between 1 and {}",
            config.max_tokens_cap
        ));
    }
    let temperature = c.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return bad("temperature must be between 0 and 2".into());
    }
    if c.top_p.is_some_and(|p| !(p > 0.0 && p <= 1.0)) {
        return bad("top_p must be in (0, 1]".into());
    }
    Ok(Sampling {
        seed: c
            .seed
            .unwrap_or_else(|| now() ^ u64::from(std::process::id())),
        temperature,
        top_p: c.top_p,
        top_k: None,
        max_tokens,
        stop: match &c.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        },
    })
}

/// The key check (before a byte of the body is read), then the body read and parsed as `T`.
async fn admit<T: for<'de> Deserialize<'de>>(
    app: &App,
    headers: &HeaderMap,
    body: Body,
) -> Result<T, ApiError> {
    authorised(app, headers)?;
    parse(&read_body(app, headers, body).await?)
}

async fn chat(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    let body: ChatBody = match admit(&app, &headers, body).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    if body.messages.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "messages must not be empty",
            "invalid_request",
        );
    }
    run(app, body.common, JobInput::Chat(body.messages), Kind::Chat).await
}

async fn completions(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    let body: CompletionBody = match admit(&app, &headers, body).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    run(
        app,
        body.common,
        JobInput::Prompt(body.prompt),
        Kind::Completion,
    )
    .await
}

/// The status and OpenAI error code of a failed job: the caller's mistakes are 4xx, only
/// the network's own failures 503.
fn job_status(e: &InferError) -> (StatusCode, &'static str) {
    match e {
        InferError::AllFailed {
            out_of_funds: true, ..
        } => (StatusCode::PAYMENT_REQUIRED, "payment_required"),
        InferError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
        InferError::Refused {
            context_length: true,
            ..
        } => (StatusCode::BAD_REQUEST, "context_length_exceeded"),
        InferError::Refused { .. } => (StatusCode::BAD_REQUEST, "invalid_request"),
        InferError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "request_too_large"),
        InferError::NoneWithinPrice { .. } => (StatusCode::SERVICE_UNAVAILABLE, "price_limit"),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "no_worker_available"),
    }
}

/// The answer for a failed job.
fn job_error(e: &InferError) -> Response {
    let (status, code) = job_status(e);
    error(status, e.to_string(), code)
}

fn audit(o: &InferOutcome) -> Value {
    json!({
        "worker": o.worker_peer,
        "attestation": o.attestation,
        "measurement": o.measurement,
        "tcb_status": o.tcb_status,
        "paid_nanoton": o.paid_nanoton,
        "channel": o.channel,
        "price_prompt_per_mtok": o.price_prompt_per_mtok,
        "price_completion_per_mtok": o.price_completion_per_mtok,
        "failed_attempts": o.failed_attempts,
    })
}

fn usage(o: &InferOutcome) -> Value {
    // Counts come from a worker: add them in 64 bits, never overflowing.
    let total = u64::from(o.prompt_tokens) + u64::from(o.completion_tokens);
    json!({"prompt_tokens": o.prompt_tokens, "completion_tokens": o.completion_tokens,
           "total_tokens": total})
}

fn request_id(kind: Kind) -> String {
    let mut b = [0u8; 12];
    let _ = getrandom::fill(&mut b);
    match kind {
        Kind::Chat => format!("chatcmpl-{}", hex::encode(b)),
        Kind::Completion => format!("cmpl-{}", hex::encode(b)),
    }
}

async fn run(app: Arc<App>, common: Common, input: JobInput, kind: Kind) -> Response {
    let offered = app.client.adverts().iter().any(|a| a.serves(&common.model));
    if !offered {
        return error(
            StatusCode::NOT_FOUND,
            format!("the model {:?} is not offered on the network", common.model),
            "model_not_found",
        );
    }
    let sampling = match sampling(&app.config, &common) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let request = InferRequest {
        model: common.model.clone(),
        input,
        sampling,
    };
    if let Err(e) = app.client.check(&request) {
        return job_error(&e);
    }
    let id = request_id(kind);
    let mut events = Box::pin(app.client.infer(request));
    if common.stream {
        // Answer 200 only once the job has started: a job that fails first gets its status.
        let first = match events.next().await {
            Some(Err(e)) => return job_error(&e),
            first => first,
        };
        let events = futures::stream::iter(first).chain(events);
        return stream(events, id, common.model, kind, app.config.metrics.clone()).await;
    }
    let mut outcome = None;
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Done(o)) => {
                count_job(&app, &o);
                outcome = Some(o);
            }
            // Text is in the outcome; events a later client adds carry nothing we answer.
            Ok(_) => {}
            Err(e) => return job_error(&e),
        }
    }
    let Some(o) = outcome else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the job ended without a result",
            "no_worker_available",
        );
    };
    let choice = match kind {
        Kind::Chat => json!({"index": 0, "message": {"role": "assistant", "content": o.text},
                             "finish_reason": o.finish_reason, "logprobs": null}),
        Kind::Completion => json!({"index": 0, "text": o.text, "finish_reason": o.finish_reason,
                                   "logprobs": null}),
    };
    let object = match kind {
        Kind::Chat => "chat.completion",
        Kind::Completion => "text_completion",
    };
    let body = json!({"id": id, "object": object, "created": now(), "model": common.model,
                      "choices": [choice], "usage": usage(&o), "cocoon": audit(&o)});
    let mut response = Json(body).into_response();
    let h = response.headers_mut();
    for (name, value) in [
        ("x-cocoon-worker", o.worker_peer.clone()),
        ("x-cocoon-attestation", o.attestation.clone()),
        ("x-cocoon-paid-nanoton", o.paid_nanoton.to_string()),
    ] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    }
    response
}

/// Server-sent events in OpenAI's chunk format; the last chunk carries `finish_reason`,
/// `usage` and `cocoon`; then `[DONE]`. A failure mid-stream is an `error` event.
async fn stream(
    events: impl Stream<Item = Result<Event, InferError>> + Send + 'static,
    id: String,
    model: String,
    kind: Kind,
    metrics: Option<cocoon_metrics::GatewayMetrics>,
) -> Response {
    let created = now();
    let chunk = move |delta: Value, finish: Value, extra: Option<(Value, Value)>| {
        let choice = match kind {
            Kind::Chat => {
                json!({"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null})
            }
            Kind::Completion => {
                json!({"index": 0, "text": delta.get("content").cloned().unwrap_or(json!("")),
                                       "finish_reason": finish, "logprobs": null})
            }
        };
        let object = match kind {
            Kind::Chat => "chat.completion.chunk",
            Kind::Completion => "text_completion",
        };
        let mut v = json!({"id": id, "object": object, "created": created, "model": model,
                           "choices": [choice]});
        if let Some((usage, cocoon)) = extra {
            v["usage"] = usage;
            v["cocoon"] = cocoon;
        }
        SseEvent::default().data(v.to_string())
    };
    let first = (kind == Kind::Chat).then(|| {
        chunk(
            json!({"role": "assistant", "content": ""}),
            Value::Null,
            None,
        )
    });
    let body = futures::stream::iter(first)
        .chain(events.map(move |event| match event {
            Ok(Event::Text(t)) => chunk(json!({"content": t}), Value::Null, None),
            Ok(Event::Done(o)) => {
                if let Some(m) = &metrics {
                    m.job(o.failed_attempts.len() as u64, o.paid_nanoton);
                }
                chunk(
                    json!({}),
                    json!(o.finish_reason),
                    Some((usage(&o), audit(&o))),
                )
            }
            // An event a later client adds: an SSE comment, which clients skip.
            Ok(_) => SseEvent::default().comment(""),
            Err(e) => {
                let (status, code) = job_status(&e);
                let kind = if status.is_client_error() {
                    "invalid_request_error"
                } else {
                    "service_unavailable"
                };
                SseEvent::default().data(
                    json!({"error": {"message": e.to_string(), "type": kind,
                                         "param": null, "code": code}})
                    .to_string(),
                )
            }
        }))
        .chain(futures::stream::once(async {
            SseEvent::default().data("[DONE]")
        }))
        .map(Ok::<_, Infallible>);
    Sse::new(body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    use proptest::prelude::*;

    /// Any JSON value: objects with the field names the gateway reads, and anything else.
    fn json_value() -> impl Strategy<Value = Value> {
        let names = prop::sample::select(vec![
            "model",
            "stream",
            "temperature",
            "top_p",
            "max_tokens",
            "max_completion_tokens",
            "stop",
            "seed",
            "n",
            "messages",
            "prompt",
            "role",
            "content",
            "other",
        ]);
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>()
                .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::from)),
            ".{0,40}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 64, 8, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::from),
                prop::collection::vec((names.clone(), inner), 0..10).prop_map(|kv| {
                    Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
                }),
            ]
        })
    }

    /// Every refusal of a body is a 400 with OpenAI's error JSON; nothing panics.
    fn check_body(bytes: &[u8]) {
        let config = GatewayConfig::default();
        for result in [
            parse::<ChatBody>(&Bytes::copy_from_slice(bytes)).map(|b| b.common),
            parse::<CompletionBody>(&Bytes::copy_from_slice(bytes)).map(|b| b.common),
        ] {
            let refusal = match result {
                Ok(common) => match sampling(&config, &common) {
                    Ok(s) => {
                        assert!(s.max_tokens >= 1 && s.max_tokens <= config.max_tokens_cap);
                        continue;
                    }
                    Err(e) => e,
                },
                Err(e) => e,
            };
            assert_eq!(refusal.0, StatusCode::BAD_REQUEST, "{}", refusal.1);
            assert!(!refusal.1.is_empty());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The gateway's JSON reader on arbitrary bytes.
        #[test]
        fn arbitrary_bodies_are_refused_with_400s(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            check_body(&bytes);
        }

        /// ... and on arbitrary JSON shaped like requests (wrong types, odd numbers, nesting).
        #[test]
        fn arbitrary_json_is_parsed_or_refused_with_400s(v in json_value()) {
            check_body(v.to_string().as_bytes());
        }

        /// ... and on valid requests with one field broken.
        #[test]
        fn requests_with_a_broken_field_are_refused_with_400s(
            field in prop::sample::select(vec!["model", "messages", "prompt", "stop", "max_tokens", "temperature", "top_p", "n", "seed", "stream"]),
            v in json_value(),
        ) {
            let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                                  "prompt": "p", "max_tokens": 4});
            body[field] = v;
            check_body(body.to_string().as_bytes());
        }
    }

    #[test]
    fn api_keys_compare_by_digest_whatever_their_lengths() {
        assert!(same_secret("sk-local-1234", "sk-local-1234"));
        for wrong in [
            "sk-local-1235",
            "sk-local-123",
            "sk-local-12345",
            "",
            "SK-LOCAL-1234",
        ] {
            assert!(!same_secret(wrong, "sk-local-1234"), "{wrong:?}");
        }
        assert!(same_secret("", ""));
    }

    /// Token counts come from a worker: their sum must not overflow (a panic in a debug
    /// build before).
    #[test]
    fn usage_totals_never_overflow() {
        let outcome = InferOutcome {
            client_peer: "c".into(),
            worker_peer: "w".into(),
            model: "m".into(),
            text: String::new(),
            prompt_tokens: u32::MAX,
            completion_tokens: u32::MAX,
            ttft_ms: 0.0,
            tokens_per_s: 0.0,
            total_ms: 0.0,
            finish_reason: "stop".into(),
            providers_found: 1,
            attestation: "tdx".into(),
            measurement: String::new(),
            tcb_status: None,
            source: "market".into(),
            price_prompt_per_mtok: None,
            price_completion_per_mtok: None,
            cost_nanoton: None,
            paid_nanoton: 0,
            channel: None,
            failed_attempts: Vec::new(),
            path: "direct".into(),
            connect_ms: 0.0,
        };
        assert_eq!(
            usage(&outcome)["total_tokens"],
            json!(2 * u64::from(u32::MAX))
        );
    }
}
