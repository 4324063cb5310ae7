//! Byte-level BPE tokenizers to and from GGUF metadata (`tokenizer.ggml.model == "gpt2"`).
//!
//! Reading follows what transformers (5.x, `integrations/gguf/gguf_tokenizer_mapping.py`) builds
//! for such a file, so that ids match `AutoTokenizer.from_pretrained(..., gguf_file=...)`:
//!
//! * vocabulary: token `i` gets id `i`; a token with any character outside the GPT-2
//!   byte-to-unicode alphabet is re-spelled as the alphabet symbols of its UTF-8 bytes. When two
//!   tokens end up with the same spelling the later id wins (a Python dict).
//! * merges: `"a b"` strings split on the space; BPE with no dropout, no unk token,
//!   `continuing_subword_prefix = end_of_word_suffix = ""`, `fuse_unk = byte_fallback =
//!   ignore_merges = false`.
//! * pre-tokenizer: `ByteLevel(add_prefix_space=false, trim_offsets=true, use_regex=true)`, unless
//!   `tokenizer.ggml.pre` names a known split regex (llama-bpe, qwen2, tekken, gpt-4o, ...): then
//!   `Sequence[Split(regex, Isolated), ByteLevel(add_prefix_space=false, use_regex=false)]`.
//!   Unknown names (`smollm`, `gpt-2`, ...) keep the plain ByteLevel one.
//! * decoder: `ByteLevel` (defaults); no normalizer.
//! * post-processor: `TemplateProcessing` with `bos:0 $A:0 eos:0` where bos only when
//!   `tokenizer.ggml.add_bos_token` is true (default false) and eos only when `add_eos_token` is.
//! * added tokens (all `normalized=false`): `<|endoftext|>` special (GPT2Tokenizer's default
//!   bos/eos/unk); every CONTROL (3) token spelled entirely in the byte alphabet special; every
//!   USER_DEFINED (4) token whose original spelling is in the vocabulary non-special; then the
//!   bos/eos/unk/pad tokens named by id, special, unless already added.
//!
//! One deliberate difference: transformers appends `<|endoftext|>` as a brand new id (= number of
//! tokens) when the file has no such token, an id the model's embedding does not have. We only
//! mark it special when the vocabulary has it, so every id stays below the token count.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

use super::TokenizerError;

pub const KEY_MODEL: &str = "tokenizer.ggml.model";
pub const KEY_PRE: &str = "tokenizer.ggml.pre";
pub const KEY_TOKENS: &str = "tokenizer.ggml.tokens";
pub const KEY_TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
pub const KEY_MERGES: &str = "tokenizer.ggml.merges";
pub const KEY_BOS: &str = "tokenizer.ggml.bos_token_id";
pub const KEY_EOS: &str = "tokenizer.ggml.eos_token_id";
pub const KEY_UNK: &str = "tokenizer.ggml.unknown_token_id";
pub const KEY_PAD: &str = "tokenizer.ggml.padding_token_id";
pub const KEY_ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
pub const KEY_ADD_EOS: &str = "tokenizer.ggml.add_eos_token";
pub const KEY_CHAT_TEMPLATE: &str = "tokenizer.chat_template";

/// llama.cpp token types (`tokenizer.ggml.token_type`).
pub const TOKEN_TYPE_NORMAL: i32 = 1;
pub const TOKEN_TYPE_UNKNOWN: i32 = 2;
pub const TOKEN_TYPE_CONTROL: i32 = 3;
pub const TOKEN_TYPE_USER_DEFINED: i32 = 4;
pub const TOKEN_TYPE_UNUSED: i32 = 5;
pub const TOKEN_TYPE_BYTE: i32 = 6;

/// GPT-2's default special token, which transformers' GPT2Tokenizer always registers.
const ENDOFTEXT: &str = "<|endoftext|>";

const SPLIT_LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const SPLIT_QWEN2: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const SPLIT_QWEN35: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const SPLIT_TEKKEN: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const SPLIT_GPT4O: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// `tokenizer.ggml.pre` names transformers maps to a split regex. The first name of each regex is
/// the one we write.
const PRE_SPLITS: &[(&str, &str)] = &[
    ("llama-bpe", SPLIT_LLAMA3),
    ("llama3", SPLIT_LLAMA3),
    ("llama-v3", SPLIT_LLAMA3),
    ("falcon3", SPLIT_LLAMA3),
    ("falcon-h1", SPLIT_LLAMA3),
    ("pixtral", SPLIT_LLAMA3),
    ("midm-2.0", SPLIT_LLAMA3),
    ("lfm2", SPLIT_LLAMA3),
    ("jina-v5-nano", SPLIT_LLAMA3),
    ("dbrx", SPLIT_LLAMA3),
    ("smaug-bpe", SPLIT_LLAMA3),
    ("tekken", SPLIT_TEKKEN),
    ("qwen2", SPLIT_QWEN2),
    ("deepseek-r1-qwen", SPLIT_QWEN2),
    ("kormo", SPLIT_QWEN2),
    ("f2llmv2", SPLIT_QWEN2),
    ("megrez", SPLIT_QWEN2),
    ("qwen35", SPLIT_QWEN35),
    ("gpt-4o", SPLIT_GPT4O),
    ("llama4", SPLIT_GPT4O),
    ("kanana2", SPLIT_GPT4O),
    ("talkie", SPLIT_GPT4O),
    ("minimax-m2", SPLIT_GPT4O),
];

/// The `tokenizer.ggml.pre` written for the plain GPT-2 ByteLevel pre-tokenizer (llama.cpp's name;
/// transformers has no entry for it and so keeps ByteLevel's own regex).
const PRE_GPT2: &str = "gpt-2";

/// GPT-2's byte-to-unicode table: the printable symbol standing for each byte.
pub fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        table[b as usize] = if printable {
            char::from(b)
        } else {
            let c = char::from_u32(next).expect("valid code point");
            next += 1;
            c
        };
    }
    table
}

/// A tokenizer rebuilt from GGUF metadata, with what the file says about its special tokens.
#[derive(Debug, Clone)]
pub struct GgufTokenizer {
    pub tokenizer: tokenizers::Tokenizer,
    /// `(token as the file spells it, id)` for each id key present.
    pub bos: Option<(String, u32)>,
    pub eos: Option<(String, u32)>,
    pub unk: Option<(String, u32)>,
    pub pad: Option<(String, u32)>,
    pub add_bos_token: bool,
    pub add_eos_token: bool,
    pub chat_template: Option<String>,
}

fn key_err(path: &Path, key: &str, message: impl Into<String>) -> TokenizerError {
    TokenizerError::Gguf { path: path.to_path_buf(), key: key.to_string(), message: message.into() }
}

/// Any non-negative integer value (writers differ: u32, i32, u64 ...).
fn as_u64(v: &Value) -> Option<u64> {
    match *v {
        Value::U8(x) => Some(x.into()),
        Value::U16(x) => Some(x.into()),
        Value::U32(x) => Some(x.into()),
        Value::U64(x) => Some(x),
        Value::I8(x) => u64::try_from(x).ok(),
        Value::I16(x) => u64::try_from(x).ok(),
        Value::I32(x) => u64::try_from(x).ok(),
        Value::I64(x) => u64::try_from(x).ok(),
        _ => None,
    }
}

fn as_i64(v: &Value) -> Option<i64> {
    match *v {
        Value::U8(x) => Some(x.into()),
        Value::U16(x) => Some(x.into()),
        Value::U32(x) => Some(x.into()),
        Value::U64(x) => i64::try_from(x).ok(),
        Value::I8(x) => Some(x.into()),
        Value::I16(x) => Some(x.into()),
        Value::I32(x) => Some(x.into()),
        Value::I64(x) => Some(x),
        _ => None,
    }
}

fn string_array(md: &HashMap<String, Value>, key: &str, path: &Path) -> Result<Option<Vec<String>>, TokenizerError> {
    let Some(v) = md.get(key) else {
        return Ok(None);
    };
    let items = v.to_vec().map_err(|_| key_err(path, key, "is not an array"))?;
    items
        .iter()
        .enumerate()
        .map(|(i, x)| x.to_string().cloned().map_err(|_| key_err(path, key, format!("entry {i} is not a string"))))
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn optional_bool(md: &HashMap<String, Value>, key: &str, path: &Path) -> Result<Option<bool>, TokenizerError> {
    match md.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => as_u64(v)
            .filter(|x| *x <= 1)
            .map(|x| Some(x == 1))
            .ok_or_else(|| key_err(path, key, format!("is not a bool: {v:?}"))),
    }
}

/// Rebuild the tokenizer a GGUF file describes. `path` only names the file in errors.
pub fn tokenizer_from_gguf(md: &HashMap<String, Value>, path: &Path) -> Result<GgufTokenizer, TokenizerError> {
    let model = match md.get(KEY_MODEL) {
        Some(v) => v.to_string().map_err(|_| key_err(path, KEY_MODEL, "is not a string"))?.clone(),
        None => {
            return Err(key_err(
                path,
                KEY_MODEL,
                "is missing: this GGUF carries no tokenizer; give the model a tokenizer.json instead",
            ))
        }
    };
    match model.as_str() {
        "gpt2" => {}
        "llama" => {
            return Err(key_err(
                path,
                KEY_MODEL,
                "is \"llama\" (a SentencePiece tokenizer), which is not supported yet; \
                 only \"gpt2\" (byte-level BPE) is. Use the model's tokenizer.json instead",
            ))
        }
        other => {
            return Err(key_err(
                path,
                KEY_MODEL,
                format!("is {other:?}, which is not supported; only \"gpt2\" (byte-level BPE) is"),
            ))
        }
    }

    let tokens = string_array(md, KEY_TOKENS, path)?.ok_or_else(|| key_err(path, KEY_TOKENS, "is missing"))?;
    if tokens.is_empty() {
        return Err(key_err(path, KEY_TOKENS, "is empty"));
    }
    if u32::try_from(tokens.len()).is_err() {
        return Err(key_err(path, KEY_TOKENS, "has more than 2^32 entries"));
    }
    let token_types: Vec<i32> = match md.get(KEY_TOKEN_TYPE) {
        None => Vec::new(),
        Some(v) => {
            let items = v.to_vec().map_err(|_| key_err(path, KEY_TOKEN_TYPE, "is not an array"))?;
            let types = items
                .iter()
                .enumerate()
                .map(|(i, x)| {
                    as_i64(x)
                        .and_then(|t| i32::try_from(t).ok())
                        .ok_or_else(|| key_err(path, KEY_TOKEN_TYPE, format!("entry {i} is not an integer: {x:?}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            if types.len() != tokens.len() {
                return Err(key_err(
                    path,
                    KEY_TOKEN_TYPE,
                    format!("has {} entries but {KEY_TOKENS} has {}", types.len(), tokens.len()),
                ));
            }
            types
        }
    };
    let merges_raw = string_array(md, KEY_MERGES, path)?
        .ok_or_else(|| key_err(path, KEY_MERGES, "is missing (a \"gpt2\" tokenizer needs its BPE merges)"))?;
    let mut merges = Vec::with_capacity(merges_raw.len());
    for (i, m) in merges_raw.iter().enumerate() {
        let mut parts = m.split(' ');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(b), None) => merges.push((a.to_string(), b.to_string())),
            _ => {
                return Err(key_err(
                    path,
                    KEY_MERGES,
                    format!("entry {i} ({m:?}) is not two symbols separated by one space"),
                ))
            }
        }
    }
    let pre = match md.get(KEY_PRE) {
        None => None,
        Some(v) => Some(v.to_string().map_err(|_| key_err(path, KEY_PRE, "is not a string"))?.clone()),
    };
    let chat_template = match md.get(KEY_CHAT_TEMPLATE) {
        None => None,
        Some(v) => Some(v.to_string().map_err(|_| key_err(path, KEY_CHAT_TEMPLATE, "is not a string"))?.clone()),
    };
    let special = |key: &str| -> Result<Option<(String, u32)>, TokenizerError> {
        let Some(v) = md.get(key) else {
            return Ok(None);
        };
        let id = as_u64(v).ok_or_else(|| key_err(path, key, format!("is not a token id: {v:?}")))?;
        let token = usize::try_from(id)
            .ok()
            .and_then(|i| tokens.get(i))
            .ok_or_else(|| key_err(path, key, format!("is {id}, past the {} tokens", tokens.len())))?;
        Ok(Some((token.clone(), id as u32)))
    };
    let bos = special(KEY_BOS)?;
    let eos = special(KEY_EOS)?;
    let unk = special(KEY_UNK)?;
    let pad = special(KEY_PAD)?;
    let add_bos_token = optional_bool(md, KEY_ADD_BOS, path)?.unwrap_or(false) && bos.is_some();
    let add_eos_token = optional_bool(md, KEY_ADD_EOS, path)?.unwrap_or(false) && eos.is_some();

    // Vocabulary, re-spelled into the byte alphabet where needed; later duplicates win.
    let table = bytes_to_unicode();
    let alphabet: std::collections::HashSet<char> = table.iter().copied().collect();
    let in_alphabet = |t: &str| t.chars().all(|c| alphabet.contains(&c));
    let mut vocab: HashMap<String, u32> = HashMap::with_capacity(tokens.len());
    for (id, token) in tokens.iter().enumerate() {
        let spelled =
            if in_alphabet(token) { token.clone() } else { token.bytes().map(|b| table[b as usize]).collect() };
        vocab.insert(spelled, id as u32);
    }
    let bpe = BPE::builder()
        .vocab_and_merges(vocab.iter().map(|(k, v)| (k.clone(), *v)).collect::<Vocab>(), merges)
        .continuing_subword_prefix(String::new())
        .end_of_word_suffix(String::new())
        .fuse_unk(false)
        .byte_fallback(false)
        .ignore_merges(false)
        .build()
        .map_err(|e| key_err(path, KEY_MERGES, format!("cannot build the BPE model: {e}")))?;

    let mut tokenizer = tokenizers::Tokenizer::new(bpe);
    let split = pre.as_deref().and_then(|p| PRE_SPLITS.iter().find(|(name, _)| *name == p));
    match split {
        Some((_, regex)) => {
            let split = Split::new(SplitPattern::Regex(regex.to_string()), SplitDelimiterBehavior::Isolated, false)
                .map_err(|e| key_err(path, KEY_PRE, format!("cannot compile the split regex: {e}")))?;
            tokenizer.with_pre_tokenizer(Some(Sequence::new(vec![
                PreTokenizerWrapper::Split(split),
                PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, false)),
            ])));
        }
        None => {
            tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        }
    }
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    tokenizer.with_post_processor(Some(
        post_processor(bos.as_ref().filter(|_| add_bos_token), eos.as_ref().filter(|_| add_eos_token))
            .map_err(|e| key_err(path, KEY_ADD_BOS, e))?,
    ));

    // Added tokens, in the order transformers adds them.
    let added = |content: &str, special: bool| AddedToken::from(content.to_string(), special).normalized(false);
    let add_err = |e: tokenizers::Error| key_err(path, KEY_TOKEN_TYPE, format!("cannot add the special tokens: {e}"));
    if vocab.contains_key(ENDOFTEXT) {
        tokenizer.add_tokens([added(ENDOFTEXT, true)]).map_err(add_err)?;
    }
    let typed =
        |wanted: i32| tokens.iter().zip(token_types.iter()).filter(move |(_, t)| **t == wanted).map(|(tok, _)| tok);
    let control: Vec<AddedToken> =
        typed(TOKEN_TYPE_CONTROL).filter(|t| in_alphabet(t)).map(|t| added(t, true)).collect();
    tokenizer.add_tokens(control).map_err(add_err)?;
    let user: Vec<AddedToken> =
        typed(TOKEN_TYPE_USER_DEFINED).filter(|t| vocab.contains_key(t.as_str())).map(|t| added(t, false)).collect();
    tokenizer.add_tokens(user).map_err(add_err)?;
    for (token, _) in [&bos, &eos, &unk, &pad].into_iter().flatten() {
        let already = tokenizer.get_added_vocabulary().get_vocab().contains_key(token);
        if !already && vocab.contains_key(token) {
            tokenizer.add_tokens([added(token, true)]).map_err(add_err)?;
        }
    }

    Ok(GgufTokenizer { tokenizer, bos, eos, unk, pad, add_bos_token, add_eos_token, chat_template })
}

/// transformers' `update_post_processor`: `[bos:0] $A:0 [eos:0]` and the pair version.
fn post_processor(bos: Option<&(String, u32)>, eos: Option<&(String, u32)>) -> Result<TemplateProcessing, String> {
    let b = |type_id: u8| bos.map(|(t, _)| format!("{t}:{type_id} ")).unwrap_or_default();
    let e = |type_id: u8| eos.map(|(t, _)| format!(" {t}:{type_id}")).unwrap_or_default();
    let single = format!("{}$A:0{}", b(0), e(0));
    let pair = format!("{single} {}$B:1{}", b(1), e(1));
    let specials: Vec<(String, u32)> = bos.into_iter().chain(eos).cloned().collect();
    TemplateProcessing::builder()
        .try_single(single.as_str())
        .map_err(|e| format!("bad post-processor template {single:?}: {e}"))?
        .try_pair(pair.as_str())
        .map_err(|e| format!("bad post-processor template {pair:?}: {e}"))?
        .special_tokens(specials)
        .build()
        .map_err(|e| format!("cannot build the post-processor: {e}"))
}

/// The GGUF tokenizer metadata (the keys [`tokenizer_from_gguf`] reads) for a byte-level BPE
/// tokenizer, such that reading it back gives the same ids.
///
/// Fails for tokenizers whose behaviour these keys cannot carry: a model other than BPE, a
/// normalizer, a pre-tokenizer other than GPT-2's ByteLevel or one of the known split regexes,
/// a post-processor other than `[bos] $A [eos]`, holes in the id range, or an added token spelled
/// outside the byte alphabet.
pub fn gguf_tokenizer_metadata(tok: &super::Tokenizer) -> Result<Vec<(String, Value)>, TokenizerError> {
    let fail = |m: String| TokenizerError::Invalid(format!("cannot describe this tokenizer in GGUF metadata: {m}"));
    let inner = tok.inner();
    let json: serde_json::Value =
        serde_json::from_str(&inner.to_string(false).map_err(|e| fail(format!("cannot serialise it: {e}")))?)
            .map_err(|e| fail(format!("cannot parse its serialisation: {e}")))?;
    let model = &json["model"];
    if model["type"] != "BPE" {
        return Err(fail(format!("model type {} is not BPE", model["type"])));
    }
    let empty_or_null = |v: &serde_json::Value| v.is_null() || v == "";
    if !empty_or_null(&model["continuing_subword_prefix"])
        || !empty_or_null(&model["end_of_word_suffix"])
        || model["byte_fallback"] == true
        || !model["dropout"].is_null()
    {
        return Err(fail("BPE options (subword prefix/suffix, byte_fallback, dropout) differ from GPT-2's".into()));
    }
    if !json["normalizer"].is_null() {
        return Err(fail(format!("it has a normalizer ({})", json["normalizer"])));
    }
    let pre = pre_name(&json["pre_tokenizer"]).ok_or_else(|| {
        fail(format!(
            "pre-tokenizer {} is neither GPT-2's ByteLevel nor Split(known regex)+ByteLevel",
            json["pre_tokenizer"]
        ))
    })?;
    let (add_bos, add_eos) = post_specials(&json["post_processor"], tok).map_err(fail)?;

    // id -> token, and token types.
    let n = tok.vocab_size();
    let mut tokens: Vec<Option<String>> = vec![None; n];
    let mut types = vec![TOKEN_TYPE_NORMAL; n];
    for (t, id) in inner.get_vocab(false) {
        tokens[id as usize] = Some(t);
    }
    let alphabet: std::collections::HashSet<char> = bytes_to_unicode().into_iter().collect();
    for (id, added) in inner.get_added_tokens_decoder() {
        if !added.content.chars().all(|c| alphabet.contains(&c)) {
            return Err(fail(format!(
                "added token {:?} has characters outside the byte-level alphabet; read back it would not stay whole",
                added.content
            )));
        }
        tokens[id as usize] = Some(added.content.clone());
        types[id as usize] = if added.special { TOKEN_TYPE_CONTROL } else { TOKEN_TYPE_USER_DEFINED };
    }
    let tokens = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| t.ok_or_else(|| fail(format!("no token has id {i} (ids must be 0..{n} without holes)"))))
        .collect::<Result<Vec<_>, _>>()?;

    let merges: Vec<String> = match &model["merges"] {
        serde_json::Value::Array(items) => items
            .iter()
            .map(|m| match m {
                serde_json::Value::String(s) => Ok(s.clone()),
                serde_json::Value::Array(p) if p.len() == 2 && p.iter().all(|x| x.is_string()) => {
                    Ok(format!("{} {}", p[0].as_str().unwrap_or_default(), p[1].as_str().unwrap_or_default()))
                }
                other => Err(fail(format!("unreadable merge {other}"))),
            })
            .collect::<Result<_, _>>()?,
        serde_json::Value::Null => Vec::new(),
        other => return Err(fail(format!("unreadable merges {other}"))),
    };

    let mut out: Vec<(String, Value)> = vec![
        (KEY_MODEL.into(), Value::String("gpt2".into())),
        (KEY_PRE.into(), Value::String(pre.into())),
        (KEY_TOKENS.into(), Value::Array(tokens.into_iter().map(Value::String).collect())),
        (KEY_TOKEN_TYPE.into(), Value::Array(types.into_iter().map(Value::I32).collect())),
        (KEY_MERGES.into(), Value::Array(merges.into_iter().map(Value::String).collect())),
    ];
    let unk_id = model["unk_token"].as_str().and_then(|t| inner.token_to_id(t));
    for (key, id) in [(KEY_BOS, tok.bos_id), (KEY_EOS, tok.eos_id), (KEY_UNK, unk_id), (KEY_PAD, tok.pad_id)] {
        if let Some(id) = id {
            out.push((key.into(), Value::U32(id)));
        }
    }
    out.push((KEY_ADD_BOS.into(), Value::Bool(add_bos)));
    out.push((KEY_ADD_EOS.into(), Value::Bool(add_eos)));
    if let Some(t) = &tok.chat_template {
        out.push((KEY_CHAT_TEMPLATE.into(), Value::String(t.source().to_string())));
    }
    Ok(out)
}

/// The `tokenizer.ggml.pre` name transformers reads back as this pre-tokenizer, if any.
fn pre_name(pre: &serde_json::Value) -> Option<&'static str> {
    let byte_level = |v: &serde_json::Value, use_regex: bool| {
        v["type"] == "ByteLevel"
            && v["add_prefix_space"] == false
            && (v["use_regex"] == use_regex || (use_regex && v["use_regex"].is_null()))
    };
    if byte_level(pre, true) {
        return Some(PRE_GPT2);
    }
    if pre["type"] != "Sequence" {
        return None;
    }
    let parts = pre["pretokenizers"].as_array()?;
    let [split, bl] = parts.as_slice() else {
        return None;
    };
    if split["type"] != "Split" || split["behavior"] != "Isolated" || split["invert"] != false || !byte_level(bl, false)
    {
        return None;
    }
    let regex = split["pattern"]["Regex"].as_str()?;
    PRE_SPLITS.iter().find(|(_, r)| *r == regex).map(|(name, _)| *name)
}

/// Whether the post-processor adds BOS before / EOS after a single sequence (and nothing else).
fn post_specials(pp: &serde_json::Value, tok: &super::Tokenizer) -> Result<(bool, bool), String> {
    match pp["type"].as_str() {
        None => return Ok((false, false)),
        Some("ByteLevel") => return Ok((false, false)),
        Some("Sequence") => {
            let mut found = (false, false);
            for p in pp["processors"].as_array().into_iter().flatten() {
                let f = post_specials(p, tok)?;
                found = (found.0 || f.0, found.1 || f.1);
            }
            return Ok(found);
        }
        Some("TemplateProcessing") => {}
        Some(other) => return Err(format!("post-processor {other} cannot be expressed")),
    }
    let items = pp["single"].as_array().ok_or("TemplateProcessing without a single template")?;
    let special = |i: &serde_json::Value| i["SpecialToken"]["id"].as_str().map(str::to_string);
    let (mut add_bos, mut add_eos) = (false, false);
    let mut seen_sequence = false;
    for item in items {
        if item.get("Sequence").is_some() {
            if seen_sequence {
                return Err("template has two sequences".into());
            }
            seen_sequence = true;
        } else if let Some(t) = special(item) {
            let id = tok.token_to_id(&t);
            if !seen_sequence && !add_bos && id.is_some() && id == tok.bos_id {
                add_bos = true;
            } else if seen_sequence && !add_eos && id.is_some() && id == tok.eos_id {
                add_eos = true;
            } else {
                return Err(format!(
                    "template adds {t:?}, which is not the tokenizer's bos before / eos after the text"
                ));
            }
        }
    }
    Ok((add_bos, add_eos))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::gguf_file;
    use std::path::PathBuf;

    fn alphabet_tokens() -> Vec<String> {
        bytes_to_unicode().iter().map(|c| c.to_string()).collect()
    }

    fn md(tokens: &[String], types: &[i32], merges: &[&str], extra: Vec<(&str, Value)>) -> HashMap<String, Value> {
        let mut m = HashMap::new();
        m.insert(KEY_MODEL.to_string(), Value::String("gpt2".into()));
        m.insert(KEY_PRE.to_string(), Value::String("gpt2".into()));
        m.insert(KEY_TOKENS.to_string(), Value::Array(tokens.iter().cloned().map(Value::String).collect()));
        m.insert(KEY_TOKEN_TYPE.to_string(), Value::Array(types.iter().copied().map(Value::I32).collect()));
        m.insert(KEY_MERGES.to_string(), Value::Array(merges.iter().map(|s| Value::String(s.to_string())).collect()));
        for (k, v) in extra {
            m.insert(k.to_string(), v);
        }
        m
    }

    fn ids(t: &tokenizers::Tokenizer, text: &str, special: bool) -> Vec<u32> {
        t.encode(text, special).unwrap().get_ids().to_vec()
    }

    /// Case A of the transformers probe (ids checked against transformers 5.23 / tokenizers 0.23):
    /// control tokens, a user-defined token, tokens needing re-spelling, a duplicate spelling,
    /// a CONTROL token outside the alphabet, UNKNOWN/UNUSED types, bos+eos added.
    #[test]
    fn matches_transformers_on_mixed_token_types() {
        let mut tokens = alphabet_tokens();
        let extra = [
            "he",
            "ll",
            "hell",
            "hello",
            "Ġw",
            "Ġwor",
            "Ġworld",
            "<s>",
            "</s>",
            "<think>",
            "a b",
            "<ctl x>",
            "é",
            "<unk>",
            "<unused0>",
            "<|endoftext|>",
            "Ġwo",
            "ld",
            "Ġworld2",
        ];
        tokens.extend(extra.iter().map(|s| s.to_string()));
        let mut types = vec![1; 256];
        types.extend([1, 1, 1, 1, 1, 1, 1, 3, 3, 4, 4, 3, 1, 2, 5, 1, 1, 1, 1]);
        let merges = ["h e", "l l", "he ll", "hell o", "Ġ w", "Ġw o", "Ġwo r", "Ġwor ld", "l d"];
        let m = md(
            &tokens,
            &types,
            &merges,
            vec![
                (KEY_BOS, Value::U32(263)),
                (KEY_EOS, Value::U32(264)),
                (KEY_UNK, Value::U32(269)),
                (KEY_ADD_BOS, Value::Bool(true)),
                (KEY_ADD_EOS, Value::Bool(true)),
            ],
        );
        let g = tokenizer_from_gguf(&m, Path::new("a.gguf")).unwrap();
        let t = &g.tokenizer;
        assert_eq!(ids(t, "hello world", true), [263, 259, 262, 264]);
        assert_eq!(ids(t, "hello world", false), [259, 262]);
        let text = "<s>x</s> <think> a b <ctl x> é<unk><unused0><|endoftext|>";
        assert_eq!(
            ids(t, text, false),
            [
                263, 120, 264, 32, 265, 32, 97, 32, 98, 32, 60, 99, 116, 108, 32, 120, 62, 32, 195, 169, 269, 60, 117,
                110, 117, 115, 101, 100, 48, 62, 271
            ]
        );
        // Same added tokens (id, special) as transformers.
        let mut added: Vec<(u32, String, bool)> =
            t.get_added_tokens_decoder().into_iter().map(|(id, a)| (id, a.content, a.special)).collect();
        added.sort();
        let want: Vec<(u32, String, bool)> = [
            (263, "<s>", true),
            (264, "</s>", true),
            (265, "<think>", false),
            (269, "<unk>", true),
            (271, "<|endoftext|>", true),
        ]
        .into_iter()
        .map(|(i, s, b)| (i, s.to_string(), b))
        .collect();
        assert_eq!(added, want);
        // "é" (id 268) re-uses byte 0xE9's spelling, so id 233 has no token, as in transformers.
        assert_eq!(t.token_to_id("é"), Some(268));
        assert_eq!(t.id_to_token(233), None);
        assert_eq!(t.token_to_id("aĠb"), Some(266));
        assert_eq!(t.token_to_id("<ctlĠx>"), Some(267));
    }

    /// Cases B and D: no add_bos key (no BOS), a NORMAL eos becomes special, USER_DEFINED
    /// bos/eos stay non-special, `<|endoftext|>` of type UNKNOWN is special.
    #[test]
    fn matches_transformers_on_named_specials() {
        let mut tokens = alphabet_tokens();
        tokens.extend(["<|begin|>", "<|end|>", "<tool>", "ab"].map(String::from));
        let mut types = vec![1; 256];
        types.extend([3, 1, 4, 1]);
        let m = md(
            &tokens,
            &types,
            &["a b"],
            vec![(KEY_BOS, Value::U32(256)), (KEY_EOS, Value::U32(257)), (KEY_PAD, Value::U32(257))],
        );
        let g = tokenizer_from_gguf(&m, Path::new("b.gguf")).unwrap();
        let text = "ab <|begin|>x<|end|><tool> a";
        assert_eq!(ids(&g.tokenizer, text, true), [259, 32, 256, 120, 257, 258, 32, 97]);
        let specials: Vec<_> =
            g.tokenizer.get_added_tokens_decoder().into_iter().map(|(i, a)| (i, a.special)).collect();
        assert!(specials.contains(&(257, true)) && specials.contains(&(258, false)), "{specials:?}");
        assert_eq!(g.pad, Some(("<|end|>".into(), 257)));

        tokens.push("<|endoftext|>".into());
        types = vec![1; 256];
        types.extend([4, 4, 4, 1, 2]);
        let m = md(
            &tokens,
            &types,
            &["a b"],
            vec![
                (KEY_BOS, Value::U32(256)),
                (KEY_EOS, Value::U32(257)),
                (KEY_ADD_BOS, Value::Bool(true)),
                (KEY_ADD_EOS, Value::Bool(false)),
            ],
        );
        let g = tokenizer_from_gguf(&m, Path::new("d.gguf")).unwrap();
        assert_eq!(
            ids(&g.tokenizer, "ab <|begin|>x<|end|><tool> a<|endoftext|>", true),
            [256, 259, 32, 256, 120, 257, 258, 32, 97, 260]
        );
        let mut specials: Vec<_> =
            g.tokenizer.get_added_tokens_decoder().into_iter().map(|(i, a)| (i, a.special)).collect();
        specials.sort();
        assert_eq!(specials, [(256, false), (257, false), (258, false), (260, true)]);
    }

    /// Case C: `tokenizer.ggml.pre = llama-bpe` selects the Llama-3 split regex.
    #[test]
    fn known_pre_uses_split_regex() {
        let mut tokens = alphabet_tokens();
        tokens.extend(["<|begin_of_text|>", "<|eot_id|>", "Ġa", "ab"].map(String::from));
        let mut types = vec![1; 256];
        types.extend([3, 3, 1, 1]);
        let mut m = md(
            &tokens,
            &types,
            &["Ġ a", "a b"],
            vec![(KEY_BOS, Value::U32(256)), (KEY_EOS, Value::U32(257)), (KEY_ADD_BOS, Value::Bool(true))],
        );
        m.insert(KEY_PRE.into(), Value::String("llama-bpe".into()));
        let g = tokenizer_from_gguf(&m, Path::new("c.gguf")).unwrap();
        let t = &g.tokenizer;
        assert_eq!(
            ids(t, "Hello's 123456 world!!\\n\\n x", true),
            [
                256, 72, 101, 108, 108, 111, 39, 115, 32, 49, 50, 51, 52, 53, 54, 32, 119, 111, 114, 108, 100, 33, 33,
                92, 110, 92, 110, 32, 120
            ]
        );
        // Llama-3 splits digits in threes and keeps "\n\n" apart from " x".
        use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};
        let mut pts = PreTokenizedString::from("a 1234\n\n x");
        t.get_pre_tokenizer().unwrap().pre_tokenize(&mut pts).unwrap();
        let splits: Vec<String> = pts
            .get_splits(OffsetReferential::Original, OffsetType::Byte)
            .into_iter()
            .map(|(s, _, _)| s.to_string())
            .collect();
        assert_eq!(splits, ["a", "Ġ", "123", "4", "ĊĊ", "Ġx"]);
        let json: serde_json::Value = serde_json::from_str(&t.to_string(false).unwrap()).unwrap();
        assert_eq!(json["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"], SPLIT_LLAMA3);
        assert_eq!(json["pre_tokenizer"]["pretokenizers"][1]["use_regex"], false);
    }

    #[test]
    fn errors_name_file_and_key() {
        let p = Path::new("/models/x.gguf");
        let err = tokenizer_from_gguf(&HashMap::new(), p).unwrap_err().to_string();
        assert!(err.contains("/models/x.gguf") && err.contains(KEY_MODEL) && err.contains("no tokenizer"), "{err}");

        let mut m = md(&alphabet_tokens(), &[1; 256], &[], vec![]);
        m.insert(KEY_MODEL.into(), Value::String("llama".into()));
        let err = tokenizer_from_gguf(&m, p).unwrap_err().to_string();
        assert!(err.contains("SentencePiece") && err.contains("not supported yet") && err.contains(KEY_MODEL), "{err}");

        let m = md(&alphabet_tokens(), &[1; 255], &[], vec![]);
        let err = tokenizer_from_gguf(&m, p).unwrap_err().to_string();
        assert!(
            err.contains(KEY_TOKEN_TYPE) && err.contains("255") && err.contains("256") && err.contains("x.gguf"),
            "{err}"
        );

        let m = md(&alphabet_tokens(), &[1; 256], &[], vec![(KEY_EOS, Value::U32(999))]);
        let err = tokenizer_from_gguf(&m, p).unwrap_err().to_string();
        assert!(err.contains(KEY_EOS) && err.contains("999"), "{err}");

        let m = md(&alphabet_tokens(), &[1; 256], &["a b"], vec![]);
        let err = tokenizer_from_gguf(&m, p).unwrap_err().to_string();
        assert!(err.contains(KEY_MERGES), "{err}");
    }

    pub(crate) fn smollm2_path() -> PathBuf {
        let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
        assert!(p.exists(), "test model {} is missing: run scripts/fetch-test-model.sh", p.display());
        p
    }

    /// The real SmolLM2 GGUF; ids checked against transformers 5.23.
    #[test]
    fn smollm2_gguf_matches_transformers() {
        let path = smollm2_path();
        let mut f = std::fs::File::open(&path).unwrap();
        let content = gguf_file::Content::read(&mut f).unwrap();
        let g = tokenizer_from_gguf(&content.metadata, &path).unwrap();
        let t = &g.tokenizer;
        assert_eq!(t.get_vocab_size(true), 49152);
        assert_eq!(g.bos, Some(("<|im_start|>".into(), 1)));
        assert_eq!(g.eos, Some(("<|im_end|>".into(), 2)));
        assert_eq!(g.pad, Some(("<|im_end|>".into(), 2)));
        assert!(!g.add_bos_token && !g.add_eos_token);
        assert!(g.chat_template.as_deref().unwrap().contains("You are a helpful AI assistant named SmolLM"));
        assert_eq!(ids(t, "Hello world", true), [19556, 905]);
        assert_eq!(ids(t, " Hello  world\n\n", true), [38699, 216, 905, 1116]);
        assert_eq!(ids(t, "<|im_start|>user\nhi<|im_end|>", true), [1, 4093, 198, 6004, 2]);
        assert_eq!(
            ids(t, "héllo 日本語 🎉", true),
            [88, 2756, 31394, 17097, 241, 115, 40993, 179, 120, 248, 15107, 232, 227]
        );
        assert_eq!(ids(t, "<repo_name>x", true), [3, 104]);
        let specials = t.get_added_tokens_decoder();
        assert_eq!(specials.len(), 17);
        assert!(specials.values().all(|a| a.special && !a.normalized));
    }
}
