//! JSON values written as YAML block documents, for `isola kube generate`.
//! Strings are always double-quoted with JSON's escapes (a YAML double-
//! quoted scalar accepts them), so no value can be read back as another
//! type (`"no"`, `"1.0"`, `"08"`). Keys: `apiVersion`, `kind`, `metadata`,
//! `name` first, as kubectl writes them; the rest in order.

use serde_json::Value;

const FIRST: [&str; 4] = ["apiVersion", "kind", "metadata", "name"];

/// One document: its comment lines, then the object.
pub(crate) fn document(comments: &[String], v: &Value) -> String {
    let mut out = String::from("---\n");
    for c in comments {
        for line in c.lines() {
            out.push_str("# ");
            out.push_str(line);
            out.push('\n');
        }
    }
    block(v, 0, &mut out);
    out
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => quoted(s),
        Value::Array(a) if a.is_empty() => "[]".into(),
        Value::Object(o) if o.is_empty() => "{}".into(),
        other => other.to_string(),
    }
}

fn is_block(v: &Value) -> bool {
    match v {
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        _ => false,
    }
}

fn ordered(o: &serde_json::Map<String, Value>) -> Vec<(&String, &Value)> {
    let mut keys: Vec<(&String, &Value)> = o.iter().collect();
    keys.sort_by_key(|(k, _)| FIRST.iter().position(|f| f == k).unwrap_or(FIRST.len()));
    keys
}

/// `v` (an object or array) at `indent` spaces.
fn block(v: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(o) => {
            for (k, val) in ordered(o) {
                let key = quoted(k);
                let key = if is_plain_key(k) { k.as_str() } else { &key };
                if is_block(val) {
                    out.push_str(&format!("{pad}{key}:\n"));
                    let inner = if val.is_array() { indent } else { indent + 2 };
                    block(val, inner, out);
                } else {
                    out.push_str(&format!("{pad}{key}: {}\n", scalar(val)));
                }
            }
        }
        Value::Array(a) => {
            for item in a {
                if is_block(item) {
                    // The item's first line goes after "- ", the rest below.
                    let mut inner = String::new();
                    block(item, indent + 2, &mut inner);
                    let trimmed = inner.trim_start_matches(' ');
                    out.push_str(&format!("{pad}- {trimmed}"));
                } else {
                    out.push_str(&format!("{pad}- {}\n", scalar(item)));
                }
            }
        }
        other => out.push_str(&format!("{pad}{}\n", scalar(other))),
    }
}

/// A double-quoted scalar: JSON's escapes, and DEL and the C1 controls
/// escaped too (JSON leaves them, YAML forbids them raw).
fn quoted(s: &str) -> String {
    let json = Value::String(s.to_string()).to_string();
    json.chars()
        .map(|c| match c {
            '\u{7f}'..='\u{9f}' => format!("\\u{:04x}", u32::from(c)),
            c => c.to_string(),
        })
        .collect()
}

/// YAML 1.1 words a reader (PyYAML, sigs.k8s.io/yaml) takes for a bool or
/// null, not a string.
const YAML11_WORDS: [&str; 11] = [
    "y", "n", "yes", "no", "on", "off", "true", "false", "null", "~", "",
];

/// Kubernetes keys are plain words that start with a letter; anything
/// else (an annotation with a colon, `on`, `123`) is quoted.
fn is_plain_key(k: &str) -> bool {
    k.starts_with(|c: char| c.is_ascii_alphabetic())
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
        && !YAML11_WORDS.contains(&k.to_ascii_lowercase().as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_objects_and_lists() {
        let v = json!({
            "spec": {"containers": [{"name": "web", "args": ["a b", "no"], "ports": [{"containerPort": 80}]}]},
            "kind": "Deployment", "apiVersion": "apps/v1", "empty": [], "n": 1.5, "ok": true
        });
        let y = document(&["from isola".into()], &v);
        let want = "---\n# from isola\napiVersion: \"apps/v1\"\nkind: \"Deployment\"\nempty: []\n\"n\": 1.5\nok: true\nspec:\n  containers:\n  - name: \"web\"\n    args:\n    - \"a b\"\n    - \"no\"\n    ports:\n    - containerPort: 80\n";
        assert_eq!(y, want);
    }

    #[test]
    fn odd_keys_and_strings_are_quoted() {
        let y = document(&[], &json!({"a:b": "x\n\"y\""}));
        assert_eq!(y, "---\n\"a:b\": \"x\\n\\\"y\\\"\"\n");
        let y = document(&[], &json!({"on": 1, "No": 2, "9x": 3, "ok": "\u{85}"}));
        assert_eq!(y, "---\n\"9x\": 3\n\"No\": 2\nok: \"\\u0085\"\n\"on\": 1\n");
    }
}
