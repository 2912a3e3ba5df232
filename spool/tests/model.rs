//! A model-based test of the spool's store: random appends, reads, removals, expiries,
//! dead-letter moves, requeues and crashes, checked after every step against a plain
//! in-memory model. No record may be lost, duplicated, reordered or resurrected.
//!
//! A crash copies the database files as they are on disk while the store is open (no
//! checkpoint, no close), then opens the copy: what a SIGKILL or a power cut leaves after
//! the last commit returned.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use ferry_spool::{Burial, Destination, Kind, NewRecord, Selection, Store};
use proptest::prelude::*;

/// Destinations the records go to.
const DESTINATIONS: usize = 3;

#[derive(Debug, Clone)]
enum Step {
    Append { to: usize, count: usize },
    Remove { of: usize, count: usize },
    Bury { of: usize },
    Expire { of: usize, skip: usize },
    Requeue(Pick),
    Crash,
}

#[derive(Debug, Clone)]
enum Pick {
    All,
    Target(usize),
    Nth(usize),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..DESTINATIONS, 1..6usize).prop_map(|(to, count)| Step::Append { to, count }),
        3 => (0..DESTINATIONS, 1..5usize).prop_map(|(of, count)| Step::Remove { of, count }),
        2 => (0..DESTINATIONS).prop_map(|of| Step::Bury { of }),
        1 => (0..DESTINATIONS, 0..3usize).prop_map(|(of, skip)| Step::Expire { of, skip }),
        2 => prop_oneof![
            Just(Pick::All),
            (0..DESTINATIONS).prop_map(Pick::Target),
            (0..20usize).prop_map(Pick::Nth),
        ]
        .prop_map(Step::Requeue),
        1 => Just(Step::Crash),
    ]
}

fn destination(n: usize) -> Destination {
    Destination {
        kind: Kind::Amqp,
        address: "amqp://mq:5672/%2f".into(),
        exchange: format!("ex{n}"),
    }
}

/// What the store must hold: seq → (destination, id), for the line and the dead letters.
#[derive(Default)]
struct Model {
    records: BTreeMap<i64, (usize, String)>,
    dead: BTreeMap<i64, (usize, String)>,
    next_id: usize,
}

impl Model {
    fn of(&self, n: usize) -> Vec<(i64, String)> {
        self.records
            .iter()
            .filter(|(_, (d, _))| *d == n)
            .map(|(seq, (_, id))| (*seq, id.clone()))
            .collect()
    }
}

struct Run {
    store: Store,
    dir: PathBuf,
    crashes: usize,
    base: PathBuf,
}

impl Run {
    fn crash(&mut self) {
        self.crashes += 1;
        let copy = self.base.join(format!("after-crash-{}", self.crashes));
        std::fs::create_dir_all(&copy).unwrap();
        for suffix in ["", "-wal"] {
            let name = format!("spool.db{suffix}");
            if self.dir.join(&name).exists() {
                std::fs::copy(self.dir.join(&name), copy.join(&name)).unwrap();
            }
        }
        let (store, recovery) = Store::open(&copy).unwrap();
        assert!(
            recovery.moved_aside.is_empty(),
            "a crash image is not damage"
        );
        self.store = store;
        self.dir = copy;
    }
}

fn apply(run: &mut Run, model: &mut Model, step: &Step) {
    match *step {
        Step::Append { to, count } => {
            let batch: Vec<NewRecord> = (0..count)
                .map(|_| {
                    model.next_id += 1;
                    NewRecord {
                        id: format!("id{:05}", model.next_id),
                        destination: destination(to),
                        route: "k".into(),
                        payload: Bytes::from(format!("payload {}", model.next_id)),
                        meta: None,
                    }
                })
                .collect();
            let seqs = run.store.append(&batch, 1_000).unwrap();
            for (seq, record) in seqs.into_iter().zip(batch) {
                assert!(
                    model.records.insert(seq, (to, record.id)).is_none(),
                    "seq reused"
                );
            }
        }
        Step::Remove { of, count } => {
            let (read, corrupt) = run.store.read(&destination(of), 0, count).unwrap();
            assert!(corrupt.is_empty());
            let seqs: Vec<i64> = read.iter().map(|r| r.seq).collect();
            run.store.remove(&seqs).unwrap();
            for seq in seqs {
                model
                    .records
                    .remove(&seq)
                    .expect("removed a record the model has");
            }
        }
        Step::Bury { of } => {
            if let Some((seq, _)) = model.of(of).first().cloned() {
                let burial = Burial {
                    seq,
                    last_error: "nack".into(),
                    attempts: 1,
                };
                let moved = run.store.bury(&[burial], 2_000).unwrap();
                assert_eq!(moved.len(), 1);
                let record = model.records.remove(&seq).unwrap();
                model.dead.insert(seq, record);
            }
        }
        Step::Expire { of, skip } => {
            let line = model.of(of);
            let after = if skip == 0 || line.is_empty() {
                0
            } else {
                line[(skip - 1).min(line.len() - 1)].0
            };
            let moved = run
                .store
                .bury_expired(&destination(of), 1_001, after, "max_age_s", 3_000)
                .unwrap();
            let expected: Vec<i64> = line
                .iter()
                .map(|(s, _)| *s)
                .filter(|s| *s > after)
                .collect();
            assert_eq!(moved.iter().map(|m| m.seq).collect::<Vec<_>>(), expected);
            for seq in expected {
                let record = model.records.remove(&seq).unwrap();
                model.dead.insert(seq, record);
            }
        }
        Step::Requeue(ref pick) => {
            let (selection, seqs): (Selection, Vec<i64>) = match *pick {
                Pick::All => (Selection::All, model.dead.keys().copied().collect()),
                Pick::Target(n) => (
                    Selection::Target(destination(n).exchange),
                    model
                        .dead
                        .iter()
                        .filter(|(_, (d, _))| *d == n)
                        .map(|(s, _)| *s)
                        .collect(),
                ),
                Pick::Nth(i) => match model.dead.iter().nth(i) {
                    Some((seq, (_, id))) => (Selection::Ids(vec![id.clone()]), vec![*seq]),
                    None => (Selection::Ids(vec!["absent".into()]), Vec::new()),
                },
            };
            let moved = run.store.requeue(&selection, 1_000).unwrap();
            assert_eq!(moved as usize, seqs.len());
            for seq in seqs {
                let record = model.dead.remove(&seq).unwrap();
                model.records.insert(seq, record);
            }
        }
        Step::Crash => run.crash(),
    }
}

fn check(run: &mut Run, model: &Model) {
    let summary = run.store.summary().unwrap();
    for n in 0..DESTINATIONS {
        let (read, _) = run.store.read(&destination(n), 0, 10_000).unwrap();
        let listed = summary.iter().find(|s| s.destination == destination(n));
        let expected = (!read.is_empty()).then(|| {
            (
                read.len() as u64,
                read.iter().map(ferry_spool::Record::bytes).sum::<u64>(),
                read[0].created_ms,
            )
        });
        assert_eq!(
            listed.map(|s| (s.count, s.bytes, s.oldest_ms)),
            expected,
            "the totals of destination {n}"
        );
        let held: Vec<(i64, String)> = read.into_iter().map(|r| (r.seq, r.id)).collect();
        assert_eq!(held, model.of(n), "the line of destination {n}");
    }
    let mut dead: Vec<(i64, String)> = Vec::new();
    run.store
        .each_dead_letter(&Selection::All, |l| {
            dead.push((l.record.seq, l.record.id.clone()));
            Ok(())
        })
        .unwrap();
    let expected: Vec<(i64, String)> = model
        .dead
        .iter()
        .map(|(seq, (_, id))| (*seq, id.clone()))
        .collect();
    assert_eq!(dead, expected, "the dead letters");
}

fn scratch(case: u64) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ferry-model-{}-{case}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn run_case(base: &Path, steps: &[Step]) {
    let dir = base.join("spool");
    let (store, _) = Store::open(&dir).unwrap();
    let mut run = Run {
        store,
        dir,
        crashes: 0,
        base: base.to_owned(),
    };
    let mut model = Model::default();
    for step in steps {
        apply(&mut run, &mut model, step);
        check(&mut run, &model);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn the_store_never_loses_duplicates_or_reorders_a_record(
        steps in proptest::collection::vec(step(), 1..60)
    ) {
        static CASE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let base = scratch(CASE.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        run_case(&base, &steps);
        let _ = std::fs::remove_dir_all(&base);
    }
}
