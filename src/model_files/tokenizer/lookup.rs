//! What the SentencePiece and BPE merge loops need of a vocabulary: a piece's id and score.
//! The GGUF vocabulary provides it and calls those loops, so they depend on this trait
//! rather than on the vocabulary.

pub(super) trait TokenLookup {
    /// The id of the token whose text is `piece`.
    fn id(&self, piece: &str) -> Option<u32>;
    /// The token's SentencePiece score.
    fn score(&self, id: u32) -> f32;
}
