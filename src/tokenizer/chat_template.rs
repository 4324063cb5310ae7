//! Hugging Face chat templates (Jinja2), rendered with minijinja in a sandbox.
//!
//! The environment mirrors what `transformers` sets up in `_compile_jinja_template`:
//! `trim_blocks` and `lstrip_blocks` on, `keep_trailing_newline` off (Jinja2's default),
//! loop controls, `raise_exception`, `strftime_now`, a `tojson` that writes like Python's
//! `json.dumps(ensure_ascii=False)` (no HTML escaping, `", "`/`": "` separators), and Python's
//! string/dict/list methods (`.strip()`, `.startswith()`, `.items()`, ...) via minijinja-contrib.
//!
//! Sandbox: the template can only produce text. No loader is installed, so `include`,
//! `import`, `extends` and `from` cannot reach the file system (or any other template), and
//! no function that touches the outside world is registered (`strftime_now` only reads the clock).

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use minijinja::value::{Enumerator, Kwargs, Object, ObjectRepr, ValueKind};
use minijinja::{AutoEscape, Environment, Error, ErrorKind, UndefinedBehavior, Value};

use super::TokenizerError;
use crate::chat::Message;

/// The one name the template is stored under inside its private environment.
const TEMPLATE_NAME: &str = "chat_template";

/// A compiled chat template plus the special tokens it may print.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

impl ChatTemplate {
    /// Compile `source` once. A syntax error comes back as [`TokenizerError::Template`] with
    /// minijinja's message, line and the offending source line.
    pub fn new(source: &str, bos_token: Option<String>, eos_token: Option<String>) -> Result<Self, TokenizerError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_undefined_behavior(UndefinedBehavior::Lenient);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME.to_string(), source.to_string()).map_err(|e| {
            TokenizerError::Template { message: format!("cannot compile chat template: {}", describe(&e)) }
        })?;
        Ok(ChatTemplate { env, source: source.to_string(), bos_token, eos_token })
    }

    /// Render `messages` (each a `{role, content}` mapping, in that key order) with
    /// `add_generation_prompt`, `bos_token` and `eos_token` in scope.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String, TokenizerError> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| TokenizerError::Template { message: format!("chat template missing: {e}") })?;
        let messages: Vec<Value> = messages.iter().map(|m| Value::from_object(MessageObject(m.clone()))).collect();
        // Unset tokens are left out (undefined, so they print as nothing), as in transformers.
        let mut ctx: std::collections::BTreeMap<&str, Value> = std::collections::BTreeMap::new();
        ctx.insert("messages", Value::from(messages));
        ctx.insert("add_generation_prompt", Value::from(add_generation_prompt));
        if let Some(t) = &self.bos_token {
            ctx.insert("bos_token", Value::from(t.as_str()));
        }
        if let Some(t) = &self.eos_token {
            ctx.insert("eos_token", Value::from(t.as_str()));
        }
        template
            .render(ctx)
            .map_err(|e| TokenizerError::Template { message: format!("cannot render chat template: {}", describe(&e)) })
    }

    /// The template text as given.
    pub fn source(&self) -> &str {
        &self.source
    }
}

/// minijinja's message plus the chain of causes and the source location, on one line.
fn describe(e: &Error) -> String {
    let mut out = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let _ = write!(out, ": {c}");
        cause = c.source();
    }
    out
}

/// A chat message as the template sees it: a mapping with keys `role` then `content`
/// (an object rather than a serialised struct, so `items()`/`tojson` keep Python's key order).
#[derive(Debug)]
struct MessageObject(Message);

impl Object for MessageObject {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        match key.as_str()? {
            "role" => Some(Value::from(self.0.role.as_str())),
            "content" => Some(Value::from(self.0.content.as_str())),
            _ => None,
        }
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Str(&["role", "content"])
    }
}

/// `raise_exception(msg)`: abort rendering with `msg` as the error.
fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// `x | tojson(indent=None, separators=None, sort_keys=False, ensure_ascii=False)`, written like
/// Python's `json.dumps` with transformers' defaults.
fn tojson(value: Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<Value> = kwargs.get("indent")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match (v.as_i64(), v.as_str()) {
            (Some(n), _) => Some(" ".repeat(n.max(0) as usize)),
            (None, Some(s)) => Some(s.to_string()),
            _ => return Err(Error::new(ErrorKind::InvalidOperation, "tojson: indent must be an int or a string")),
        },
    };
    let (item_sep, key_sep) = match separators.as_deref() {
        Some([a, b]) => (a.clone(), b.clone()),
        Some(_) => return Err(Error::new(ErrorKind::InvalidOperation, "tojson: separators must be a pair")),
        None if indent.is_some() => (",".to_string(), ": ".to_string()),
        None => (", ".to_string(), ": ".to_string()),
    };
    let opts = JsonOpts {
        indent,
        item_sep,
        key_sep,
        sort_keys: sort_keys.unwrap_or(false),
        ensure_ascii: ensure_ascii.unwrap_or(false),
    };
    let mut out = String::new();
    write_json(&mut out, &value, &opts, 0)?;
    Ok(Value::from(out))
}

struct JsonOpts {
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
    ensure_ascii: bool,
}

fn write_json(out: &mut String, v: &Value, o: &JsonOpts, depth: usize) -> Result<(), Error> {
    if depth > 128 {
        return Err(Error::new(ErrorKind::InvalidOperation, "tojson: value nested too deeply"));
    }
    match v.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if let Some(i) = v.as_i64().filter(|_| v.is_integer()) {
                let _ = write!(out, "{i}");
            } else if v.is_integer() {
                // Integers beyond i64 (i128/u128): their display is already JSON.
                let _ = write!(out, "{v}");
            } else {
                let f = f64::try_from(v.clone())?;
                out.push_str(&python_float(f));
            }
        }
        ValueKind::String => write_json_str(out, v.as_str().unwrap_or_default(), o.ensure_ascii),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            write_container(out, '[', ']', items.len(), o, depth, |out, i| write_json(out, &items[i], o, depth + 1))?;
        }
        ValueKind::Map => {
            let mut pairs: Vec<(String, Value)> = Vec::new();
            for key in v.try_iter()? {
                let item = v.get_item(&key)?;
                let key = match key.kind() {
                    ValueKind::String => key.as_str().unwrap_or_default().to_string(),
                    ValueKind::None => "null".to_string(),
                    ValueKind::Bool => (if key.is_true() { "true" } else { "false" }).to_string(),
                    ValueKind::Number => {
                        let mut s = String::new();
                        write_json(&mut s, &key, o, depth + 1)?;
                        s
                    }
                    other => {
                        return Err(Error::new(
                            ErrorKind::InvalidOperation,
                            format!("tojson: keys must be str, int, float, bool or None, not {other}"),
                        ))
                    }
                };
                pairs.push((key, item));
            }
            if o.sort_keys {
                pairs.sort_by(|a, b| a.0.cmp(&b.0));
            }
            write_container(out, '{', '}', pairs.len(), o, depth, |out, i| {
                write_json_str(out, &pairs[i].0, o.ensure_ascii);
                out.push_str(&o.key_sep);
                write_json(out, &pairs[i].1, o, depth + 1)
            })?;
        }
        other => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: a value of type {other} is not JSON serializable"),
            ))
        }
    }
    Ok(())
}

fn write_container(
    out: &mut String,
    open: char,
    close: char,
    len: usize,
    o: &JsonOpts,
    depth: usize,
    mut item: impl FnMut(&mut String, usize) -> Result<(), Error>,
) -> Result<(), Error> {
    out.push(open);
    if len == 0 {
        out.push(close);
        return Ok(());
    }
    for i in 0..len {
        if i > 0 {
            out.push_str(&o.item_sep);
        }
        if let Some(ind) = &o.indent {
            out.push('\n');
            out.push_str(&ind.repeat(depth + 1));
        }
        item(out, i)?;
    }
    if let Some(ind) = &o.indent {
        out.push('\n');
        out.push_str(&ind.repeat(depth));
    }
    out.push(close);
    Ok(())
}

fn write_json_str(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if ensure_ascii && !(' '..='~').contains(&c) => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{:04x}", u);
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `repr(float)` as `json.dumps` writes it.
fn python_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity".into() } else { "-Infinity".into() };
    }
    let a = f.abs();
    if a != 0.0 && !(1e-4..1e16).contains(&a) {
        // Rust's `{:e}` gives the shortest round-trip digits: 1e20 -> "1e20", Python says "1e+20".
        let s = format!("{f:e}");
        let (mant, exp) = s.split_once('e').unwrap_or((&s, "0"));
        let exp: i32 = exp.parse().unwrap_or(0);
        return format!("{mant}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    }
    let s = format!("{f}");
    if s.contains('.') {
        s
    } else {
        format!("{s}.0")
    }
}

/// `strftime_now(fmt)`: the current time (UTC) formatted with the usual `%` codes.
fn strftime_now(format: String) -> Result<Value, Error> {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    strftime(secs, &format).map(Value::from)
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"];

/// Civil date (year, month 1-12, day 1-31) of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn strftime(unix_secs: i64, format: &str) -> Result<String, Error> {
    let days = unix_secs.div_euclid(86_400);
    let secs = unix_secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss) = (secs / 3600, secs / 60 % 60, secs % 60);
    let weekday = (days + 4).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let cumulative = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = cumulative[(m - 1) as usize] + d + u32::from(leap && m > 2);
    let month = MONTHS[(m - 1) as usize];
    let wname = WEEKDAYS[weekday];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let spec = chars
            .next()
            .ok_or_else(|| Error::new(ErrorKind::InvalidOperation, "strftime_now: format ends with a lone %"))?;
        let _ = match spec {
            'Y' => write!(out, "{y}"),
            'y' => write!(out, "{:02}", y.rem_euclid(100)),
            'm' => write!(out, "{m:02}"),
            'd' => write!(out, "{d:02}"),
            '-' => match chars.next() {
                Some('d') => write!(out, "{d}"),
                Some('m') => write!(out, "{m}"),
                _ => return Err(Error::new(ErrorKind::InvalidOperation, "strftime_now: unsupported %- code")),
            },
            'e' => write!(out, "{d:>2}"),
            'j' => write!(out, "{yday:03}"),
            'H' => write!(out, "{hh:02}"),
            'I' => write!(out, "{:02}", if hh % 12 == 0 { 12 } else { hh % 12 }),
            'p' => write!(out, "{}", if hh < 12 { "AM" } else { "PM" }),
            'M' => write!(out, "{mm:02}"),
            'S' => write!(out, "{ss:02}"),
            'b' | 'h' => write!(out, "{}", &month[..3]),
            'B' => write!(out, "{month}"),
            'a' => write!(out, "{}", &wname[..3]),
            'A' => write!(out, "{wname}"),
            'F' => write!(out, "{y}-{m:02}-{d:02}"),
            'T' => write!(out, "{hh:02}:{mm:02}:{ss:02}"),
            'Z' => write!(out, "UTC"),
            'z' => write!(out, "+0000"),
            '%' => write!(out, "%"),
            other => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("strftime_now: unsupported format code %{other}"),
                ))
            }
        };
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::Role;

    const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    fn msg(role: Role, content: &str) -> Message {
        Message::new(role, content)
    }

    #[test]
    fn smollm2_injects_default_system_prompt() {
        let t = ChatTemplate::new(SMOLLM2, None, Some("<|im_end|>".into())).unwrap();
        let out = t.render(&[msg(Role::User, "Hi there")], true).unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
             <|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
        );
        let out = t
            .render(&[msg(Role::System, "Be brief."), msg(Role::User, "Hi"), msg(Role::Assistant, "Hello!")], false)
            .unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
             <|im_start|>assistant\nHello!<|im_end|>\n"
        );
        assert_eq!(t.source(), SMOLLM2);
    }

    // The classic Llama-2 chat template, as shipped in tokenizer_config.json.
    const LLAMA2: &str = "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}";

    #[test]
    fn llama2_template_and_raise_exception() {
        let t = ChatTemplate::new(LLAMA2, Some("<s>".into()), Some("</s>".into())).unwrap();
        let out = t
            .render(
                &[
                    msg(Role::System, "Sys"),
                    msg(Role::User, " Hi "),
                    msg(Role::Assistant, "Yo"),
                    msg(Role::User, "Again"),
                ],
                false,
            )
            .unwrap();
        // strip() applies to the whole content, system block included, so " Hi" keeps its space.
        assert_eq!(out, "<s>[INST] <<SYS>>\nSys\n<</SYS>>\n\n Hi [/INST] Yo </s><s>[INST] Again [/INST]");
        let err = t.render(&[msg(Role::User, "a"), msg(Role::User, "b")], false).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("Conversation roles must alternate user/assistant/user/assistant/..."), "{text}");
    }

    #[test]
    fn python_methods_loop_first_and_block_trimming() {
        let src = "{% for m in messages %}\n    {% if loop.first %}\n[{{ m.role.upper() }}]\n    {% endif %}\n{{ m['content'].strip() }}{% if m.content.strip().startswith('x') %}!{% endif %}|{{ m.content.split(',') | length }}\n{% endfor %}\n{% for k, v in messages[0].items() %}{{ k }}={{ v }};{% endfor %}\n";
        let t = ChatTemplate::new(src, None, None).unwrap();
        let out = t.render(&[msg(Role::User, "  xa,b  "), msg(Role::Assistant, "c")], false).unwrap();
        // lstrip_blocks removes the indentation before block tags, trim_blocks the newline after
        // them; the final newline of the source is dropped (keep_trailing_newline = false).
        assert_eq!(out, "[USER]\nxa,b!|2\nc|1\nrole=user;content=  xa,b  ;");
    }

    #[test]
    fn tojson_writes_like_python() {
        let src = "{{ messages[0] | tojson }}|{{ {'a': [1, 2.5, none, true], 'b': '<é\"\\n>'} | tojson }}|{{ {'z': 1, 'a': {}} | tojson(indent=2, sort_keys=true) }}";
        let t = ChatTemplate::new(src, None, None).unwrap();
        let out = t.render(&[msg(Role::User, "hi")], false).unwrap();
        assert_eq!(
            out,
            "{\"role\": \"user\", \"content\": \"hi\"}|{\"a\": [1, 2.5, null, true], \"b\": \"<é\\\"\\n>\"}|{\n  \"a\": {},\n  \"z\": 1\n}"
        );
        assert_eq!(python_float(1.0), "1.0");
        assert_eq!(python_float(1e20), "1e+20");
        assert_eq!(python_float(1.5e-7), "1.5e-07");
    }

    #[test]
    fn generation_prompt_flag_and_special_tokens_in_scope() {
        let src = "{{ bos_token }}{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}{% if add_generation_prompt %}>{% endif %}";
        let t = ChatTemplate::new(src, Some("<s>".into()), Some("</s>".into())).unwrap();
        assert_eq!(t.render(&[msg(Role::User, "a")], true).unwrap(), "<s>a</s>>");
        // Checked against transformers 5.23 apply_chat_template.
        let py = "[{{ bos_token }}|{{ messages[0] | tojson }}|{{ {'x': 1.0, 'y': [1,2]} | tojson(indent=2) }}]";
        let t2 = ChatTemplate::new(py, None, None).unwrap();
        assert_eq!(
            t2.render(&[msg(Role::User, "a")], false).unwrap(),
            "[|{\"role\": \"user\", \"content\": \"a\"}|{\n  \"x\": 1.0,\n  \"y\": [\n    1,\n    2\n  ]\n}]"
        );
        assert_eq!(t.render(&[msg(Role::User, "a")], false).unwrap(), "<s>a</s>");
        // Without tokens they are undefined and print as nothing, as in Jinja2.
        let t = ChatTemplate::new(src, None, None).unwrap();
        assert_eq!(t.render(&[msg(Role::User, "a")], false).unwrap(), "a");
    }

    #[test]
    fn cannot_include_or_import_files() {
        for src in [
            "{% include '/etc/passwd' %}",
            "{% include 'Cargo.toml' %}",
            "{% import 'src/lib.rs' as x %}",
            "{% extends 'Cargo.toml' %}",
            "{% from 'Cargo.toml' import y %}",
        ] {
            let t = ChatTemplate::new(src, None, None).unwrap();
            let err = t.render(&[], false).unwrap_err().to_string();
            assert!(err.contains("not found") || err.contains("template"), "{src}: {err}");
            assert!(!err.contains("[package]") && !err.contains("root:"), "{src}: {err}");
        }
        // Including itself only recurses until the limit; it cannot read anything new.
        let t = ChatTemplate::new("{% include 'chat_template' %}", None, None).unwrap();
        assert!(t.render(&[], false).is_err());
    }

    #[test]
    fn syntax_error_is_reported_at_compile_time() {
        let err = ChatTemplate::new("{% for m in messages %}{{ m.content }", None, None).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("cannot compile chat template") && text.contains("syntax error"), "{text}");
    }

    #[test]
    fn strftime_formats_known_dates() {
        // 2024-07-26 13:05:09 UTC, a Friday.
        let t = 1_722_000_000 - 1_722_000_000 % 86_400 + 13 * 3600 + 5 * 60 + 9;
        assert_eq!(strftime(t, "%d %b %Y %H:%M:%S %A %j %%").unwrap(), "26 Jul 2024 13:05:09 Friday 208 %");
        assert_eq!(strftime(0, "%F %T %a").unwrap(), "1970-01-01 00:00:00 Thu");
        assert_eq!(strftime(951_782_400, "%F").unwrap(), "2000-02-29");
        assert!(strftime(0, "%Q").is_err());
        let t = ChatTemplate::new("{{ strftime_now('%Y') | length }}", None, None).unwrap();
        assert_eq!(t.render(&[], false).unwrap(), "4");
    }
}
