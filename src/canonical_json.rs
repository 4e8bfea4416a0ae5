//! Canonical JSON: object keys sorted by their UTF-8 bytes, no
//! insignificant whitespace, serde_json's escaping and number forms.
//!
//! Used wherever bytes are hashed or signed (the audit chain, manifests),
//! so that what a database hands back (PostgreSQL `jsonb` reorders keys)
//! hashes the same as what was written.

use serde_json::Value;

pub fn to_string(value: &Value) -> String {
    let mut out = String::new();
    write(value, &mut out);
    out
}

fn write(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write(item, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn sorts_keys_recursively_without_whitespace() {
        let value = json!({"b": 1, "a": {"d": [true, null, "x"], "c": "é\n"}});
        assert_eq!(super::to_string(&value), r#"{"a":{"c":"é\n","d":[true,null,"x"]},"b":1}"#);
    }

    #[test]
    fn escapes_like_pythons_json_dumps() {
        // docs/manifests.md promises the bytes of Python's
        // json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=False).
        let value = json!({"s": "\u{1}\u{1f}\u{7f}\"\\/\t\u{2028}ü"});
        assert_eq!(super::to_string(&value), "{\"s\":\"\\u0001\\u001f\u{7f}\\\"\\\\/\\t\u{2028}ü\"}");
    }
}
