//! Chat templates: turn a list of [`ChatMessage`]s into the prompt text a chat model was
//! trained on. The loaders read a model's template; the engine renders chat prompts with it.
//!
//! Models ship their template as Jinja source (GGUF key `tokenizer.chat_template`, or
//! `chat_template` in `tokenizer_config.json`). We render it with minijinja the way Hugging
//! Face `apply_chat_template` does: `trim_blocks` and `lstrip_blocks` on, with `messages`,
//! `add_generation_prompt = true`, `bos_token`, `eos_token` and a `raise_exception`
//! function in scope, plus the common Python string methods (`strip`, `startswith`, …)
//! templates use. Models without a template get ChatML ([`ChatTemplate::ChatMl`]).

use minijinja::value::{from_args, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind, State};
use serde::{Deserialize, Serialize};

use crate::error::LoadError;

/// One message of a chat.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant` (templates may know more).
    pub role: String,
    /// The message text.
    pub content: String,
}

impl ChatMessage {
    /// A message with `role` and `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

const TEMPLATE_NAME: &str = "chat";

/// A model's chat template.
pub enum ChatTemplate {
    /// A Jinja template from the model's files.
    Jinja {
        /// The compiled template, under the name `chat`.
        env: Box<Environment<'static>>,
        /// Value of `bos_token` in the template.
        bos_token: String,
        /// Value of `eos_token` in the template.
        eos_token: String,
    },
    /// The built-in fallback: `<|im_start|>role\ncontent<|im_end|>\n` per message, then
    /// `<|im_start|>assistant\n`.
    ChatMl,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChatTemplate::Jinja { .. } => f.write_str("ChatTemplate::Jinja"),
            ChatTemplate::ChatMl => f.write_str("ChatTemplate::ChatMl"),
        }
    }
}

impl ChatTemplate {
    /// Compiles a Jinja chat template; fails if it does not parse.
    pub fn jinja(source: &str, bos_token: &str, eos_token: &str) -> Result<Self, LoadError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.add_function("raise_exception", raise_exception);
        env.set_unknown_method_callback(python_methods);
        env.add_template_owned(TEMPLATE_NAME, source.to_string())
            .map_err(|e| LoadError::Template(e.to_string()))?;
        Ok(ChatTemplate::Jinja {
            env: Box::new(env),
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
        })
    }

    /// The template from the model's files if it has one, else ChatML.
    pub fn from_source(
        source: Option<&str>,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<Self, LoadError> {
        match source {
            Some(s) if !s.trim().is_empty() => Self::jinja(s, bos_token, eos_token),
            _ => Ok(ChatTemplate::ChatMl),
        }
    }

    /// Renders `messages` followed by the prompt for the assistant's reply.
    pub fn render(&self, messages: &[ChatMessage]) -> Result<String, String> {
        match self {
            ChatTemplate::ChatMl => {
                let mut out = String::new();
                for m in messages {
                    out.push_str("<|im_start|>");
                    out.push_str(&m.role);
                    out.push('\n');
                    out.push_str(&m.content);
                    out.push_str("<|im_end|>\n");
                }
                out.push_str("<|im_start|>assistant\n");
                Ok(out)
            }
            ChatTemplate::Jinja {
                env,
                bos_token,
                eos_token,
            } => {
                let template = env.get_template(TEMPLATE_NAME).map_err(describe)?;
                template
                    .render(minijinja::context! {
                        messages => messages,
                        add_generation_prompt => true,
                        bos_token => bos_token,
                        eos_token => eos_token,
                    })
                    .map_err(describe)
            }
        }
    }
}

fn describe(e: Error) -> String {
    // `raise_exception` messages are the template author's words: show them as is.
    match e.kind() {
        ErrorKind::InvalidOperation => e.detail().unwrap_or("invalid operation").to_string(),
        _ => e.to_string(),
    }
}

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// The Python methods chat templates commonly call on strings and dicts.
fn python_methods(
    _state: &State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> Result<Value, Error> {
    match value.kind() {
        ValueKind::String => {
            let s = value.as_str().unwrap_or_default();
            match method {
                "strip" | "lstrip" | "rstrip" => {
                    let (chars,): (Option<&str>,) = from_args(args)?;
                    let pat = |c: char| match chars {
                        Some(set) => set.contains(c),
                        None => c.is_whitespace(),
                    };
                    Ok(Value::from(match method {
                        "strip" => s.trim_matches(pat),
                        "lstrip" => s.trim_start_matches(pat),
                        _ => s.trim_end_matches(pat),
                    }))
                }
                "startswith" => {
                    let (p,): (&str,) = from_args(args)?;
                    Ok(Value::from(s.starts_with(p)))
                }
                "endswith" => {
                    let (p,): (&str,) = from_args(args)?;
                    Ok(Value::from(s.ends_with(p)))
                }
                "upper" => Ok(Value::from(s.to_uppercase())),
                "lower" => Ok(Value::from(s.to_lowercase())),
                "replace" => {
                    let (from, to): (&str, &str) = from_args(args)?;
                    Ok(Value::from(s.replace(from, to)))
                }
                "split" => {
                    let (sep,): (Option<&str>,) = from_args(args)?;
                    let parts: Vec<Value> = match sep {
                        Some(sep) => s.split(sep).map(Value::from).collect(),
                        None => s.split_whitespace().map(Value::from).collect(),
                    };
                    Ok(Value::from(parts))
                }
                _ => Err(Error::from(ErrorKind::UnknownMethod)),
            }
        }
        ValueKind::Map => match method {
            "get" => {
                let (key, default): (Value, Option<Value>) = from_args(args)?;
                match value.get_item(&key) {
                    Ok(v) if !v.is_undefined() => Ok(v),
                    _ => Ok(default.unwrap_or(Value::from(()))),
                }
            }
            "items" | "keys" | "values" => {
                let mut out = Vec::new();
                for key in value.try_iter()? {
                    let item = value.get_item(&key)?;
                    out.push(match method {
                        "items" => Value::from(vec![key, item]),
                        "keys" => key,
                        _ => item,
                    });
                }
                Ok(Value::from(out))
            }
            _ => Err(Error::from(ErrorKind::UnknownMethod)),
        },
        _ => Err(Error::from(ErrorKind::UnknownMethod)),
    }
}

/// SmolLM2-Instruct's chat template (ChatML with a default system prompt), as stored in its
/// GGUF file. Used by tests and the synthetic test models.
pub const SMOLLM2_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs() -> Vec<ChatMessage> {
        vec![
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "Hi"),
        ]
    }

    #[test]
    fn chatml_fallback() {
        let t = ChatTemplate::from_source(None, "", "").unwrap();
        assert_eq!(
            t.render(&msgs()).unwrap(),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn smollm2_template_renders_chatml() {
        let t = ChatTemplate::jinja(SMOLLM2_TEMPLATE, "<|im_start|>", "<|im_end|>").unwrap();
        assert_eq!(
            t.render(&msgs()).unwrap(),
            ChatTemplate::ChatMl.render(&msgs()).unwrap()
        );
        let only_user = [ChatMessage::new("user", "What is the capital of France?")];
        assert_eq!(
            t.render(&only_user).unwrap(),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn template_variables_methods_and_exceptions() {
        let src = "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'tool' %}{{ raise_exception('no tools: ' + m.content.strip()) }}{% endif %}\n  {{ m.role.upper() }}={{ m.content.strip() }}{{ eos_token }}\n{% endfor %}{% if add_generation_prompt %}>{% endif %}";
        let t = ChatTemplate::jinja(src, "<s>", "</s>").unwrap();
        let out = t.render(&[ChatMessage::new("user", "  hi  ")]).unwrap();
        assert_eq!(out, "<s>  USER=hi</s>\n>");
        let err = t.render(&[ChatMessage::new("tool", " x ")]).unwrap_err();
        assert!(err.contains("no tools: x"), "{err}");
    }

    #[test]
    fn broken_template_is_a_load_error() {
        assert!(matches!(
            ChatTemplate::jinja("{% for %}", "", ""),
            Err(LoadError::Template(_))
        ));
    }
}
