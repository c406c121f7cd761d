//! AI feedback as the label stage asks it (Bai et al. 2022 §4.1; Lee et al. 2023): the
//! multiple-choice prompt (`prompt`) and the soft preferences read from the answer
//! probabilities (`soft`). Shared by `label` and by PPO's feedback-model reward (direct
//! RLAIF), so neither stage imports the other for it; it imports no stage.

pub mod prompt;
pub mod soft;
