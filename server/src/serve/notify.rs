//! A single-waiter wake-up flag for tasks on one shard.
//!
//! `notify` before `notified` is remembered (one pending wake), so a wake-up between a
//! task's last check and its wait is never lost. One waiter at a time: each use (the
//! timer, the committer, one connection's writer or reader) has exactly one task waiting
//! on it. [`Latch`] is the other kind: set once, any number of waiters (the shard's stop).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

#[derive(Debug, Default)]
pub struct Notify {
    pending: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Notify {
    /// Wakes the waiter, or makes the next wait return at once.
    pub fn notify(&self) {
        self.pending.set(true);
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }

    /// Waits for a notification (consuming it).
    pub fn notified(&self) -> Notified<'_> {
        Notified { notify: self }
    }
}

pub struct Notified<'a> {
    notify: &'a Notify,
}

impl Future for Notified<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.notify.pending.replace(false) {
            return Poll::Ready(());
        }
        *self.notify.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// A one-way latch any number of tasks can wait on: set once, wakes every waiter, and
/// every later wait returns at once. Used for "this shard is stopping".
#[derive(Debug, Default)]
pub struct Latch {
    set: Cell<bool>,
    wakers: RefCell<Vec<Waker>>,
}

impl Latch {
    pub fn set(&self) {
        self.set.set(true);
        for waker in self.wakers.borrow_mut().drain(..) {
            waker.wake();
        }
    }

    pub fn is_set(&self) -> bool {
        self.set.get()
    }

    pub fn wait(&self) -> LatchWait<'_> {
        LatchWait { latch: self }
    }
}

pub struct LatchWait<'a> {
    latch: &'a Latch,
}

impl Future for LatchWait<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.latch.set.get() {
            return Poll::Ready(());
        }
        let mut wakers = self.latch.wakers.borrow_mut();
        if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
            wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// Wakes every waiting task at each [`notify_all`](Self::notify_all), any number of times:
/// "a commit finished", awaited by each CONNECT whose credential record must be durable
/// before its CONNACK and by the checkpoint writer.
#[derive(Debug, Default)]
pub struct Broadcast {
    generation: Cell<u64>,
    wakers: RefCell<Vec<Waker>>,
}

impl Broadcast {
    pub fn notify_all(&self) {
        self.generation.set(self.generation.get().wrapping_add(1));
        for waker in self.wakers.borrow_mut().drain(..) {
            waker.wake();
        }
    }

    /// The current generation: pass it to [`changed`](Self::changed) to wait for the next
    /// notification without missing one that happens in between.
    pub fn generation(&self) -> u64 {
        self.generation.get()
    }

    /// Resolves once a notification happened after `since` was read.
    pub fn changed(&self, since: u64) -> Changed<'_> {
        Changed {
            broadcast: self,
            since,
        }
    }
}

pub struct Changed<'a> {
    broadcast: &'a Broadcast,
    since: u64,
}

impl Future for Changed<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.broadcast.generation.get() != self.since {
            return Poll::Ready(());
        }
        let mut wakers = self.broadcast.wakers.borrow_mut();
        if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
            wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}
