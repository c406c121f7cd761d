//! The model's own chat template (Jinja, from GGUF metadata or `tokenizer_config.json`),
//! rendered with minijinja; a plain transcript format for models that ship none.

use anyhow::{anyhow, Context, Result};
use minijinja::{context, Environment, Error, ErrorKind};
use serde::Serialize;

use crate::chat::ChatMessage;

const TEMPLATE_NAME: &str = "chat";

/// Turns a conversation into the exact prompt text the model was trained on.
pub struct ChatTemplate {
    env: Option<Environment<'static>>,
    source: Option<String>,
    bos: String,
    eos: String,
}

#[derive(Serialize)]
struct Msg<'a> {
    role: &'a str,
    content: &'a str,
}

impl ChatTemplate {
    /// `source` is the Jinja template, `None` for models without one (base models).
    pub fn new(source: Option<String>, bos: &str, eos: &str) -> Result<Self> {
        let env = match source.clone() {
            Some(src) => {
                let mut env = Environment::new();
                minijinja_contrib::add_to_environment(&mut env);
                env.set_unknown_method_callback(
                    minijinja_contrib::pycompat::unknown_method_callback,
                );
                env.add_function("raise_exception", |msg: String| -> Result<String, Error> {
                    Err(Error::new(ErrorKind::InvalidOperation, msg))
                });
                env.add_template_owned(TEMPLATE_NAME, src)
                    .context("the model's chat template does not parse")?;
                Some(env)
            }
            None => None,
        };
        Ok(Self {
            env,
            source,
            bos: bos.to_string(),
            eos: eos.to_string(),
        })
    }

    /// Whether the model ships a chat template (an instruct model) or not (a base model).
    pub fn is_native(&self) -> bool {
        self.env.is_some()
    }

    /// The Jinja source, `None` for models without a template.
    pub fn source(&self) -> Option<&str> {
        self.source.as_deref()
    }

    /// Beginning- and end-of-sequence token texts the template sees as `bos_token`/`eos_token`.
    pub fn special_tokens(&self) -> (&str, &str) {
        (&self.bos, &self.eos)
    }

    /// Prompt text for `messages`, ending where the assistant's next reply starts.
    pub fn render(&self, messages: &[ChatMessage]) -> Result<String> {
        self.render_with(messages, true)
    }

    /// Text of `messages`; with `add_generation_prompt` it ends where the next reply starts,
    /// without it a final assistant message is closed as in training data.
    pub fn render_with(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let Some(env) = &self.env else {
            let mut text = plain_transcript(messages);
            if !add_generation_prompt {
                text.truncate(text.len() - "\n\nAssistant:".len());
            }
            return Ok(text);
        };
        let msgs: Vec<Msg> = messages
            .iter()
            .map(|m| Msg {
                role: m.role.as_str(),
                content: &m.content,
            })
            .collect();
        let tmpl = env.get_template(TEMPLATE_NAME)?;
        tmpl.render(context! {
            messages => msgs,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos,
            eos_token => self.eos,
        })
        .map_err(|e| anyhow!("cannot render the model's chat template: {e:#}"))
    }
}

/// "System: …\n\nHuman: …\n\nAssistant:" — the HH-RLHF transcript style base models know.
fn plain_transcript(messages: &[ChatMessage]) -> String {
    let mut out = String::new();
    for m in messages {
        let who = match m.role {
            crate::chat::Role::System => "System",
            crate::chat::Role::User => "Human",
            crate::chat::Role::Assistant => "Assistant",
        };
        out.push_str(&format!("\n\n{who}: {}", m.content));
    }
    out.push_str("\n\nAssistant:");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nBe kind.<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

    #[test]
    fn chatml_renders_with_default_system() {
        let t = ChatTemplate::new(Some(CHATML.into()), "", "").unwrap();
        let s = t.render(&[ChatMessage::user("hi")]).unwrap();
        assert_eq!(
            s,
            "<|im_start|>system\nBe kind.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn plain_format_for_base_models() {
        let t = ChatTemplate::new(None, "", "").unwrap();
        let s = t
            .render(&[
                ChatMessage::user("hi"),
                ChatMessage::assistant("yo"),
                ChatMessage::user("ok"),
            ])
            .unwrap();
        assert_eq!(
            s,
            "\n\nHuman: hi\n\nAssistant: yo\n\nHuman: ok\n\nAssistant:"
        );
    }

    #[test]
    fn python_string_methods_work() {
        let src = "{% for m in messages %}{{ m['content'].strip() }}{% endfor %}";
        let t = ChatTemplate::new(Some(src.into()), "", "").unwrap();
        assert_eq!(t.render(&[ChatMessage::user("  x ")]).unwrap(), "x");
    }
}
