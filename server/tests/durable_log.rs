//! The durable log on a real filesystem through glommio's io_uring file API: what was
//! committed is read back whole, across segments, restarts and torn tails.
#![allow(clippy::unwrap_used)]

use ingestd::log::{self, LogReader, RecordKind, ShardLog};
use std::future::Future;
use std::path::Path;

/// Runs `fut` on a fresh single-thread glommio executor. io_memory is kept small so the
/// test runs under the default 8 MiB locked-memory limit.
fn run<T: 'static>(fut: impl Future<Output = T> + 'static) -> T {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(512 << 10)
        .make()
        .unwrap()
        .run(fut)
}

/// The torn-tail bound passed to open (the server passes about one commit batch).
const TORN_MAX: u64 = 64 << 10;

fn payload(i: u64) -> Vec<u8> {
    format!("record-{i}-{}", "x".repeat((i % 50) as usize)).into_bytes()
}

fn read_all(dir: &Path, from: u64) -> Vec<(u64, RecordKind, Vec<u8>)> {
    LogReader::open(dir, from)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            (entry.offset, entry.kind, entry.payload)
        })
        .collect()
}

#[test]
fn committed_records_read_back_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let d = dir.clone();
    run(async move {
        let (log, recovery) = ShardLog::open(&d, 1 << 20, TORN_MAX).await.unwrap();
        assert_eq!(recovery.next_offset, 0);
        for i in 0..100 {
            let kind = if i % 10 == 0 {
                RecordKind::DeadLetter
            } else {
                RecordKind::Reading
            };
            assert_eq!(log.append(kind, &payload(i)), i);
        }
        assert_eq!(log.pending_records(), 100);
        assert_eq!(log.durable_end(), 0);
        assert_eq!(log.commit().await.unwrap(), 100);
        assert_eq!(log.pending_records(), 0);
        // Nothing pending: commit is a no-op that reports the same end.
        assert_eq!(log.commit().await.unwrap(), 100);
    });
    let entries = read_all(&dir, 0);
    assert_eq!(entries.len(), 100);
    for (i, (offset, kind, data)) in entries.iter().enumerate() {
        assert_eq!(*offset, i as u64);
        assert_eq!(*data, payload(i as u64));
        assert_eq!(*kind == RecordKind::DeadLetter, i % 10 == 0);
    }
    assert_eq!(read_all(&dir, 95).len(), 5);
    assert_eq!(read_all(&dir, 95)[0].0, 95);
}

#[test]
fn segments_roll_and_offsets_continue_across_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let d = dir.clone();
    run(async move {
        // Small segments: every commit of 20 records rolls.
        let (log, _) = ShardLog::open(&d, 512, TORN_MAX).await.unwrap();
        for batch in 0..5u64 {
            for i in 0..20 {
                log.append(RecordKind::Reading, &payload(batch * 20 + i));
            }
            assert_eq!(log.commit().await.unwrap(), (batch + 1) * 20);
        }
    });
    let segments = log::list_segments(&dir).unwrap();
    assert!(segments.len() >= 5, "expected rolling, got {segments:?}");
    let d = dir.clone();
    run(async move {
        let (log, recovery) = ShardLog::open(&d, 512, TORN_MAX).await.unwrap();
        assert_eq!(recovery.next_offset, 100);
        assert_eq!(recovery.truncated_bytes, 0);
        assert_eq!(log.append(RecordKind::Reading, &payload(100)), 100);
        assert_eq!(log.commit().await.unwrap(), 101);
    });
    let entries = read_all(&dir, 0);
    assert_eq!(entries.len(), 101);
    assert!(entries
        .iter()
        .enumerate()
        .all(|(i, e)| e.0 == i as u64 && e.2 == payload(i as u64)));
    // Starting in the middle of a later segment.
    let tail = read_all(&dir, 77);
    assert_eq!(tail.first().unwrap().0, 77);
    assert_eq!(tail.len(), 24);
}

#[test]
fn uncommitted_records_are_not_in_the_log_after_a_crash() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let d = dir.clone();
    run(async move {
        let (log, _) = ShardLog::open(&d, 1 << 20, TORN_MAX).await.unwrap();
        log.append(RecordKind::Reading, b"durable");
        log.commit().await.unwrap();
        log.append(RecordKind::Reading, b"never committed");
        // Dropped without commit: the process "crashed" here.
    });
    let d = dir.clone();
    let recovery = run(async move { ShardLog::open(&d, 1 << 20, TORN_MAX).await.unwrap().1 });
    assert_eq!(recovery.next_offset, 1);
    let entries = read_all(&dir, 0);
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].2, b"durable");
}

#[test]
fn torn_tail_is_cut_and_the_log_continues() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let d = dir.clone();
    run(async move {
        let (log, _) = ShardLog::open(&d, 1 << 20, TORN_MAX).await.unwrap();
        for i in 0..10 {
            log.append(RecordKind::Reading, &payload(i));
        }
        log.commit().await.unwrap();
    });
    // Simulate a write cut short by a crash: half a record right after the last whole one
    // (the segment is preallocated, so "after" is inside the file, not at its end).
    let (_, last) = log::list_segments(&dir).unwrap().pop().unwrap();
    let valid_end = log::format::SEGMENT_HEADER_BYTES
        + (0..10)
            .map(|i| log::format::record_bytes(payload(i).len()))
            .sum::<usize>();
    let mut half = Vec::new();
    log::format::encode_record(RecordKind::Reading, b"half-written record", &mut half);
    half.truncate(half.len() / 2);
    std::os::unix::fs::FileExt::write_at(
        &std::fs::OpenOptions::new().write(true).open(&last).unwrap(),
        &half,
        valid_end as u64,
    )
    .unwrap();
    // The reader stops cleanly at the torn tail.
    assert_eq!(read_all(&dir, 0).len(), 10);

    let d = dir.clone();
    let recovery = run(async move {
        let (log, recovery) = ShardLog::open(&d, 1 << 20, TORN_MAX).await.unwrap();
        assert_eq!(log.append(RecordKind::Reading, &payload(10)), 10);
        log.commit().await.unwrap();
        recovery
    });
    assert_eq!(recovery.next_offset, 10);
    assert_eq!(recovery.truncated_bytes, half.len() as u64);
    assert!(recovery.torn.is_some());
    let entries = read_all(&dir, 0);
    assert_eq!(entries.len(), 11);
    assert_eq!(entries[10].2, payload(10));
}

#[test]
fn corruption_before_the_tail_is_reported_not_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let d = dir.clone();
    run(async move {
        let (log, _) = ShardLog::open(&d, 256, TORN_MAX).await.unwrap();
        for batch in 0..3u64 {
            for i in 0..10 {
                log.append(RecordKind::Reading, &payload(batch * 10 + i));
            }
            log.commit().await.unwrap();
        }
    });
    let segments = log::list_segments(&dir).unwrap();
    assert!(segments.len() >= 2);
    // Flip a byte inside the third record of the first (sealed) segment.
    let first = &segments[0].1;
    let mut bytes = std::fs::read(first).unwrap();
    let inside = log::format::SEGMENT_HEADER_BYTES
        + (0..2)
            .map(|i| log::format::record_bytes(payload(i).len()))
            .sum::<usize>()
        + 10;
    bytes[inside] ^= 0xFF;
    std::fs::write(first, &bytes).unwrap();
    let results: Vec<_> = LogReader::open(&dir, 0).unwrap().collect();
    let error = results.iter().find_map(|r| r.as_ref().err()).unwrap();
    assert!(
        matches!(error, log::ReadError::Corrupt { .. }),
        "got {error}"
    );
}

#[test]
fn segment_cut_during_creation_is_repaired() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let d = dir.clone();
    run(async move {
        let (log, _) = ShardLog::open(&d, 1 << 20, TORN_MAX).await.unwrap();
        log.append(RecordKind::Reading, b"one");
        log.commit().await.unwrap();
    });
    // A crash right after creating the next segment file, before its header was written.
    std::fs::write(dir.join(log::segment_file_name(1)), b"INGE").unwrap();
    assert_eq!(read_all(&dir, 0).len(), 1);
    let d = dir.clone();
    run(async move {
        let (log, recovery) = ShardLog::open(&d, 1 << 20, TORN_MAX).await.unwrap();
        assert_eq!(recovery.next_offset, 1);
        log.append(RecordKind::Reading, b"two");
        log.commit().await.unwrap();
    });
    let entries = read_all(&dir, 0);
    assert_eq!(
        entries.iter().map(|e| e.2.clone()).collect::<Vec<_>>(),
        vec![b"one".to_vec(), b"two".to_vec()]
    );
}

#[test]
fn damage_larger_than_a_commit_batch_is_refused_not_discarded() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let d = dir.clone();
    run(async move {
        let (log, _) = ShardLog::open(&d, 1 << 20, TORN_MAX).await.unwrap();
        log.append(RecordKind::Reading, b"acknowledged");
        log.commit().await.unwrap();
    });
    // Garbage far beyond anything one commit could have written: this is corruption (for
    // example a zeroed length field in front of acknowledged records), and clearing it
    // could destroy acknowledged data.
    let (_, last) = log::list_segments(&dir).unwrap().pop().unwrap();
    std::os::unix::fs::FileExt::write_at(
        &std::fs::OpenOptions::new().write(true).open(&last).unwrap(),
        b"not zero",
        500_000,
    )
    .unwrap();
    let d = dir.clone();
    let error = run(async move {
        match ShardLog::open(&d, 1 << 20, TORN_MAX).await {
            Ok(_) => String::new(),
            Err(error) => error.to_string(),
        }
    });
    assert!(error.contains("corruption, not a torn tail"), "{error}");
    // Nothing was cleared.
    assert_eq!(read_all(&dir, 0).len(), 1);
}

#[test]
fn segments_are_preallocated_and_the_spare_becomes_the_next_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let d = dir.clone();
    run(async move {
        let (log, _) = ShardLog::open(&d, 4096, TORN_MAX).await.unwrap();
        let first = log::list_segments(&d).unwrap()[0].1.clone();
        assert_eq!(std::fs::metadata(&first).unwrap().len(), 4096);
        // Not half full yet: no spare.
        assert!(!log.claim_spare());
        for i in 0..60 {
            log.append(RecordKind::Reading, &payload(i));
        }
        log.commit().await.unwrap();
        // Half full: the spare is claimed once and prepared.
        assert!(log.claim_spare());
        assert!(!log.claim_spare());
        log.prepare_spare().await;
        assert!(d.join("spare.segment").exists());
        for i in 60..130 {
            log.append(RecordKind::Reading, &payload(i));
        }
        log.commit().await.unwrap();
        // The roll renamed the spare.
        assert!(!d.join("spare.segment").exists());
        log.append(RecordKind::Reading, &payload(130));
        log.commit().await.unwrap();
    });
    let segments = log::list_segments(&dir).unwrap();
    assert_eq!(segments.len(), 2);
    assert_eq!(std::fs::metadata(&segments[1].1).unwrap().len(), 4096);
    let entries = read_all(&dir, 0);
    assert_eq!(entries.len(), 131);
    assert!(entries
        .iter()
        .enumerate()
        .all(|(i, e)| e.0 == i as u64 && e.2 == payload(i as u64)));
}
