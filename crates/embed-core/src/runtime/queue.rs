//! The worker's queue of accepted jobs and the choice of each next batch.
//!
//! Batches are formed continuously: every batch is chosen from what is queued at that moment,
//! so a request that arrives while a large one runs joins at the next batch boundary, and a
//! large request is cut into batches that interleave with others. Interactive work is batched
//! before bulk work, but after [`INTERACTIVE_RUN`] interactive batches in a row a waiting bulk
//! request gets one (bulk cannot starve). Within a priority the batch is taken from a window
//! of the oldest queued inputs (up to the gather limit), longest first as before: a job's
//! inputs are never passed over for long, and batches of similar lengths waste little on
//! padding. Each job's rows come back together and in order once its last batch is read.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::job::{Item, Job, RowFinish};
use super::WorkerStats;
use crate::{Error, Priority, Result};

/// Interactive batches in a row before a waiting bulk request gets one.
pub(crate) const INTERACTIVE_RUN: usize = 4;

/// A job in the queue: its rows as they arrive, and which of its inputs are batched.
struct Entry {
    job: Job,
    rows: Vec<Vec<f32>>,
    scheduled: Vec<bool>,
    /// Every input before this one is scheduled.
    cursor: usize,
    /// Inputs not yet in a batch.
    unscheduled: usize,
    /// Inputs in a batch whose rows have not come back.
    outstanding: usize,
    failed: Option<Error>,
    started: bool,
}

impl Entry {
    /// Done: nothing in flight, and nothing more will be batched.
    fn settled(&self) -> bool {
        self.outstanding == 0 && (self.unscheduled == 0 || self.failed.is_some() || self.job.reply.is_closed())
    }
}

/// The limits one batch is formed under.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) max_tokens: usize,
    pub(crate) max_size: usize,
    /// The token budget of a bulk batch (cut below `max_tokens` while interactive work is about).
    pub(crate) bulk_tokens: usize,
    /// Inputs considered when forming one batch (sorted by length).
    pub(crate) window: usize,
}

/// The queue of one model's worker.
pub(crate) struct Queue {
    model: String,
    slots: Vec<Option<Entry>>,
    free: Vec<usize>,
    /// Per priority (index `Priority as usize`): slots with inputs not yet batched, in arrival order.
    order: [VecDeque<usize>; 2],
    /// Every job in one arrival-order line, in full batches (priorities off).
    fifo: bool,
    /// Interactive batches run in a row while bulk work waited.
    interactive_run: usize,
}

/// What the next batch is.
pub(crate) struct Next {
    pub(crate) priority: Priority,
    pub(crate) items: Vec<Item>,
}

impl Queue {
    pub(crate) fn new(model: &str, fifo: bool) -> Queue {
        Queue { model: model.to_string(), slots: Vec::new(), free: Vec::new(), order: [VecDeque::new(), VecDeque::new()], fifo, interactive_run: 0 }
    }

    /// No job is queued or in flight.
    pub(crate) fn is_empty(&self) -> bool {
        self.slots.len() == self.free.len()
    }

    /// Takes `job` in. A job with no inputs is answered at once.
    pub(crate) fn push(&mut self, job: Job, stats: &WorkerStats) {
        let n = job.seqs.len();
        let line = if self.fifo { 0 } else { job.priority as usize };
        let entry = Entry {
            rows: vec![Vec::new(); n],
            scheduled: vec![false; n],
            cursor: 0,
            unscheduled: n,
            outstanding: 0,
            failed: None,
            started: false,
            job,
        };
        let slot = match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(entry);
                i
            }
            None => {
                self.slots.push(Some(entry));
                self.slots.len() - 1
            }
        };
        if n == 0 {
            self.settle(slot, stats);
        } else {
            self.order[line].push_back(slot);
        }
    }

    /// The job in `slot` (which must hold one: items only name live slots).
    pub(crate) fn job(&self, slot: usize) -> &Job {
        &self.slots[slot].as_ref().expect("an item names a live slot").job
    }

    /// Fails every queued job with `error` (what is in flight is delivered as it comes back).
    pub(crate) fn fail_all(&mut self, error: &Error, stats: &WorkerStats) {
        let queued: Vec<usize> = self.order.iter_mut().flat_map(std::mem::take).collect();
        for slot in queued {
            if let Some(e) = self.slots[slot].as_mut() {
                e.failed.get_or_insert_with(|| error.clone());
            }
            self.settle(slot, stats);
        }
    }

    /// Chooses the next batch, or `None` when no input waits. Jobs whose caller went away, or
    /// that already failed, get no more batches.
    pub(crate) fn next_batch(&mut self, limits: &Limits, stats: &WorkerStats) -> Option<Next> {
        self.next_in(limits, stats, false)
    }

    /// The next interactive batch, or `None` when no interactive input waits (between the
    /// layers of a bulk pass; these batches do not count towards the run that lets bulk work
    /// go next, since the bulk pass is already running).
    pub(crate) fn next_interactive(&mut self, limits: &Limits, stats: &WorkerStats) -> Option<Next> {
        self.next_in(limits, stats, true)
    }

    fn next_in(&mut self, limits: &Limits, stats: &WorkerStats, interactive_only: bool) -> Option<Next> {
        for line in 0..2 {
            let slots: Vec<usize> = self.order[line].iter().copied().collect();
            for slot in slots {
                let e = self.slots[slot].as_ref().expect("queued slot is live");
                if e.failed.is_some() || e.job.reply.is_closed() {
                    self.order[line].retain(|s| *s != slot);
                    self.settle(slot, stats);
                }
            }
        }
        let (has_interactive, has_bulk) = (!self.order[0].is_empty(), !self.order[1].is_empty());
        let line = match (has_interactive, has_bulk) {
            (false, _) if interactive_only => return None,
            (true, _) if interactive_only => 0,
            (false, false) => return None,
            (true, false) => 0,
            (false, true) => 1,
            (true, true) if self.interactive_run < INTERACTIVE_RUN => {
                self.interactive_run += 1;
                0
            }
            (true, true) => 1,
        };
        if line == 1 {
            self.interactive_run = 0;
        }
        let bulk = line == 1;
        // The window: the oldest jobs' unbatched inputs, up to the limit.
        let mut window: Vec<Item> = Vec::new();
        for &slot in &self.order[line] {
            let e = self.slots[slot].as_ref().expect("queued slot is live");
            for seq in e.cursor..e.scheduled.len() {
                if !e.scheduled[seq] {
                    window.push(Item { job: slot, seq, len: e.job.seqs[seq].ids.len() });
                    if window.len() >= limits.window {
                        break;
                    }
                }
            }
            if window.len() >= limits.window {
                break;
            }
        }
        // Longest first: batches of similar length waste little on padding.
        window.sort_by_key(|it| std::cmp::Reverse(it.len));
        let tokens = if bulk { limits.bulk_tokens } else { limits.max_tokens };
        let take = first_batch_len(&window, tokens, limits.max_size);
        window.truncate(take);
        let now = Instant::now();
        for it in &window {
            let e = self.slots[it.job].as_mut().expect("queued slot is live");
            e.scheduled[it.seq] = true;
            e.unscheduled -= 1;
            e.outstanding += 1;
            if !e.started {
                e.started = true;
                let _ = e.job.first_batch.set(now);
                let p = e.job.priority as usize;
                let waited = now.saturating_duration_since(e.job.arrived).as_micros() as u64;
                stats.started[p].fetch_add(1, Ordering::Relaxed);
                stats.not_enqueued(e.job.priority);
                stats.first_batch_wait_us[p].fetch_add(waited, Ordering::Relaxed);
            }
            while e.cursor < e.scheduled.len() && e.scheduled[e.cursor] {
                e.cursor += 1;
            }
        }
        let slots = &self.slots;
        self.order[line].retain(|s| slots[*s].as_ref().is_some_and(|e| e.unscheduled > 0));
        let priority = if bulk { Priority::Bulk } else { Priority::Interactive };
        Some(Next { priority, items: window })
    }

    /// Puts a batch's rows where their jobs expect them (or marks the jobs failed), and answers
    /// every job that is now complete.
    pub(crate) fn deliver(&mut self, batch: &[Item], result: Result<Vec<Vec<f32>>>, stats: &WorkerStats) {
        let result = match result {
            Ok(rows) if rows.len() != batch.len() => Err(Error::Inference {
                model: self.model.clone(),
                message: format!("a batch of {} inputs returned {} rows", batch.len(), rows.len()),
            }),
            other => other,
        };
        match result {
            Ok(rows) => {
                for (it, row) in batch.iter().zip(rows) {
                    let e = self.slots[it.job].as_mut().expect("an item names a live slot");
                    e.rows[it.seq] = row;
                    e.outstanding -= 1;
                }
            }
            Err(err) => {
                for it in batch {
                    let e = self.slots[it.job].as_mut().expect("an item names a live slot");
                    e.failed.get_or_insert_with(|| err.clone());
                    e.outstanding -= 1;
                }
            }
        }
        let mut touched: Vec<usize> = batch.iter().map(|it| it.job).collect();
        touched.sort_unstable();
        touched.dedup();
        for slot in touched {
            self.settle(slot, stats);
        }
    }

    /// Answers and frees the job in `slot` if it is complete.
    fn settle(&mut self, slot: usize, stats: &WorkerStats) {
        if !self.slots[slot].as_ref().is_some_and(Entry::settled) {
            return;
        }
        let e = self.slots[slot].take().expect("checked above");
        for line in &mut self.order {
            line.retain(|s| *s != slot);
        }
        self.free.push(slot);
        if !e.started {
            stats.not_enqueued(e.job.priority);
        }
        let result = match e.failed {
            Some(err) => Err(err),
            None if e.job.finish == RowFinish::default() => Ok(e.rows),
            None => Ok(e.rows.into_iter().map(|v| finished(v, e.job.finish)).collect()),
        };
        // A caller that went away gets nothing; its reply channel is closed.
        let _ = e.job.reply.send(result);
    }
}

/// `v` as its caller gets it (see [`RowFinish`]).
fn finished(mut v: Vec<f32>, finish: RowFinish) -> Vec<f32> {
    if let Some(keep) = finish.keep {
        v.truncate(keep);
    }
    if finish.normalize {
        normalized(v)
    } else {
        v
    }
}

fn normalized(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| (*x as f64) * (*x as f64)).sum::<f64>().sqrt().max(1e-12) as f32;
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

/// How many of the length-sorted `items` the next batch takes under a padded-token budget
/// (`inputs × longest input`) and a size limit: always at least one.
pub(crate) fn first_batch_len(items: &[Item], max_tokens: usize, max_size: usize) -> usize {
    let mut longest = 0;
    for (n, it) in items.iter().enumerate() {
        let new_longest = longest.max(it.len);
        if n > 0 && ((n + 1) * new_longest > max_tokens || n >= max_size) {
            return n;
        }
        longest = new_longest;
    }
    items.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::Seq;
    use crate::runtime::Output;
    use tokio::sync::oneshot;

    type Answer = oneshot::Receiver<Result<Vec<Vec<f32>>>>;

    fn job(lens: &[usize], priority: Priority) -> (Job, Answer) {
        let (reply, answer) = oneshot::channel();
        let seqs = lens
            .iter()
            .map(|&n| Seq { ids: vec![1; n], type_ids: vec![0; n], pool_skip: 0, poisoned: false, expansion: 0 })
            .collect();
        (Job { seqs, output: Output::Head, finish: RowFinish::default(), priority, arrived: Instant::now(), reply, first_batch: Default::default() }, answer)
    }

    fn limits() -> Limits {
        Limits { max_tokens: 64, max_size: 4, bulk_tokens: 64, window: 1024 }
    }

    /// Pushes `job` counted as `submit` counts it.
    fn push(q: &mut Queue, stats: &WorkerStats, (job, answer): (Job, Answer)) -> Answer {
        stats.enqueued(job.priority);
        q.push(job, stats);
        answer
    }

    /// Answers every item with a row that names it: `[slot's first input length, seq]`.
    fn run(q: &mut Queue, stats: &WorkerStats, next: &Next) {
        let rows = next.items.iter().map(|it| vec![it.len as f32, it.seq as f32]).collect();
        q.deliver(&next.items, Ok(rows), stats);
    }

    #[test]
    fn a_query_joins_at_the_next_batch_boundary_and_is_answered_first() {
        let (mut q, stats) = (Queue::new("m", false), WorkerStats::default());
        let mut bulk = push(&mut q, &stats, job(&[8; 10_000], Priority::Bulk));
        let first = q.next_batch(&limits(), &stats).expect("bulk work waits");
        assert_eq!((first.priority, first.items.len()), (Priority::Bulk, 4));
        // The query arrives while the bulk request's first batch runs.
        let mut query = push(&mut q, &stats, job(&[5], Priority::Interactive));
        run(&mut q, &stats, &first);
        let second = q.next_batch(&limits(), &stats).expect("work waits");
        assert_eq!(second.priority, Priority::Interactive);
        assert_eq!(second.items.len(), 1);
        run(&mut q, &stats, &second);
        assert_eq!(query.try_recv().expect("answered").expect("ok"), vec![vec![5.0, 0.0]]);
        assert!(bulk.try_recv().is_err(), "the bulk request is not done yet");
        let mut batches = 2;
        while let Some(next) = q.next_batch(&limits(), &stats) {
            assert_eq!(next.priority, Priority::Bulk);
            run(&mut q, &stats, &next);
            batches += 1;
        }
        assert_eq!(batches, 2 + (10_000 - 4) / 4);
        let rows = bulk.try_recv().expect("answered").expect("ok");
        assert_eq!(rows.len(), 10_000);
        for (i, row) in rows.iter().enumerate() {
            assert_eq!(row, &vec![8.0, i as f32], "row {i} in order");
        }
        assert!(q.is_empty());
        assert_eq!(stats.queued_jobs.load(Ordering::SeqCst), 0);
        assert_eq!(stats.started[0].load(Ordering::SeqCst), 1);
        assert_eq!(stats.started[1].load(Ordering::SeqCst), 1);
    }

    #[test]
    fn bulk_work_gets_a_batch_after_a_run_of_interactive_ones() {
        let (mut q, stats) = (Queue::new("m", false), WorkerStats::default());
        let mut bulk = push(&mut q, &stats, job(&[8; 8], Priority::Bulk));
        let (mut order, mut queries) = (Vec::new(), Vec::new());
        // A query arrives before every batch: an endless interactive stream.
        for _ in 0..40 {
            queries.push(push(&mut q, &stats, job(&[3], Priority::Interactive)));
            let next = q.next_batch(&limits(), &stats).expect("work waits");
            order.push(next.priority);
            run(&mut q, &stats, &next);
            if bulk.try_recv().is_ok() {
                break;
            }
        }
        let bulk_batches = order.iter().filter(|p| **p == Priority::Bulk).count();
        assert_eq!(bulk_batches, 2, "8 bulk inputs in batches of 4: {order:?}");
        // Bulk ran after each run of INTERACTIVE_RUN interactive batches.
        assert_eq!(order.iter().position(|p| *p == Priority::Bulk), Some(INTERACTIVE_RUN));
        assert_eq!(order.len(), 2 * (INTERACTIVE_RUN + 1));
        let answered = queries.iter_mut().map(|a| a.try_recv()).filter(|r| matches!(r, Ok(Ok(_)))).count();
        // The query that arrived before a bulk batch joined the next interactive batch; only
        // the one that arrived before the last bulk batch is still waiting.
        assert_eq!(answered, queries.len() - 1);
    }

    #[test]
    fn without_priorities_work_runs_in_arrival_order_in_full_batches() {
        let (mut q, stats) = (Queue::new("m", true), WorkerStats::default());
        let mut bulk = push(&mut q, &stats, job(&[8; 8], Priority::Bulk));
        let mut query = push(&mut q, &stats, job(&[5], Priority::Interactive));
        let cut = Limits { bulk_tokens: 8, ..limits() };
        let first = q.next_batch(&cut, &stats).expect("work waits");
        // One line, one budget: the first batch is the oldest work at the full token budget
        // (the query's input is in the window too, so it may ride along, but bulk is not cut).
        assert_eq!(first.priority, Priority::Interactive, "fifo uses a single line");
        assert_eq!(first.items.len(), 4);
        assert!(first.items.iter().all(|it| it.len == 8));
        run(&mut q, &stats, &first);
        assert!(query.try_recv().is_err());
        while let Some(next) = q.next_batch(&cut, &stats) {
            run(&mut q, &stats, &next);
        }
        assert_eq!(bulk.try_recv().expect("answered").expect("ok").len(), 8);
        assert_eq!(query.try_recv().expect("answered").expect("ok").len(), 1);
    }

    #[test]
    fn bulk_batches_are_cut_to_their_budget_and_interactive_ones_are_not() {
        let (mut q, stats) = (Queue::new("m", false), WorkerStats::default());
        let _bulk = push(&mut q, &stats, job(&[8; 8], Priority::Bulk));
        // Bound, not dropped: a dropped answer is a cancelled request.
        let _query = push(&mut q, &stats, job(&[8; 4], Priority::Interactive));
        let cut = Limits { bulk_tokens: 16, ..limits() };
        let a = q.next_batch(&cut, &stats).expect("work waits");
        assert_eq!((a.priority, a.items.len()), (Priority::Interactive, 4));
        let b = q.next_batch(&cut, &stats).expect("work waits");
        assert_eq!((b.priority, b.items.len()), (Priority::Bulk, 2));
    }

    #[test]
    fn a_cancelled_request_gets_no_more_batches() {
        let (mut q, stats) = (Queue::new("m", false), WorkerStats::default());
        let bulk = push(&mut q, &stats, job(&[8; 100], Priority::Bulk));
        let first = q.next_batch(&limits(), &stats).expect("work waits");
        drop(bulk);
        run(&mut q, &stats, &first);
        assert!(q.next_batch(&limits(), &stats).is_none(), "its remaining 96 inputs are dropped");
        assert!(q.is_empty());
        assert_eq!(stats.queued_jobs.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_failed_batch_fails_its_jobs_once_their_batches_are_back() {
        let (mut q, stats) = (Queue::new("m", false), WorkerStats::default());
        let mut a = push(&mut q, &stats, job(&[8; 6], Priority::Bulk));
        let first = q.next_batch(&limits(), &stats).expect("work waits");
        q.deliver(&first.items, Ok(vec![vec![0.0]; first.items.len() - 1]), &stats);
        let err = a.try_recv().expect("answered").expect_err("a short batch fails its job");
        assert!(err.to_string().contains("returned 3 rows"), "{err}");
        assert!(q.next_batch(&limits(), &stats).is_none());
        assert!(q.is_empty());
    }

    #[test]
    fn first_batch_respects_token_budget_and_size() {
        let items: Vec<Item> = [100, 90, 50, 50, 10, 10, 10, 3].iter().enumerate().map(|(seq, &len)| Item { job: 0, seq, len }).collect();
        assert_eq!(first_batch_len(&items, 200, 3), 2, "100 + 90 fit (2 × 100); a third would need 300");
        assert_eq!(first_batch_len(&items[2..], 200, 3), 3, "the size limit");
        assert_eq!(first_batch_len(&items, 10, 8), 1, "an input over the budget runs alone");
        assert_eq!(first_batch_len(&[], 10, 8), 0);
    }
}
