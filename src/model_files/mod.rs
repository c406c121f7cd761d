//! Model files, below both the inference engine (`llm`) and the trainer (`train`): where a
//! model is found, what its GGUF metadata or `config.json` says (architecture, shape), how its
//! tensors are named and laid out, LoRA adapter files, checkpoint folders, the tokenizer and the
//! chat template. Nothing here runs a model; `llm` and `train` import this module and never
//! each other.

pub mod arch;
pub mod chat_template;
pub mod chat_tokenizer;
pub mod checkpoint;
pub mod config;
pub mod gguf_check;
pub mod locate;
pub mod lora;
pub mod tokenizer;
pub mod weights;

pub use chat_template::ChatTemplate;
pub use chat_tokenizer::ChatTokenizer;
pub use config::LlamaConfig;
pub use locate::ModelSpec;
pub use tokenizer::TextTokenizer;
pub use weights::Weights;
