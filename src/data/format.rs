//! Record formats: naming them, recognising them, and turning one JSON
//! object into a [`Record`].
//!
//! Everything here works on a single already-parsed JSON value and knows
//! nothing about files or line numbers; the reader in `jsonl.rs` adds that
//! context, so these functions stay usable for other sources (tests, stdin,
//! hub datasets).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use thiserror::Error;

use crate::chat::{Message, Role};

/// The record layouts a data file may use. One file holds one format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DataFormat {
    /// `{instruction, input?, output, system?}`
    #[serde(rename = "alpaca")]
    Alpaca,
    /// `{messages: [{role, content}]}`
    #[serde(rename = "messages")]
    Messages,
    /// `{conversations: [{from, value}]}`
    #[serde(rename = "sharegpt")]
    ShareGpt,
    /// `{prompt, completion}`
    #[serde(rename = "prompt_completion", alias = "prompt-completion")]
    PromptCompletion,
    /// `{text}`
    #[serde(rename = "text")]
    Text,
}

impl DataFormat {
    /// In detection order (see [`detect_format`]).
    pub const ALL: [DataFormat; 5] = [
        DataFormat::Messages,
        DataFormat::ShareGpt,
        DataFormat::Alpaca,
        DataFormat::PromptCompletion,
        DataFormat::Text,
    ];

    /// The name used on the command line and in messages.
    pub fn name(self) -> &'static str {
        match self {
            DataFormat::Alpaca => "alpaca",
            DataFormat::Messages => "messages",
            DataFormat::ShareGpt => "sharegpt",
            DataFormat::PromptCompletion => "prompt_completion",
            DataFormat::Text => "text",
        }
    }

    /// The top-level fields a record of this format must have, for messages
    /// that tell the user what was expected.
    pub fn required_fields(self) -> &'static [&'static str] {
        match self {
            DataFormat::Alpaca => &["instruction", "output"],
            DataFormat::Messages => &["messages"],
            DataFormat::ShareGpt => &["conversations"],
            DataFormat::PromptCompletion => &["prompt", "completion"],
            DataFormat::Text => &["text"],
        }
    }

    /// Whether `obj` carries the key(s) that identify this format. Deliberately
    /// looser than "is valid": a record with `instruction` but no `output` is
    /// still recognisably alpaca, and the user is better served by "field
    /// "output" is missing" than by "unknown format".
    fn signature_in(self, obj: &Map<String, Value>) -> bool {
        match self {
            DataFormat::Alpaca => obj.contains_key("instruction"),
            DataFormat::Messages => obj.contains_key("messages"),
            DataFormat::ShareGpt => obj.contains_key("conversations"),
            DataFormat::PromptCompletion => obj.contains_key("prompt") || obj.contains_key("completion"),
            DataFormat::Text => obj.contains_key("text"),
        }
    }
}

impl fmt::Display for DataFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DataFormat {
    /// A plain message, so clap's `value_parser!` can show it as is.
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "alpaca" => Ok(DataFormat::Alpaca),
            "messages" => Ok(DataFormat::Messages),
            "sharegpt" => Ok(DataFormat::ShareGpt),
            "prompt_completion" | "prompt-completion" => Ok(DataFormat::PromptCompletion),
            "text" => Ok(DataFormat::Text),
            _ => Err(format!(
                "unknown data format {s:?} (expected alpaca, messages, sharegpt, prompt_completion or text)"
            )),
        }
    }
}

/// The record format a user asks for (`[data] format`, `--format`): one format for every
/// file, or `auto`, each file's own detected from its first record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum FormatChoice {
    #[default]
    Auto,
    Fixed(DataFormat),
}

impl FormatChoice {
    /// The format every file is read as; `None` for `auto`.
    pub fn fixed(self) -> Option<DataFormat> {
        match self {
            FormatChoice::Auto => None,
            FormatChoice::Fixed(f) => Some(f),
        }
    }

    /// `auto` or the format's name, `prompt-completion` with the hyphen the config lists.
    pub fn name(self) -> &'static str {
        match self {
            FormatChoice::Auto => "auto",
            FormatChoice::Fixed(DataFormat::PromptCompletion) => "prompt-completion",
            FormatChoice::Fixed(f) => f.name(),
        }
    }
}

impl fmt::Display for FormatChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for FormatChoice {
    type Err = String;

    /// `auto`, or a format as [`DataFormat`]'s `from_str` reads it (any case).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(FormatChoice::Auto),
            f => f.parse().map(FormatChoice::Fixed),
        }
    }
}

impl Serialize for FormatChoice {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for FormatChoice {
    /// `auto` or a format's exact name (`prompt-completion` or `prompt_completion`).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::IntoDeserializer;
        let name = String::deserialize(d)?;
        match name.as_str() {
            "auto" => Ok(FormatChoice::Auto),
            _ => DataFormat::deserialize(name.into_deserializer()).map(FormatChoice::Fixed),
        }
    }
}

/// One training example, normalised away from its file format.
///
/// Prompt/completion pairs stay a kind of their own rather than becoming a
/// user/assistant conversation: they are trained without a chat template,
/// and folding them into one would silently add template tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Conversation(Vec<Message>),
    PromptCompletion { prompt: String, completion: String },
    Text(String),
}

impl Record {
    /// The messages, when this record is a conversation.
    pub fn messages(&self) -> Option<&[Message]> {
        match self {
            Record::Conversation(m) => Some(m),
            _ => None,
        }
    }
}

/// What is wrong with one record, independent of where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RecordProblem {
    #[error("record must be a JSON object, got {got}")]
    NotAnObject { got: &'static str },

    /// `field` is a path such as `output` or `messages[0].content`.
    #[error("field \"{field}\" is missing")]
    MissingField { field: String },

    #[error("field \"{field}\" must be {expected}, got {got}")]
    WrongType { field: String, expected: &'static str, got: &'static str },

    #[error("{field} {role:?} is not a known role (expected {expected})")]
    UnknownRole { field: String, role: String, expected: &'static str },

    #[error("the conversation is empty")]
    EmptyConversation,

    /// Without an assistant turn there are no target tokens to learn from.
    #[error("conversation has no assistant turn")]
    NoAssistantTurn,

    /// The record is recognisably another format than the file's.
    /// `detected_at` is the line the file's format was detected from
    /// (`None` when it was given explicitly or is unknown).
    #[error(
        "record looks like {found} but the file's format is {expected}{}",
        detected_suffix(*detected_at)
    )]
    FormatMismatch { expected: DataFormat, found: DataFormat, detected_at: Option<usize> },
}

fn detected_suffix(line: Option<usize>) -> String {
    match line {
        Some(l) => format!(" (detected from line {l})"),
        None => String::new(),
    }
}

/// Guesses the format of one record from its keys.
///
/// Only key presence counts, not value types, so that a malformed record of a
/// known format is reported by its real defect. When keys of several formats
/// are present the first of [`DataFormat::ALL`] wins: messages, sharegpt,
/// alpaca, prompt_completion, text.
pub fn detect_format(value: &Value) -> Option<DataFormat> {
    let obj = value.as_object()?;
    DataFormat::ALL.into_iter().find(|f| f.signature_in(obj))
}

/// Turns one JSON value into a [`Record`] of the given format.
///
/// Unknown extra keys are ignored. A record that lacks this format's keys but
/// has another format's is reported as [`RecordProblem::FormatMismatch`]
/// (with `detected_at: None`; the file reader fills it in).
pub fn parse_record(value: &Value, format: DataFormat) -> Result<Record, RecordProblem> {
    let obj = value.as_object().ok_or(RecordProblem::NotAnObject { got: json_kind(value) })?;
    if !format.signature_in(obj) {
        if let Some(found) = detect_format(value) {
            return Err(RecordProblem::FormatMismatch { expected: format, found, detected_at: None });
        }
    }
    match format {
        DataFormat::Alpaca => parse_alpaca(obj),
        DataFormat::Messages => parse_messages(obj),
        DataFormat::ShareGpt => parse_sharegpt(obj),
        DataFormat::PromptCompletion => Ok(Record::PromptCompletion {
            prompt: required_str(obj, "prompt", "prompt")?.to_owned(),
            completion: required_str(obj, "completion", "completion")?.to_owned(),
        }),
        DataFormat::Text => Ok(Record::Text(required_str(obj, "text", "text")?.to_owned())),
    }
}

fn parse_alpaca(obj: &Map<String, Value>) -> Result<Record, RecordProblem> {
    let instruction = required_str(obj, "instruction", "instruction")?;
    let input = optional_str(obj, "input")?;
    let output = required_str(obj, "output", "output")?;
    let system = optional_str(obj, "system")?;

    let mut messages = Vec::with_capacity(3);
    // An empty system string is treated as absent: tabular exports fill
    // missing columns with "", which is not a deliberate empty prompt.
    if let Some(s) = system.filter(|s| !s.is_empty()) {
        messages.push(Message::new(Role::System, s));
    }
    let user = match input.filter(|i| !i.is_empty()) {
        Some(i) => format!("{instruction}\n\n{i}"),
        None => instruction.to_owned(),
    };
    messages.push(Message::new(Role::User, user));
    messages.push(Message::new(Role::Assistant, output));
    Ok(Record::Conversation(messages))
}

fn parse_messages(obj: &Map<String, Value>) -> Result<Record, RecordProblem> {
    finish_conversation(messages_turns(obj)?)
}

fn messages_turns(obj: &Map<String, Value>) -> Result<Vec<Message>, RecordProblem> {
    let items = required_array(obj, "messages")?;
    let mut messages = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let path = format!("messages[{i}]");
        let turn = as_object(item, &path)?;
        let role_path = format!("{path}.role");
        let role_name = required_str(turn, "role", &role_path)?;
        let role = match role_name {
            "system" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            other => {
                return Err(RecordProblem::UnknownRole {
                    field: role_path,
                    role: other.to_owned(),
                    expected: "system, user or assistant",
                })
            }
        };
        let content = required_str(turn, "content", &format!("{path}.content"))?;
        messages.push(Message::new(role, content));
    }
    Ok(messages)
}

fn parse_sharegpt(obj: &Map<String, Value>) -> Result<Record, RecordProblem> {
    finish_conversation(sharegpt_turns(obj)?)
}

fn sharegpt_turns(obj: &Map<String, Value>) -> Result<Vec<Message>, RecordProblem> {
    let items = required_array(obj, "conversations")?;
    let mut messages = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let path = format!("conversations[{i}]");
        let turn = as_object(item, &path)?;
        let from_path = format!("{path}.from");
        let from = required_str(turn, "from", &from_path)?;
        let role = match from {
            "system" => Role::System,
            "human" | "user" => Role::User,
            "gpt" | "assistant" => Role::Assistant,
            other => {
                return Err(RecordProblem::UnknownRole {
                    field: from_path,
                    role: other.to_owned(),
                    expected: "system, human, gpt, user or assistant",
                })
            }
        };
        let value = required_str(turn, "value", &format!("{path}.value"))?;
        messages.push(Message::new(role, value));
    }
    Ok(messages)
}

/// A prompt for generation: the conversation up to its last assistant turn, and that
/// turn's text as the reference answer when there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptRecord {
    /// Ends with a user turn.
    pub messages: Vec<Message>,
    pub reference: Option<String>,
}

/// Reads a prompt from any training record (alpaca, messages, sharegpt,
/// prompt/completion) or from a prompt-only one: `{"prompt": ...}` without a completion,
/// or `messages` / `conversations` that end on a user turn. A top-level `system` string
/// becomes the system turn when the record has none.
pub fn parse_prompt(value: &Value) -> Result<PromptRecord, RecordProblem> {
    let obj = value.as_object().ok_or(RecordProblem::NotAnObject { got: json_kind(value) })?;
    let mut messages = if obj.contains_key("messages") {
        messages_turns(obj)?
    } else if obj.contains_key("conversations") {
        sharegpt_turns(obj)?
    } else if obj.contains_key("prompt") {
        let mut m = vec![Message::new(Role::User, required_str(obj, "prompt", "prompt")?)];
        if let Some(c) = optional_str(obj, "completion")? {
            m.push(Message::new(Role::Assistant, c));
        }
        m
    } else if obj.contains_key("instruction") {
        // A prompt-only alpaca record has no output; an empty one is dropped below.
        let mut with_output = obj.clone();
        with_output.entry("output").or_insert(Value::String(String::new()));
        match parse_alpaca(&with_output)? {
            Record::Conversation(m) => m,
            _ => unreachable!("alpaca records are conversations"),
        }
    } else {
        return Err(RecordProblem::MissingField { field: "prompt (or messages, conversations, instruction)".into() });
    };
    let reference = match messages.last() {
        Some(m) if m.role == Role::Assistant => messages.pop().map(|m| m.content),
        _ => None,
    };
    let reference =
        reference.filter(|r| !(obj.contains_key("instruction") && !obj.contains_key("output") && r.is_empty()));
    match messages.last() {
        None => return Err(RecordProblem::EmptyConversation),
        Some(m) if m.role != Role::User => {
            return Err(RecordProblem::MissingField {
                field: format!("a user turn to answer (the conversation ends with {})", m.role),
            })
        }
        _ => {}
    }
    if let Some(system) = optional_str(obj, "system")?.filter(|s| !s.is_empty()) {
        if messages[0].role != Role::System {
            messages.insert(0, Message::new(Role::System, system));
        }
    }
    Ok(PromptRecord { messages, reference })
}

/// Conversation-level checks shared by messages and sharegpt. An empty
/// assistant *content* is allowed here; only a missing assistant turn is fatal.
fn finish_conversation(messages: Vec<Message>) -> Result<Record, RecordProblem> {
    if messages.is_empty() {
        return Err(RecordProblem::EmptyConversation);
    }
    if !messages.iter().any(|m| m.role == Role::Assistant) {
        return Err(RecordProblem::NoAssistantTurn);
    }
    Ok(Record::Conversation(messages))
}

/// `path` is the full field path used in messages; `key` the key inside `obj`.
fn required_str<'a>(obj: &'a Map<String, Value>, key: &str, path: &str) -> Result<&'a str, RecordProblem> {
    match obj.get(key) {
        None => Err(RecordProblem::MissingField { field: path.to_owned() }),
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(wrong_type(path, "a string", other)),
    }
}

/// Optional string fields accept `null` as absent: dataset exports write
/// null for columns a row does not use.
fn optional_str<'a>(obj: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, RecordProblem> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(wrong_type(key, "a string", other)),
    }
}

fn required_array<'a>(obj: &'a Map<String, Value>, key: &str) -> Result<&'a [Value], RecordProblem> {
    match obj.get(key) {
        None => Err(RecordProblem::MissingField { field: key.to_owned() }),
        Some(Value::Array(a)) => Ok(a),
        Some(other) => Err(wrong_type(key, "an array", other)),
    }
}

fn as_object<'a>(value: &'a Value, path: &str) -> Result<&'a Map<String, Value>, RecordProblem> {
    value.as_object().ok_or_else(|| wrong_type(path, "an object", value))
}

fn wrong_type(path: &str, expected: &'static str, got: &Value) -> RecordProblem {
    RecordProblem::WrongType { field: path.to_owned(), expected, got: json_kind(got) }
}

/// The JSON type of `v`, with its article, for "got ..." in messages.
pub(crate) fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn format_choices_parse_and_serialize() {
        let names = ["auto", "alpaca", "messages", "sharegpt", "prompt-completion", "text"];
        for name in names {
            let choice: FormatChoice = serde_json::from_value(json!(name)).unwrap();
            assert_eq!((choice.to_string(), serde_json::to_value(choice).unwrap()), (name.to_string(), json!(name)));
            assert_eq!(name.parse::<FormatChoice>().unwrap(), choice);
        }
        let pc = FormatChoice::Fixed(DataFormat::PromptCompletion);
        assert_eq!(serde_json::from_value::<FormatChoice>(json!("prompt_completion")).unwrap(), pc);
        assert_eq!("Prompt_Completion".parse::<FormatChoice>().unwrap(), pc);
        assert!(serde_json::from_value::<FormatChoice>(json!("Alpaca")).is_err(), "the config's names are exact");
        assert!("sharegtp".parse::<FormatChoice>().unwrap_err().starts_with("unknown data format \"sharegtp\""));
        assert_eq!(FormatChoice::Auto.fixed(), None);
    }

    fn conv(record: Record) -> Vec<(Role, String)> {
        match record {
            Record::Conversation(m) => m.into_iter().map(|m| (m.role, m.content)).collect(),
            other => panic!("expected a conversation, got {other:?}"),
        }
    }

    fn problem(value: Value, format: DataFormat) -> String {
        parse_record(&value, format).unwrap_err().to_string()
    }

    #[test]
    fn format_names_round_trip() {
        for f in DataFormat::ALL {
            assert_eq!(f.name().parse::<DataFormat>().unwrap(), f);
            assert_eq!(f.to_string(), f.name());
        }
        assert_eq!("prompt-completion".parse::<DataFormat>().unwrap(), DataFormat::PromptCompletion);
        assert_eq!("ShareGPT".parse::<DataFormat>().unwrap(), DataFormat::ShareGpt);
        let err = "csv".parse::<DataFormat>().unwrap_err();
        assert!(err.contains("\"csv\"") && err.contains("alpaca"), "{err}");
    }

    #[test]
    fn format_serde_uses_cli_names() {
        assert_eq!(serde_json::to_string(&DataFormat::ShareGpt).unwrap(), "\"sharegpt\"");
        let f: DataFormat = serde_json::from_str("\"prompt-completion\"").unwrap();
        assert_eq!(f, DataFormat::PromptCompletion);
    }

    #[test]
    fn detects_each_format() {
        let cases = [
            (json!({"instruction": "a", "output": "b"}), DataFormat::Alpaca),
            (json!({"messages": []}), DataFormat::Messages),
            (json!({"conversations": []}), DataFormat::ShareGpt),
            (json!({"prompt": "a", "completion": "b"}), DataFormat::PromptCompletion),
            (json!({"text": "a", "id": 3}), DataFormat::Text),
            // recognisable even when incomplete, so the defect gets reported
            (json!({"instruction": "a"}), DataFormat::Alpaca),
            (json!({"completion": "b"}), DataFormat::PromptCompletion),
        ];
        for (v, f) in cases {
            assert_eq!(detect_format(&v), Some(f), "{v}");
        }
        assert_eq!(detect_format(&json!({"id": 1})), None);
        assert_eq!(detect_format(&json!([1])), None);
        // precedence: messages before text
        assert_eq!(detect_format(&json!({"text": "t", "messages": []})), Some(DataFormat::Messages));
    }

    #[test]
    fn alpaca_builds_conversation() {
        let r =
            parse_record(&json!({"instruction": "Sum", "input": "1 2", "output": "3", "id": 7}), DataFormat::Alpaca);
        assert_eq!(conv(r.unwrap()), vec![(Role::User, "Sum\n\n1 2".into()), (Role::Assistant, "3".into())]);
        let r = parse_record(
            &json!({"instruction": "Hi", "input": "", "output": "", "system": "Be brief"}),
            DataFormat::Alpaca,
        );
        assert_eq!(
            conv(r.unwrap()),
            vec![(Role::System, "Be brief".into()), (Role::User, "Hi".into()), (Role::Assistant, "".into())]
        );
        let r =
            parse_record(&json!({"instruction": "Hi", "input": null, "system": "", "output": "x"}), DataFormat::Alpaca);
        assert_eq!(conv(r.unwrap()), vec![(Role::User, "Hi".into()), (Role::Assistant, "x".into())]);
    }

    #[test]
    fn alpaca_problems() {
        assert_eq!(problem(json!({"instruction": "a"}), DataFormat::Alpaca), "field \"output\" is missing");
        assert_eq!(
            problem(json!({"instruction": 4, "output": "b"}), DataFormat::Alpaca),
            "field \"instruction\" must be a string, got a number"
        );
        assert_eq!(
            problem(json!({"instruction": "a", "input": ["x"], "output": "b"}), DataFormat::Alpaca),
            "field \"input\" must be a string, got an array"
        );
        assert_eq!(problem(json!({"output": "b"}), DataFormat::Alpaca), "field \"instruction\" is missing");
    }

    #[test]
    fn messages_records() {
        let v = json!({"messages": [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "u", "name": "x"},
            {"role": "assistant", "content": ""}
        ], "source": "web"});
        assert_eq!(
            conv(parse_record(&v, DataFormat::Messages).unwrap()),
            vec![(Role::System, "s".into()), (Role::User, "u".into()), (Role::Assistant, "".into())]
        );
    }

    #[test]
    fn messages_problems() {
        let f = DataFormat::Messages;
        assert_eq!(
            problem(
                json!({"messages": [{"role":"user","content":"a"},{"role":"assistant","content":"b"},{"role":"robot","content":"c"}]}),
                f
            ),
            "messages[2].role \"robot\" is not a known role (expected system, user or assistant)"
        );
        assert_eq!(
            problem(json!({"messages": [{"role":"user","content":null}]}), f),
            "field \"messages[0].content\" must be a string, got null"
        );
        assert_eq!(problem(json!({"messages": [{"content":"a"}]}), f), "field \"messages[0].role\" is missing");
        assert_eq!(problem(json!({"messages": []}), f), "the conversation is empty");
        assert_eq!(
            problem(json!({"messages": [{"role":"user","content":"a"}]}), f),
            "conversation has no assistant turn"
        );
        assert_eq!(problem(json!({"messages": "hi"}), f), "field \"messages\" must be an array, got a string");
        assert_eq!(problem(json!({"messages": ["hi"]}), f), "field \"messages[0]\" must be an object, got a string");
        assert_eq!(
            problem(json!({"messages": [{"role": 1, "content": "a"}]}), f),
            "field \"messages[0].role\" must be a string, got a number"
        );
    }

    #[test]
    fn sharegpt_records_and_problems() {
        let f = DataFormat::ShareGpt;
        let v = json!({"conversations": [
            {"from": "system", "value": "s"},
            {"from": "human", "value": "h"},
            {"from": "gpt", "value": "g"},
            {"from": "user", "value": "u"},
            {"from": "assistant", "value": "a"}
        ], "id": "x1"});
        assert_eq!(
            conv(parse_record(&v, f).unwrap()),
            vec![
                (Role::System, "s".into()),
                (Role::User, "h".into()),
                (Role::Assistant, "g".into()),
                (Role::User, "u".into()),
                (Role::Assistant, "a".into())
            ]
        );
        assert_eq!(
            problem(json!({"conversations": [{"from":"human","value":"a"},{"from":"gpt","value":3}]}), f),
            "field \"conversations[1].value\" must be a string, got a number"
        );
        assert_eq!(
            problem(json!({"conversations": [{"from":"bot","value":"a"}]}), f),
            "conversations[0].from \"bot\" is not a known role (expected system, human, gpt, user or assistant)"
        );
        assert_eq!(problem(json!({"conversations": []}), f), "the conversation is empty");
        assert_eq!(
            problem(json!({"conversations": [{"from":"system","value":"a"},{"from":"human","value":"b"}]}), f),
            "conversation has no assistant turn"
        );
    }

    #[test]
    fn prompt_completion_and_text() {
        assert_eq!(
            parse_record(&json!({"prompt": "p", "completion": "c"}), DataFormat::PromptCompletion).unwrap(),
            Record::PromptCompletion { prompt: "p".into(), completion: "c".into() }
        );
        assert_eq!(problem(json!({"prompt": "p"}), DataFormat::PromptCompletion), "field \"completion\" is missing");
        assert_eq!(
            parse_record(&json!({"text": "t", "meta": {}}), DataFormat::Text).unwrap(),
            Record::Text("t".into())
        );
        assert_eq!(problem(json!({"text": null}), DataFormat::Text), "field \"text\" must be a string, got null");
        assert_eq!(problem(json!({"body": "t"}), DataFormat::Text), "field \"text\" is missing");
    }

    #[test]
    fn non_objects_and_mismatches() {
        assert_eq!(problem(json!([1, 2]), DataFormat::Text), "record must be a JSON object, got an array");
        assert_eq!(problem(json!("x"), DataFormat::Alpaca), "record must be a JSON object, got a string");
        let p = parse_record(&json!({"conversations": []}), DataFormat::Alpaca).unwrap_err();
        assert_eq!(
            p,
            RecordProblem::FormatMismatch {
                expected: DataFormat::Alpaca,
                found: DataFormat::ShareGpt,
                detected_at: None
            }
        );
        assert_eq!(p.to_string(), "record looks like sharegpt but the file's format is alpaca");
        let p = RecordProblem::FormatMismatch {
            expected: DataFormat::Text,
            found: DataFormat::Messages,
            detected_at: Some(1),
        };
        assert_eq!(p.to_string(), "record looks like messages but the file's format is text (detected from line 1)");
    }
}
