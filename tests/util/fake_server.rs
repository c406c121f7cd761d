//! A fake OpenAI-compatible server on 127.0.0.1, over HTTP or HTTPS, that injects faults.
//!
//! Keep-alive like a real server: several requests per connection until the client closes it
//! (or a fault drops it). Chat answers are a pure function of the request body (the text and
//! the first-token log-probabilities of "A" and "B"), so a run's labels are reproducible and a
//! label attached to the wrong pair shows. Faults are taken in order from a queue, one per chat
//! request; the counts of what was injected are kept.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

/// What the fake server does with the next chat request.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Waits, then answers.
    Slow(Duration),
    /// Sends the answer's headers, then one byte per interval (a stalled upstream).
    Drip(Duration),
    TooMany {
        retry_after_s: u32,
    },
    /// An error status (500, 502, 503).
    Status(u16),
    /// Closes the connection without an answer.
    Drop,
    /// Sends the headers and half of the body, then closes the connection.
    CutShort,
    /// A 200 whose body is not JSON.
    Malformed,
    /// A chat answer without `logprobs`.
    NoLogprobs,
    /// vLLM's HTTP 400 "maximum context length" refusal.
    ContextLength,
}

/// Which server the fake imitates, beyond the chat endpoint they share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Flavor {
    /// vLLM: `max_model_len` in `/v1/models`, chat `/tokenize` with `messages` → `count`.
    #[default]
    Vllm,
    /// llama.cpp server: `/props` for the context, `/apply-template` + `/tokenize` (`content`).
    LlamaCpp,
    /// Ollama's OpenAI API: no context size and no tokenizer endpoint.
    Ollama,
}

/// What `/v1/completions` with `echo` returns for the prompt's tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EchoShape {
    /// The OpenAI legacy shape: `logprobs.token_logprobs` (null first), prompt then generated.
    #[default]
    Legacy,
    /// vLLM's `prompt_logprobs`: one `{"id": {"logprob", "rank", "decoded_token"}}` per prompt
    /// token (null first), and `logprobs` null.
    PromptLogprobs,
    /// llama.cpp's server today: `echo` ignored, one log-probability (the generated token's).
    GeneratedOnly,
}

/// The canned start of every chat completion.
pub const CANNED: &str = "I can't help with that, but here is a safer idea.";

#[derive(Default)]
pub struct State {
    pub flavor: Mutex<Flavor>,
    pub echo_shape: Mutex<EchoShape>,
    pub completion_requests: AtomicUsize,
    pub faults: Mutex<VecDeque<Fault>>,
    pub injected: Mutex<Vec<Fault>>,
    pub chat_requests: AtomicUsize,
    pub connections: AtomicUsize,
    pub auth: Mutex<Vec<String>>,
    /// Every request line seen ("POST /v1/chat/completions").
    pub lines: Mutex<Vec<String>>,
}

pub struct FakeServer {
    /// `http://127.0.0.1:PORT` or `https://localhost:PORT`.
    pub url: String,
    pub port: u16,
    pub state: Arc<State>,
}

/// A certificate chain and key for `localhost`, signed by a fresh private CA.
pub struct TestCa {
    /// The CA certificate, PEM (what `--ca-cert` and `SSL_CERT_FILE` get).
    pub ca_pem: String,
    pub server: Arc<rustls::ServerConfig>,
}

impl TestCa {
    pub fn new() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "cai test CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf_key = KeyPair::generate().unwrap();
        let leaf_params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone(), ca_cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
            )
            .unwrap();
        Self {
            ca_pem: ca_cert.pem(),
            server: Arc::new(server),
        }
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

/// A byte stream the server reads requests from and writes answers to.
trait Conn: Read + Write + Send {}
impl<T: Read + Write + Send> Conn for T {}

impl FakeServer {
    /// Plain HTTP; requests are served under `prefix` ("" or e.g. "/gw").
    pub fn start(faults: &[Fault]) -> Self {
        Self::start_with(faults, None, "")
    }

    /// HTTPS with `ca`'s certificate for localhost.
    pub fn start_tls(faults: &[Fault], ca: &TestCa) -> Self {
        Self::start_with(faults, Some(ca.server.clone()), "")
    }

    pub fn start_with(
        faults: &[Fault],
        tls: Option<Arc<rustls::ServerConfig>>,
        prefix: &str,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let url = match tls {
            Some(_) => format!("https://localhost:{port}{prefix}"),
            None => format!("http://127.0.0.1:{port}{prefix}"),
        };
        let state = Arc::new(State::default());
        state.faults.lock().unwrap().extend(faults.iter().cloned());
        let st = state.clone();
        let prefix = prefix.to_string();
        std::thread::spawn(move || {
            for tcp in listener.incoming().flatten() {
                let (st, tls, prefix) = (st.clone(), tls.clone(), prefix.clone());
                st.connections.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    let conn: Box<dyn Conn> = match tls {
                        Some(cfg) => {
                            let Ok(server) = rustls::ServerConnection::new(cfg) else {
                                return;
                            };
                            Box::new(rustls::StreamOwned::new(server, tcp))
                        }
                        None => Box::new(tcp),
                    };
                    serve(conn, &st, &prefix);
                });
            }
        });
        Self { url, port, state }
    }

    /// A plain-HTTP server imitating `flavor`.
    pub fn start_flavor(faults: &[Fault], flavor: Flavor) -> Self {
        let s = Self::start(faults);
        *s.state.flavor.lock().unwrap() = flavor;
        s
    }

    pub fn chat_requests(&self) -> usize {
        self.state.chat_requests.load(Ordering::SeqCst)
    }

    pub fn push_faults(&self, faults: impl IntoIterator<Item = Fault>) {
        self.state.faults.lock().unwrap().extend(faults);
    }

    /// How many of each injected fault, by its `Debug` name without fields.
    pub fn injected(&self, name: &str) -> usize {
        self.state
            .injected
            .lock()
            .unwrap()
            .iter()
            .filter(|f| format!("{f:?}").split(['(', ' ']).next() == Some(name))
            .count()
    }
}

/// A buffered connection: reads through `BufReader`, writes to the inner stream.
struct Io(BufReader<Box<dyn Conn>>);

impl Io {
    fn send(&mut self, status: &str, extra: &str, body: &str) -> std::io::Result<()> {
        let w = self.0.get_mut();
        write!(
            w,
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
        w.flush()
    }
}

/// Serves requests on one connection until it closes or a fault drops it.
fn serve(conn: Box<dyn Conn>, st: &State, prefix: &str) {
    let mut io = Io(BufReader::new(conn));
    loop {
        let mut line = String::new();
        match io.0.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let full_path = parts.next().unwrap_or("").to_string();
        st.lines
            .lock()
            .unwrap()
            .push(format!("{method} {full_path}"));
        let mut length = 0;
        loop {
            let mut h = String::new();
            if io.0.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h.trim().is_empty() {
                break;
            }
            let Some((name, value)) = h.split_once(':') else {
                continue;
            };
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().unwrap(),
                "authorization" => st.auth.lock().unwrap().push(value.trim().to_string()),
                _ => {}
            }
        }
        let mut body = vec![0; length];
        if io.0.read_exact(&mut body).is_err() {
            return;
        }
        let path = full_path.strip_prefix(prefix).unwrap_or("/outside-prefix");
        let flavor = *st.flavor.lock().unwrap();
        let keep = match (flavor, method.as_str(), path) {
            (Flavor::Vllm, "GET", "/v1/models") => io
                .send(
                    "200 OK",
                    "",
                    r#"{"data":[{"id":"fake-model","max_model_len":2048}]}"#,
                )
                .is_ok(),
            (_, "GET", "/v1/models") => io
                .send("200 OK", "", r#"{"data":[{"id":"fake-model"}]}"#)
                .is_ok(),
            (_, "POST", "/v1/chat/completions") => {
                st.chat_requests.fetch_add(1, Ordering::SeqCst);
                let req: Value = serde_json::from_slice(&body).unwrap();
                let fault = {
                    let mut queue = st.faults.lock().unwrap();
                    // Dropping logprobs is a fault only where they were asked for.
                    match queue.front() {
                        Some(Fault::NoLogprobs) if req["logprobs"] != json!(true) => None,
                        _ => queue.pop_front(),
                    }
                };
                if let Some(f) = &fault {
                    st.injected.lock().unwrap().push(f.clone());
                }
                chat(&mut io, &req, fault, flavor)
            }
            // vLLM-style chat tokenizer: [`render_chat`], then [`tokenize`].
            (Flavor::Vllm, "POST", "/tokenize") => {
                let req: Value = serde_json::from_slice(&body).unwrap();
                let tokens = tokenize(&render_chat(&req));
                io.send(
                    "200 OK",
                    "",
                    &json!({"count": tokens.len(), "tokens": tokens}).to_string(),
                )
                .is_ok()
            }
            (Flavor::Vllm | Flavor::LlamaCpp, "POST", "/v1/completions") => {
                st.completion_requests.fetch_add(1, Ordering::SeqCst);
                let req: Value = serde_json::from_slice(&body).unwrap();
                let shape = *st.echo_shape.lock().unwrap();
                // The one fault a completions request takes from the queue: vLLM's refusal.
                let overflow = {
                    let mut queue = st.faults.lock().unwrap();
                    let hit = queue.front() == Some(&Fault::ContextLength);
                    hit.then(|| queue.pop_front())
                };
                match overflow {
                    Some(_) => chat(&mut io, &req, Some(Fault::ContextLength), flavor),
                    None => io
                        .send("200 OK", "", &echo_answer(&req, shape).to_string())
                        .is_ok(),
                }
            }
            (Flavor::LlamaCpp, "GET", "/props") => io
                .send(
                    "200 OK",
                    "",
                    r#"{"default_generation_settings":{"n_ctx":4096}}"#,
                )
                .is_ok(),
            (Flavor::LlamaCpp, "POST", "/apply-template") => {
                let req: Value = serde_json::from_slice(&body).unwrap();
                let text = req["messages"].to_string();
                io.send("200 OK", "", &json!({ "prompt": text }).to_string())
                    .is_ok()
            }
            (Flavor::LlamaCpp, "POST", "/tokenize") => {
                let req: Value = serde_json::from_slice(&body).unwrap();
                let tokens = tokenize(req["content"].as_str().unwrap());
                io.send("200 OK", "", &json!({ "tokens": tokens }).to_string())
                    .is_ok()
            }
            _ => io
                .send("404 Not Found", "", r#"{"error":"not found"}"#)
                .is_ok(),
        };
        if !keep {
            return;
        }
    }
}

/// Answers one chat request, applying `fault`; false when the connection is to be dropped.
fn chat(io: &mut Io, req: &Value, fault: Option<Fault>, flavor: Flavor) -> bool {
    let good = || chat_answer(req, true).to_string();
    match fault {
        None => io.send("200 OK", "", &good()).is_ok(),
        Some(Fault::Slow(d)) => {
            std::thread::sleep(d);
            io.send("200 OK", "", &good()).is_ok()
        }
        Some(Fault::Drip(d)) => {
            let body = good();
            let w = io.0.get_mut();
            let _ = write!(
                w,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            for b in body.bytes() {
                if w.write_all(&[b]).and_then(|_| w.flush()).is_err() {
                    break;
                }
                std::thread::sleep(d);
            }
            false
        }
        Some(Fault::TooMany { retry_after_s }) => io
            .send(
                "429 Too Many Requests",
                &format!("Retry-After: {retry_after_s}\r\n"),
                r#"{"error":"slow down"}"#,
            )
            .is_ok(),
        Some(Fault::Status(code)) => io
            .send(
                &format!("{code} Server Error"),
                "",
                r#"{"error":"upstream failed"}"#,
            )
            .is_ok(),
        Some(Fault::Drop) => false,
        Some(Fault::CutShort) => {
            let body = good();
            let w = io.0.get_mut();
            let _ = write!(
                w,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
                body.len(),
                &body[..body.len() / 2]
            );
            let _ = w.flush();
            false
        }
        Some(Fault::Malformed) => io.send("200 OK", "", r#"{"choices": [{"mess"#).is_ok(),
        Some(Fault::NoLogprobs) => io
            .send("200 OK", "", &chat_answer(req, false).to_string())
            .is_ok(),
        Some(Fault::ContextLength) => {
            let body = match flavor {
                Flavor::Vllm => {
                    r#"{"object":"error","message":"This model's maximum context length is 2048 tokens. However, you requested 2100 tokens (2000 in the messages, 100 in the completion).","type":"BadRequestError","code":400}"#
                }
                Flavor::LlamaCpp => {
                    r#"{"error":{"code":400,"message":"the request exceeds the available context size, try increasing it","type":"exceed_context_size_error","n_prompt_tokens":5000,"n_ctx":4096}}"#
                }
                Flavor::Ollama => {
                    r#"{"error":{"message":"input length exceeds the context length","type":"api_error"}}"#
                }
            };
            io.send("400 Bad Request", "", body).is_ok()
        }
    }
}

/// vLLM's chat rendering, imitated: `<role>content</role>` per message, the last one left open
/// with `continue_final_message`, then `<assistant>` with `add_generation_prompt`.
pub fn render_chat(req: &Value) -> String {
    let messages = req["messages"].as_array().unwrap();
    let open_last = req["continue_final_message"] == json!(true);
    let mut text = String::new();
    for (i, m) in messages.iter().enumerate() {
        let (role, content) = (m["role"].as_str().unwrap(), m["content"].as_str().unwrap());
        text += &format!("<{role}>{content}");
        if !(open_last && i + 1 == messages.len()) {
            text += &format!("</{role}>\n");
        }
    }
    if req["add_generation_prompt"] == json!(true) {
        text += "<assistant>";
    }
    text
}

/// The fake tokenizer: a token per word with its leading whitespace, split again before each
/// '/', so " 7/10" is two tokens (" 7", "/10") and "(A" one; ids are hashes of the pieces.
pub fn tokenize(text: &str) -> Vec<u64> {
    let mut pieces: Vec<String> = Vec::new();
    let mut prev_space = true;
    for c in text.chars() {
        let starts = match pieces.last() {
            None => true,
            Some(_) if c == '/' => true,
            Some(_) => c.is_whitespace() && !prev_space,
        };
        if starts {
            pieces.push(String::new());
        }
        pieces.last_mut().unwrap().push(c);
        prev_space = c.is_whitespace();
    }
    pieces.iter().map(|p| fnv(p) % 100_000).collect()
}

/// The log-probability the fake model gives token `i` of `tokens` after the ones before it.
pub fn token_logprob(tokens: &[u64], i: usize) -> f64 {
    -0.01 - (fnv(&format!("{:?}", &tokens[..=i])) % 1000) as f64 / 250.0
}

/// The answer of a `/v1/completions` request with `echo` (the prompt given as token ids).
fn echo_answer(req: &Value, shape: EchoShape) -> Value {
    let tokens: Vec<u64> = req["prompt"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap())
        .collect();
    let generated = 7u64;
    let mut all = tokens.clone();
    all.push(generated);
    let lp = |i: usize| match i {
        0 => Value::Null,
        _ => json!(token_logprob(&all, i)),
    };
    let mut choice = json!({"index": 0, "text": "x", "finish_reason": "length", "logprobs": null});
    match shape {
        EchoShape::Legacy => {
            choice["logprobs"] = json!({
                "tokens": all.iter().map(|t| format!("t{t}")).collect::<Vec<_>>(),
                "token_logprobs": (0..all.len()).map(lp).collect::<Vec<_>>(),
                "text_offset": (0..all.len()).collect::<Vec<_>>(),
                "top_logprobs": null,
            });
        }
        EchoShape::PromptLogprobs => {
            let per_token: Vec<Value> = (0..tokens.len())
                .map(|i| match i {
                    0 => Value::Null,
                    _ => json!({ tokens[i].to_string(): {"logprob": token_logprob(&all, i),
                                 "rank": 1, "decoded_token": format!("t{}", tokens[i])} }),
                })
                .collect();
            choice["prompt_logprobs"] = json!(per_token);
        }
        EchoShape::GeneratedOnly => {
            choice["logprobs"] = json!({"tokens": ["x"], "token_logprobs": [-0.5],
                                        "text_offset": [0], "top_logprobs": null});
        }
    }
    json!({"choices": [choice],
           "usage": {"prompt_tokens": tokens.len(), "completion_tokens": 1}})
}

/// FNV-1a of the text, for answers that depend on the request.
fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The answer of a chat request: the canned text with a hash of the messages, and, when asked,
/// first-token log-probabilities of "A" and "B" that depend on the messages.
pub fn chat_answer(req: &Value, with_logprobs: bool) -> Value {
    let h = fnv(&req["messages"].to_string());
    let text = if req["logprobs"] == json!(true) {
        CANNED.to_string()
    } else {
        format!("{CANNED} #{:04x}", h % 0x10000)
    };
    let mut a = json!({
        "choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 11},
    });
    if req["logprobs"] == json!(true) && with_logprobs {
        let la = -0.05 - (h % 1000) as f64 / 400.0;
        let lb = -0.05 - (h / 1000 % 1000) as f64 / 400.0;
        a["choices"][0]["logprobs"] = json!({"content": [{"token": "A", "logprob": la,
            "top_logprobs": [{"token": "A", "logprob": la}, {"token": "B", "logprob": lb}]}]});
    }
    a
}

/// A CONNECT proxy on 127.0.0.1 that tunnels to the requested host; counts the tunnels.
pub struct ConnectProxy {
    pub url: String,
    pub tunnels: Arc<AtomicUsize>,
}

impl ConnectProxy {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let tunnels = Arc::new(AtomicUsize::new(0));
        let count = tunnels.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let count = count.clone();
                std::thread::spawn(move || tunnel(client, &count));
            }
        });
        Self { url, tunnels }
    }
}

fn tunnel(client: TcpStream, count: &AtomicUsize) {
    let mut r = BufReader::new(client.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
            break;
        }
    }
    let Ok(upstream) = TcpStream::connect(target.replace("localhost", "127.0.0.1")) else {
        return;
    };
    count.fetch_add(1, Ordering::SeqCst);
    let mut c = client;
    c.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .unwrap();
    let (mut up_r, mut up_w) = (upstream.try_clone().unwrap(), upstream);
    let mut c_w = c.try_clone().unwrap();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut up_r, &mut c_w);
    });
    let _ = std::io::copy(&mut r, &mut up_w);
    let _ = up_w.shutdown(std::net::Shutdown::Both);
}

/// Waits a little for background threads (a dropped connection's server thread) to settle.
pub fn settle() {
    std::thread::sleep(Duration::from_millis(50));
}
