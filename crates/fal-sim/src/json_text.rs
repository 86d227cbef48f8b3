//! A second JSON rendering for webhook bodies: pretty-printed, keys in reverse order, every
//! non-ASCII character and `/` escaped. Still valid JSON; receivers must verify the raw bytes
//! rather than a re-serialisation.

use std::fmt::Write;

use serde_json::Value;

pub(crate) fn pretty_escaped(value: &Value) -> String {
    let mut out = String::new();
    write_value(value, 0, &mut out);
    out.push('\n');
    out
}

fn write_value(value: &Value, indent: usize, out: &mut String) {
    match value {
        Value::Object(map) => {
            if map.is_empty() {
                out.push_str("{}");
                return;
            }
            out.push_str("{\n");
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_by(|a, b| b.cmp(a));
            for (i, key) in keys.iter().enumerate() {
                push_indent(indent + 4, out);
                write_string(key, out);
                out.push_str(" : ");
                write_value(&map[key.as_str()], indent + 4, out);
                if i + 1 < keys.len() {
                    out.push(',');
                }
                out.push('\n');
            }
            push_indent(indent, out);
            out.push('}');
        }
        Value::Array(items) => {
            if items.is_empty() {
                out.push_str("[]");
                return;
            }
            out.push_str("[\n");
            for (i, item) in items.iter().enumerate() {
                push_indent(indent + 4, out);
                write_value(item, indent + 4, out);
                if i + 1 < items.len() {
                    out.push(',');
                }
                out.push('\n');
            }
            push_indent(indent, out);
            out.push(']');
        }
        Value::String(s) => write_string(s, out),
        other => out.push_str(&other.to_string()),
    }
}

fn write_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '/' => out.push_str("\\/"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{:04x}", unit);
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn push_indent(n: usize, out: &mut String) {
    out.extend(std::iter::repeat_n(' ', n));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_escaped_json_that_parses_back() {
        let value = serde_json::json!({"a": "café 😀/x", "b": [1, {"z": null}], "c": {}});
        let text = pretty_escaped(&value);
        assert!(text.contains("caf\\u00e9"));
        assert!(text.contains("\\ud83d\\ude00"));
        assert!(text.find("\"c\"").unwrap() < text.find("\"a\"").unwrap());
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), value);
    }
}
