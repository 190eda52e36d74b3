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
use std::ops::Bound;

/// The indexes of one shard.
#[derive(Debug, Default)]
pub struct PayloadIndexes {
    fields: Vec<FieldIndex>,
}

#[derive(Debug)]
struct FieldIndex {
    path: Vec<String>,
    values: Values,
}

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

fn number_of(key: u64) -> f64 {
    f64::from_bits(if key >> 63 == 1 {
        key & !(1 << 63)
    } else {
        !key
    })
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

/// Ids are below 2^32 (see `VectorStore::push`).
fn id32(id: VectorId) -> u32 {
    u32::try_from(id).expect("fewer than 2^32 vectors per shard")
}

impl PayloadIndexes {
    /// Empty indexes on the given keys (checked by the collection's validation).
    pub fn new(indexes: &[PayloadIndex]) -> PayloadIndexes {
        PayloadIndexes {
            fields: indexes
                .iter()
                .map(|index| FieldIndex {
                    path: index.key.split('.').map(str::to_string).collect(),
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
        let id = id32(id);
        for field in &mut self.fields {
            for value in values_at(metadata, &field.path) {
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
        let field = self.fields.iter().find(|f| f.path == condition.path)?;
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
                Some(
                    set.range((key, 0)..=(key, u32::MAX))
                        .map(|(_, id)| *id)
                        .collect(),
                )
            }
            (Values::Numeric(set), Test::AnyOf(values))
                if values.strings.is_empty() && !values.bools.iter().any(|b| *b) =>
            {
                let mut ids = RoaringBitmap::new();
                for x in &values.numbers {
                    let key = order_key(*x);
                    ids.extend(set.range((key, 0)..=(key, u32::MAX)).map(|(_, id)| *id));
                }
                Some(ids)
            }
            (Values::Numeric(set), Test::Within(range)) => {
                let low = match range.gte.into_iter().chain(range.gt).reduce(f64::max) {
                    Some(x) => Bound::Included((order_key(x), 0)),
                    None => Bound::Unbounded,
                };
                let high = match range.lte.into_iter().chain(range.lt).reduce(f64::min) {
                    Some(x) => Bound::Included((order_key(x), u32::MAX)),
                    None => Bound::Unbounded,
                };
                if let (Bound::Included(l), Bound::Included(h)) = (low, high)
                    && l > h
                {
                    return Some(RoaringBitmap::new());
                }
                // The bounds are inclusive; strict ones are applied to each number.
                let test = Test::Within(*range);
                Some(
                    set.range((low, high))
                        .filter(|(key, _)| test.holds(&Value::from(number_of(*key))))
                        .map(|(_, id)| *id)
                        .collect(),
                )
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
