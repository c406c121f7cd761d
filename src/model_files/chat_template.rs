//! The model's own chat template (Jinja, from GGUF metadata or `tokenizer_config.json`),
//! rendered with minijinja; a plain transcript format for models that ship none.
//!
//! A template is code from the model file: it renders under a budget of steps (minijinja's
//! fuel, so nested loops cannot hang a run) and into a capped buffer (so it cannot fill
//! memory), and every error names the model file it came from.

use std::io::Write;

use anyhow::{anyhow, bail, Context, Result};
use minijinja::{context, Environment, Error, ErrorKind};
use serde::Serialize;

use crate::chat::ChatMessage;

const TEMPLATE_NAME: &str = "chat";

/// Steps (minijinja instructions) one rendering may take. Real chat templates take about a
/// hundred per message; nested `range(100000)` loops would take 10^15.
pub const TEMPLATE_FUEL: u64 = 2_000_000;

/// Bytes a rendering may add beyond twice the messages' own text: real templates add tens of
/// bytes per message (turn markers, a default system prompt).
pub const TEMPLATE_OWN_TEXT: usize = 1 << 20;

/// Turns a conversation into the exact prompt text the model was trained on.
pub struct ChatTemplate {
    env: Option<Environment<'static>>,
    source: Option<String>,
    bos: String,
    eos: String,
    /// The file the template came from, for errors.
    origin: String,
}

/// A writer that refuses to hold more than `cap` bytes.
struct Capped {
    out: Vec<u8>,
    cap: usize,
    overflowed: bool,
}

impl Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.out.len() + buf.len() > self.cap {
            self.overflowed = true;
            return Err(std::io::Error::other("chat template output too long"));
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[derive(Serialize)]
struct Msg<'a> {
    role: &'a str,
    content: &'a str,
}

impl ChatTemplate {
    /// `source` is the Jinja template, `None` for models without one (base models); `origin`
    /// names the file it came from.
    pub fn new(source: Option<String>, bos: &str, eos: &str, origin: &str) -> Result<Self> {
        let env = match source.clone() {
            Some(src) => {
                let mut env = Environment::new();
                env.set_fuel(Some(TEMPLATE_FUEL));
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
            origin: origin.to_string(),
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
        let text: usize = messages.iter().map(|m| m.content.len()).sum();
        let cap = 2 * (text + self.bos.len() + self.eos.len()) + TEMPLATE_OWN_TEXT;
        let mut out = Capped {
            out: Vec::new(),
            cap,
            overflowed: false,
        };
        let origin = &self.origin;
        let rendered = tmpl.render_captured_to(
            context! {
                messages => msgs,
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos,
                eos_token => self.eos,
            },
            &mut out,
        );
        match rendered {
            Ok(_) => {}
            Err(_) if out.overflowed => bail!(
                "{origin}: the chat template's output exceeds {cap} bytes (twice the \
                 messages' {text} bytes and {TEMPLATE_OWN_TEXT} of its own)"
            ),
            Err(e) if e.kind() == ErrorKind::OutOfFuel => {
                bail!("{origin}: the chat template did not finish within {TEMPLATE_FUEL} steps")
            }
            Err(e) => bail!(
                "{origin}: cannot render the chat template: {}",
                one_line(&e.to_string())
            ),
        }
        String::from_utf8(out.out)
            .map_err(|_| anyhow!("{origin}: the chat template's output is not UTF-8"))
    }
}

/// `s` with line breaks as spaces, so that an error is one line.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
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
        let t = ChatTemplate::new(Some(CHATML.into()), "", "", "m.gguf").unwrap();
        let s = t.render(&[ChatMessage::user("hi")]).unwrap();
        assert_eq!(
            s,
            "<|im_start|>system\nBe kind.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn plain_format_for_base_models() {
        let t = ChatTemplate::new(None, "", "", "m.gguf").unwrap();
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
        let t = ChatTemplate::new(Some(src.into()), "", "", "m.gguf").unwrap();
        assert_eq!(t.render(&[ChatMessage::user("  x ")]).unwrap(), "x");
    }

    #[test]
    fn chat_template_nested_loops_run_out_of_fuel() {
        // Three nested range(100000) loops: 10^15 iterations without the budget.
        let src = "{% for a in range(100000) %}{% for b in range(100000) %}\
                   {% for c in range(100000) %}{% endfor %}{% endfor %}{% endfor %}";
        let t = ChatTemplate::new(Some(src.into()), "", "", "evil.gguf").unwrap();
        let start = std::time::Instant::now();
        let e = t
            .render(&[ChatMessage::user("hi")])
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "evil.gguf: the chat template did not finish within 2000000 steps"
        );
        assert!(start.elapsed().as_secs() < 30);
    }

    #[test]
    fn chat_template_output_cap_names_the_model_file() {
        // 'x' * 100000000: 10^8 bytes, far past the cap of 2 * 2 + 2^20 bytes for "hi".
        let src = "{{ 'x' * 100000000 }}{{ messages[0].content }}";
        let t = ChatTemplate::new(Some(src.into()), "", "", "evil.gguf").unwrap();
        let e = t
            .render(&[ChatMessage::user("hi")])
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "evil.gguf: the chat template's output exceeds 1048580 bytes (twice the messages' \
             2 bytes and 1048576 of its own)"
        );
        // Long messages are not the template's fault: 3 MB of content renders.
        let long = "y".repeat(3 << 20);
        let ok = ChatTemplate::new(Some("{{ messages[0].content }}".into()), "", "", "m")
            .unwrap()
            .render(&[ChatMessage::user(&long)])
            .unwrap();
        assert_eq!(ok.len(), 3 << 20);
    }

    #[test]
    fn chat_template_errors_are_one_line_naming_the_file() {
        let src = "{{ raise_exception('no\nsystem role') }}";
        let t = ChatTemplate::new(Some(src.into()), "", "", "m.gguf").unwrap();
        let e = t
            .render(&[ChatMessage::user("hi")])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("m.gguf: cannot render the chat template: "),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");
    }
}
