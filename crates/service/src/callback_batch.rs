//! Group commit for fal's callbacks.
//!
//! fal calls back in bursts (a batch of generations finishes together), and a callback that
//! commits alone waits for its own WAL flush. Each request verifies its callback on its own,
//! then queues it here; `FAL_CALLBACK_COMMITTERS` committers each take what is queued (up to
//! `FAL_CALLBACK_BATCH_MAX`) as soon as their previous commit returns, and apply it in one
//! transaction ([`store::Store::apply_webhook_batch`]). A request is answered only after the
//! commit that holds its change. A batch that fails is applied again callback by callback, so
//! one bad callback never fails the others.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use store::{BatchedCallback, JobRecord, WebhookOutcome};
use tokio::sync::{mpsc, oneshot, Mutex, OwnedMutexGuard};

use crate::config::CallbackBatchSettings;
use crate::context::Service;
use crate::error::ServiceError;
use crate::fal_webhook::{self, CallbackOutcome};

/// A verified callback waiting for its batch.
pub(crate) struct Pending {
    pub callback: BatchedCallback,
    pub payload: fal::WebhookBody,
    /// The callback request's span, linked from the span that applies it.
    pub link: opentelemetry::trace::SpanContext,
    pub reply: oneshot::Sender<Result<Committed, ServiceError>>,
}

/// A committed callback: what became of it and the job it was for.
#[derive(Debug)]
pub(crate) struct Committed {
    pub outcome: CallbackOutcome,
    pub job: Option<JobRecord>,
}

/// The callbacks waiting for a committer, and the committers' settings.
pub struct CallbackQueue {
    sender: mpsc::Sender<Pending>,
    receiver: Arc<Mutex<mpsc::Receiver<Pending>>>,
    /// Callbacks being verified: on their way to the queue.
    arriving: Arc<AtomicUsize>,
    /// Batches being committed, and a signal when one ends.
    committing: Arc<Committing>,
    settings: CallbackBatchSettings,
    started: Once,
}

/// A callback on its way to the queue (counted while it is verified).
pub struct Arriving(Arc<AtomicUsize>);

impl Drop for Arriving {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for CallbackQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallbackQueue")
            .field("settings", &self.settings)
            .field("queued", &self.queued())
            .finish()
    }
}

/// While held, no committer starts a batch: callbacks queue, and the next batch takes them
/// together (up to the batch limit).
pub struct CommitHold(#[allow(dead_code)] OwnedMutexGuard<mpsc::Receiver<Pending>>);

impl CallbackQueue {
    pub fn new(settings: CallbackBatchSettings) -> Self {
        // Room for a full batch per committer and as many waiting: a request beyond that
        // waits for room, which bounds the memory held by callbacks in flight.
        let (sender, receiver) = mpsc::channel(settings.max_callbacks * settings.committers * 2);
        Self {
            sender,
            receiver: Arc::new(Mutex::new(receiver)),
            arriving: Arc::default(),
            committing: Arc::default(),
            settings,
            started: Once::new(),
        }
    }

    /// Counts a callback as on its way until the returned guard is dropped (when it is queued
    /// or refused): committers wait a little for those.
    pub fn arriving(&self) -> Arriving {
        self.arriving.fetch_add(1, Ordering::Relaxed);
        Arriving(self.arriving.clone())
    }

    /// Callbacks queued and not taken by a committer yet.
    pub fn queued(&self) -> usize {
        self.sender.max_capacity() - self.sender.capacity()
    }

    /// Stops committers from starting a batch until the hold is dropped (a batch being
    /// committed finishes).
    pub async fn hold(&self) -> CommitHold {
        CommitHold(self.receiver.clone().lock_owned().await)
    }

    /// Queues a verified callback and waits for the commit that holds it.
    pub(crate) async fn commit(
        &self,
        service: &Service,
        arriving: Arriving,
        pending: impl FnOnce(oneshot::Sender<Result<Committed, ServiceError>>) -> Pending,
    ) -> Result<Committed, ServiceError> {
        self.start(service);
        let (reply, answer) = oneshot::channel();
        let stopped = || {
            ServiceError::unavailable(
                "callbacks_unavailable",
                "this replica cannot commit callbacks now; retry later",
            )
        };
        let sent = self.sender.send(pending(reply)).await;
        drop(arriving);
        sent.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Starts the committers on first use, on the runtime that serves the callbacks.
    fn start(&self, service: &Service) {
        self.started.call_once(|| {
            for _ in 0..self.settings.committers {
                tokio::spawn(run(
                    service.clone(),
                    self.receiver.clone(),
                    self.arriving.clone(),
                    self.committing.clone(),
                    self.settings,
                ));
            }
        });
    }
}

/// Batches being committed, and a signal when one ends.
#[derive(Default)]
struct Committing {
    batches: AtomicUsize,
    ended: tokio::sync::Notify,
}

/// One committer: takes what is queued (waiting up to the configured wait for callbacks still
/// being verified), commits it, and again.
///
/// While another batch commits, a committer with callbacks waiting starts its own only once
/// that batch ends or a few wait (a 32nd of `FAL_CALLBACK_BATCH_MAX`): the callbacks that
/// arrive during a commit go together into the next batch instead of one by one, and a burst
/// does not wait for the commit in flight to end before its own begins.
async fn run(
    service: Service,
    receiver: Arc<Mutex<mpsc::Receiver<Pending>>>,
    arriving: Arc<AtomicUsize>,
    committing: Arc<Committing>,
    settings: CallbackBatchSettings,
) {
    let enough = (settings.max_callbacks / 32).max(1);
    loop {
        let batch = {
            let mut receiver = receiver.lock().await;
            let Some(first) = receiver.recv().await else {
                return;
            };
            while committing.batches.load(Ordering::Acquire) > 0 && receiver.len() + 1 < enough {
                let ended = committing.ended.notified();
                // Looks again at least every millisecond: callbacks keep arriving meanwhile.
                let _ = tokio::time::timeout(Duration::from_millis(1), ended).await;
            }
            collect(&mut receiver, first, &arriving, settings).await
        };
        let _counted = committing.start();
        commit_batch(&service, batch).await;
    }
}

impl Committing {
    /// Counts a batch as being committed until the guard is dropped (also by a panic).
    fn start(self: &Arc<Self>) -> CommittingBatch {
        self.batches.fetch_add(1, Ordering::AcqRel);
        CommittingBatch(self.clone())
    }
}

struct CommittingBatch(Arc<Committing>);

impl Drop for CommittingBatch {
    fn drop(&mut self) {
        self.0.batches.fetch_sub(1, Ordering::AcqRel);
        self.0.ended.notify_waiters();
    }
}

/// A batch starting with `first`: what is queued, and what arrives while callbacks are still
/// on their way, for at most `settings.wait`.
async fn collect(
    receiver: &mut mpsc::Receiver<Pending>,
    first: Pending,
    arriving: &AtomicUsize,
    settings: CallbackBatchSettings,
) -> Vec<Pending> {
    let mut batch = vec![first];
    let until = tokio::time::Instant::now() + settings.wait;
    while batch.len() < settings.max_callbacks {
        match receiver.try_recv() {
            Ok(pending) => {
                batch.push(pending);
                continue;
            }
            Err(_) if arriving.load(Ordering::Relaxed) == 0 => break,
            Err(_) => {}
        }
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        if left == Duration::ZERO {
            break;
        }
        match tokio::time::timeout(left, receiver.recv()).await {
            Ok(Some(pending)) => batch.push(pending),
            Ok(None) | Err(_) => break,
        }
    }
    batch
}

/// Applies a batch in one transaction, or callback by callback when that fails, and answers
/// every request of it.
#[tracing::instrument(skip_all, fields(callbacks = batch.len()))]
async fn commit_batch(service: &Service, batch: Vec<Pending>) {
    service.metrics.callback_batch(batch.len());
    let (callbacks, waiting): (Vec<BatchedCallback>, Vec<Waiting>) = batch
        .into_iter()
        .map(|p| {
            (
                p.callback,
                Waiting {
                    payload: p.payload,
                    link: p.link,
                    reply: p.reply,
                },
            )
        })
        .unzip();
    let mut spans: Vec<Option<tracing::Span>> = vec![None; waiting.len()];
    let started = std::time::Instant::now();
    let applied = service
        .store
        .apply_webhook_batch(
            &callbacks,
            i64::from(service.settings.unknown_callbacks.max_kept),
            |i, job| {
                let waiting = &waiting[i];
                let request_id = &callbacks[i].delivery.fal_request_id;
                spans[i] = Some(fal_webhook::apply_span(job, request_id, &waiting.link));
                fal_webhook::events_for(job, request_id, &waiting.payload)
            },
        )
        .await;
    service.metrics.callback_batch_duration(started.elapsed());
    let outcomes = match applied {
        Ok(outcomes) => outcomes,
        Err(error) => {
            tracing::warn!(%error, callbacks = callbacks.len(), "a batch of fal callbacks failed; applying them one by one");
            for (callback, waiting) in callbacks.into_iter().zip(waiting) {
                let result =
                    fal_webhook::apply_alone(service, callback, waiting.payload, &waiting.link)
                        .await;
                let _ = waiting.reply.send(result);
            }
            service.work.notify_waiters();
            return;
        }
    };
    for ((callback, waiting), applied) in callbacks.iter().zip(waiting).zip(outcomes) {
        let outcome = fal_webhook::outcome_of(&applied.outcome, &callback.delivery.fal_request_id);
        if matches!(applied.outcome, WebhookOutcome::Processed(_)) {
            if let Some(generation) = applied.job.as_ref().and_then(|j| j.generation_id) {
                crate::generation_items::announce(service, generation);
            }
        }
        // Nobody waiting (the caller went away) is normal: the change is committed.
        let _ = waiting.reply.send(Ok(Committed {
            outcome,
            job: applied.job,
        }));
    }
    drop(spans);
    service.work.notify_waiters();
}

/// A queued callback's request, waiting for its answer.
struct Waiting {
    payload: fal::WebhookBody,
    link: opentelemetry::trace::SpanContext,
    reply: oneshot::Sender<Result<Committed, ServiceError>>,
}
