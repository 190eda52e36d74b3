//! Metadata filters, checked once when a search arrives and then evaluated per document.

use crate::error::{Error, ErrorCode, Result};
use grape_client::{Condition, Filter, Metadata, Range};
use serde_json::Value;

/// Conditions one filter may hold in all.
const MAX_CONDITIONS: usize = 1024;

/// A validated filter, ready to evaluate.
#[derive(Debug, Clone)]
pub struct CompiledFilter {
    must: Vec<CompiledCondition>,
    should: Vec<CompiledCondition>,
    must_not: Vec<CompiledCondition>,
}

#[derive(Debug, Clone)]
struct CompiledCondition {
    /// The dotted key, split.
    path: Vec<String>,
    test: Test,
}

#[derive(Debug, Clone)]
enum Test {
    Equals(Value),
    AnyOf(Vec<Value>),
    Within(Range),
}

impl CompiledFilter {
    /// Checks a filter and prepares it; a 400 `invalid_filter` names what is wrong.
    pub fn new(filter: &Filter) -> Result<CompiledFilter> {
        let total = filter.must.len() + filter.should.len() + filter.must_not.len();
        if total > MAX_CONDITIONS {
            return Err(invalid(format!(
                "filter has {total} conditions; at most {MAX_CONDITIONS} are allowed"
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
    pub fn matches(&self, metadata: &Metadata) -> bool {
        self.must.iter().all(|c| c.holds(metadata))
            && (self.should.is_empty() || self.should.iter().any(|c| c.holds(metadata)))
            && !self.must_not.iter().any(|c| c.holds(metadata))
    }
}

fn invalid(message: String) -> Error {
    Error::invalid(ErrorCode::InvalidFilter, message)
}

fn compile_condition(condition: &Condition) -> std::result::Result<CompiledCondition, String> {
    if condition.key.is_empty() {
        return Err("key must not be empty".into());
    }
    let path: Vec<String> = condition.key.split('.').map(str::to_string).collect();
    if path.iter().any(String::is_empty) {
        return Err(format!("key {:?} has an empty segment", condition.key));
    }
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
        for value in values {
            check_scalar(value)?;
        }
        Test::AnyOf(values.clone())
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
    fn holds(&self, value: &Value) -> bool {
        match self {
            Test::Equals(expected) => same_scalar(value, expected),
            Test::AnyOf(options) => options.iter().any(|o| same_scalar(value, o)),
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
        CompiledFilter::new(&filter)
    }

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
        ] {
            let err = filter(bad.clone()).unwrap_err();
            assert_eq!(err.code(), "invalid_filter");
            assert!(err.message().contains(expect), "{bad}: {}", err.message());
        }
    }
}
