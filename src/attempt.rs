//! The attempt protocol: how the layers that send a request more than once
//! (retry, hedge) and a replica pool below them agree on what an attempt is.
//!
//! Stacked, these layers must keep the promises each makes alone. For each
//! *original* request they share one record, which says:
//!
//! - **how many attempts were sent**: numbers run 1, 2, 3… across every
//!   layer, in the order attempts are admitted (a retry takes its number
//!   before its backoff), and one cap bounds them all — that of the
//!   outermost repeating layer (a retry's `max_attempts`; for a hedge with
//!   no retry above it, one more than its `max_extra_attempts`). A layer
//!   below also keeps its own cap: a hedge under a retry sends at most
//!   `max_extra_attempts` per attempt of the retry, within the shared
//!   total. So the order matters: under `max_attempts(1)` a hedge never
//!   fires, and a hedge with one extra attempt over a retry allows two
//!   attempts in all. Put the retry outermost;
//! - **where the original was counted**: the outermost layer deposits the
//!   request into its [`RetryBudget`] once; a layer below with the same
//!   budget only withdraws. (A layer with a budget of its own counts every
//!   call it sees, an outer layer's retries included, as its traffic.)
//! - **the replicas tried**: a [`Pool`](crate::pool::Pool) records where
//!   each attempt went and sends the next one to a replica the request has
//!   not tried, while one exists.
//!
//! # How the record travels
//!
//! With the call, not in the request. The outermost repeating layer keeps
//! the record in its response future and lends it to the layers below for
//! as long as it calls or polls them (through a thread-local slot that is
//! restored afterwards, on unwind too). The layers below find it there. So
//! the protocol works for any request type, and a first attempt that
//! succeeds costs a few thread-local accesses per layer: no allocation, no
//! lock. The first replica tried is kept inline; the list allocates only
//! from the second (once per thread, then reused).
//!
//! A layer joins the record of the call it is made in. So a stack called
//! *synchronously* from a service's `call` below a retry (not from its
//! future) joins that retry's record: it shares its cap and numbering.
//! Call another upstream's stack from the future instead, as an `async`
//! block does.
//!
//! What cannot carry the record is a hop that calls or polls the service
//! below it from somewhere else: tower's
//! [`Buffer`](https://docs.rs/tower/latest/tower/buffer/struct.Buffer.html),
//! a spawned task. A layer below such a hop sees no record and acts as the
//! outermost one: it counts the request again in its budget and starts its
//! own count of attempts. Put such a hop above the retry layer, or below
//! the pool. (The pool itself calls a replica's service from its response
//! future: a retry layer inside a replica keeps a record of its own.)
//!
//! # Deadlines
//!
//! The record also keeps when the call must be over: the earliest of the
//! repeating layers' own deadlines (a retry's
//! [`deadline`](crate::retry::Builder::deadline)) and the time the request
//! itself allows ([`Replay::time_allowed`]: a gRPC `grpc-timeout`, an HTTP
//! header named with [`HttpReplay::deadline_header`](crate::http::HttpReplay::deadline_header)).
//! With one:
//!
//! - every attempt carries the time left ([`Replay::mark_time_left`]), so
//!   the server bounds its own work by it;
//! - a [`Pool`](crate::pool::Pool) below declines a repeat (a retry or a
//!   hedge) when the time left is less than the replica it chose takes to
//!   answer (its typical latency, as the pool measures it): it would not
//!   answer in time, and would only add load. Nothing is sent; the retry
//!   returns the last failure, the hedge lets its attempts in flight run on,
//!   and neither sends another (counted as refused for `deadline`).
//!
//! # What the service below sees
//!
//! [`Replay::mark`] puts each attempt's number on the request, for servers
//! and logs: [`HttpReplay`](crate::http::HttpReplay) as an [`Attempt`]
//! extension. The layers themselves never read it. For a request type of
//! your own, implement [`Replay`] and write the number wherever your
//! transport can carry it:
//!
//! ```
//! use steadfast::attempt::Replay;
//!
//! #[derive(Clone)]
//! struct Query { sql: String, attempt: u32 }
//!
//! struct QueryReplay;
//!
//! impl Replay<Query> for QueryReplay {
//!     fn replay(&self, q: &Query) -> Option<Query> {
//!         Some(q.clone())
//!     }
//!     fn mark(&self, q: &mut Query, number: u32) {
//!         q.attempt = number;
//!     }
//! }
//!
//! let mut q = Query { sql: "SELECT 1".into(), attempt: 0 };
//! let mut again = QueryReplay.replay(&q).unwrap();
//! QueryReplay.mark(&mut q, 1);
//! QueryReplay.mark(&mut again, 2);
//! assert_eq!((q.attempt, again.attempt, again.sql.as_str()), (1, 2, "SELECT 1"));
//! ```

use std::cell::{Cell, RefCell};
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use metrics::Counter;

use tokio::time::Instant;

use crate::budget::RetryBudget;

/// Copies a request for another attempt, or says it must not be sent again.
///
/// A repeating layer asks for a copy before the first attempt is sent (so
/// it keeps one to replay) and again before each repeat, so a copy can be
/// refused late: a [`ReplayBody`](crate::http::ReplayBody) that passed its
/// cap during the first attempt refuses then.
///
/// Built-ins: [`CloneRequest`] for any `Clone` request, and (feature
/// `http`) [`HttpReplay`](crate::http::HttpReplay), which also applies the
/// idempotency rules and marks each attempt with an [`Attempt`].
pub trait Replay<Req> {
    /// A copy of `req` for another attempt, or `None` when it must not be
    /// sent again.
    fn replay(&self, req: &Req) -> Option<Req>;

    /// Marks `req` as attempt `number` (1 for the first) before it is sent,
    /// for the service below to read. The layers do not need it (see the
    /// [module docs](self)); the default does nothing.
    fn mark(&self, req: &mut Req, number: u32) {
        let _ = (req, number);
    }

    /// The time `req` itself allows for the call, if it says (a gRPC
    /// `grpc-timeout`, an HTTP header of your choice): with the repeating
    /// layer's own deadline, the earlier of the two is the call's deadline,
    /// which every attempt must finish within (see the [module
    /// docs](self#deadlines)). The default says nothing.
    fn time_allowed(&self, req: &Req) -> Option<Duration> {
        let _ = req;
        None
    }

    /// Writes the time left to the call's deadline on an attempt about to
    /// be sent, for the service below (and the server) to bound its work:
    /// called for every attempt of a call that has a deadline. The default
    /// writes nothing.
    fn mark_time_left(&self, req: &mut Req, left: Duration) {
        let _ = (req, left);
    }
}

/// Replays any `Clone` request by cloning it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CloneRequest;

impl CloneRequest {
    /// The strategy.
    pub const fn new() -> Self {
        Self
    }
}

impl<Req: Clone> Replay<Req> for CloneRequest {
    #[inline]
    fn replay(&self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }
}

/// An attempt's number, as [`HttpReplay`](crate::http::HttpReplay) puts it
/// on an HTTP request (an extension) for the service below to read.
///
/// Numbers run 1, 2, 3… across every retry and hedge layer of a stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Attempt {
    number: u32,
}

impl Attempt {
    /// Attempt `number` (1 for the first).
    pub const fn new(number: u32) -> Self {
        Self { number }
    }

    /// The attempt number, 1 for the first.
    pub const fn number(&self) -> u32 {
        self.number
    }

    /// Whether this is a retry or a hedge rather than the first attempt.
    pub const fn is_repeat(&self) -> bool {
        self.number > 1
    }
}

/// A replica's identity in a request's record (a pool's member, by
/// address: alive while an attempt on it is, and compared, never read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReplicaId(NonZeroUsize);

impl ReplicaId {
    /// The identity of the replica behind `member`.
    pub(crate) fn of<T>(member: &Arc<T>) -> Self {
        Self(NonZeroUsize::MIN.saturating_add(Arc::as_ptr(member) as usize))
    }
}

/// One original request's record (see the [module docs](self)), as it is
/// lent to the layers below: small and `Copy`, so that lending it costs a
/// few word copies. The first replica tried sits inline; later ones go on
/// the thread's stack of replicas ([`MORE`]) while the record is lent, and
/// back into the owner's list when the loan ends.
///
/// Counts are `u16`: caps are at most [`MAX_ATTEMPTS`](crate::retry::MAX_ATTEMPTS)
/// (100), and three words copy faster than four.
#[derive(Debug, Clone, Copy)]
struct Frame {
    /// Attempts sent so far: the last one's number.
    sent: u16,
    /// The most attempts in all, set by the outermost repeating layer.
    limit: u16,
    /// Replicas on the thread's stack that belong to this record (its top).
    pushed: u16,
    /// Whether a layer below joined the record, so it must be lent while
    /// the futures below are polled too.
    joined: bool,
    /// Whether it is lent for a call (a layer below joins it, a pool reads
    /// and extends the replicas tried) rather than for a poll (a layer that
    /// joined it at its call finds it again; a call made from inside a
    /// future being polled, user code calling another stack, does not join).
    for_call: bool,
    /// The budget the original was deposited in, by address: it is alive
    /// while the record is, since the layer owning the record holds it.
    counted_in: usize,
    /// The first replica tried.
    first_tried: Option<ReplicaId>,
    /// Whether the call being made is a hedge, and what a pool below made
    /// of it.
    hedge: Hedging,
    /// When the call must be over (see the [module docs](self#deadlines)).
    deadline: Option<Instant>,
}

/// An attempt's call, as the pool below sees it: a hedge (an extra attempt
/// while another is still in flight) goes only to a replica that can start
/// it at once, and no repeat goes to a replica that would not answer before
/// the call's deadline; the pool declines it otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hedging {
    /// Not a hedge: a first attempt, or one sent after the others failed.
    No,
    /// A hedge being called.
    Asked,
    /// A hedge the pool declined, no replica being free: nothing was sent.
    Declined,
    /// A repeat (a hedge or a retry) the pool declined, the time left being
    /// less than the chosen replica takes to answer: nothing was sent.
    TooLate,
}

/// What became of an attempt called through [`Share::call_repeat`] or
/// [`Share::call_hedge`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Taken {
    /// It was sent (or the service below will say why not).
    Sent,
    /// A hedge declined, no replica being free: try again later.
    Busy,
    /// Declined, as it would not finish before the deadline: no later
    /// attempt would either.
    TooLate,
}

impl Frame {
    fn first(limit: u32, counted_in: usize, deadline: Option<Instant>) -> Self {
        Self {
            sent: 1,
            limit: u16::try_from(limit).unwrap_or(u16::MAX),
            pushed: 0,
            joined: false,
            for_call: false,
            counted_in,
            first_tried: None,
            hedge: Hedging::No,
            deadline,
        }
    }

    fn may_send_more(&self) -> bool {
        self.sent < self.limit
    }
}

fn identity(budget: &RetryBudget) -> usize {
    std::ptr::from_ref(budget) as usize
}

/// The earlier of two deadlines, either of which may be absent.
pub(crate) fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

thread_local! {
    /// The record lent to the layers below, while a layer calls or polls them.
    static LENT: Cell<Option<Frame>> = const { Cell::new(None) };
    /// Replicas tried after the first, of every record lent on this thread:
    /// a stack, since loans nest like calls. Allocated once per thread, on
    /// the first repeat.
    static MORE: RefCell<Vec<ReplicaId>> = const { RefCell::new(Vec::new()) };
}

/// The record lent for a call, if there is one.
#[inline]
fn lent_for_call() -> Option<Frame> {
    LENT.get().filter(|frame| frame.for_call)
}

/// The top `n` replicas of the thread's stack, taken off into `into`.
fn pop_more(n: u16, into: &mut Vec<ReplicaId>) {
    // `try_with`: during the thread's teardown the stack may be gone.
    let _ = MORE.try_with(|more| {
        if let Ok(mut more) = more.try_borrow_mut() {
            let from = more.len().saturating_sub(n as usize);
            into.extend(more.drain(from..));
        }
    });
}

/// A record lent from above, relent as a call or a poll for as long as
/// this lives (the kind restored on drop, on unwind too).
struct Relent(bool);

impl Relent {
    fn set(for_call: bool) -> Option<Self> {
        let mut frame = LENT.get()?;
        let before = std::mem::replace(&mut frame.for_call, for_call);
        LENT.set(Some(frame));
        Some(Self(before))
    }
}

impl Drop for Relent {
    fn drop(&mut self) {
        if let Some(mut frame) = LENT.get() {
            frame.for_call = self.0;
            LENT.set(Some(frame));
        }
    }
}

/// An owner's record in the slot, for as long as it lives: dropped, it puts
/// back what the slot held before (on unwind too, so a panic below never
/// leaves a stale record for the next request).
struct Loan {
    before: Option<Frame>,
    done: bool,
}

impl Loan {
    #[inline]
    fn lend(frame: Frame) -> Self {
        Self {
            before: LENT.replace(Some(frame)),
            done: false,
        }
    }

    /// Ends the loan: the record back.
    #[inline]
    fn finish(mut self) -> Option<Frame> {
        self.done = true;
        LENT.replace(self.before)
    }
}

impl Drop for Loan {
    fn drop(&mut self) {
        if !self.done {
            if let Some(frame) = LENT.replace(self.before) {
                if frame.pushed > 0 {
                    pop_more(frame.pushed, &mut Vec::new());
                }
            }
        }
    }
}

/// The record of the outermost repeating layer.
#[derive(Debug)]
struct Own {
    frame: Frame,
    /// The replicas tried after the first, while the record is not lent.
    more: Vec<ReplicaId>,
}

/// A repeating layer's part in a request's record: the record itself when
/// the layer is the outermost, or nothing when it uses the one lent from
/// above.
#[derive(Debug)]
pub(crate) struct Share {
    own: Option<Own>,
    /// For a layer below a hop that polls it without the record (see the
    /// module docs): the cap it starts its own record with, and its budget.
    fallback_limit: u32,
    fallback_budget: usize,
    fallback_deadline: Option<Instant>,
}

impl Share {
    /// Joins the record of the call being made, or starts one if there is
    /// none (this layer is the outermost). The original is deposited in
    /// `budget` unless it was counted there already. `limit` is this
    /// layer's cap on attempts in all; `deadline`, when the call must be
    /// over by this layer's reckoning (the record keeps the earliest).
    #[inline]
    pub(crate) fn join(limit: u32, budget: &RetryBudget, deadline: Option<Instant>) -> Self {
        let own = match lent_for_call() {
            Some(mut frame) => {
                if frame.counted_in != identity(budget) {
                    budget.deposit();
                }
                frame.joined = true;
                frame.deadline = earliest(frame.deadline, deadline);
                LENT.set(Some(frame));
                None
            }
            None => {
                budget.deposit();
                Some(Own {
                    frame: Frame::first(limit, identity(budget), deadline),
                    more: Vec::new(),
                })
            }
        };
        Self {
            own,
            fallback_limit: limit,
            fallback_budget: identity(budget),
            fallback_deadline: deadline,
        }
    }

    /// The time left to the call's deadline, if it has one (zero once it
    /// passed).
    pub(crate) fn time_left(&mut self) -> Option<Duration> {
        let deadline = self.with(|frame| frame.deadline)?;
        Some(deadline.saturating_duration_since(Instant::now()))
    }

    /// Whether this layer owns the record: it sends the original request,
    /// and marks it as attempt 1.
    pub(crate) fn is_outermost(&self) -> bool {
        self.own.is_some()
    }

    /// Runs `f` on the record.
    fn with<T>(&mut self, f: impl FnOnce(&mut Frame) -> T) -> T {
        if let Some(own) = &mut self.own {
            return f(&mut own.frame);
        }
        if let Some(mut frame) = LENT.get() {
            let out = f(&mut frame);
            LENT.set(Some(frame));
            return out;
        }
        // Polled without the record (a hop that moved the future, see the
        // module docs): from here on, a record of its own, counted already.
        let own = self.own.insert(Own {
            frame: Frame::first(
                self.fallback_limit,
                self.fallback_budget,
                self.fallback_deadline,
            ),
            more: Vec::new(),
        });
        f(&mut own.frame)
    }

    /// Whether the cap allows another attempt.
    pub(crate) fn may_send_more(&mut self) -> bool {
        self.with(|frame| frame.may_send_more())
    }

    /// Takes the next attempt number.
    fn next_number(&mut self) -> u32 {
        self.with(|frame| {
            frame.sent = frame.sent.saturating_add(1);
            u32::from(frame.sent)
        })
    }

    /// The attempts sent so far.
    fn sent(&mut self) -> u32 {
        self.with(|frame| u32::from(frame.sent))
    }

    /// Calls the service below (`f`) with the record lent to it.
    #[inline]
    pub(crate) fn call<T>(&mut self, f: impl FnOnce() -> T) -> T {
        self.lend(true, f)
    }

    /// Calls the service below (`f`) for a hedge: an extra attempt while
    /// another is in flight. A pool below may decline it (see
    /// [`Tried::decline_hedge`] and [`Tried::decline_too_late`]); then
    /// nothing was sent, and the attempt should be given back
    /// ([`Admission::give_back`]).
    pub(crate) fn call_hedge<T>(&mut self, f: impl FnOnce() -> T) -> (T, Taken) {
        self.with(|frame| frame.hedge = Hedging::Asked);
        self.call_repeat(f)
    }

    /// Calls the service below (`f`) for a repeat sent after the attempts
    /// before it failed. A pool below may decline it as too late (see
    /// [`Tried::decline_too_late`]); then nothing was sent, and the attempt
    /// should be given back ([`Admission::give_back`]).
    pub(crate) fn call_repeat<T>(&mut self, f: impl FnOnce() -> T) -> (T, Taken) {
        let out = self.call(f);
        let taken = match self.with(|frame| std::mem::replace(&mut frame.hedge, Hedging::No)) {
            Hedging::Declined => Taken::Busy,
            Hedging::TooLate => Taken::TooLate,
            Hedging::No | Hedging::Asked => Taken::Sent,
        };
        (out, taken)
    }

    /// Polls the futures below (`f`) with the record lent to them, if a
    /// layer there joined it.
    #[inline]
    pub(crate) fn poll<T>(&mut self, f: impl FnOnce() -> T) -> T {
        self.lend(false, f)
    }

    #[inline]
    fn lend<T>(&mut self, for_call: bool, f: impl FnOnce() -> T) -> T {
        let Some(own) = &mut self.own else {
            // The record lent from above is in the slot already.
            let _relent = Relent::set(for_call);
            return f();
        };
        if !for_call && !own.frame.joined {
            // No layer below holds a part in the record: nothing to lend.
            return f();
        }
        let mut frame = own.frame;
        frame.for_call = for_call;
        if !own.more.is_empty() {
            // A repeat: the replicas tried after the first, onto the stack.
            frame.pushed = u16::try_from(own.more.len()).unwrap_or(u16::MAX);
            let _ = MORE.try_with(|more| {
                if let Ok(mut more) = more.try_borrow_mut() {
                    more.append(&mut own.more);
                }
            });
        }
        let loan = Loan::lend(frame);
        let out = f();
        if let Some(mut back) = loan.finish() {
            if back.pushed > 0 {
                pop_more(back.pushed, &mut own.more);
                back.pushed = 0;
            }
            own.frame = back;
        }
        out
    }
}

/// The replicas a request tried, as a pool sees them while choosing where
/// its attempt goes: the first inline, the rest on the thread's stack.
#[derive(Debug)]
pub(crate) struct Tried {
    first: Option<ReplicaId>,
    pushed: u16,
    hedge: Hedging,
    deadline: Option<Instant>,
}

impl Default for Tried {
    fn default() -> Self {
        Self {
            first: None,
            pushed: 0,
            hedge: Hedging::No,
            deadline: None,
        }
    }
}

impl Tried {
    /// Whether this attempt is a hedge: another attempt of the request is
    /// still in flight.
    pub(crate) fn is_hedge(&self) -> bool {
        self.hedge == Hedging::Asked
    }

    /// Declines the hedge being called: the pool sends nothing, and the
    /// hedge layer gives the attempt back and waits to try again.
    pub(crate) fn decline_hedge(&mut self) {
        if self.hedge == Hedging::Asked {
            self.hedge = Hedging::Declined;
        }
    }

    /// The time left at `now` to the call's deadline, if it has one.
    pub(crate) fn time_left(&self, now: Instant) -> Option<Duration> {
        self.deadline
            .map(|deadline| deadline.saturating_duration_since(now))
    }

    /// Declines the repeat being called (a hedge or a retry) as too late to
    /// finish before the deadline: the pool sends nothing, and the layer
    /// that called gives the attempt back and sends no more.
    pub(crate) fn decline_too_late(&mut self) {
        self.hedge = Hedging::TooLate;
    }

    /// Whether no attempt has been recorded.
    pub(crate) fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    /// Whether an attempt went to `replica`.
    pub(crate) fn contains(&self, replica: ReplicaId) -> bool {
        if self.first == Some(replica) {
            return true;
        }
        self.pushed > 0
            && MORE
                .try_with(|more| {
                    more.try_borrow().is_ok_and(|more| {
                        more.iter()
                            .rev()
                            .take(self.pushed as usize)
                            .any(|&r| r == replica)
                    })
                })
                .unwrap_or(false)
    }

    /// Records that an attempt went to `replica`.
    pub(crate) fn record(&mut self, replica: ReplicaId) {
        if self.first.is_none() {
            self.first = Some(replica);
            return;
        }
        let _ = MORE.try_with(|more| {
            if let Ok(mut more) = more.try_borrow_mut() {
                more.push(replica);
                self.pushed = self.pushed.saturating_add(1);
            }
        });
    }
}

/// The record lent to a call being made now, for a pool choosing where it
/// goes: `f` gets the replicas tried (`None` when no repeating layer is
/// above) and may record the one chosen.
#[inline]
pub(crate) fn with_tried<T>(f: impl FnOnce(Option<&mut Tried>) -> T) -> T {
    let Some(mut frame) = lent_for_call() else {
        return f(None);
    };
    let mut tried = Tried {
        first: frame.first_tried,
        pushed: frame.pushed,
        hedge: frame.hedge,
        deadline: frame.deadline,
    };
    let out = f(Some(&mut tried));
    frame.first_tried = tried.first;
    frame.pushed = tried.pushed;
    frame.hedge = tried.hedge;
    LENT.set(Some(frame));
    out
}

/// Why another attempt was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The cap on attempts (the shared one, or the layer's own).
    MaxAttempts,
    /// The request cannot be copied.
    NotReplayable,
    /// It would not finish before the deadline.
    Deadline,
    /// The budget is spent.
    Budget,
}

impl Refusal {
    fn reason(self) -> &'static str {
        match self {
            Self::MaxAttempts => "max_attempts",
            Self::NotReplayable => "not_replayable",
            Self::Deadline => "deadline",
            Self::Budget => "budget",
        }
    }
}

/// A layer's step for admitting another attempt, with its refusal counters
/// (`<metric>{name, reason}`).
#[derive(Debug)]
pub(crate) struct Admission {
    #[cfg_attr(not(feature = "tracing"), allow(dead_code))]
    layer: &'static str,
    #[cfg_attr(not(feature = "tracing"), allow(dead_code))]
    name: Arc<str>,
    max_attempts: Counter,
    not_replayable: Counter,
    deadline: Counter,
    budget: Counter,
}

impl Admission {
    /// The step for layer `layer` (`"retry"`, `"hedge"`) named `name`,
    /// counting refusals in `metric`.
    pub(crate) fn new(layer: &'static str, metric: &'static str, name: &Arc<str>) -> Self {
        let refused = |reason: &'static str| metrics::counter!(metric, "name" => name.clone(), "reason" => reason);
        Self {
            layer,
            name: name.clone(),
            max_attempts: refused("max_attempts"),
            not_replayable: refused("not_replayable"),
            deadline: refused("deadline"),
            budget: refused("budget"),
        }
    }

    /// Admits another attempt of a request, or says why not: the caps
    /// (the layer's own, `own_cap_left`, and the record's), a copy of
    /// `template`, `in_time` (checked only when the rest allow, since it
    /// may draw a backoff delay), and last the budget, so no token is spent
    /// on an attempt refused for another reason. An admitted attempt takes
    /// the next number and carries its mark.
    pub(crate) fn admit<Req, R: Replay<Req>>(
        &self,
        share: &mut Share,
        own_cap_left: bool,
        replay: &R,
        template: Option<&Req>,
        in_time: impl FnOnce() -> bool,
        budget: &RetryBudget,
    ) -> Result<Req, Refusal> {
        let admitted = (|| {
            if !own_cap_left || !share.may_send_more() {
                return Err(Refusal::MaxAttempts);
            }
            let mut next = template
                .and_then(|t| replay.replay(t))
                .ok_or(Refusal::NotReplayable)?;
            if !in_time() {
                return Err(Refusal::Deadline);
            }
            if !budget.withdraw() {
                return Err(Refusal::Budget);
            }
            let number = share.next_number();
            replay.mark(&mut next, number);
            Ok(next)
        })();
        if let Err(refusal) = admitted {
            self.refused(refusal, share.sent());
        }
        admitted
    }

    /// Gives back an attempt admitted but not sent (a hedge the pool
    /// declined): its number and its budget token. Not counted as refused
    /// here: the caller counts why.
    pub(crate) fn give_back(&self, share: &mut Share, budget: &RetryBudget) {
        share.with(|frame| frame.sent = frame.sent.saturating_sub(1).max(1));
        budget.give_back();
    }

    /// Gives back an attempt admitted but declined by a pool below as too
    /// late to finish before the deadline, counted as refused for it.
    pub(crate) fn decline_too_late(&self, share: &mut Share, budget: &RetryBudget) {
        self.give_back(share, budget);
        self.refused(Refusal::Deadline, share.sent());
    }

    fn refused(&self, refusal: Refusal, sent: u32) {
        let counter = match refusal {
            Refusal::MaxAttempts => &self.max_attempts,
            Refusal::NotReplayable => &self.not_replayable,
            Refusal::Deadline => &self.deadline,
            Refusal::Budget => &self.budget,
        };
        counter.increment(1);
        #[cfg(feature = "tracing")]
        tracing::debug!(
            layer = self.layer,
            name = &*self.name,
            attempts = sent,
            reason = refusal.reason(),
            "no further attempt"
        );
        #[cfg(not(feature = "tracing"))]
        let _ = (sent, refusal.reason());
    }
}

#[cfg(all(test, not(steadfast_loom)))]
mod tests {
    use super::*;

    fn budget() -> RetryBudget {
        RetryBudget::builder()
            .min_per_sec(0)
            .ratio(1.0)
            .build()
            .unwrap()
    }

    fn slot_is_empty() -> bool {
        LENT.get().is_none() && MORE.with(|m| m.borrow().is_empty())
    }

    #[test]
    fn the_outermost_layer_owns_the_record_and_lends_it_below() {
        let budget = budget();
        let mut outer = Share::join(3, &budget, None);
        assert!(outer.is_outermost());
        let inner = outer.call(|| Share::join(5, &budget, None));
        assert!(!inner.is_outermost(), "a call below joins the record");
        // Counted once: one deposit of ratio 1 allows one withdrawal.
        assert!(budget.withdraw());
        assert!(!budget.withdraw());
        assert!(slot_is_empty(), "the slot is empty after the call");
    }

    #[test]
    fn a_call_made_while_polling_does_not_join() {
        let budget = budget();
        let mut outer = Share::join(3, &budget, None);
        let _inner = outer.call(|| Share::join(3, &budget, None));
        let other = outer.poll(|| Share::join(3, &budget, None));
        assert!(other.is_outermost());
    }

    #[test]
    fn numbers_and_the_cap_are_shared() {
        let budget = RetryBudget::builder()
            .min_per_sec(0)
            .ratio(10.0)
            .build()
            .unwrap();
        let admission = Admission::new("test", "test_refused_total", &Arc::from("t"));
        let mut outer = Share::join(3, &budget, None);
        let mut inner = outer.call(|| Share::join(10, &budget, None));
        let template = 7u32;
        let admit = |share: &mut Share| {
            admission.admit(
                share,
                true,
                &CloneRequest,
                Some(&template),
                || true,
                &budget,
            )
        };
        // The inner layer, polled under the outer's loan, sends attempt 2...
        assert_eq!(outer.poll(|| admit(&mut inner)), Ok(7));
        // ...so the outer may send only one more (3 in all).
        assert_eq!(admit(&mut outer), Ok(7));
        assert_eq!(admit(&mut outer), Err(Refusal::MaxAttempts));
        assert_eq!(outer.sent(), 3);
        // The inner one, polled again, sees the same record.
        assert!(!outer.poll(|| inner.may_send_more()));
        assert!(slot_is_empty());
    }

    #[test]
    fn the_pool_sees_and_extends_the_replicas_tried_only_during_a_call() {
        let budget = budget();
        let replicas: Vec<Arc<()>> = (0..4).map(|_| Arc::new(())).collect();
        let id = |i: usize| ReplicaId::of(&replicas[i]);
        let mut outer = Share::join(5, &budget, None);
        assert!(with_tried(|t| t.is_none()), "no record outside a loan");
        for i in 0..3 {
            outer.call(|| with_tried(|t| t.unwrap().record(id(i))));
        }
        assert!(outer.poll(|| with_tried(|t| t.is_none())));
        let seen = outer.call(|| {
            with_tried(|t| {
                let t = t.unwrap();
                (0..4).map(|i| t.contains(id(i))).collect::<Vec<_>>()
            })
        });
        assert_eq!(seen, [true, true, true, false]);
        assert!(slot_is_empty(), "the stack holds nothing between loans");
    }

    #[test]
    fn a_nested_layer_calls_below_with_the_record_from_above() {
        let budget = budget();
        let replica = Arc::new(());
        let mut outer = Share::join(3, &budget, None);
        let mut inner = outer.call(|| Share::join(3, &budget, None));
        // Polled by the outer layer, the inner one sends a hedge: the pool
        // below sees the record as lent for a call.
        outer.poll(|| inner.call(|| with_tried(|t| t.unwrap().record(ReplicaId::of(&replica)))));
        let tried = outer.call(|| with_tried(|t| t.unwrap().contains(ReplicaId::of(&replica))));
        assert!(tried);
        assert!(slot_is_empty());
    }

    #[test]
    fn nested_owners_keep_their_replicas_apart() {
        // A stack called from inside a future being polled (user code) owns
        // a record of its own; its replicas do not mix with the outer one's.
        let budget = budget();
        let replicas: Vec<Arc<()>> = (0..4).map(|_| Arc::new(())).collect();
        let id = |i: usize| ReplicaId::of(&replicas[i]);
        let mut outer = Share::join(5, &budget, None);
        let _inner = outer.call(|| Share::join(5, &budget, None));
        outer.call(|| with_tried(|t| t.unwrap().record(id(0))));
        outer.call(|| with_tried(|t| t.unwrap().record(id(1))));
        outer.poll(|| {
            let mut foreign = Share::join(5, &budget, None);
            assert!(foreign.is_outermost());
            foreign.call(|| with_tried(|t| t.unwrap().record(id(2))));
            foreign.call(|| with_tried(|t| t.unwrap().record(id(3))));
            let mine = foreign.call(|| with_tried(|t| t.unwrap().contains(id(1))));
            assert!(
                !mine,
                "the outer record's replicas are not the foreign one's"
            );
        });
        let seen = outer.call(|| {
            with_tried(|t| {
                let t = t.unwrap();
                (0..4).map(|i| t.contains(id(i))).collect::<Vec<_>>()
            })
        });
        assert_eq!(seen, [true, true, false, false]);
        assert!(slot_is_empty());
    }

    #[test]
    fn a_panic_below_leaves_no_record_behind() {
        let budget = budget();
        let replicas: Vec<Arc<()>> = (0..2).map(|_| Arc::new(())).collect();
        let mut outer = Share::join(3, &budget, None);
        outer.call(|| with_tried(|t| t.unwrap().record(ReplicaId::of(&replicas[0]))));
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            outer.call(|| {
                with_tried(|t| t.unwrap().record(ReplicaId::of(&replicas[1])));
                panic!("a service below panicked")
            })
        }));
        assert!(caught.is_err());
        assert!(slot_is_empty(), "no stale record");
        assert!(Share::join(3, &budget, None).is_outermost());
    }

    #[test]
    fn a_layer_polled_without_the_record_keeps_its_own() {
        let budget = budget();
        let mut outer = Share::join(3, &budget, None);
        let mut moved = outer.call(|| Share::join(2, &budget, None));
        // Polled elsewhere (no loan): it starts a record of its own, cap 2.
        assert!(moved.may_send_more());
        assert_eq!(moved.next_number(), 2);
        assert!(!moved.may_send_more());
    }
}
