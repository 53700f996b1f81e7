//! Objects other than Nodes, kept as the JSON the API returns: create, update with optimistic
//! concurrency, patch (JSON merge patch, strategic merge patch taken as a merge patch, server-side
//! apply), delete, and list with label and field selectors. The metadata the API server fills in
//! (`uid`, `resourceVersion`, `generation`, `creationTimestamp`) and its error `Status` objects follow
//! `staging/src/k8s.io/apiserver/pkg/registry/generic/registry/store.go` and
//! `staging/src/k8s.io/apimachinery/pkg/api/errors/errors.go`.
//!
//! Server-side apply is simplified: the applied configuration is merged into the live object (maps
//! field by field, lists replaced whole) and stored, with one field manager's view of the world: no
//! field sets, so no conflicts between managers and no removal of fields a manager stopped applying.
//! Each applying manager gets its `metadata.managedFields` entry (manager, `Apply`, apiVersion, time;
//! no `fieldsV1`), so a client can see who applied an object.

use std::time::SystemTime;

use axum::http::StatusCode;
use serde_json::{Map, Value, json};

use super::KubeSimState;
use super::discovery::{self, Resource};

/// Where an object lives: its resource (group and plural), namespace (empty when cluster-scoped)
/// and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub group: String,
    pub plural: String,
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(r: &Resource, namespace: &str, name: &str) -> Self {
        Self {
            group: r.group.to_owned(),
            plural: r.plural.to_owned(),
            namespace: if r.namespaced {
                namespace.to_owned()
            } else {
                String::new()
            },
            name: name.to_owned(),
        }
    }

    pub fn pod(namespace: &str, name: &str) -> Self {
        Self {
            group: String::new(),
            plural: "pods".into(),
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

/// An API error, sent as a `Status` object with its HTTP code.
#[derive(Debug)]
pub struct ApiError {
    pub code: StatusCode,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiError {
    pub fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    pub fn not_found(r: &Resource, name: &str) -> Self {
        let mut e = Self::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{} \"{name}\" not found", r.qualified()),
        );
        e.details = Some(json!({ "name": name, "group": r.group, "kind": r.plural }));
        e
    }

    pub fn status(&self) -> Value {
        let mut body = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": self.message, "reason": self.reason,
            "code": self.code.as_u16(),
        });
        if let Some(d) = &self.details {
            body["details"] = d.clone();
        }
        body
    }
}

pub fn timestamp(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    let t = t.replace_nanosecond(0).unwrap_or(t);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// A `MicroTime` (`renewTime`, `acquireTime`): always exactly six fractional digits, UTC.
/// apimachinery's `pkg/apis/meta/v1/micro_time.go` marshals with `RFC3339Micro`
/// ("2006-01-02T15:04:05.000000Z07:00") and kubectl parses with the same fixed layout, so
/// RFC 3339's trimmed fraction (".81034Z") makes `kubectl describe node` fail to read the Lease.
pub fn micro_timestamp(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t).to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

pub fn parse_timestamp(s: &str) -> Option<SystemTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(SystemTime::from)
}

/// A uid in the shape the API server gives (a UUID), unique within this server.
fn uid(revision: u64) -> String {
    format!("6b696c6e-0000-4000-8000-{revision:012x}")
}

fn meta_str<'a>(doc: &'a Value, field: &str) -> Option<&'a str> {
    doc.get("metadata")?.get(field)?.as_str()
}

/// The resource a document's `apiVersion` and `kind` name.
pub fn resource_of(doc: &Value) -> Result<&'static Resource, ApiError> {
    let api_version = doc.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or("");
    discovery::by_kind(api_version, kind).ok_or_else(|| {
        ApiError::bad_request(format!(
            "no kind \"{kind}\" is registered for version \"{api_version}\""
        ))
    })
}

/// Stores a new object from a document that names its own resource (for callers in process).
pub fn create_document(state: &mut KubeSimState, doc: Value) -> Result<Value, ApiError> {
    let r = resource_of(&doc)?;
    let ns = meta_str(&doc, "namespace").unwrap_or("default").to_owned();
    create(state, r, &ns, doc)
}

fn require_namespace(state: &KubeSimState, r: &Resource, ns: &str) -> Result<(), ApiError> {
    if !r.namespaced {
        return Ok(());
    }
    let key = ObjectKey {
        group: String::new(),
        plural: "namespaces".into(),
        namespace: String::new(),
        name: ns.to_owned(),
    };
    if state.objects.contains_key(&key) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("namespaces \"{ns}\" not found"),
        ))
    }
}

/// `POST` to a collection: 201 with the stored object, 409 `AlreadyExists` if the name is taken.
pub fn create(
    state: &mut KubeSimState,
    r: &Resource,
    ns: &str,
    mut doc: Value,
) -> Result<Value, ApiError> {
    check_kind(r, &doc)?;
    let name = meta_str(&doc, "name")
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                format!(
                    "{} \"\" is invalid: metadata.name: Required value: name is required",
                    r.kind
                ),
            )
        })?
        .to_owned();
    if let Some(body_ns) = meta_str(&doc, "namespace")
        && r.namespaced
        && body_ns != ns
    {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    require_namespace(state, r, ns)?;
    let key = ObjectKey::new(r, ns, &name);
    if state.objects.contains_key(&key) {
        let mut e = ApiError::new(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", r.qualified()),
        );
        e.details = Some(json!({ "name": name, "group": r.group, "kind": r.plural }));
        return Err(e);
    }
    let rv = state.next_revision();
    let meta = metadata_mut(&mut doc);
    if r.namespaced {
        meta.insert("namespace".into(), json!(ns));
    } else {
        meta.remove("namespace");
    }
    meta.insert("uid".into(), json!(uid(rv)));
    meta.insert("resourceVersion".into(), json!(rv.to_string()));
    meta.insert("generation".into(), json!(1));
    meta.insert(
        "creationTimestamp".into(),
        json!(timestamp(SystemTime::now())),
    );
    meta.remove("deletionTimestamp");
    state.objects.insert(key, doc.clone());
    Ok(doc)
}

fn check_kind(r: &Resource, doc: &Value) -> Result<(), ApiError> {
    let api_version = doc.get("apiVersion").and_then(Value::as_str);
    let kind = doc.get("kind").and_then(Value::as_str);
    if api_version.is_some_and(|v| v != r.api_version()) || kind.is_some_and(|k| k != r.kind) {
        return Err(ApiError::bad_request(format!(
            "the object's apiVersion/kind ({}/{}) does not match the resource {} ({})",
            api_version.unwrap_or(""),
            kind.unwrap_or(""),
            r.qualified(),
            r.kind
        )));
    }
    Ok(())
}

fn metadata_mut(doc: &mut Value) -> &mut Map<String, Value> {
    if !doc.is_object() {
        *doc = json!({});
    }
    let obj = doc.as_object_mut().expect("an object");
    let meta = obj.entry("metadata").or_insert_with(|| json!({}));
    if !meta.is_object() {
        *meta = json!({});
    }
    meta.as_object_mut().expect("an object")
}

fn conflict(r: &Resource, name: &str) -> ApiError {
    let mut e = ApiError::new(
        StatusCode::CONFLICT,
        "Conflict",
        format!(
            "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please \
             apply your changes to the latest version and try again",
            r.qualified()
        ),
    );
    e.details = Some(json!({ "name": name, "group": r.group, "kind": r.plural }));
    e
}

/// Stores `doc` as the new state of an existing object: a new resourceVersion, the generation bumped
/// when anything but metadata and status changed (as the registry strategies do for spec changes),
/// the immutable metadata kept.
fn commit(state: &mut KubeSimState, key: ObjectKey, old: &Value, mut doc: Value) -> Value {
    let rv = state.next_revision();
    let spec_changed = {
        let strip = |v: &Value| {
            let mut v = v.clone();
            if let Some(o) = v.as_object_mut() {
                o.remove("metadata");
                o.remove("status");
            }
            v
        };
        strip(old) != strip(&doc)
    };
    let generation = old
        .pointer("/metadata/generation")
        .and_then(Value::as_i64)
        .unwrap_or(1)
        + i64::from(spec_changed);
    let meta = metadata_mut(&mut doc);
    for keep in ["uid", "creationTimestamp", "namespace", "name"] {
        match old.pointer(&format!("/metadata/{keep}")) {
            Some(v) => meta.insert(keep.into(), v.clone()),
            None => meta.remove(keep),
        };
    }
    meta.insert("resourceVersion".into(), json!(rv.to_string()));
    meta.insert("generation".into(), json!(generation));
    state.objects.insert(key, doc.clone());
    doc
}

/// `PUT` an object: 409 `Conflict` when the body's resourceVersion is not the stored one (an update
/// without one is unconditional, as for every built-in resource), 404 when it does not exist.
pub fn update(
    state: &mut KubeSimState,
    r: &Resource,
    ns: &str,
    name: &str,
    doc: Value,
) -> Result<Value, ApiError> {
    check_kind(r, &doc)?;
    if meta_str(&doc, "name").is_some_and(|n| n != name) {
        return Err(ApiError::bad_request(
            "the name of the object does not match the name on the URL",
        ));
    }
    let key = ObjectKey::new(r, ns, name);
    let old = state
        .objects
        .get(&key)
        .cloned()
        .ok_or_else(|| ApiError::not_found(r, name))?;
    if let Some(sent) = meta_str(&doc, "resourceVersion")
        && Some(sent) != meta_str(&old, "resourceVersion")
    {
        return Err(conflict(r, name));
    }
    Ok(commit(state, key, &old, doc))
}

/// RFC 7386 JSON merge patch: maps merge, `null` deletes, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(patch) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let obj = target.as_object_mut().expect("an object");
    for (k, v) in patch {
        if v.is_null() {
            obj.remove(k);
        } else {
            merge_patch(obj.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// `PATCH` with a merge patch or a strategic merge patch. A strategic merge patch is applied as a
/// merge patch: the same for maps and scalars; lists are replaced rather than merged by key, which no
/// client of this simulator relies on.
pub fn patch(
    state: &mut KubeSimState,
    r: &Resource,
    ns: &str,
    name: &str,
    patch: &Value,
) -> Result<Value, ApiError> {
    let key = ObjectKey::new(r, ns, name);
    let old = state
        .objects
        .get(&key)
        .cloned()
        .ok_or_else(|| ApiError::not_found(r, name))?;
    if let Some(sent) = patch
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        && Some(sent) != meta_str(&old, "resourceVersion")
    {
        return Err(conflict(r, name));
    }
    let mut doc = old.clone();
    merge_patch(&mut doc, patch);
    Ok(commit(state, key, &old, doc))
}

/// Maps merge key by key, anything else (lists included) is replaced: the applied configuration's
/// fields win, the live object's other fields stay.
fn apply_merge(target: &mut Value, applied: &Value) {
    match (target.as_object_mut(), applied.as_object()) {
        (Some(t), Some(a)) => {
            for (k, v) in a {
                match t.get_mut(k) {
                    Some(existing) => apply_merge(existing, v),
                    None => {
                        t.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        _ => *target = applied.clone(),
    }
}

/// Server-side apply (`PATCH` with `application/apply-patch+yaml`): creates the object from the
/// applied configuration or merges it into the live one. `fieldManager` is required, as the API
/// server requires it (`staging/src/k8s.io/apiserver/pkg/endpoints/handlers/patch.go`); the body's
/// `apiVersion`, `kind` and `name` must match the URL. Returns the object and whether it was created.
pub fn apply(
    state: &mut KubeSimState,
    r: &Resource,
    ns: &str,
    name: &str,
    applied: Value,
    field_manager: Option<&str>,
) -> Result<(Value, bool), ApiError> {
    if field_manager.is_none_or(str::is_empty) {
        return Err(ApiError::bad_request(
            "PATCH, application/apply-patch+yaml: fieldManager is required for apply requests",
        ));
    }
    if !applied.is_object() {
        return Err(ApiError::bad_request(
            "the applied configuration is not an object",
        ));
    }
    if applied.get("apiVersion").is_none() || applied.get("kind").is_none() {
        return Err(ApiError::bad_request(
            "invalid object type: the applied configuration must set apiVersion and kind",
        ));
    }
    check_kind(r, &applied)?;
    if meta_str(&applied, "name") != Some(name) {
        return Err(ApiError::bad_request(
            "the name of the object does not match the name on the URL",
        ));
    }
    // The API server refuses an applied configuration that sets managedFields
    // (`managedfields/internal/fieldmanager.go`: "metadata.managedFields must be nil").
    if applied
        .pointer("/metadata/managedFields")
        .is_some_and(|m| !m.is_null())
    {
        return Err(ApiError::bad_request("metadata.managedFields must be nil"));
    }
    let manager = field_manager.unwrap_or_default();
    let key = ObjectKey::new(r, ns, name);
    match state.objects.get(&key).cloned() {
        None => {
            let mut doc = applied;
            metadata_mut(&mut doc).remove("resourceVersion");
            record_manager(&mut doc, manager);
            Ok((create(state, r, ns, doc)?, true))
        }
        Some(old) => {
            if let Some(sent) = meta_str(&applied, "resourceVersion")
                && Some(sent) != meta_str(&old, "resourceVersion")
            {
                return Err(conflict(r, name));
            }
            let mut doc = old.clone();
            apply_merge(&mut doc, &applied);
            record_manager(&mut doc, manager);
            Ok((commit(state, key, &old, doc), false))
        }
    }
}

/// The applying manager's `managedFields` entry, replacing its earlier one and keeping the other
/// managers' (`ManagedFieldsEntry` in `apimachinery/pkg/apis/meta/v1/types.go`; one entry per
/// manager and operation, as `managedfields/internal/managedfieldsupdater.go` keeps them).
fn record_manager(doc: &mut Value, manager: &str) {
    let api_version = doc
        .get("apiVersion")
        .cloned()
        .unwrap_or_else(|| json!("v1"));
    let meta = metadata_mut(doc);
    let mut entries: Vec<Value> = meta
        .get("managedFields")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    entries.retain(|e| !(e["manager"] == manager && e["operation"] == "Apply"));
    entries.push(json!({
        "manager": manager,
        "operation": "Apply",
        "apiVersion": api_version,
        "time": timestamp(SystemTime::now()),
        "fieldsType": "FieldsV1",
    }));
    meta.insert("managedFields".into(), Value::Array(entries));
}

/// `DELETE` an object: the object as it was, or 404.
pub fn delete(
    state: &mut KubeSimState,
    r: &Resource,
    ns: &str,
    name: &str,
) -> Result<Value, ApiError> {
    let key = ObjectKey::new(r, ns, name);
    let doc = state
        .objects
        .remove(&key)
        .ok_or_else(|| ApiError::not_found(r, name))?;
    if r.plural == "namespaces" {
        // The namespace controller deletes what the namespace held.
        state.objects.retain(|k, _| k.namespace != name);
    }
    state.next_revision();
    Ok(doc)
}

/// A parsed label selector (`matchLabels` and `matchExpressions`, or the `a=b,c!=d,e,!f,g in (x,y)`
/// query form), as `staging/src/k8s.io/apimachinery/pkg/labels/selector.go` evaluates it.
#[derive(Debug, Clone, Default)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

#[derive(Debug, Clone)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

impl Selector {
    pub fn matches(&self, labels: Option<&Value>) -> bool {
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.requirements.iter().all(|req| match req {
            Requirement::Equals(k, v) => get(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            Requirement::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Requirement::NotIn(k, vs) => get(k).is_none_or(|x| vs.iter().all(|v| v != x)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::DoesNotExist(k) => get(k).is_none(),
        })
    }

    /// A `metav1.LabelSelector` object. `None` for JSON null: a nil selector, which selects nothing.
    pub fn from_label_selector(sel: &Value) -> Option<Self> {
        if sel.is_null() {
            return None;
        }
        let mut requirements = Vec::new();
        if let Some(m) = sel.get("matchLabels").and_then(Value::as_object) {
            for (k, v) in m {
                requirements.push(Requirement::Equals(
                    k.clone(),
                    v.as_str().unwrap_or_default().to_owned(),
                ));
            }
        }
        for e in sel
            .get("matchExpressions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let key = e
                .get("key")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let values: Vec<String> = e
                .get("values")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect();
            requirements.push(match e.get("operator").and_then(Value::as_str) {
                Some("In") => Requirement::In(key, values),
                Some("NotIn") => Requirement::NotIn(key, values),
                Some("Exists") => Requirement::Exists(key),
                // An unknown operator selects nothing rather than everything.
                Some("DoesNotExist") => Requirement::DoesNotExist(key),
                _ => Requirement::In(key, Vec::new()),
            });
        }
        Some(Self { requirements })
    }

    /// The `labelSelector` query parameter.
    pub fn parse(text: &str) -> Result<Self, ApiError> {
        let mut requirements = Vec::new();
        for part in split_top_level(text) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let req = if let Some(k) = part.strip_prefix('!') {
                Requirement::DoesNotExist(k.trim().to_owned())
            } else if let Some((k, rest)) = part.split_once(" notin ") {
                Requirement::NotIn(k.trim().to_owned(), set_values(rest)?)
            } else if let Some((k, rest)) = part.split_once(" in ") {
                Requirement::In(k.trim().to_owned(), set_values(rest)?)
            } else if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEquals(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                Requirement::Equals(k.trim().to_owned(), v.trim().to_owned())
            } else {
                Requirement::Exists(part.to_owned())
            };
            requirements.push(req);
        }
        Ok(Self { requirements })
    }
}

/// Splits at commas outside parentheses (`a in (x,y),b` → `a in (x,y)`, `b`).
fn split_top_level(text: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0i32, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

fn set_values(text: &str) -> Result<Vec<String>, ApiError> {
    let inner = text
        .trim()
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .ok_or_else(|| ApiError::bad_request(format!("unable to parse requirement: {text}")))?;
    Ok(inner.split(',').map(|v| v.trim().to_owned()).collect())
}

/// The `fieldSelector` query parameter: `field=value`, `field==value`, `field!=value`, comma-joined,
/// over the fields the API server supports for the resource (`metadata.name`, `metadata.namespace`,
/// and for pods `spec.nodeName` and `status.phase`). Another field is a 400, as on a real server.
pub fn field_matcher(
    r: &Resource,
    text: &str,
) -> Result<impl Fn(&Value) -> bool + use<>, ApiError> {
    let mut terms: Vec<(String, bool, String)> = Vec::new();
    for part in text.split(',').filter(|p| !p.is_empty()) {
        let (field, eq, value) = if let Some((f, v)) = part.split_once("!=") {
            (f, false, v)
        } else if let Some((f, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
            (f, true, v)
        } else {
            return Err(ApiError::bad_request(format!(
                "invalid field selector: {part}"
            )));
        };
        let pointer = match (r.plural, field) {
            (_, "metadata.name") => "/metadata/name",
            (_, "metadata.namespace") => "/metadata/namespace",
            ("pods", "spec.nodeName") => "/spec/nodeName",
            ("pods", "status.phase") => "/status/phase",
            _ => {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {field}"
                )));
            }
        };
        terms.push((pointer.to_owned(), eq, value.to_owned()));
    }
    Ok(move |doc: &Value| {
        terms.iter().all(|(pointer, eq, value)| {
            let actual = doc.pointer(pointer).and_then(Value::as_str).unwrap_or("");
            (actual == value) == *eq
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micro_time_keeps_six_digits_as_kubectl_parses_it() {
        // 810340 µs: RFC 3339 formatting would trim it to ".81034", which kubectl refuses.
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(1_796_436_187_810_340);
        assert_eq!(micro_timestamp(t), "2026-12-05T02:03:07.810340Z");
        let whole = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_796_436_187);
        assert_eq!(micro_timestamp(whole), "2026-12-05T02:03:07.000000Z");
    }

    #[test]
    fn label_selectors_parse_as_kubectl_sends_them() {
        let labels = json!({ "app": "web", "tier": "front" });
        let m = |s: &str| Selector::parse(s).unwrap().matches(Some(&labels));
        assert!(m("app=web"));
        assert!(m("app==web,tier"));
        assert!(!m("app!=web"));
        assert!(m("tier in (front,back),!missing"));
        assert!(!m("tier notin (front)"));
        assert!(m(""));
    }

    #[test]
    fn a_nil_selector_selects_nothing_and_an_empty_one_everything() {
        assert!(Selector::from_label_selector(&Value::Null).is_none());
        let empty = Selector::from_label_selector(&json!({})).unwrap();
        assert!(empty.matches(Some(&json!({ "a": "b" }))));
        let sel = Selector::from_label_selector(&json!({
            "matchLabels": { "app": "db" },
            "matchExpressions": [{ "key": "tier", "operator": "NotIn", "values": ["cache"] }],
        }))
        .unwrap();
        assert!(sel.matches(Some(&json!({ "app": "db" }))));
        assert!(!sel.matches(Some(&json!({ "app": "db", "tier": "cache" }))));
    }

    #[test]
    fn a_stale_update_is_a_conflict_and_a_fresh_one_bumps_the_version() {
        let mut state = KubeSimState::default();
        let lease = json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": { "name": "kiln", "namespace": "argocd" }, "spec": { "holderIdentity": "a" },
        });
        // No such namespace yet.
        assert_eq!(
            create_document(&mut state, lease.clone()).unwrap_err().code,
            404
        );
        create_document(
            &mut state,
            json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": "argocd" } }),
        )
        .unwrap();
        let created = create_document(&mut state, lease.clone()).unwrap();
        let rv = created["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_owned();
        let r = discovery::by_kind("coordination.k8s.io/v1", "Lease").unwrap();
        let mut next = created.clone();
        next["spec"]["holderIdentity"] = json!("b");
        let updated = update(&mut state, r, "argocd", "kiln", next.clone()).unwrap();
        assert_ne!(updated["metadata"]["resourceVersion"], json!(rv));
        assert_eq!(updated["metadata"]["generation"], 2);
        // The same body again carries the old resourceVersion.
        let err = update(&mut state, r, "argocd", "kiln", next).unwrap_err();
        assert_eq!((err.code.as_u16(), err.reason), (409, "Conflict"));
        assert_eq!(
            create_document(&mut state, lease).unwrap_err().reason,
            "AlreadyExists"
        );
    }

    #[test]
    fn apply_creates_then_merges_and_needs_a_field_manager() {
        let mut state = KubeSimState::default();
        let r = discovery::by_kind("v1", "ConfigMap").unwrap();
        let cm = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": { "name": "flannel", "namespace": "kube-system" }, "data": { "a": "1" },
        });
        assert_eq!(
            apply(&mut state, r, "kube-system", "flannel", cm.clone(), None)
                .unwrap_err()
                .code,
            400
        );
        let (_, created) =
            apply(&mut state, r, "kube-system", "flannel", cm, Some("kiln")).unwrap();
        assert!(created);
        let (doc, created) = apply(
            &mut state,
            r,
            "kube-system",
            "flannel",
            json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": { "name": "flannel", "namespace": "kube-system" }, "data": { "b": "2" },
            }),
            Some("kiln"),
        )
        .unwrap();
        assert!(!created);
        assert_eq!(doc["data"], json!({ "a": "1", "b": "2" }));
        let managers = |doc: &Value| -> Vec<String> {
            doc["metadata"]["managedFields"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| format!("{}/{}", e["manager"].as_str().unwrap(), e["operation"]))
                .collect()
        };
        assert_eq!(managers(&doc), ["kiln/\"Apply\""], "one entry per manager");
        let cm = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": { "name": "flannel", "namespace": "kube-system" }, "data": { "c": "3" },
        });
        let (doc, _) = apply(&mut state, r, "kube-system", "flannel", cm, Some("talos")).unwrap();
        assert_eq!(managers(&doc), ["kiln/\"Apply\"", "talos/\"Apply\""]);
        let smuggled = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": { "name": "flannel", "namespace": "kube-system", "managedFields": [] },
        });
        assert_eq!(
            apply(
                &mut state,
                r,
                "kube-system",
                "flannel",
                smuggled,
                Some("talos")
            )
            .unwrap_err()
            .code,
            400
        );
    }
}
