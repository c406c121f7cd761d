//! Language-model backends behind one trait, with our own request/response types.
//!
//! Every stage (revise, label, …) talks to a [`Backend`]: chat generation with sampling and the
//! exact log-probabilities of given option strings as the continuation of a prompt (what the
//! multiple-choice feedback of RLAIF needs). Backends are batch-first: a stage hands over a
//! whole batch and the backend decides how to run it.

pub mod backend;
pub mod local;
pub mod mock;
pub mod openai;
pub mod spec;

pub use crate::chat::Prompt;
pub use crate::manifest::ModelInfo;
pub use crate::sampling::{sample_token, Sampler, SamplingParams};
pub use backend::{
    Backend, Choice, ChoiceRequest, Completion, ContextOverflow, FinishReason, GenerateRequest,
    Generation,
};
pub use spec::{open_backend, open_backend_with, BackendKind};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_names_the_bad_option() {
        assert!(SamplingParams::default().validate().is_ok());
        let bad = |p: SamplingParams| p.validate().unwrap_err().to_string();
        let e = bad(SamplingParams {
            repetition_penalty: 0.0,
            ..Default::default()
        });
        assert!(e.contains("repetition_penalty"), "{e}");
        let e = bad(SamplingParams {
            min_p: 1.5,
            ..Default::default()
        });
        assert!(e.contains("min_p"), "{e}");
        let e = bad(SamplingParams {
            frequency_penalty: -2.5,
            ..Default::default()
        });
        assert!(e.contains("frequency_penalty"), "{e}");
    }
}
