//! Text ⇄ token ids, plus the token facts generation needs (BOS, the set of EOS ids). The
//! loaders build one per model; the engine encodes prompts with it and each generation's
//! decoding decodes its tokens and stops at EOS.
//!
//! Two sources:
//! - a GGUF file's own metadata ([`TextTokenizer::from_gguf_metadata`]): GGUF files carry no
//!   `tokenizer.json`, so the byte-level BPE tokenizer (`tokenizer.ggml.model = "gpt2"`) is
//!   rebuilt from `tokenizer.ggml.tokens`, `.merges`, `.token_type` and the BOS/EOS ids;
//! - a Hugging Face `tokenizer.json` with its `tokenizer_config.json` and `config.json`
//!   ([`TextTokenizer::from_hf`]).
//!
//! Decoding for output skips special tokens, so control tokens such as `<|im_start|>` never
//! reach a user's text.

use std::collections::HashMap;

use candle_core::quantized::gguf_file;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

use crate::error::LoadError;

/// End-of-turn token names that also end a generation whenever the vocabulary has them
/// (chat models end a turn with these even when their declared EOS is another token).
pub const EXTRA_EOS_TOKENS: [&str; 3] = ["<|im_end|>", "<|endoftext|>", "<|eot_id|>"];

/// GGUF `tokenizer.ggml.token_type` value for a control (special) token.
pub const GGUF_TOKEN_TYPE_CONTROL: i32 = 3;
/// GGUF `tokenizer.ggml.token_type` value for a user-defined (added, non-special) token.
pub const GGUF_TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// A tokenizer together with the model's BOS/EOS conventions.
#[derive(Clone)]
pub struct TextTokenizer {
    tokenizer: Tokenizer,
    bos_id: Option<u32>,
    add_bos: bool,
    eos_ids: Vec<u32>,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos_id", &self.bos_id)
            .field("add_bos", &self.add_bos)
            .field("eos_ids", &self.eos_ids)
            .finish()
    }
}

impl TextTokenizer {
    /// Wraps a tokenizer. `eos_ids[0]` is the model's declared EOS (the template's
    /// `eos_token`); the set is extended with [`EXTRA_EOS_TOKENS`] present in the vocabulary.
    pub fn new(
        tokenizer: Tokenizer,
        bos_id: Option<u32>,
        add_bos: bool,
        eos_ids: Vec<u32>,
    ) -> Self {
        let eos_token = eos_ids.first().and_then(|&id| tokenizer.id_to_token(id));
        let mut eos_ids = eos_ids;
        for name in EXTRA_EOS_TOKENS {
            if let Some(id) = tokenizer.token_to_id(name) {
                eos_ids.push(id);
            }
        }
        eos_ids.sort_unstable();
        eos_ids.dedup();
        let bos_token = bos_id.and_then(|id| tokenizer.id_to_token(id));
        TextTokenizer {
            tokenizer,
            bos_id,
            add_bos: add_bos && bos_id.is_some(),
            eos_ids,
            bos_token,
            eos_token,
        }
    }

    /// Rebuilds the tokenizer stored in a GGUF file's metadata.
    pub fn from_gguf_metadata(md: &HashMap<String, gguf_file::Value>) -> Result<Self, LoadError> {
        let model = md_string(md, "tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(LoadError::UnsupportedTokenizer(model));
        }
        let tokens = md_strings(md, "tokenizer.ggml.tokens")?;
        let merges = match md.get("tokenizer.ggml.merges") {
            Some(_) => md_strings(md, "tokenizer.ggml.merges")?,
            None => Vec::new(),
        };
        let token_types = match md.get("tokenizer.ggml.token_type") {
            Some(v) => v
                .to_vec()
                .map_err(|e| bad("tokenizer.ggml.token_type".into(), e))?
                .iter()
                .map(|v| value_as_i64(v).map(|x| x as i32))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| bad("tokenizer.ggml.token_type".into(), "not integers"))?,
            None => Vec::new(),
        };
        let tokenizer = byte_level_bpe(&tokens, &merges, &token_types)?;
        let bos_id = md_u32(md, "tokenizer.ggml.bos_token_id");
        let eos_id = md_u32(md, "tokenizer.ggml.eos_token_id");
        for (key, id) in [
            ("tokenizer.ggml.bos_token_id", bos_id),
            ("tokenizer.ggml.eos_token_id", eos_id),
        ] {
            if let Some(id) = id.filter(|&id| id as usize >= tokens.len()) {
                let problem = format!("{id} is outside the vocabulary of {} tokens", tokens.len());
                return Err(bad(key.to_string(), problem));
            }
        }
        // llama.cpp's default for byte-level BPE vocabularies is not to add BOS.
        let add_bos = md
            .get("tokenizer.ggml.add_bos_token")
            .and_then(|v| v.to_bool().ok())
            .unwrap_or(false);
        Ok(Self::new(
            tokenizer,
            bos_id,
            add_bos,
            eos_id.into_iter().collect(),
        ))
    }

    /// Reads a Hugging Face tokenizer: `tokenizer.json` bytes, the parsed
    /// `tokenizer_config.json` (if any) and the EOS ids from `config.json`.
    pub fn from_hf(
        tokenizer_json: &[u8],
        tokenizer_config: Option<&serde_json::Value>,
        config_bos: Option<u32>,
        config_eos: &[u32],
    ) -> Result<Self, LoadError> {
        let mut tokenizer = Tokenizer::from_bytes(tokenizer_json)
            .map_err(|e| LoadError::Tokenizer(e.to_string()))?;
        // We add BOS ourselves and never pad or truncate.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| LoadError::Tokenizer(e.to_string()))?;
        let token_field = |name: &str| -> Option<String> {
            let v = tokenizer_config?.get(name)?;
            match v {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
                _ => None,
            }
        };
        let bos_id = token_field("bos_token")
            .and_then(|t| tokenizer.token_to_id(&t))
            .or(config_bos);
        let mut eos_ids = config_eos.to_vec();
        if let Some(id) = token_field("eos_token").and_then(|t| tokenizer.token_to_id(&t)) {
            eos_ids.insert(0, id);
        }
        let add_bos = tokenizer_config
            .and_then(|c| c.get("add_bos_token"))
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false);
        Ok(Self::new(tokenizer, bos_id, add_bos, eos_ids))
    }

    /// The wrapped Hugging Face tokenizer.
    pub fn inner(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// The BOS id, if the model has one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// Whether prompts start with BOS (the model's metadata says so and it has one).
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// The ids that end a generation.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// Whether `id` ends a generation.
    pub fn is_eos(&self, id: u32) -> bool {
        self.eos_ids.contains(&id)
    }

    /// The BOS token's text (for chat templates).
    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    /// The main EOS token's text (for chat templates).
    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    /// The id of a token, if in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    /// Tokenises `text`; special tokens written in the text (e.g. `<|im_start|>`) become their
    /// ids. Prepends BOS when `with_bos` and the text does not already start with it.
    pub fn encode(&self, text: &str, with_bos: bool) -> Result<Vec<u32>, String> {
        let encoding = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| e.to_string())?;
        let mut ids = encoding.get_ids().to_vec();
        if let (true, Some(bos)) = (with_bos, self.bos_id) {
            if ids.first() != Some(&bos) {
                ids.insert(0, bos);
            }
        }
        Ok(ids)
    }

    /// Decodes ids to text, skipping special tokens.
    pub fn decode(&self, ids: &[u32]) -> Result<String, String> {
        self.tokenizer.decode(ids, true).map_err(|e| e.to_string())
    }

    /// Decodes ids to text, keeping special tokens.
    pub fn decode_with_special(&self, ids: &[u32]) -> Result<String, String> {
        self.tokenizer.decode(ids, false).map_err(|e| e.to_string())
    }
}

/// Builds a GPT-2 style byte-level BPE tokenizer from a GGUF-style vocabulary:
/// `tokens[i]` is the token with id `i` (in byte-level alphabet), `merges` are `"a b"`
/// strings in priority order, and `token_types[i]` marks control tokens
/// ([`GGUF_TOKEN_TYPE_CONTROL`], added as special) and user-defined ones (added as plain
/// added tokens). Pre-tokenizer and decoder are `ByteLevel` (no prefix space, GPT-2 regex).
pub fn byte_level_bpe(
    tokens: &[String],
    merges: &[String],
    token_types: &[i32],
) -> Result<Tokenizer, LoadError> {
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let merges = merges
        .iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| LoadError::Tokenizer(format!("malformed merge {m:?}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| LoadError::Tokenizer(e.to_string()))?;
    let mut tokenizer = Tokenizer::new(bpe);
    let byte_level = ByteLevel::new(false, true, true);
    tokenizer.with_pre_tokenizer(Some(byte_level));
    tokenizer.with_decoder(Some(byte_level));
    let added = |ty: i32, special: bool| -> Vec<AddedToken> {
        tokens
            .iter()
            .zip(token_types)
            .filter(|(_, &t)| t == ty)
            .map(|(tok, _)| AddedToken::from(tok.clone(), special).normalized(false))
            .collect()
    };
    tokenizer
        .add_special_tokens(added(GGUF_TOKEN_TYPE_CONTROL, true))
        .map_err(|e| LoadError::Tokenizer(e.to_string()))?;
    tokenizer
        .add_tokens(added(GGUF_TOKEN_TYPE_USER_DEFINED, false))
        .map_err(|e| LoadError::Tokenizer(e.to_string()))?;
    Ok(tokenizer)
}

/// The GPT-2 byte-to-character table: byte `b` is written as `byte_chars()[b]` in
/// byte-level BPE vocabularies.
pub fn byte_chars() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let c = if printable {
            b as u32
        } else {
            let c = next;
            next += 1;
            c
        };
        table[b as usize] = char::from_u32(c).expect("valid scalar");
    }
    table
}

fn bad(key: String, problem: impl std::fmt::Display) -> LoadError {
    LoadError::Metadata {
        key,
        problem: problem.to_string(),
    }
}

pub(crate) fn md_string(
    md: &HashMap<String, gguf_file::Value>,
    key: &str,
) -> Result<String, LoadError> {
    md.get(key)
        .ok_or_else(|| bad(key.to_string(), "missing"))?
        .to_string()
        .cloned()
        .map_err(|e| bad(key.to_string(), e))
}

fn md_strings(md: &HashMap<String, gguf_file::Value>, key: &str) -> Result<Vec<String>, LoadError> {
    md.get(key)
        .ok_or_else(|| bad(key.to_string(), "missing"))?
        .to_vec()
        .map_err(|e| bad(key.to_string(), e))?
        .iter()
        .map(|v| v.to_string().cloned().map_err(|e| bad(key.to_string(), e)))
        .collect()
}

pub(crate) fn md_u32(md: &HashMap<String, gguf_file::Value>, key: &str) -> Option<u32> {
    md.get(key)
        .and_then(value_as_i64)
        .and_then(|v| u32::try_from(v).ok())
}

/// Reads any GGUF integer value as i64.
pub(crate) fn value_as_i64(v: &gguf_file::Value) -> Option<i64> {
    use gguf_file::Value as V;
    Some(match v {
        V::U8(x) => *x as i64,
        V::I8(x) => *x as i64,
        V::U16(x) => *x as i64,
        V::I16(x) => *x as i64,
        V::U32(x) => *x as i64,
        V::I32(x) => *x as i64,
        V::U64(x) => i64::try_from(*x).ok()?,
        V::I64(x) => *x,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_chars_is_a_bijection_onto_printables() {
        let t = byte_chars();
        let set: std::collections::HashSet<char> = t.iter().copied().collect();
        assert_eq!(set.len(), 256);
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(t[b'a' as usize], 'a');
        let alphabet = ByteLevel::alphabet();
        assert!(t.iter().all(|c| alphabet.contains(c)));
    }

    #[test]
    fn unsupported_tokenizer_model_is_typed() {
        let mut md = HashMap::new();
        md.insert(
            "tokenizer.ggml.model".to_string(),
            gguf_file::Value::String("llama".into()),
        );
        assert!(matches!(
            TextTokenizer::from_gguf_metadata(&md),
            Err(LoadError::UnsupportedTokenizer(m)) if m == "llama"
        ));
    }
}
