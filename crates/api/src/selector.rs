//! Label selectors (`app=web,tier!=db,env in (a,b),env notin (c),release,!canary`) and field
//! selectors (`metadata.name=x,status.phase!=Failed`) as the Kubernetes API accepts them in
//! `?labelSelector=` and `?fieldSelector=`, with the same matching rules: `!=` and `notin` also
//! match objects without the label; `in` and `=` need it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("unable to parse requirement {requirement:?}: {reason}")]
    Requirement { requirement: String, reason: String },
    #[error(
        "invalid field selector term {term:?}: expected FIELD=VALUE, FIELD==VALUE or FIELD!=VALUE"
    )]
    FieldTerm { term: String },
}

/// One condition on one label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Exists(String),
    DoesNotExist(String),
}

/// Every requirement must hold. The empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector {
    pub requirements: Vec<Requirement>,
}

fn valid_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        let ok = !p.is_empty()
            && p.len() <= 253
            && p.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
        if !ok {
            return Err(format!("prefix {p:?} must be a DNS subdomain"));
        }
    }
    valid_name(name).map_err(|e| format!("name part of key {key:?} {e}"))
}

/// A label name or value: at most 63 of alphanumerics, `-`, `_`, `.`, starting and ending with
/// an alphanumeric (a value may also be empty).
fn valid_name(s: &str) -> Result<(), String> {
    let ends_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > 63 {
        return Err("must be at most 63 characters".into());
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        || !ends_ok(s.chars().next())
        || !ends_ok(s.chars().last())
    {
        return Err(
            "must consist of alphanumerics, '-', '_' or '.', and start and end with an alphanumeric"
                .into(),
        );
    }
    Ok(())
}

fn valid_value(v: &str) -> Result<(), String> {
    if v.is_empty() {
        Ok(())
    } else {
        valid_name(v).map_err(|e| format!("value {v:?} {e}"))
    }
}

/// Splits at commas that are not inside parentheses.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn parse_set(text: &str) -> Result<BTreeSet<String>, String> {
    let inner = text
        .trim()
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .ok_or("a set must be in parentheses: (a,b)")?;
    let mut set = BTreeSet::new();
    for v in inner.split(',') {
        let v = v.trim();
        valid_value(v)?;
        set.insert(v.to_string());
    }
    Ok(set)
}

fn parse_requirement(text: &str) -> Result<Requirement, String> {
    let t = text.trim();
    if let Some(key) = t.strip_prefix('!') {
        let key = key.trim();
        valid_key(key)?;
        return Ok(Requirement::DoesNotExist(key.to_string()));
    }
    for (op, build) in [
        (
            "!=",
            Requirement::NotEquals as fn(String, String) -> Requirement,
        ),
        ("==", Requirement::Equals),
        ("=", Requirement::Equals),
    ] {
        if let Some((k, v)) = t.split_once(op) {
            let (k, v) = (k.trim(), v.trim());
            valid_key(k)?;
            valid_value(v)?;
            return Ok(build(k.to_string(), v.to_string()));
        }
    }
    let mut words = t.splitn(2, char::is_whitespace);
    let key = words.next().unwrap_or_default();
    let rest = words.next().unwrap_or_default().trim_start();
    if rest.is_empty() {
        valid_key(key)?;
        return Ok(Requirement::Exists(key.to_string()));
    }
    valid_key(key)?;
    if let Some(set) = rest.strip_prefix("notin") {
        return Ok(Requirement::NotIn(key.to_string(), parse_set(set)?));
    }
    if let Some(set) = rest.strip_prefix("in") {
        return Ok(Requirement::In(key.to_string(), parse_set(set)?));
    }
    Err(format!(
        "expected one of =, ==, !=, in, notin after {key:?}"
    ))
}

impl LabelSelector {
    /// Parses the `labelSelector` query syntax. Empty text selects everything.
    pub fn parse(text: &str) -> Result<LabelSelector, SelectorError> {
        if text.trim().is_empty() {
            return Ok(LabelSelector::default());
        }
        let requirements = split_top_level(text)
            .into_iter()
            .map(|r| {
                parse_requirement(r).map_err(|reason| SelectorError::Requirement {
                    requirement: r.trim().to_string(),
                    reason,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(LabelSelector { requirements })
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }
}

impl Requirement {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, set) => labels.get(k).is_some_and(|v| set.contains(v)),
            Requirement::NotIn(k, set) => !labels.get(k).is_some_and(|v| set.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = |s: &BTreeSet<String>| s.iter().cloned().collect::<Vec<_>>().join(",");
        match self {
            Requirement::Equals(k, v) => write!(f, "{k}={v}"),
            Requirement::NotEquals(k, v) => write!(f, "{k}!={v}"),
            Requirement::In(k, s) => write!(f, "{k} in ({})", set(s)),
            Requirement::NotIn(k, s) => write!(f, "{k} notin ({})", set(s)),
            Requirement::Exists(k) => write!(f, "{k}"),
            Requirement::DoesNotExist(k) => write!(f, "!{k}"),
        }
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.requirements.iter().map(|r| r.to_string()).collect();
        f.write_str(&parts.join(","))
    }
}

/// A field selector: terms on named fields, all of which must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector {
    /// (field, value, equal): `equal` is false for `!=`.
    pub terms: Vec<(String, String, bool)>,
}

impl FieldSelector {
    pub fn parse(text: &str) -> Result<FieldSelector, SelectorError> {
        if text.trim().is_empty() {
            return Ok(FieldSelector::default());
        }
        let mut terms = Vec::new();
        for term in text.split(',') {
            let bad = || SelectorError::FieldTerm {
                term: term.to_string(),
            };
            let (field, value, equal) = if let Some((f, v)) = term.split_once("!=") {
                (f, v, false)
            } else if let Some((f, v)) = term.split_once("==") {
                (f, v, true)
            } else if let Some((f, v)) = term.split_once('=') {
                (f, v, true)
            } else {
                return Err(bad());
            };
            let field = field.trim();
            if field.is_empty() {
                return Err(bad());
            }
            terms.push((field.to_string(), value.trim().to_string(), equal));
        }
        Ok(FieldSelector { terms })
    }

    /// The fields the selector names, so the caller can refuse ones it does not support.
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.terms.iter().map(|(f, _, _)| f.as_str())
    }

    /// Whether an object matches; `field` gives its value of a field (a missing one is "").
    pub fn matches(&self, field: impl Fn(&str) -> Option<String>) -> bool {
        self.terms.iter().all(|(name, value, equal)| {
            let actual = field(name).unwrap_or_default();
            (actual == *value) == *equal
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_every_operator() {
        let s = LabelSelector::parse(
            "app=web, tier!=db,env in (prod, staging),zone notin (a),release,!canary,x==y",
        )
        .unwrap();
        assert_eq!(
            s.requirements,
            vec![
                Requirement::Equals("app".into(), "web".into()),
                Requirement::NotEquals("tier".into(), "db".into()),
                Requirement::In("env".into(), ["prod", "staging"].map(String::from).into()),
                Requirement::NotIn("zone".into(), ["a"].map(String::from).into()),
                Requirement::Exists("release".into()),
                Requirement::DoesNotExist("canary".into()),
                Requirement::Equals("x".into(), "y".into()),
            ]
        );
        assert!(LabelSelector::parse("").unwrap().is_empty());
        assert!(LabelSelector::parse("app.kubernetes.io/name=x").is_ok());
    }

    #[test]
    fn matching_follows_kubernetes() {
        let pod = labels(&[("app", "web"), ("env", "prod")]);
        let yes = |s: &str| LabelSelector::parse(s).unwrap().matches(&pod);
        assert!(yes("app=web"));
        assert!(!yes("app=db"));
        // != and notin also match when the label is absent; in and = need it.
        assert!(yes("tier!=db"));
        assert!(yes("tier notin (db)"));
        assert!(!yes("tier in (db)"));
        assert!(yes("env in (prod,dev)"));
        assert!(!yes("env notin (prod)"));
        assert!(yes("app,!tier"));
        assert!(!yes("app,tier"));
        assert!(yes(""));
    }

    #[test]
    fn bad_selectors_say_what_is_wrong() {
        for bad in [
            "app=we b",
            "=web",
            "app in web",
            "app in (a",
            "app frob (a)",
            "-app=x",
            "app=x-",
        ] {
            let err = LabelSelector::parse(bad).unwrap_err();
            assert!(
                matches!(err, SelectorError::Requirement { .. }),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn field_selectors() {
        let s = FieldSelector::parse("metadata.name=web,status.phase!=Failed").unwrap();
        let field = |phase: &'static str| {
            move |f: &str| match f {
                "metadata.name" => Some("web".to_string()),
                "status.phase" => Some(phase.to_string()),
                _ => None,
            }
        };
        assert!(s.matches(field("Running")));
        assert!(!s.matches(field("Failed")));
        assert_eq!(
            s.fields().collect::<Vec<_>>(),
            ["metadata.name", "status.phase"]
        );
        assert!(FieldSelector::parse("spec.nodeName==n1")
            .unwrap()
            .matches(|_| Some("n1".into())));
        assert!(FieldSelector::parse("nonsense").is_err());
        assert!(FieldSelector::parse("=x").is_err());
    }

    fn name() -> impl Strategy<Value = String> {
        "[a-z0-9]([a-z0-9._-]{0,8}[a-z0-9])?"
    }

    fn requirement() -> impl Strategy<Value = Requirement> {
        let set = || proptest::collection::btree_set(name(), 1..4);
        prop_oneof![
            (name(), name()).prop_map(|(k, v)| Requirement::Equals(k, v)),
            (name(), name()).prop_map(|(k, v)| Requirement::NotEquals(k, v)),
            (name(), set()).prop_map(|(k, s)| Requirement::In(k, s)),
            (name(), set()).prop_map(|(k, s)| Requirement::NotIn(k, s)),
            name().prop_map(Requirement::Exists),
            name().prop_map(Requirement::DoesNotExist),
        ]
    }

    proptest! {
        /// What a selector prints parses back to the same selector, and both match alike.
        #[test]
        fn printing_and_parsing_round_trip(
            requirements in proptest::collection::vec(requirement(), 1..5),
            object in proptest::collection::btree_map(name(), name(), 0..4),
        ) {
            let selector = LabelSelector { requirements };
            let parsed = LabelSelector::parse(&selector.to_string()).unwrap();
            prop_assert_eq!(&parsed, &selector);
            prop_assert_eq!(parsed.matches(&object), selector.matches(&object));
        }
    }
}
