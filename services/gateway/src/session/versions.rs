//! The newest version of each trip a session has told its client.
//!
//! One trip's messages reach a gateway by several paths: the outboxes of every trips replica
//! (one of which a partition can hold back until its link heals), command replies and session
//! state. An older view arriving after a newer one would take the client's trip backwards (a
//! driver told its offer ran out after it accepted, and leaving the trip it holds). Versions
//! only grow, so an update older than one already told is dropped.

use std::collections::HashMap;

use uuid::Uuid;

/// Trips remembered per session; the longest unheard-of are forgotten first.
const KEEP: usize = 64;

#[derive(Debug, Default)]
pub(super) struct TripVersions {
    newest: HashMap<Uuid, (i64, u64)>,
    /// Counts what was told, to forget the trips told of longest ago.
    clock: u64,
}

impl TripVersions {
    /// Records that the client is told `version` of `trip_id`; false (recording nothing) when
    /// it was already told a newer one. The same version again is no step back.
    pub fn tell(&mut self, trip_id: Uuid, version: i64) -> bool {
        if self
            .newest
            .get(&trip_id)
            .is_some_and(|&(told, _)| version < told)
        {
            return false;
        }
        self.clock += 1;
        self.newest.insert(trip_id, (version, self.clock));
        if self.newest.len() > KEEP {
            let oldest = self
                .newest
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(id, _)| *id);
            if let Some(id) = oldest {
                self.newest.remove(&id);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::{KEEP, TripVersions};

    #[test]
    fn an_older_version_is_refused_and_a_repeat_or_newer_one_told() {
        let mut versions = TripVersions::default();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        assert!(versions.tell(a, 3));
        assert!(!versions.tell(a, 2), "a step back");
        assert!(versions.tell(a, 3), "the same view again");
        assert!(versions.tell(b, 1), "trips are apart");
        assert!(versions.tell(a, 5));
        assert!(!versions.tell(a, 4));
    }

    #[test]
    fn the_trips_told_of_longest_ago_are_forgotten_first() {
        let mut versions = TripVersions::default();
        let first = Uuid::new_v4();
        let recent = Uuid::new_v4();
        versions.tell(first, 9);
        versions.tell(recent, 9);
        for _ in 0..KEEP - 1 {
            versions.tell(Uuid::new_v4(), 1);
        }
        // Told of again: now the most recent.
        versions.tell(recent, 9);
        assert!(versions.tell(first, 1), "forgotten: anything is told");
        assert!(!versions.tell(recent, 1), "still remembered");
    }
}
