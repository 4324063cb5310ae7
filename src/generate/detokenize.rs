//! Streaming text out of token ids. A byte-level BPE token can end inside a multi-byte
//! character, and some decoders treat a sequence's first token specially, so each step
//! decodes a short window of recent tokens twice (without and with the unreleased ones)
//! and releases the difference once it ends on a complete character.

use crate::tokenizer::{Tokenizer, TokenizerError};

pub struct TextStream<'a> {
    tok: &'a Tokenizer,
    ids: Vec<u32>,
    /// Decoding starts here; tokens before it were released long ago.
    window: usize,
    /// Tokens before `read` have been released as text.
    read: usize,
}

impl<'a> TextStream<'a> {
    pub fn new(tok: &'a Tokenizer) -> Self {
        TextStream { tok, ids: Vec::new(), window: 0, read: 0 }
    }

    /// Adds one token; returns the text that became complete (possibly empty).
    pub fn push(&mut self, id: u32) -> Result<String, TokenizerError> {
        self.ids.push(id);
        let new = self.pending()?;
        // U+FFFD at the end: the last token stopped mid-character; wait for the next one.
        if new.is_empty() || new.ends_with('\u{FFFD}') {
            return Ok(String::new());
        }
        self.window = self.read;
        self.read = self.ids.len();
        Ok(new)
    }

    /// Whatever is still held back (an incomplete character at the very end).
    pub fn finish(&mut self) -> Result<String, TokenizerError> {
        let rest = self.pending()?;
        self.window = self.read;
        self.read = self.ids.len();
        Ok(rest)
    }

    fn pending(&self) -> Result<String, TokenizerError> {
        let before = self.tok.decode(&self.ids[self.window..self.read], true)?;
        let text = self.tok.decode(&self.ids[self.window..], true)?;
        Ok(match text.get(before.len()..) {
            Some(rest) if text.starts_with(&before) => rest.to_string(),
            _ => String::new(),
        })
    }
}
