//! A deterministic byte-level tokenizer for generated test models: one token per byte, three
//! ChatML special tokens, no merges and no training.

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::AddedToken;

use super::gguf::bytes_to_unicode;
use super::{Tokenizer, TokenizerError};

/// `<|endoftext|>` (256), `<|im_start|>` (257), `<|im_end|>` (258).
pub const TINY_SPECIAL_TOKENS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// ChatML, like SmolLM2's template but without the default system prompt.
pub const TINY_CHAT_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Byte-level BPE over the 256 GPT-2 byte symbols (id = byte value) plus the special tokens,
/// with no merges: every byte of the text is one token. ByteLevel pre-tokenizer
/// (no prefix space) and decoder; the post-processor adds nothing (no BOS/EOS).
pub fn tiny_tokenizer() -> tokenizers::Tokenizer {
    // The special tokens are in the model vocabulary too (as in most tokenizer.json files and
    // as a GGUF stores them), so a GGUF round trip rebuilds exactly this tokenizer.
    let vocab: Vocab = bytes_to_unicode()
        .iter()
        .map(|c| c.to_string())
        .chain(TINY_SPECIAL_TOKENS.iter().map(|t| t.to_string()))
        .enumerate()
        .map(|(id, t)| (t, id as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, Vec::new())
        .continuing_subword_prefix(String::new())
        .end_of_word_suffix(String::new())
        .build()
        .expect("a merge-free byte vocabulary is a valid BPE model");
    let mut tok = tokenizers::Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tok.with_decoder(Some(ByteLevelDecoder::default()));
    // The same no-op template the GGUF reader builds, so a GGUF round trip is exact.
    let post = TemplateProcessing::builder()
        .try_single("$A:0")
        .and_then(|b| b.try_pair("$A:0 $B:1"))
        .expect("static templates parse")
        .build()
        .expect("static templates build");
    tok.with_post_processor(Some(post));
    let specials: Vec<AddedToken> =
        TINY_SPECIAL_TOKENS.iter().map(|t| AddedToken::from(*t, true).normalized(false)).collect();
    tok.add_special_tokens(specials).expect("new special tokens can always be added");
    tok
}

/// [`tiny_tokenizer`] wrapped with the ChatML template, eos `<|im_end|>` and pad `<|endoftext|>`.
pub fn tiny_chat_tokenizer() -> Result<Tokenizer, TokenizerError> {
    let mut tok = Tokenizer::from_parts(tiny_tokenizer(), Some(TINY_CHAT_TEMPLATE), None, Some("<|im_end|>"))?;
    tok.pad_id = tok.token_to_id("<|endoftext|>");
    Ok(tok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::{Message, Role};

    #[test]
    fn ids_are_bytes_and_specials_are_whole() {
        let t = tiny_tokenizer();
        assert_eq!(t.get_vocab_size(true), 259);
        for (i, s) in TINY_SPECIAL_TOKENS.iter().enumerate() {
            assert_eq!(t.token_to_id(s), Some(256 + i as u32));
        }
        let text = "<|im_start|>user\nhé 🎉<|im_end|>";
        let enc = t.encode(text, true).unwrap();
        let mut want = vec![257];
        want.extend("user\nhé 🎉".bytes().map(u32::from));
        want.push(258);
        assert_eq!(enc.get_ids(), want.as_slice());
        assert_eq!(t.decode(enc.get_ids(), false).unwrap(), text);
        assert_eq!(t.decode(enc.get_ids(), true).unwrap(), "user\nhé 🎉");
        // No BOS/EOS added.
        assert_eq!(t.encode("a", true).unwrap().get_ids(), [97]);
    }

    #[test]
    fn round_trips_through_tokenizer_json() {
        let t = tiny_tokenizer();
        let json = t.to_string(false).unwrap();
        let back: tokenizers::Tokenizer = json.parse().unwrap();
        assert_eq!(back.to_string(false).unwrap(), json);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokenizer.json");
        t.save(&file, true).unwrap();
        let loaded = tokenizers::Tokenizer::from_file(&file).unwrap();
        let text = "Hi <|im_end|>\n\tÿ€";
        for other in [&back, &loaded] {
            assert_eq!(other.encode(text, true).unwrap().get_ids(), t.encode(text, true).unwrap().get_ids());
            assert_eq!(other.get_vocab_size(true), 259);
        }
    }

    #[test]
    fn chat_template_renders_chatml_without_system_prompt() {
        let tok = tiny_chat_tokenizer().unwrap();
        let out = tok.chat_template.as_ref().unwrap().render(&[Message::new(Role::User, "hi")], true).unwrap();
        assert_eq!(out, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
        assert_eq!((tok.bos_id, tok.eos_id, tok.pad_id), (None, Some(258), Some(256)));
    }
}
