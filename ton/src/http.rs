//! [`HttpChain`]: the toncenter v2 HTTP API (`/api/v2/...`), the subset the ledger uses. The
//! same client talks to toncenter (mainnet, testnet) and to the local chain of
//! `ton/contract/localchain.mjs`, whose transactions carry extra fields (exit code,
//! success) that are read when present.
//!
//! Responses are `{"ok":true,"result":...}` or `{"ok":false,"error":"...","code":N}`;
//! addresses are sent raw (`0:<hex>`); numbers are accepted as JSON numbers or as decimal or
//! `0x` hex strings; stack entries in both toncenter notations (`["num","0x2a"]` and the
//! `tvm.stackEntry*` objects it uses inside tuples).

use std::str::FromStr;
use std::time::Duration;

use base64::prelude::{Engine, BASE64_STANDARD};
use futures::future::BoxFuture;
use futures::FutureExt;
use num_bigint::BigInt;
use serde_json::{json, Value};
use tonlib_core::cell::BagOfCells;
use tonlib_core::TonAddress;

use crate::chain::{
    AccountState, AccountStatus, Chain, ChainError, GetMethodResult, StackEntry, TxInfo,
};

/// Time limit of one HTTP request by default: 10 s.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and how to reach the API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpChainConfig {
    /// Root URL, without `/api/v2` (e.g. `https://testnet.toncenter.com`). No default: the
    /// caller says which network it pays on.
    pub base_url: String,
    /// toncenter API key, sent as `X-API-Key` (without one toncenter allows 1 request/s).
    pub api_key: Option<String>,
    /// Time limit of one request ([`DEFAULT_TIMEOUT`]).
    pub timeout: Duration,
}

impl HttpChainConfig {
    /// The API at `base_url`, no key, default timeout.
    pub fn new(base_url: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            api_key: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// A toncenter v2 client.
#[derive(Clone, Debug)]
pub struct HttpChain {
    client: reqwest::Client,
    base_url: String,
    api_key: Option<String>,
}

impl HttpChain {
    /// A client for this API.
    pub fn new(config: HttpChainConfig) -> Result<Self, ChainError> {
        Ok(Self {
            client: reqwest::Client::builder().timeout(config.timeout).build()?,
            base_url: config.base_url.trim_end_matches('/').to_string(),
            api_key: config.api_key,
        })
    }

    /// The root URL.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// `GET base_url + path?query`, the envelope's `result`.
    pub(crate) async fn get(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<Value, ChainError> {
        let mut url = reqwest::Url::parse(&self.url(path))
            .map_err(|e| ChainError::InvalidArgument(format!("url {}: {e}", self.base_url)))?;
        url.query_pairs_mut().extend_pairs(query);
        self.call(self.client.get(url)).await
    }

    /// `POST base_url + path` with a JSON body, the envelope's `result`.
    pub(crate) async fn post(&self, path: &str, body: &Value) -> Result<Value, ChainError> {
        self.call(self.client.post(self.url(path)).json(body)).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    async fn call(&self, mut req: reqwest::RequestBuilder) -> Result<Value, ChainError> {
        if let Some(key) = &self.api_key {
            req = req.header("X-API-Key", key);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await?;
        envelope(status, &body)
    }
}

/// The `result` of a response, or its error.
fn envelope(status: u16, body: &[u8]) -> Result<Value, ChainError> {
    let http_error = || ChainError::Api {
        code: status.into(),
        message: String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned(),
    };
    let Ok(mut v) = serde_json::from_slice::<Value>(body) else {
        return Err(if (200..300).contains(&status) {
            ChainError::decode("response is not JSON")
        } else {
            http_error()
        });
    };
    match v.get("ok").and_then(Value::as_bool) {
        Some(true) => match v.get_mut("result") {
            Some(result) => Ok(result.take()),
            None => Err(ChainError::decode("ok response without result")),
        },
        Some(false) => Err(ChainError::Api {
            code: v
                .get("code")
                .and_then(Value::as_i64)
                .unwrap_or(status.into()),
            message: match v.get("error") {
                Some(Value::String(s)) => s.clone(),
                other => other.map(Value::to_string).unwrap_or_default(),
            },
        }),
        None if (200..300).contains(&status) => Err(ChainError::decode("response without \"ok\"")),
        None => Err(http_error()),
    }
}

/// An integer written as a JSON number, or a decimal or (`-`)`0x` hex string.
fn parse_int(v: &Value) -> Option<BigInt> {
    let s = match v {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.trim().to_string(),
        _ => return None,
    };
    let (neg, digits) = s
        .strip_prefix('-')
        .map_or((false, s.as_str()), |d| (true, d));
    let magnitude = match digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        Some(hex) => BigInt::parse_bytes(hex.as_bytes(), 16)?,
        None => BigInt::from_str(digits)
            .ok()
            .filter(|_| !digits.starts_with(['+', '-']))?,
    };
    Some(if neg { -magnitude } else { magnitude })
}

fn num<T: TryFrom<BigInt>>(v: &Value) -> Option<T> {
    parse_int(v).and_then(|i| T::try_from(i).ok())
}

/// A required integer field at `path` (keys from the outside in).
fn field<T: TryFrom<BigInt>>(v: &Value, path: &[&str]) -> Result<T, ChainError> {
    let found = path.iter().try_fold(v, |v, key| v.get(key));
    found
        .and_then(num)
        .ok_or_else(|| ChainError::decode(format!("missing or bad {}", path.join("."))))
}

/// An optional integer field (absent or `null` is `None`; present but malformed is an error).
fn opt_field<T: TryFrom<BigInt>>(v: &Value, key: &str) -> Result<Option<T>, ChainError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => field(v, &[key]).map(Some),
    }
}

fn base64_field(v: &Value, what: &str) -> Result<Vec<u8>, ChainError> {
    let s = v
        .as_str()
        .ok_or_else(|| ChainError::decode(format!("{what}: base64 string expected")))?;
    BASE64_STANDARD
        .decode(s)
        .map_err(|e| ChainError::decode(format!("{what}: {e}")))
}

fn decode_account(v: &Value) -> Result<AccountState, ChainError> {
    let status = match v.get("state").and_then(Value::as_str) {
        Some("active") => AccountStatus::Active,
        Some("uninitialized" | "uninit" | "nonexist") => AccountStatus::Uninit,
        Some("frozen") => AccountStatus::Frozen,
        other => {
            return Err(ChainError::decode(format!(
                "unknown account state {other:?}"
            )))
        }
    };
    Ok(AccountState {
        balance: field(v, &["balance"])?,
        status,
        last_lt: v
            .get("last_transaction_id")
            .map_or(Ok(0), |id| field(id, &["lt"]))?,
        chain_time: opt_field(v, "sync_utime")?,
    })
}

const MAX_TUPLE_DEPTH: usize = 16;

/// A stack entry in either toncenter notation.
fn decode_entry(v: &Value, depth: usize) -> Result<StackEntry, ChainError> {
    if depth > MAX_TUPLE_DEPTH {
        return Err(ChainError::decode("stack tuples nested too deep"));
    }
    let bad = || ChainError::decode(format!("bad stack entry {v}"));
    let elements = |list: Option<&Value>| -> Result<StackEntry, ChainError> {
        let items = list.and_then(Value::as_array).ok_or_else(bad)?;
        let items = items.iter().map(|e| decode_entry(e, depth + 1));
        Ok(StackEntry::Tuple(items.collect::<Result<_, _>>()?))
    };
    let cell = |c: Option<&Value>| -> Result<StackEntry, ChainError> {
        let c = c.ok_or_else(bad)?;
        Ok(StackEntry::Cell(base64_field(
            c.get("bytes").unwrap_or(c),
            "stack cell",
        )?))
    };
    if let Some([kind, value]) = v.as_array().map(Vec::as_slice) {
        return match kind.as_str().ok_or_else(bad)? {
            "num" | "int" | "number" => parse_int(value).map(StackEntry::Int).ok_or_else(bad),
            "cell" | "slice" | "tvm.Cell" | "tvm.Slice" => cell(Some(value)),
            "null" => Ok(StackEntry::Null),
            "tuple" | "list" => elements(value.get("elements").or(Some(value))),
            _ => Err(bad()),
        };
    }
    match v.get("@type").and_then(Value::as_str).ok_or_else(bad)? {
        "tvm.stackEntryNumber" => v
            .get("number")
            .and_then(|n| n.get("number"))
            .and_then(parse_int)
            .map(StackEntry::Int)
            .ok_or_else(bad),
        "tvm.stackEntryCell" => cell(v.get("cell")),
        "tvm.stackEntrySlice" => cell(v.get("slice")),
        "tvm.stackEntryTuple" => elements(v.get("tuple").and_then(|t| t.get("elements"))),
        "tvm.stackEntryList" => elements(v.get("list").and_then(|t| t.get("elements"))),
        "tvm.stackEntryNull" => Ok(StackEntry::Null),
        _ => Err(bad()),
    }
}

/// A get-method argument; toncenter takes integers and cells only.
fn encode_arg(e: &StackEntry) -> Result<Value, ChainError> {
    match e {
        StackEntry::Int(i) => Ok(json!(["num", format!("{i:#x}")])),
        StackEntry::Cell(boc) => Ok(json!(["tvm.Cell", BASE64_STANDARD.encode(boc)])),
        other => Err(ChainError::InvalidArgument(format!(
            "toncenter takes integer and cell arguments, not {other:?}"
        ))),
    }
}

fn decode_get_method(v: &Value) -> Result<GetMethodResult, ChainError> {
    let stack = v
        .get("stack")
        .and_then(Value::as_array)
        .ok_or_else(|| ChainError::decode("runGetMethod result without stack"))?;
    Ok(GetMethodResult {
        exit_code: field(v, &["exit_code"])?,
        stack: stack
            .iter()
            .map(|e| decode_entry(e, 0))
            .collect::<Result<_, _>>()?,
    })
}

/// A transaction hash: base64 (toncenter) or hex.
fn decode_hash(v: &Value) -> Result<[u8; 32], ChainError> {
    let s = v.as_str().unwrap_or_default();
    let bytes = if s.len() == 64 {
        hex::decode(s).ok()
    } else {
        BASE64_STANDARD.decode(s).ok()
    };
    bytes
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| ChainError::decode(format!("bad transaction hash {v}")))
}

/// The op of a message: the local chain's `op`, else the first 32 bits of its body.
fn decode_op(msg: &Value) -> Result<Option<u32>, ChainError> {
    if let Some(op) = opt_field(msg, "op")? {
        return Ok(Some(op));
    }
    let Some(body) = msg
        .pointer("/msg_data/body")
        .filter(|b| b.as_str() != Some(""))
    else {
        return Ok(None);
    };
    let cell = BagOfCells::parse(&base64_field(body, "message body")?)?.single_root()?;
    Ok(if cell.bit_len() >= 32 {
        Some(cell.parser().load_u32(32)?)
    } else {
        None
    })
}

fn decode_tx(v: &Value) -> Result<TxInfo, ChainError> {
    let in_msg = v.get("in_msg").filter(|m| !m.is_null());
    let mut out_msgs = Vec::new();
    for m in v
        .get("out_msgs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let dest = m
            .get("destination")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if dest.is_empty() {
            continue; // external-out (a log message)
        }
        let addr = TonAddress::from_str(dest)
            .map_err(|e| ChainError::decode(format!("out message destination: {e}")))?;
        out_msgs.push((addr, field(m, &["value"])?));
    }
    Ok(TxInfo {
        lt: field(v, &["transaction_id", "lt"])?,
        hash: decode_hash(v.pointer("/transaction_id/hash").unwrap_or(&Value::Null))?,
        utime: field(v, &["utime"])?,
        fee: field(v, &["fee"])?,
        in_value: in_msg.map_or(Ok(0), |m| field(m, &["value"]))?,
        in_op: in_msg.map_or(Ok(None), decode_op)?,
        compute_exit_code: opt_field(v, "compute_exit_code")?,
        success: v.get("success").and_then(Value::as_bool),
        out_msgs,
    })
}

impl Chain for HttpChain {
    fn send_boc<'a>(&'a self, boc: &'a [u8]) -> BoxFuture<'a, Result<(), ChainError>> {
        let body = json!({ "boc": BASE64_STANDARD.encode(boc) });
        async move { self.post("/api/v2/sendBoc", &body).await.map(drop) }.boxed()
    }

    fn account<'a>(
        &'a self,
        address: &'a TonAddress,
    ) -> BoxFuture<'a, Result<AccountState, ChainError>> {
        async move {
            let query = [("address", address.to_hex())];
            decode_account(&self.get("/api/v2/getAddressInformation", &query).await?)
        }
        .boxed()
    }

    fn run_get_method<'a>(
        &'a self,
        address: &'a TonAddress,
        method: &'a str,
        args: Vec<StackEntry>,
    ) -> BoxFuture<'a, Result<GetMethodResult, ChainError>> {
        async move {
            let stack = args.iter().map(encode_arg).collect::<Result<Vec<_>, _>>()?;
            let body = json!({ "address": address.to_hex(), "method": method, "stack": stack });
            decode_get_method(&self.post("/api/v2/runGetMethod", &body).await?)
        }
        .boxed()
    }

    fn transactions<'a>(
        &'a self,
        address: &'a TonAddress,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<TxInfo>, ChainError>> {
        async move {
            let query = [("address", address.to_hex()), ("limit", limit.to_string())];
            let result = self.get("/api/v2/getTransactions", &query).await?;
            let txs = result
                .as_array()
                .ok_or_else(|| ChainError::decode("getTransactions result is not a list"))?;
            txs.iter().map(decode_tx).collect()
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_and_errors() {
        assert_eq!(
            envelope(200, br#"{"ok":true,"result":{"a":1}}"#).unwrap(),
            json!({"a":1})
        );
        match envelope(
            429,
            br#"{"ok":false,"error":"Ratelimit exceed","code":429}"#,
        ) {
            Err(ChainError::Api { code: 429, message }) => assert_eq!(message, "Ratelimit exceed"),
            other => panic!("{other:?}"),
        }
        match envelope(502, b"<html>Bad Gateway</html>") {
            Err(ChainError::Api { code: 502, message }) => assert!(message.contains("Bad Gateway")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            envelope(200, b"not json"),
            Err(ChainError::Decode(_))
        ));
        assert!(matches!(
            envelope(200, br#"{"ok":true}"#),
            Err(ChainError::Decode(_))
        ));
        assert!(matches!(
            envelope(200, br#"[1]"#),
            Err(ChainError::Decode(_))
        ));
    }

    #[test]
    fn integers_in_every_notation() {
        for (v, want) in [
            (json!("0x2a"), 42),
            (json!("-0x2A"), -42),
            (json!("123"), 123),
            (json!("-5"), -5),
            (json!(7), 7),
            (json!(-7), -7),
        ] {
            assert_eq!(parse_int(&v), Some(BigInt::from(want)), "{v}");
        }
        for v in [
            json!("0x"),
            json!("--1"),
            json!("-+1"),
            json!("NaN"),
            json!(1.5),
            json!(null),
        ] {
            assert_eq!(parse_int(&v), None, "{v}");
        }
        assert_eq!(num::<u8>(&json!("256")), None);
    }

    #[test]
    fn accounts_decode() {
        let active = json!({"@type":"raw.fullAccountState","balance":"1000000000","code":"","data":"",
            "last_transaction_id":{"@type":"internal.transactionId","lt":"47000001","hash":"AAAA"},
            "frozen_hash":"","sync_utime":1700000000,"state":"active"});
        assert_eq!(
            decode_account(&active).unwrap(),
            AccountState {
                balance: 1_000_000_000,
                status: AccountStatus::Active,
                last_lt: 47_000_001,
                chain_time: Some(1_700_000_000),
            }
        );
        let fresh = json!({"balance": 0, "state": "uninitialized"});
        let fresh = decode_account(&fresh).unwrap();
        assert_eq!(
            (fresh.status, fresh.last_lt, fresh.chain_time),
            (AccountStatus::Uninit, 0, None)
        );
        assert!(decode_account(&json!({"balance":"-1","state":"active"})).is_err());
        assert!(decode_account(&json!({"balance":"1","state":"weird"})).is_err());
    }

    #[test]
    fn get_method_results_decode_with_nested_tuples() {
        let cell = BASE64_STANDARD.encode(b"boc");
        let result = json!({"@type":"smc.runResult","gas_used":900,"exit_code":0,"stack":[
            ["num","0x2a"], ["num","-0x1"], ["cell",{"bytes":cell}], ["null",null],
            ["tuple",{"@type":"tvm.tuple","elements":[
                {"@type":"tvm.stackEntryNumber","number":{"@type":"tvm.numberDecimal","number":"-17"}},
                {"@type":"tvm.stackEntryCell","cell":{"@type":"tvm.cell","bytes":cell}},
                {"@type":"tvm.stackEntryTuple","tuple":{"elements":[["num","0x1"]]}},
                ["tuple",{"elements":[]}]
            ]}]
        ]});
        let r = decode_get_method(&result).unwrap();
        assert_eq!(r.exit_code, 0);
        assert_eq!(
            r.stack,
            vec![
                StackEntry::Int(42.into()),
                StackEntry::Int((-1).into()),
                StackEntry::Cell(b"boc".to_vec()),
                StackEntry::Null,
                StackEntry::Tuple(vec![
                    StackEntry::Int((-17).into()),
                    StackEntry::Cell(b"boc".to_vec()),
                    StackEntry::Tuple(vec![StackEntry::Int(1.into())]),
                    StackEntry::Tuple(vec![]),
                ]),
            ]
        );
        assert_eq!(r.stack[1].to_uint::<u64>(), None);
        let failed = decode_get_method(&json!({"exit_code":-13,"stack":[]})).unwrap();
        assert!(matches!(
            failed.ok("seqno"),
            Err(ChainError::GetMethod { exit_code: -13, .. })
        ));
        for bad in [
            json!({"exit_code":0}),
            json!({"exit_code":0,"stack":[["num","zz"]]}),
            json!({"exit_code":0,"stack":[["blob",1]]}),
            json!({"exit_code":0,"stack":[["cell",{"bytes":"***"}]]}),
            json!({"exit_code":0,"stack":[{"@type":"tvm.stackEntryWhat"}]}),
        ] {
            assert!(decode_get_method(&bad).is_err(), "{bad}");
        }
        let mut deep = json!(["num", "1"]);
        for _ in 0..40 {
            deep = json!(["tuple", {"elements": [deep]}]);
        }
        assert!(decode_entry(&deep, 0).is_err());
    }

    #[test]
    fn arguments_encode_as_toncenter_expects() {
        assert_eq!(
            encode_arg(&StackEntry::Int(255.into())).unwrap(),
            json!(["num", "0xff"])
        );
        assert_eq!(
            encode_arg(&StackEntry::Cell(vec![1, 2])).unwrap(),
            json!(["tvm.Cell", "AQI="])
        );
        assert!(encode_arg(&StackEntry::Null).is_err());
    }

    #[test]
    fn transactions_decode_from_toncenter_and_the_local_chain() {
        let open_body = {
            let cell = crate::contract::ChannelMsg::Open.body(0).unwrap();
            BASE64_STANDARD.encode(BagOfCells::from_root(cell).serialize(true).unwrap())
        };
        let hash = BASE64_STANDARD.encode([9u8; 32]);
        let dest = "EQDcB_cHx9Yfwv4b4sLcW2tRg4HNjZJLqjr0TBKCL2-7NaUo";
        let toncenter = json!({"@type":"raw.transaction","utime":1700000000,"data":"",
            "transaction_id":{"@type":"internal.transactionId","lt":"5","hash":hash},
            "fee":"1234","storage_fee":"0","other_fee":"1234",
            "in_msg":{"source":"0:11","destination":"x","value":"2000","msg_data":{"@type":"msg.dataRaw","body":open_body}},
            "out_msgs":[{"destination":dest,"value":"1500"},{"destination":"","value":"0"}]});
        let tx = decode_tx(&toncenter).unwrap();
        assert_eq!(
            (tx.lt, tx.hash, tx.utime, tx.fee),
            (5, [9; 32], 1_700_000_000, 1234)
        );
        assert_eq!(
            (tx.in_value, tx.in_op),
            (2000, Some(crate::contract::op::OPEN))
        );
        assert_eq!((tx.compute_exit_code, tx.success), (None, None));
        assert_eq!(
            tx.out_msgs,
            vec![(TonAddress::from_str(dest).unwrap(), 1500)]
        );

        let local = json!({"utime":1,"transaction_id":{"lt":"7","hash":hex::encode([3u8;32])},
            "fee":"10","in_msg":{"value":"0","op":1667460207,"msg_data":{"body":"garbage"}},
            "out_msgs":[],"compute_exit_code":-14,"aborted":true,"success":false});
        let tx = decode_tx(&local).unwrap();
        assert_eq!(
            (tx.hash, tx.in_op),
            ([3; 32], Some(crate::contract::op::CLIENT_CLOSE))
        );
        assert_eq!((tx.compute_exit_code, tx.success), (Some(-14), Some(false)));
        let external = json!({"utime":1,"transaction_id":{"lt":"8","hash":hash},"fee":"1","in_msg":null,"out_msgs":[]});
        assert_eq!(decode_tx(&external).unwrap().in_op, None);
        for bad in [
            json!({"utime":1,"transaction_id":{"lt":"x","hash":hash},"fee":"1"}),
            json!({"utime":1,"transaction_id":{"lt":"1","hash":"short"},"fee":"1"}),
            json!({"utime":1,"transaction_id":{"lt":"1","hash":hash},"fee":"1","out_msgs":[{"destination":"nope","value":"1"}]}),
            json!({"utime":1,"transaction_id":{"lt":"1","hash":hash},"fee":"1","in_msg":{"value":"1","msg_data":{"body":"AAAA"}}}),
        ] {
            assert!(decode_tx(&bad).is_err(), "{bad}");
        }
    }
}
