//! Indexes on metadata keys (a collection's `payload_indexes`), kept in memory beside a shard's
//! documents: for a `keyword` key, the ids holding each string or boolean; for a `numeric` key,
//! the ids in order of their numbers. A filter's `must` conditions on indexed keys are answered
//! from them, so a search finds the filter's matches without reading every document, and knows
//! how many there are before it chooses how to search.
//!
//! An index answers a condition only when it holds every document the condition holds for: a
//! keyword index answers `match` and `match_any` of strings and booleans, a numeric index
//! `range`, and `match` or `match_any` of numbers. Anything else is checked per document.

use super::filter::{CompiledCondition, CompiledFilter, Test};
use crate::index::VectorId;
use grape_client::{Metadata, PayloadIndex, PayloadIndexKind};
use roaring::RoaringBitmap;
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};

/// The indexes of one shard.
#[derive(Debug, Default)]
pub struct PayloadIndexes {
    fields: Vec<FieldIndex>,
}

#[derive(Debug)]
struct FieldIndex {
    path: Vec<String>,
    values: Values,
    /// Live documents with values under this key that are not indexed (more than
    /// [`MAX_VALUES_PER_DOCUMENT`], or an id past 2^32): while there are any, the index
    /// answers nothing and filters on the key read every document.
    unindexed: usize,
}

/// Values one document may have indexed under one key (an array's elements): a document with
/// more is not indexed, so that one write cannot grow the index without bound.
pub const MAX_VALUES_PER_DOCUMENT: usize = 256;

#[derive(Debug)]
enum Values {
    Keyword(HashMap<Keyword, RoaringBitmap>),
    /// (order-preserving key of the number, id).
    Numeric(BTreeSet<(u64, u32)>),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Keyword {
    Text(String),
    Bool(bool),
}

/// A key whose unsigned order is the numbers' order (-0.0 counts as 0.0).
fn order_key(x: f64) -> u64 {
    let bits = if x == 0.0 { 0.0f64 } else { x }.to_bits();
    if bits >> 63 == 1 {
        !bits
    } else {
        bits | (1 << 63)
    }
}

#[cfg(test)]
fn number_of(key: u64) -> f64 {
    f64::from_bits(if key >> 63 == 1 {
        key & !(1 << 63)
    } else {
        !key
    })
}

/// A bitmap of ids given in any order (sorting first is much faster than inserting at random).
pub(super) fn sorted(ids: impl Iterator<Item = u32>) -> RoaringBitmap {
    let mut ids: Vec<u32> = ids.collect();
    ids.sort_unstable();
    ids.dedup();
    RoaringBitmap::from_sorted_iter(ids).expect("sorted and deduplicated")
}

/// The values at `path` in `metadata`: the value itself, or each element of an array.
fn values_at<'a>(metadata: &'a Metadata, path: &[String]) -> Vec<&'a Value> {
    let Some(mut current) = metadata.get(&path[0]) else {
        return Vec::new();
    };
    for segment in &path[1..] {
        match current.get(segment) {
            Some(value) => current = value,
            None => return Vec::new(),
        }
    }
    match current {
        Value::Array(items) => items.iter().collect(),
        value => vec![value],
    }
}

impl PayloadIndexes {
    /// Empty indexes on the given keys (checked by the collection's validation).
    pub fn new(indexes: &[PayloadIndex]) -> PayloadIndexes {
        PayloadIndexes {
            fields: indexes
                .iter()
                .map(|index| FieldIndex {
                    path: index.key.split('.').map(str::to_string).collect(),
                    unindexed: 0,
                    values: match index.kind {
                        PayloadIndexKind::Keyword => Values::Keyword(HashMap::new()),
                        PayloadIndexKind::Numeric => Values::Numeric(BTreeSet::new()),
                    },
                })
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// Indexes a document's metadata under `id`.
    pub fn add(&mut self, id: VectorId, metadata: &Metadata) {
        self.update(id, metadata, true);
    }

    /// Removes what [`PayloadIndexes::add`] indexed for `id` with the same metadata.
    pub fn remove(&mut self, id: VectorId, metadata: &Metadata) {
        self.update(id, metadata, false);
    }

    fn update(&mut self, id: VectorId, metadata: &Metadata, add: bool) {
        for field in &mut self.fields {
            let values = values_at(metadata, &field.path);
            let id = match u32::try_from(id) {
                Ok(id) if values.len() <= MAX_VALUES_PER_DOCUMENT => id,
                _ => {
                    if add {
                        field.unindexed += 1;
                    } else {
                        field.unindexed = field.unindexed.saturating_sub(1);
                    }
                    continue;
                }
            };
            for value in values {
                match (&mut field.values, value) {
                    (Values::Keyword(map), Value::String(_) | Value::Bool(_)) => {
                        let keyword = match value {
                            Value::String(s) => Keyword::Text(s.clone()),
                            Value::Bool(b) => Keyword::Bool(*b),
                            _ => unreachable!("matched above"),
                        };
                        if add {
                            map.entry(keyword).or_default().insert(id);
                        } else if let Some(ids) = map.get_mut(&keyword) {
                            ids.remove(id);
                            if ids.is_empty() {
                                map.remove(&keyword);
                            }
                        }
                    }
                    (Values::Numeric(set), Value::Number(n)) => {
                        if let Some(x) = n.as_f64() {
                            if add {
                                set.insert((order_key(x), id));
                            } else {
                                set.remove(&(order_key(x), id));
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// The ids that may match `filter`, from its `must` conditions on indexed keys (their
    /// intersection), and whether they are exactly its matches (every condition of the filter
    /// was answered by an index). `None` when no condition can be answered by one.
    pub fn candidates(&self, filter: &CompiledFilter) -> Option<(RoaringBitmap, bool)> {
        if self.fields.is_empty() {
            return None;
        }
        let (must, others) = filter.must();
        let mut found: Option<RoaringBitmap> = None;
        let mut answered = 0;
        for condition in must {
            if let Some(ids) = self.answer(condition) {
                answered += 1;
                found = Some(match found {
                    Some(so_far) => so_far & ids,
                    None => ids,
                });
            }
        }
        found.map(|ids| (ids, !others && answered == must.len()))
    }

    /// Every id the condition holds for, if an index on its key can tell.
    fn answer(&self, condition: &CompiledCondition) -> Option<RoaringBitmap> {
        let field = self
            .fields
            .iter()
            .find(|f| f.path == condition.path && f.unindexed == 0)?;
        match (&field.values, &condition.test) {
            (Values::Keyword(map), Test::Equals(value)) => {
                let keyword = match value {
                    Value::String(s) => Keyword::Text(s.clone()),
                    Value::Bool(b) => Keyword::Bool(*b),
                    _ => return None,
                };
                Some(map.get(&keyword).cloned().unwrap_or_default())
            }
            (Values::Keyword(map), Test::AnyOf(set)) if set.numbers.is_empty() => {
                let mut ids = RoaringBitmap::new();
                for s in &set.strings {
                    if let Some(found) = map.get(&Keyword::Text(s.clone())) {
                        ids |= found;
                    }
                }
                for (i, wanted) in set.bools.iter().enumerate() {
                    if *wanted && let Some(found) = map.get(&Keyword::Bool(i == 1)) {
                        ids |= found;
                    }
                }
                Some(ids)
            }
            (Values::Numeric(set), Test::Equals(Value::Number(n))) => {
                let key = order_key(n.as_f64()?);
                Some(sorted(
                    set.range((key, 0)..=(key, u32::MAX)).map(|(_, id)| *id),
                ))
            }
            (Values::Numeric(set), Test::AnyOf(values))
                if values.strings.is_empty() && !values.bools.iter().any(|b| *b) =>
            {
                let mut ids = RoaringBitmap::new();
                for x in &values.numbers {
                    let key = order_key(*x);
                    ids |= sorted(set.range((key, 0)..=(key, u32::MAX)).map(|(_, id)| *id));
                }
                Some(ids)
            }
            (Values::Numeric(set), Test::Within(range)) => {
                // Inclusive bounds in key order: one number has one key, so "greater than x"
                // starts at the next key and "less than x" ends at the one before (finite
                // numbers' keys are neither 0 nor u64::MAX).
                let lows = [
                    range.gte.map(order_key),
                    range.gt.map(|x| order_key(x).saturating_add(1)),
                ];
                let highs = [
                    range.lte.map(order_key),
                    range.lt.map(|x| order_key(x).saturating_sub(1)),
                ];
                let low = lows.into_iter().flatten().max().unwrap_or(0);
                let high = highs.into_iter().flatten().min().unwrap_or(u64::MAX);
                if low > high {
                    return Some(RoaringBitmap::new());
                }
                Some(sorted(
                    set.range((low, 0)..=(high, u32::MAX)).map(|(_, id)| *id),
                ))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(value: serde_json::Value) -> CompiledFilter {
        let filter: grape_client::Filter = serde_json::from_value(value).unwrap();
        let limits = super::super::filter::FilterLimits {
            conditions: 4,
            values: 4,
        };
        CompiledFilter::new(&filter, limits).unwrap()
    }

    #[test]
    fn a_document_with_too_many_values_turns_its_key_over_to_scans_until_it_goes() {
        let mut indexes = PayloadIndexes::new(&[PayloadIndex {
            key: "tags".into(),
            kind: PayloadIndexKind::Keyword,
        }]);
        let some = |n: usize| -> Metadata {
            serde_json::from_value(serde_json::json!({
                "tags": (0..n).map(|i| format!("t{i}")).collect::<Vec<_>>()
            }))
            .unwrap()
        };
        let wants = filter(serde_json::json!({"must": [{"key": "tags", "match": "t1"}]}));
        indexes.add(0, &some(3));
        let (ids, exact) = indexes.candidates(&wants).unwrap();
        assert_eq!((ids.iter().collect::<Vec<_>>(), exact), (vec![0], true));
        indexes.add(1, &some(MAX_VALUES_PER_DOCUMENT + 1));
        assert!(indexes.candidates(&wants).is_none());
        indexes.remove(1, &some(MAX_VALUES_PER_DOCUMENT + 1));
        assert_eq!(indexes.candidates(&wants).unwrap().0.len(), 1);
        // Ids past 2^32 are not indexed either.
        indexes.add(1 << 32, &some(2));
        assert!(indexes.candidates(&wants).is_none());
    }

    #[test]
    fn minus_zero_is_zero_with_and_without_an_index() {
        let mut indexes = PayloadIndexes::new(&[PayloadIndex {
            key: "n".into(),
            kind: PayloadIndexKind::Numeric,
        }]);
        let negative: Metadata = serde_json::from_str(r#"{"n": -0.0}"#).unwrap();
        let positive: Metadata = serde_json::from_str(r#"{"n": 0}"#).unwrap();
        indexes.add(0, &negative);
        indexes.add(1, &positive);
        for wanted in [r#"[0]"#, r#"[-0.0]"#, r#"[-0.0, 0]"#] {
            let any: serde_json::Value = serde_json::from_str(&format!(
                r#"{{"must": [{{"key": "n", "match_any": {wanted}}}]}}"#
            ))
            .unwrap();
            let f = filter(any);
            assert!(f.matches(&negative) && f.matches(&positive), "{wanted}");
            assert_eq!(indexes.candidates(&f).unwrap().0.len(), 2, "{wanted}");
        }
    }

    #[test]
    fn number_keys_keep_the_order_of_numbers() {
        let numbers = [
            f64::NEG_INFINITY,
            -1e300,
            -2.5,
            -1.0,
            -1e-300,
            0.0,
            1e-300,
            1.0,
            2.5,
            1e300,
            f64::INFINITY,
        ];
        for pair in numbers.windows(2) {
            assert!(order_key(pair[0]) < order_key(pair[1]), "{pair:?}");
        }
        for x in numbers {
            assert_eq!(number_of(order_key(x)), x);
        }
        assert_eq!(order_key(-0.0), order_key(0.0));
    }
}
