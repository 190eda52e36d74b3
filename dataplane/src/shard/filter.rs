//! Metadata filters, checked once when a search arrives and then evaluated per document.

use crate::error::{Error, ErrorCode, Result};
use grape_client::{Condition, Filter, Metadata, Range};
use serde_json::Value;
use std::collections::HashSet;

/// What one filter may ask for (`performance.max_filter_conditions`, `max_filter_values`):
/// its cost per document grows with its conditions, and a search scans many documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FilterLimits {
    pub conditions: usize,
    pub values: usize,
}

/// Longest key a condition may name, in bytes.
const MAX_KEY_BYTES: usize = 1024;

/// A validated filter, ready to evaluate.
#[derive(Debug, Clone)]
pub struct CompiledFilter {
    must: Vec<CompiledCondition>,
    should: Vec<CompiledCondition>,
    must_not: Vec<CompiledCondition>,
}

#[derive(Debug, Clone)]
pub(super) struct CompiledCondition {
    /// The dotted key, split.
    pub(super) path: Vec<String>,
    pub(super) test: Test,
}

#[derive(Debug, Clone)]
pub(super) enum Test {
    Equals(Value),
    AnyOf(ValueSet),
    Within(Range),
}

/// The values of a `match_any`, looked up in constant or logarithmic time whatever their
/// number.
#[derive(Debug, Clone, Default)]
pub(super) struct ValueSet {
    pub(super) strings: HashSet<String>,
    /// Sorted, compared by value (`1` matches `1.0`).
    pub(super) numbers: Vec<f64>,
    pub(super) bools: [bool; 2],
}

impl ValueSet {
    fn insert(&mut self, value: &Value) {
        match value {
            Value::String(s) => {
                self.strings.insert(s.clone());
            }
            // Numbers compare by value: -0 is 0 (as `match` has it).
            Value::Number(n) => self.numbers.extend(n.as_f64().map(|x| x + 0.0)),
            Value::Bool(b) => self.bools[usize::from(*b)] = true,
            _ => {}
        }
    }

    fn seal(mut self) -> ValueSet {
        self.numbers.sort_by(f64::total_cmp);
        self.numbers.dedup();
        self
    }

    fn contains(&self, value: &Value) -> bool {
        match value {
            Value::String(s) => self.strings.contains(s),
            Value::Number(n) => n.as_f64().is_some_and(|x| {
                let x = x + 0.0;
                self.numbers
                    .binary_search_by(|probe| probe.total_cmp(&x))
                    .is_ok()
            }),
            Value::Bool(b) => self.bools[usize::from(*b)],
            _ => false,
        }
    }
}

impl CompiledFilter {
    /// Checks a filter and prepares it; a 400 `invalid_filter` names what is wrong.
    pub fn new(filter: &Filter, limits: FilterLimits) -> Result<CompiledFilter> {
        let total = filter.must.len() + filter.should.len() + filter.must_not.len();
        if total > limits.conditions {
            return Err(invalid(format!(
                "filter has {total} conditions; at most {} are allowed (performance.max_filter_conditions)",
                limits.conditions
            )));
        }
        let values: usize = [&filter.must, &filter.should, &filter.must_not]
            .into_iter()
            .flatten()
            .filter_map(|c| c.match_any.as_ref().map(Vec::len))
            .sum();
        if values > limits.values {
            return Err(invalid(format!(
                "filter lists {values} match_any values; at most {} are allowed (performance.max_filter_values)",
                limits.values
            )));
        }
        let compile = |clause: &str, conditions: &[Condition]| {
            conditions
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    compile_condition(c)
                        .map_err(|why| invalid(format!("filter.{clause}[{i}]: {why}")))
                })
                .collect::<Result<Vec<_>>>()
        };
        Ok(CompiledFilter {
            must: compile("must", &filter.must)?,
            should: compile("should", &filter.should)?,
            must_not: compile("must_not", &filter.must_not)?,
        })
    }

    /// Whether a document's metadata passes.
    /// The conditions every match must meet, and whether there are others (`should`,
    /// `must_not`).
    pub(super) fn must(&self) -> (&[CompiledCondition], bool) {
        (
            &self.must,
            !self.should.is_empty() || !self.must_not.is_empty(),
        )
    }

    pub fn matches(&self, metadata: &Metadata) -> bool {
        self.must.iter().all(|c| c.holds(metadata))
            && (self.should.is_empty() || self.should.iter().any(|c| c.holds(metadata)))
            && !self.must_not.iter().any(|c| c.holds(metadata))
    }
}

fn invalid(message: String) -> Error {
    Error::invalid(ErrorCode::InvalidFilter, message)
}

/// Checks a metadata key (`a.b.c`) and splits it into its path.
pub fn check_key(key: &str) -> std::result::Result<Vec<String>, String> {
    if key.is_empty() {
        return Err("key must not be empty".into());
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(format!(
            "key is {} bytes long; at most {MAX_KEY_BYTES} are allowed",
            key.len()
        ));
    }
    let path: Vec<String> = key.split('.').map(str::to_string).collect();
    if path.iter().any(String::is_empty) {
        return Err(format!("key {key:?} has an empty segment"));
    }
    Ok(path)
}

fn compile_condition(condition: &Condition) -> std::result::Result<CompiledCondition, String> {
    let path = check_key(&condition.key)?;
    let given = [
        condition.match_value.is_some(),
        condition.match_any.is_some(),
        condition.range.is_some(),
    ]
    .iter()
    .filter(|g| **g)
    .count();
    if given != 1 {
        return Err(format!(
            "condition on {:?} must have exactly one of \"match\", \"match_any\" and \"range\"",
            condition.key
        ));
    }
    let test = if let Some(value) = &condition.match_value {
        check_scalar(value)?;
        Test::Equals(value.clone())
    } else if let Some(values) = &condition.match_any {
        if values.is_empty() {
            return Err(format!(
                "match_any on {:?} must list at least one value",
                condition.key
            ));
        }
        let mut set = ValueSet::default();
        for value in values {
            check_scalar(value)?;
            set.insert(value);
        }
        Test::AnyOf(set.seal())
    } else if let Some(range) = condition.range {
        if range.gt.is_none() && range.gte.is_none() && range.lt.is_none() && range.lte.is_none() {
            return Err(format!(
                "range on {:?} needs at least one of gt, gte, lt, lte",
                condition.key
            ));
        }
        Test::Within(range)
    } else {
        unreachable!("exactly one test is given")
    };
    Ok(CompiledCondition { path, test })
}

fn check_scalar(value: &Value) -> std::result::Result<(), String> {
    match value {
        Value::String(_) | Value::Number(_) | Value::Bool(_) => Ok(()),
        other => Err(format!(
            "can only match a string, number or boolean, not {other}"
        )),
    }
}

impl CompiledCondition {
    fn holds(&self, metadata: &Metadata) -> bool {
        let mut current = match metadata.get(&self.path[0]) {
            Some(value) => value,
            None => return false,
        };
        for segment in &self.path[1..] {
            current = match current.get(segment) {
                Some(value) => value,
                None => return false,
            };
        }
        match current {
            Value::Array(items) => items.iter().any(|item| self.test.holds(item)),
            value => self.test.holds(value),
        }
    }
}

impl Test {
    pub(super) fn holds(&self, value: &Value) -> bool {
        match self {
            Test::Equals(expected) => same_scalar(value, expected),
            Test::AnyOf(options) => options.contains(value),
            Test::Within(range) => {
                let Some(x) = value.as_f64() else {
                    return false;
                };
                range.gt.is_none_or(|b| x > b)
                    && range.gte.is_none_or(|b| x >= b)
                    && range.lt.is_none_or(|b| x < b)
                    && range.lte.is_none_or(|b| x <= b)
            }
        }
    }
}

/// Equality with numbers compared by value, so `1` matches `1.0`.
fn same_scalar(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn filter(value: Value) -> Result<CompiledFilter> {
        let filter: Filter = serde_json::from_value(value).unwrap();
        CompiledFilter::new(&filter, LIMITS)
    }

    const LIMITS: FilterLimits = FilterLimits {
        conditions: 8,
        values: 100,
    };

    fn meta(value: Value) -> Metadata {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn must_should_and_must_not_combine() {
        let f = filter(json!({
            "must": [{"key": "lang", "match": "en"}],
            "should": [{"key": "year", "range": {"gte": 2020, "lt": 2025}}, {"key": "tags", "match_any": ["x"]}],
            "must_not": [{"key": "draft", "match": true}]
        }))
        .unwrap();
        assert!(f.matches(&meta(json!({"lang": "en", "year": 2021}))));
        assert!(f.matches(&meta(
            json!({"lang": "en", "year": 1999, "tags": ["y", "x"]})
        )));
        assert!(
            !f.matches(&meta(json!({"lang": "en", "year": 1999}))),
            "no should holds"
        );
        assert!(!f.matches(&meta(json!({"lang": "de", "year": 2021}))));
        assert!(!f.matches(&meta(json!({"lang": "en", "year": 2021, "draft": true}))));
    }

    #[test]
    fn dotted_keys_reach_into_nested_objects() {
        let f = filter(json!({"must": [{"key": "author.address.city", "match": "Lyon"}]})).unwrap();
        assert!(f.matches(&meta(json!({"author": {"address": {"city": "Lyon"}}}))));
        assert!(!f.matches(&meta(json!({"author": {"address": "Lyon"}}))));
        assert!(!f.matches(&meta(json!({}))));
    }

    #[test]
    fn numbers_match_by_value_and_ranges_ignore_non_numbers() {
        let f = filter(json!({"must": [{"key": "n", "match": 1}]})).unwrap();
        assert!(f.matches(&meta(json!({"n": 1.0}))));
        let r = filter(json!({"must": [{"key": "n", "range": {"gt": 1}}]})).unwrap();
        assert!(!r.matches(&meta(json!({"n": "5"}))));
        assert!(r.matches(&meta(json!({"n": 1.5}))));
        assert!(!r.matches(&meta(json!({"n": 1}))));
    }

    #[test]
    fn match_any_finds_each_kind_of_value_by_value() {
        let values: Vec<Value> = (0..99)
            .map(|i| match i % 3 {
                0 => json!(format!("s{i}")),
                1 => json!(i),
                _ => json!(f64::from(i) + 0.5),
            })
            .chain([json!(true)])
            .collect();
        let f = filter(json!({"must": [{"key": "v", "match_any": values}]})).unwrap();
        for (value, expected) in [
            (json!("s0"), true),
            (json!("s1"), false),
            (json!(1), true),
            (json!(1.0), true),
            (json!(2), false),
            (json!(2.5), true),
            (json!(true), true),
            (json!(false), false),
            (json!(null), false),
            (json!(["x", 4]), true),
        ] {
            assert_eq!(f.matches(&meta(json!({ "v": value }))), expected, "{value}");
        }
    }

    #[test]
    fn invalid_filters_are_rejected_with_their_position() {
        for (bad, expect) in [
            (json!({"must": [{"key": "a"}]}), "filter.must[0]"),
            (
                json!({"must": [{"key": "a", "match": 1, "range": {"gt": 0}}]}),
                "exactly one",
            ),
            (json!({"should": [{"key": "", "match": 1}]}), "empty"),
            (
                json!({"must_not": [{"key": "a..b", "match": 1}]}),
                "empty segment",
            ),
            (json!({"must": [{"key": "a", "range": {}}]}), "at least one"),
            (
                json!({"must": [{"key": "a", "match_any": []}]}),
                "at least one value",
            ),
            (
                json!({"must": [{"key": "a", "match": {"x": 1}}]}),
                "string, number or boolean",
            ),
            (
                json!({"must": (0..9).map(|i| json!({"key": format!("k{i}"), "match": 1})).collect::<Vec<_>>()}),
                "9 conditions; at most 8",
            ),
            (
                json!({"must": [{"key": "a", "match_any": (0..60).collect::<Vec<_>>()}],
                       "should": [{"key": "b", "match_any": (0..41).collect::<Vec<_>>()}]}),
                "101 match_any values; at most 100",
            ),
            (
                json!({"must": [{"key": "k".repeat(1025), "match": 1}]}),
                "1025 bytes long",
            ),
        ] {
            let err = filter(bad.clone()).unwrap_err();
            assert_eq!(err.code(), "invalid_filter");
            assert!(err.message().contains(expect), "{bad}: {}", err.message());
        }
    }
}
