//! Helm values: kiln's sized defaults with the user's `spec.apps.<app>.values` merged over them, the
//! way Helm merges a values file over a chart's defaults.

use serde_json::{Map, Value};

/// Merges `over` into `base`: maps merge key by key, recursively; any other value replaces; `null`
/// deletes the key (so a user can drop a value kiln sets).
pub fn deep_merge(base: &mut Map<String, Value>, over: &Map<String, Value>) {
    for (key, value) in over {
        match (base.get_mut(key), value) {
            (_, Value::Null) => {
                base.remove(key);
            }
            (Some(Value::Object(into)), Value::Object(from)) => deep_merge(into, from),
            _ => {
                let mut value = value.clone();
                if let Value::Object(map) = &mut value {
                    strip_nulls(map);
                }
                base.insert(key.clone(), value);
            }
        }
    }
}

/// Removes `null`s from a map being inserted whole: there is nothing under it to delete, and the
/// values file should say only what it sets.
fn strip_nulls(map: &mut Map<String, Value>) {
    map.retain(|_, v| !v.is_null());
    for v in map.values_mut() {
        if let Value::Object(inner) = v {
            strip_nulls(inner);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn maps_merge_lists_replace_null_deletes() {
        let mut base = obj(json!({
            "a": {"x": 1, "y": 2}, "list": [1, 2], "gone": {"deep": true}, "keep": "k"
        }));
        deep_merge(
            &mut base,
            &obj(json!({"a": {"y": 3, "z": {"n": null, "m": 1}}, "list": [9], "gone": null})),
        );
        assert_eq!(
            Value::Object(base),
            json!({"a": {"x": 1, "y": 3, "z": {"m": 1}}, "list": [9], "keep": "k"})
        );
    }
}
