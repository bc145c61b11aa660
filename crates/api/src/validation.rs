//! Validation as Kubernetes does it, with field paths: an invalid object becomes a 422 `Status`
//! whose `details.causes` name each bad field (`metadata.name`, `spec.template.spec.containers[0].name`).
//! Only the checks shared by every resource live here so far: names, labels, annotations.

use std::collections::BTreeMap;

use serde::Serialize;

/// One invalid field, as it appears in a `Status`'s `details.causes`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// `FieldValueInvalid`, `FieldValueRequired`, `FieldValueTooLong`, …
    pub reason: &'static str,
    pub message: String,
    pub field: String,
}

impl FieldError {
    pub fn invalid(field: impl Into<String>, value: &str, detail: &str) -> FieldError {
        FieldError {
            reason: "FieldValueInvalid",
            message: format!("Invalid value: {value:?}: {detail}"),
            field: field.into(),
        }
    }

    /// An invalid number, written without quotes as Kubernetes does.
    pub fn invalid_number(field: impl Into<String>, value: i64, detail: &str) -> FieldError {
        FieldError {
            reason: "FieldValueInvalid",
            message: format!("Invalid value: {value}: {detail}"),
            field: field.into(),
        }
    }

    pub fn required(field: impl Into<String>) -> FieldError {
        FieldError {
            reason: "FieldValueRequired",
            message: "Required value".into(),
            field: field.into(),
        }
    }

    pub fn not_supported(field: impl Into<String>, value: &str, supported: &[&str]) -> FieldError {
        let list: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
        FieldError {
            reason: "FieldValueNotSupported",
            message: format!(
                "Unsupported value: {value:?}: supported values: {}",
                list.join(", ")
            ),
            field: field.into(),
        }
    }

    pub fn duplicate(field: impl Into<String>, value: &str) -> FieldError {
        FieldError {
            reason: "FieldValueDuplicate",
            message: format!("Duplicate value: {value:?}"),
            field: field.into(),
        }
    }

    pub fn not_found(field: impl Into<String>, value: &str) -> FieldError {
        FieldError {
            reason: "FieldValueNotFound",
            message: format!("Not found: {value:?}"),
            field: field.into(),
        }
    }

    pub fn forbidden(field: impl Into<String>, detail: &str) -> FieldError {
        FieldError {
            reason: "FieldValueForbidden",
            message: format!("Forbidden: {detail}"),
            field: field.into(),
        }
    }

    /// An immutable field that an update changed.
    pub fn immutable(field: impl Into<String>, value: &str) -> FieldError {
        FieldError::invalid(field, value, "field is immutable")
    }

    pub fn too_long(field: impl Into<String>, max: usize) -> FieldError {
        FieldError {
            reason: "FieldValueTooLong",
            message: format!("Too long: may not be more than {max} bytes"),
            field: field.into(),
        }
    }
}

const DNS1123_LABEL_MESSAGE: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character";
const DNS1123_SUBDOMAIN_MESSAGE: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character";
const QUALIFIED_NAME_MESSAGE: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";

fn alnum_ends(s: &str, lower: bool) -> bool {
    let ok = |c: char| {
        c.is_ascii_digit() || c.is_ascii_lowercase() || (!lower && c.is_ascii_uppercase())
    };
    s.chars().next().is_some_and(ok) && s.chars().last().is_some_and(ok)
}

/// An RFC 1123 label (namespaces, service names, container names): at most 63 characters.
pub fn dns1123_label(field: &str, value: &str) -> Vec<FieldError> {
    if value.is_empty() {
        return vec![FieldError::required(field)];
    }
    let mut errors = Vec::new();
    if value.len() > 63 {
        errors.push(FieldError::invalid(
            field,
            value,
            "must be no more than 63 characters",
        ));
    }
    let chars_ok = value
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !chars_ok || !alnum_ends(value, true) {
        errors.push(FieldError::invalid(field, value, DNS1123_LABEL_MESSAGE));
    }
    errors
}

/// An RFC 1123 subdomain (most object names): at most 253 characters.
pub fn dns1123_subdomain(field: &str, value: &str) -> Vec<FieldError> {
    if value.is_empty() {
        return vec![FieldError::required(field)];
    }
    let mut errors = Vec::new();
    if value.len() > 253 {
        errors.push(FieldError::invalid(
            field,
            value,
            "must be no more than 253 characters",
        ));
    }
    let chars_ok = value
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    let labels_ok = value
        .split('.')
        .all(|l| !l.is_empty() && alnum_ends(l, true));
    if !chars_ok || !labels_ok {
        errors.push(FieldError::invalid(field, value, DNS1123_SUBDOMAIN_MESSAGE));
    }
    errors
}

/// A label or annotation key: `[prefix/]name`, the prefix a DNS subdomain, the name at most 63
/// characters of alphanumerics, `-`, `_`, `.`.
pub fn qualified_name(field: &str, key: &str) -> Vec<FieldError> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let mut errors = Vec::new();
    if let Some(p) = prefix {
        if p.is_empty() {
            errors.push(FieldError::invalid(
                field,
                key,
                "prefix part must be non-empty",
            ));
        } else if !dns1123_subdomain(field, p).is_empty() {
            errors.push(FieldError::invalid(
                field,
                key,
                &format!("prefix part {DNS1123_SUBDOMAIN_MESSAGE}"),
            ));
        }
    }
    if name.is_empty() {
        errors.push(FieldError::invalid(
            field,
            key,
            "name part must be non-empty",
        ));
    } else if name.len() > 63 {
        errors.push(FieldError::invalid(
            field,
            key,
            "name part must be no more than 63 characters",
        ));
    } else if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        || !alnum_ends(name, false)
    {
        errors.push(FieldError::invalid(field, key, QUALIFIED_NAME_MESSAGE));
    }
    errors
}

/// `metadata.labels`: qualified keys, values of at most 63 alphanumerics, `-`, `_`, `.`.
pub fn labels(field: &str, labels: &BTreeMap<String, String>) -> Vec<FieldError> {
    let mut errors = Vec::new();
    for (k, v) in labels {
        errors.extend(qualified_name(field, k));
        let value_ok = v.is_empty()
            || (v.len() <= 63
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                && alnum_ends(v, false));
        if !value_ok {
            errors.push(FieldError::invalid(
                field,
                v,
                "a valid label must be an empty string or consist of at most 63 alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
            ));
        }
    }
    errors
}

/// `metadata.annotations`: qualified keys, at most 256 KiB in all.
pub fn annotations(field: &str, annotations: &BTreeMap<String, String>) -> Vec<FieldError> {
    const MAX: usize = 256 * 1024;
    let mut errors: Vec<FieldError> = annotations
        .keys()
        .flat_map(|k| qualified_name(field, k))
        .collect();
    let total: usize = annotations.iter().map(|(k, v)| k.len() + v.len()).sum();
    if total > MAX {
        errors.push(FieldError::too_long(field, MAX));
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_subdomains() {
        assert!(dns1123_label("metadata.name", "web-1").is_empty());
        for bad in ["Web", "-web", "web-", "we_b", &"a".repeat(64)] {
            let errors = dns1123_label("metadata.name", bad);
            assert_eq!(errors.len(), 1, "{bad}: {errors:?}");
            assert_eq!(errors[0].field, "metadata.name");
            assert_eq!(errors[0].reason, "FieldValueInvalid");
        }
        assert_eq!(
            dns1123_label("metadata.name", "")[0].reason,
            "FieldValueRequired"
        );
        assert!(dns1123_subdomain("metadata.name", "my.app-1").is_empty());
        assert!(!dns1123_subdomain("metadata.name", "my..app").is_empty());
        assert!(!dns1123_subdomain("metadata.name", "My.app").is_empty());
    }

    #[test]
    fn label_keys_and_values() {
        let ok: BTreeMap<String, String> = [
            ("app", "web"),
            ("app.kubernetes.io/name", "Web_1"),
            ("empty", ""),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert!(labels("metadata.labels", &ok).is_empty());
        for (k, v) in [
            ("-app", "x"),
            ("a/b/c", "x"),
            ("/x", "x"),
            ("app", "bad value"),
            ("app", "x-"),
        ] {
            let one: BTreeMap<String, String> = [(k.to_string(), v.to_string())].into();
            assert!(
                !labels("metadata.labels", &one).is_empty(),
                "{k}={v} should be refused"
            );
        }
        let huge: BTreeMap<String, String> = [("a".to_string(), "x".repeat(300 * 1024))].into();
        assert_eq!(
            annotations("metadata.annotations", &huge)[0].reason,
            "FieldValueTooLong"
        );
    }
}
