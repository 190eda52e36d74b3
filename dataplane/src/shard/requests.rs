//! Requests a shard replica answered recently, so that a retried command (a write forwarded
//! to a leader whose answer was lost, then sent again) is answered with its first outcome
//! instead of being applied twice.
//!
//! Every replica keeps the same table: it is a function of the applied commands alone (ids in
//! command order, the oldest forgotten first), stored with them in the same batch, and carried
//! in snapshots. A command without an id (from an older node) is applied as before.

use super::ShardResponse;
use crate::error::{Error, Result};
use crate::storage::{Changes, Storage};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// A proposal's identity, chosen at random by the node that first proposes it.
pub type RequestId = u64;

/// How many answers each replica remembers: far more than the requests one client retry can
/// span (a retry comes within seconds).
pub const REMEMBERED: u64 = 4096;

/// One remembered answer, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    /// Position in the order answers were recorded; the row's slot is `seq % REMEMBERED`.
    pub seq: u64,
    pub id: RequestId,
    pub response: ShardResponse,
}

/// The remembered answers of one replica.
#[derive(Debug, Default)]
pub struct Recent {
    by_id: HashMap<RequestId, Answer>,
    /// The id held in each slot, to forget it when its slot is reused.
    slots: HashMap<u64, RequestId>,
    /// The next answer's `seq`.
    next: u64,
}

impl Recent {
    /// The table as stored for `namespace`.
    pub fn load(storage: &Storage, namespace: &str) -> Result<Recent> {
        let mut answers = Vec::new();
        storage.scan_requests(namespace, |value| {
            answers.push(decode(value)?);
            Ok(())
        })?;
        Ok(Recent::from_answers(answers))
    }

    pub fn from_answers(answers: Vec<Answer>) -> Recent {
        let mut recent = Recent::default();
        for answer in answers {
            recent.next = recent.next.max(answer.seq + 1);
            recent.slots.insert(answer.seq % REMEMBERED, answer.id);
            recent.by_id.insert(answer.id, answer);
        }
        recent
    }

    /// The first answer to `id`, if it is remembered.
    pub fn get(&self, id: RequestId) -> Option<&ShardResponse> {
        self.by_id.get(&id).map(|a| &a.response)
    }

    /// Every remembered answer, oldest first (for snapshots).
    pub fn answers(&self) -> Vec<Answer> {
        let mut answers: Vec<Answer> = self.by_id.values().cloned().collect();
        answers.sort_by_key(|a| a.seq);
        answers
    }

    /// Adds answers, in the order given, to `changes` (stored with the commands' effects), and
    /// returns them to [`Recent::commit`] once the batch is stored.
    pub fn stage(
        &self,
        answered: impl IntoIterator<Item = (RequestId, ShardResponse)>,
        changes: &mut Changes,
        storage: &Storage,
        namespace: &str,
    ) -> Vec<Answer> {
        let mut seq = self.next;
        answered
            .into_iter()
            .map(|(id, response)| {
                let answer = Answer { seq, id, response };
                changes.put_request(storage, namespace, seq % REMEMBERED, &encode(&answer));
                seq += 1;
                answer
            })
            .collect()
    }

    /// Remembers staged answers, forgetting those whose slots they take.
    pub fn commit(&mut self, staged: Vec<Answer>) {
        for answer in staged {
            let slot = answer.seq % REMEMBERED;
            if let Some(old) = self.slots.insert(slot, answer.id)
                && self
                    .by_id
                    .get(&old)
                    .is_some_and(|a| a.seq % REMEMBERED == slot)
            {
                self.by_id.remove(&old);
            }
            self.next = answer.seq + 1;
            self.by_id.insert(answer.id, answer);
        }
    }
}

pub fn encode(answer: &Answer) -> Vec<u8> {
    rmp_serde::to_vec_named(answer).expect("MessagePack encoding of an answer cannot fail")
}

pub fn decode(bytes: &[u8]) -> Result<Answer> {
    rmp_serde::from_slice(bytes)
        .map_err(|e| Error::Internal(format!("a stored request answer is corrupt: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_answers_are_forgotten_first_and_reloaded_alike() {
        let dir = tempfile::tempdir().unwrap();
        let storage =
            Storage::open(dir.path(), &crate::storage::StorageOptions::default()).unwrap();
        let mut recent = Recent::default();
        let total = REMEMBERED + 10;
        for id in 0..total {
            let mut changes = Changes::default();
            let staged = recent.stage(
                [(id * 7, ShardResponse::Upserted { count: id as usize })],
                &mut changes,
                &storage,
                "c/0",
            );
            storage.commit(changes).unwrap();
            recent.commit(staged);
        }
        for id in 0..10 {
            assert!(recent.get(id * 7).is_none(), "{id} was forgotten");
        }
        assert_eq!(
            recent.get(10 * 7),
            Some(&ShardResponse::Upserted { count: 10 })
        );
        assert_eq!(recent.answers().len() as u64, REMEMBERED);
        let reloaded = Recent::load(&storage, "c/0").unwrap();
        assert_eq!(reloaded.answers(), recent.answers());
        assert_eq!(reloaded.next, recent.next);
        assert!(Recent::load(&storage, "c/1").unwrap().answers().is_empty());
    }
}
